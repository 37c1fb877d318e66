//! The primary's replicator: every completed write is tagged with the current epoch and queued
//! to the backup; `barrier N` closes the epoch in the stream; the backup's COMMITTED N clears
//! the dirty map. Without a backup (none configured, or lost) writes only mark the dirty map,
//! and the next connection resynchronises exactly those regions.
//!
//! Bounded memory: queued stream bytes are capped at `max_backlog`. A write that would exceed
//! the cap waits (the guest's write is slowed) for at most `stall_timeout`; if the backup still
//! has not drained the queue, protection is dropped: the connection is closed, the queue freed,
//! every unacknowledged region marked for resync, and the guest continues at local speed.
//!
//! Lineage ([`crate::lineage`]): every write is recorded in the activity log before it is
//! issued ([`super::primary_lineage`]); on connection the backup's lineage decides whether the
//! resync is partial (the regions either side may hold differently) or full.

use super::msg::{Hello, Msg, MAX_PAYLOAD, PROTOCOL_VERSION};
use super::primary_lineage::LineageStatus;
use crate::dirty::DirtyMap;
use crate::lineage::claim::{Claim, LineageId};
use crate::lineage::keeper::Keeper;
use crate::store::Disk;
use remus_proto::auth::nonblocking::{OpenedRead, SealedWrite};
use remus_proto::auth::{Security, StreamKind};
use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::wire;
use remus_proto::Epoch;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};

#[derive(Debug, Clone)]
pub struct ReplConfig {
    pub backup: Option<String>,
    pub max_backlog: usize,
    pub stall_timeout: Duration,
    pub peer_timeout: Duration,
    pub heartbeat: Duration,
    pub region_size: u64,
    pub export: String,
    /// The replication link's key (or the explicit opt-out).
    pub security: Security,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No backup configured: standalone server, writes tracked for a later resync.
    None,
    Connecting,
    /// Connected and copying dirty regions; new writes are streamed as well.
    Syncing,
    /// Connected, in sync apart from the epochs in flight.
    Protected,
    Down,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ResyncProgress {
    /// Of the current (or last) resync run.
    pub regions_total: u64,
    pub regions_done: u64,
    pub bytes_sent: u64,
    pub zero_regions: u64,
    pub runs: u64,
}

pub(super) struct State {
    pub(super) epoch: Epoch,
    pub(super) link: LinkState,
    reason: String,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    pub(super) dirty: DirtyMap,
    /// What the image holds outside the activity log (advanced on acknowledgements once a
    /// backup is synchronised in this lineage).
    pub(super) claim: Option<Claim>,
    /// The claim is in this process' lineage: `dirty` knows every write since it began.
    pub(super) live: bool,
    /// The current connection's SYNC_DONE epoch: acknowledgements from it on advance the claim.
    sync_epoch: Option<Epoch>,
    /// The last resync decision, in words.
    pub(super) plan: String,
    committed_through: Option<Epoch>,
    resync: ResyncProgress,
    writes: u64,
    write_bytes: u64,
    stream_bytes: u64,
    stalls: u64,
    protection_drops: u64,
}

impl State {
    fn streaming(&self) -> bool {
        matches!(self.link, LinkState::Syncing | LinkState::Protected)
    }

    fn push(&mut self, frame: Vec<u8>) {
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
    }

    fn lose_link(&mut self, reason: String) {
        if self.streaming() {
            tracing::warn!("backup link lost: {reason}; continuing unprotected");
        }
        self.link = LinkState::Down;
        self.reason = reason;
        self.queue.clear();
        self.queued_bytes = 0;
        self.dirty.lose_backup();
    }
}

pub struct Replicator {
    cfg: ReplConfig,
    disk: Disk,
    pub(super) state: Mutex<State>,
    pub(super) keeper: Arc<Keeper>,
    pub(super) lineage: LineageId,
    /// Where the sender connects (set at start or by `replicate`).
    pub(super) backup_addr: std::sync::Mutex<Option<String>>,
    /// Wakes the sender: frames queued or the link must be dropped.
    wake: Notify,
    /// Wakes writers waiting for queue space.
    space: Notify,
}

#[derive(Debug, Serialize)]
pub struct PrimaryStatus {
    pub role: &'static str,
    pub epoch: Epoch,
    pub link: LinkState,
    pub reason: String,
    pub backup: Option<String>,
    pub committed_through: Option<Epoch>,
    pub queued_bytes: usize,
    pub max_backlog: usize,
    pub region_size: u64,
    pub dirty_regions: usize,
    pub dirty_bytes: u64,
    pub resync: ResyncProgress,
    pub writes: u64,
    pub write_bytes: u64,
    pub stream_bytes: u64,
    pub stalls: u64,
    pub protection_drops: u64,
    pub engine: &'static str,
    pub size: u64,
    pub lineage: LineageStatus,
}

impl Replicator {
    /// `lineage`: this process' lineage (new at each start or activation); the claim and the
    /// activity log come from `keeper`.
    pub fn new(
        cfg: ReplConfig,
        disk: Disk,
        keeper: Arc<Keeper>,
        lineage: LineageId,
    ) -> Arc<Replicator> {
        let mut dirty = DirtyMap::new(disk.size(), cfg.region_size);
        // Nothing is known about a backup's contents at start: the first sync copies it all
        // (zero regions cheaply).
        dirty.mark_all();
        let link = if cfg.backup.is_some() {
            LinkState::Connecting
        } else {
            LinkState::None
        };
        Arc::new(Replicator {
            state: Mutex::new(State {
                epoch: Epoch(0),
                link,
                reason: String::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                dirty,
                claim: keeper.claim(),
                live: false,
                sync_epoch: None,
                plan: String::new(),
                committed_through: None,
                resync: ResyncProgress::default(),
                writes: 0,
                write_bytes: 0,
                stream_bytes: 0,
                stalls: 0,
                protection_drops: 0,
            }),
            backup_addr: std::sync::Mutex::new(cfg.backup.clone()),
            cfg,
            disk,
            keeper,
            lineage,
            wake: Notify::new(),
            space: Notify::new(),
        })
    }

    pub(super) fn disk_size(&self) -> u64 {
        self.disk.size()
    }

    /// Starts the sender task if a backup is configured.
    pub fn spawn(self: &Arc<Self>) {
        if let Some(addr) = self.cfg.backup.clone() {
            let me = self.clone();
            tokio::spawn(async move { me.sender_loop(addr).await });
        }
    }

    pub async fn on_write(&self, offset: u64, data: &[u8]) {
        self.record(offset, data.len() as u64, Some(data)).await
    }

    pub async fn on_zero(&self, offset: u64, len: u64) {
        self.record(offset, len, None).await
    }

    async fn record(&self, offset: u64, len: u64, data: Option<&[u8]>) {
        let frame_len = data.map_or(48, |d| d.len() + 40);
        let deadline = Instant::now() + self.cfg.stall_timeout;
        let mut stalled = false;
        loop {
            let mut st = self.state.lock().await;
            if !stalled {
                st.writes += 1;
                st.write_bytes += len;
            }
            if !stalled {
                let e = st.epoch;
                st.dirty.note_written(offset, len, e);
            }
            if !st.streaming() {
                st.dirty.mark(offset, len, None);
                return;
            }
            if st.queued_bytes == 0 || st.queued_bytes + frame_len <= self.cfg.max_backlog {
                let e = st.epoch;
                st.dirty.mark(offset, len, Some(e));
                let frame = match data {
                    Some(d) => Msg::encode_write(e, offset, d, false),
                    None => Msg::Zero {
                        epoch: e,
                        offset,
                        len,
                    }
                    .encode(),
                };
                st.push(frame);
                drop(st);
                self.wake.notify_one();
                return;
            }
            // Over the cap: wait for the sender to drain, for a bounded time.
            if !stalled {
                st.stalls += 1;
                stalled = true;
            }
            let notified = self.space.notified();
            drop(st);
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                let mut st = self.state.lock().await;
                if st.streaming() && st.queued_bytes + frame_len > self.cfg.max_backlog {
                    st.protection_drops += 1;
                    st.lose_link(format!(
                        "replication backlog stayed above {} bytes for {:?}",
                        self.cfg.max_backlog, self.cfg.stall_timeout
                    ));
                    self.wake.notify_one();
                }
            }
        }
    }

    /// `barrier N`: writes completed from now on belong to epoch N.
    pub async fn barrier(&self, n: Epoch) -> Result<(), ControlError> {
        let mut st = self.state.lock().await;
        if n <= st.epoch {
            return Err(ControlError::new(
                ErrorCode::Order,
                format!("barrier {n} does not advance past epoch {}", st.epoch),
            ));
        }
        st.epoch = n;
        if st.streaming() {
            st.push(Msg::Barrier(n).encode());
            drop(st);
            self.wake.notify_one();
        }
        Ok(())
    }

    pub async fn status(&self) -> PrimaryStatus {
        let st = self.state.lock().await;
        PrimaryStatus {
            role: "primary",
            epoch: st.epoch,
            link: st.link.clone(),
            reason: st.reason.clone(),
            backup: self
                .backup_addr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            committed_through: st.committed_through,
            queued_bytes: st.queued_bytes,
            max_backlog: self.cfg.max_backlog,
            region_size: self.cfg.region_size,
            dirty_regions: st.dirty.dirty_regions(),
            dirty_bytes: st.dirty.dirty_bytes(),
            resync: st.resync.clone(),
            writes: st.writes,
            write_bytes: st.write_bytes,
            stream_bytes: st.stream_bytes,
            stalls: st.stalls,
            protection_drops: st.protection_drops,
            engine: self.disk.engine_name(),
            size: self.disk.size(),
            lineage: self.lineage_status(&st),
        }
    }

    pub(super) async fn sender_loop(self: Arc<Self>, addr: String) {
        const FIRST: Duration = Duration::from_millis(100);
        let mut backoff = FIRST;
        loop {
            let started = Instant::now();
            let r = self.clone().session(&addr).await;
            // A backup that said why it gave up (a full disk, a failed commit) is retried
            // slowly: each attempt resends everything unacknowledged, and the cause usually
            // needs an operator. An unreachable one is retried quickly.
            let cap = match &r {
                Err(e) if backup_failure(e).is_some() => Duration::from_secs(30),
                _ => Duration::from_secs(2),
            };
            if let Err(e) = r {
                let mut st = self.state.lock().await;
                st.lose_link(e.to_string());
                drop(st);
                self.space.notify_waiters();
            }
            // A link that worked for a while starts the backoff over.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = FIRST;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cap);
        }
    }

    /// One connection to the backup, from handshake to failure.
    async fn session(self: Arc<Self>, addr: &str) -> std::io::Result<()> {
        let sock = tokio::time::timeout(self.cfg.peer_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let mut sock = sock;
        sock.set_nodelay(true)?;
        // The backup proves the key before anything is sent; a backup that cannot (a wrong
        // key, an impostor, a port squatter) gets nothing, and this attempt fails like an
        // unreachable backup: retried, writes tracked in the dirty map meanwhile.
        let session = remus_proto::auth::nonblocking::connect(
            &mut sock,
            &self.cfg.security,
            StreamKind::Disk,
            self.cfg.peer_timeout,
        )
        .await?;
        let (send, recv) = match session {
            Some(s) => (Some(s.send), Some(s.recv)),
            None => (None, None),
        };
        let (rd, wr) = sock.into_split();
        let mut rd = OpenedRead::new(rd, recv);
        let mut wr = SealedWrite::new(wr, send);
        let hello = Msg::Hello(Hello {
            version: PROTOCOL_VERSION,
            size: self.disk.size(),
            export: self.cfg.export.clone(),
            lineage: Some(self.lineage),
        });
        wr.write_all(&hello.encode()).await?;
        let ack = tokio::time::timeout(self.cfg.peer_timeout, read_msg(&mut rd))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HELLO_ACK"))??;
        let peer = match ack {
            Msg::HelloAck(a) if a.size == self.disk.size() && a.version == PROTOCOL_VERSION => {
                a.lineage
            }
            Msg::HelloAck(a) => {
                return Err(std::io::Error::other(format!(
                    "backup image is {} bytes (protocol {}), ours is {} (protocol {})",
                    a.size,
                    a.version,
                    self.disk.size(),
                    PROTOCOL_VERSION
                )))
            }
            m => {
                return Err(std::io::Error::other(format!(
                    "expected HELLO_ACK, got {m:?}"
                )))
            }
        };
        {
            let mut st = self.state.lock().await;
            st.link = LinkState::Syncing;
            st.reason.clear();
            st.queue.clear();
            st.queued_bytes = 0;
            st.sync_epoch = None;
            self.decide_resync(&mut st, peer.as_ref(), addr);
        }
        tracing::info!(backup = addr, "connected to backup; resynchronising");
        // The backup's answers: COMMITTED clears the dirty map; silence means it is gone.
        let me = self.clone();
        let peer_timeout = self.cfg.peer_timeout;
        let mut reader = tokio::spawn(async move {
            loop {
                let m = tokio::time::timeout(peer_timeout, read_msg(&mut rd))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "backup silent")
                    })??;
                match m {
                    Msg::Committed(n) => {
                        let mut st = me.state.lock().await;
                        st.dirty.acked_through(n);
                        // The backup holds our state at n: the claim moves here (written to
                        // the metadata lazily, with the next activity-log change).
                        if st.sync_epoch.is_some_and(|s| s <= n) {
                            st.claim = Some(Claim {
                                lineage: me.lineage,
                                kind: crate::lineage::ClaimKind::From,
                                epoch: n.0,
                            });
                            if !st.live {
                                // Recorded at once the first time (not only with the next
                                // activity-log change, which may be far off): until then the
                                // file names an older lineage, and a crash would leave an
                                // image whose next resync is a full one.
                                let me = me.clone();
                                tokio::spawn(async move { me.record_claim().await });
                            }
                            st.live = true;
                        }
                        st.committed_through = Some(st.committed_through.map_or(n, |c| c.max(n)));
                    }
                    Msg::Heartbeat => {}
                    // The backup gave up on this stream or could not commit an epoch: this
                    // session ends, every unacknowledged region is marked for resync (a failed
                    // commit's regions among them: it was never acknowledged), and the next
                    // connection resynchronises them. The backup's own words become `reason`.
                    Msg::Failed(f) => {
                        tracing::warn!("{f}");
                        return Err(std::io::Error::other(BackupFailure(f)));
                    }
                    m => {
                        return Err::<(), _>(std::io::Error::other(format!(
                            "unexpected message from backup: {m:?}"
                        )))
                    }
                }
            }
        });
        let joined = |r: Result<std::io::Result<()>, tokio::task::JoinError>| match r {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let (r, reader_done) = tokio::select! {
            r = self.stream(&mut wr) => (r, false),
            r = &mut reader => (joined(r), true),
        };
        // A backup that gives up says why and then hangs up; our next write may fail first
        // (a broken pipe). Its own words, if they are on the way, say more.
        let r = match r {
            Err(e) if !reader_done && backup_failure(&e).is_none() => {
                match tokio::time::timeout(Duration::from_millis(200), &mut reader).await {
                    Ok(told) => match joined(told) {
                        Err(b) if backup_failure(&b).is_some() => Err(b),
                        _ => Err(e),
                    },
                    Err(_) => Err(e),
                }
            }
            r => r,
        };
        reader.abort();
        r
    }

    /// Resync, then stream queued frames and heartbeats until the link fails or is dropped.
    async fn stream(&self, wr: &mut SealedWrite<OwnedWriteHalf>) -> std::io::Result<()> {
        let todo = self.state.lock().await.dirty.needing_resync();
        {
            let mut st = self.state.lock().await;
            st.resync.regions_total = todo.len() as u64;
            st.resync.regions_done = 0;
            st.resync.bytes_sent = 0;
            st.resync.zero_regions = 0;
            st.resync.runs += 1;
        }
        let mut last_log = Instant::now();
        for (n, region) in todo.iter().enumerate() {
            {
                // Read and queue under the lock: a write to this region completing meanwhile is
                // queued after our copy, so the backup applies it on top.
                let mut st = self.state.lock().await;
                if !st.streaming() {
                    return Err(std::io::Error::other(st.reason.clone()));
                }
                let (off, len) = st.dirty.region_span(*region);
                let data = self.disk.read(off, len as usize).await?;
                let frame = if data.iter().all(|&b| b == 0) {
                    st.resync.zero_regions += 1;
                    Msg::ResyncZero { offset: off, len }.encode()
                } else {
                    Msg::encode_write(Epoch(0), off, &data, true)
                };
                st.resync.bytes_sent += frame.len() as u64;
                let e = st.epoch;
                st.dirty.resent(*region, e);
                st.push(frame);
                st.resync.regions_done = n as u64 + 1;
            }
            self.drain(wr).await?;
            if last_log.elapsed() > Duration::from_secs(1) {
                last_log = Instant::now();
                tracing::info!("resync: {}/{} regions", n + 1, todo.len());
            }
        }
        {
            let mut st = self.state.lock().await;
            let e = st.epoch;
            st.push(Msg::SyncDone(e).encode());
            st.sync_epoch = Some(e);
            st.link = LinkState::Protected;
        }
        tracing::info!(regions = todo.len(), "resync complete; protected");
        loop {
            self.drain(wr).await?;
            let woke = tokio::time::timeout(self.cfg.heartbeat, self.wake.notified()).await;
            {
                let st = self.state.lock().await;
                if !st.streaming() {
                    return Err(std::io::Error::other(st.reason.clone()));
                }
            }
            if woke.is_err() {
                wr.write_all(&Msg::Heartbeat.encode()).await?;
            }
        }
    }

    /// Sends everything queued so far.
    async fn drain(&self, wr: &mut SealedWrite<OwnedWriteHalf>) -> std::io::Result<()> {
        loop {
            let batch: Vec<Vec<u8>> = {
                let mut st = self.state.lock().await;
                if st.queue.is_empty() {
                    return Ok(());
                }
                st.queue.drain(..).collect()
            };
            let mut sent = 0usize;
            for f in &batch {
                wr.write_all(f).await?;
                sent += f.len();
            }
            {
                let mut st = self.state.lock().await;
                st.queued_bytes = st.queued_bytes.saturating_sub(sent);
                st.stream_bytes += sent as u64;
            }
            self.space.notify_waiters();
        }
    }
}

/// The backup's own account of why it stopped taking the stream.
#[derive(Debug)]
struct BackupFailure(super::msg::Failure);

impl std::fmt::Display for BackupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackupFailure {}

fn backup_failure(e: &std::io::Error) -> Option<&super::msg::Failure> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<BackupFailure>())
        .map(|b| &b.0)
}

/// Reads one replication message (length- and crc-checked).
pub async fn read_msg<R: tokio::io::AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Msg> {
    let mut hdr = [0u8; wire::HEADER_LEN];
    rd.read_exact(&mut hdr).await?;
    let h = wire::Header::parse(&hdr, MAX_PAYLOAD)?;
    let mut payload = vec![0u8; h.len];
    rd.read_exact(&mut payload).await?;
    let f = h.finish(payload)?;
    Msg::decode(f).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
