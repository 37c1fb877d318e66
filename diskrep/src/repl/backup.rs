//! The backup's receiver: buffers each epoch's writes in memory ([`EpochBuffer`]), applies
//! resync data at once, and on `commit N` applies every complete epoch ≤ N to the image in
//! order, fdatasyncs, and only then acknowledges (to the control client and to the primary).
//! `activate` discards everything uncommitted, waits for a commit in progress, and turns the
//! backup into a serving node.
//!
//! Only an authenticated primary (remus-proto's auth handshake, with this VM's key) is ever
//! connected: each accepted connection runs its handshake on its own task, bounded by the peer
//! timeout, and touches nothing until it has passed; then, and only then, it replaces the
//! current stream. A silent connection, garbage or a wrong key costs a task for a while and is
//! counted in `auth_failures`; the established link goes on. The image size (HELLO_ACK) goes
//! only to an authenticated primary.
//!
//! A corrupt or out-of-order frame closes the connection before it touches anything: the
//! primary then marks everything unacknowledged for resync and reconnects. Whatever ends the
//! stream on this side is told to the primary first (FAILED, with the error text).
//!
//! A commit is all or nothing, and a failed one is sticky. The epochs it was applying may be
//! partly on the image, which then matches no state the primary ever had: the backup reports
//! `consistent=false`, tells the primary (which marks every unacknowledged region for resync),
//! refuses every later commit and `activate` (without `force`), until a new connection has
//! resynchronised the image (its SYNC_DONE). A failed commit is never later answered `ok`.
//!
//! Lineage ([`super::backup_lineage`]): the image's claim is forgotten durably before a resync
//! or a new lineage's epoch first touches it, the primary's lineage is adopted once the image
//! is consistent, and activation starts a new lineage from exactly the committed epoch.

use super::msg::{Failure, HelloAck, Msg, PROTOCOL_VERSION};
use super::primary::read_msg;
use crate::epoch_buffer::EpochBuffer;
use crate::extent_map::Data;
use crate::lineage::keeper::Keeper;
use crate::lineage::LineageId;
use crate::store::Disk;
use remus_proto::auth::nonblocking::{OpenedRead, SealedWrite};
use remus_proto::auth::{Security, StreamKind};
use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::Epoch;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex, Notify};

#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub peer_timeout: Duration,
    pub heartbeat: Duration,
    pub commit_timeout: Duration,
    /// Most bytes buffered for uncommitted epochs; beyond it the connection is dropped (the
    /// primary falls back to its dirty map and resyncs).
    pub max_buffer: usize,
    /// The replication link's key (or the explicit opt-out).
    pub security: Security,
}

/// Most handshakes in progress at once; connections beyond it are closed at once (a flood of
/// squatters cannot exhaust descriptors or memory, and never touches the live link).
const MAX_PENDING_HANDSHAKES: usize = 16;

/// A commit that failed: the image may hold part of the epochs ≤ `epoch`.
pub(super) struct CommitFailure {
    epoch: Epoch,
    error: String,
    /// The connection generation at the time: only a resync on a later connection (which
    /// began after the primary learnt of the failure, or lost the link) repairs the image.
    generation: u64,
}

pub(super) struct State {
    buf: EpochBuffer,
    pub(super) failure: Option<CommitFailure>,
    commit_failures: u64,
    pub(super) committed_through: Option<Epoch>,
    /// The image equals some committed state of the primary (false during a resync).
    pub(super) consistent: bool,
    /// The connected primary's lineage (from its HELLO).
    pub(super) primary_lineage: Option<LineageId>,
    /// The lineage the metadata says this image follows (written once it was consistent).
    pub(super) adopted: Option<LineageId>,
    /// When the metadata's epoch was last brought forward (at most once a second).
    pub(super) meta_written: Option<std::time::Instant>,
    /// After a resync: the image is consistent once this epoch commits.
    sync_done: Option<Epoch>,
    connected: bool,
    generation: u64,
    activated: bool,
    to_primary: Option<mpsc::Sender<Vec<u8>>>,
    conn_task: Option<tokio::task::AbortHandle>,
    received_bytes: u64,
    applied_bytes: u64,
    resync_bytes: u64,
    protocol_errors: u64,
    last_error: String,
    auth_failures: u64,
    last_auth_error: String,
}

pub struct Backup {
    cfg: BackupConfig,
    disk: Disk,
    pub(super) state: Mutex<State>,
    pub(super) keeper: Arc<Keeper>,
    progress: Notify,
}

#[derive(Debug, Serialize)]
pub struct BackupStatus {
    pub role: &'static str,
    pub connected: bool,
    pub activated: bool,
    pub consistent: bool,
    pub open_epoch: Epoch,
    pub complete_through: Option<Epoch>,
    pub committed_through: Option<Epoch>,
    pub sync_done_epoch: Option<Epoch>,
    /// The commit that failed and left the image inconsistent (until a resync), if any.
    pub failed_commit: Option<Epoch>,
    pub commit_failures: u64,
    pub buffered_bytes: usize,
    pub max_buffer: usize,
    pub pending_epochs: Vec<(Epoch, usize)>,
    pub received_bytes: u64,
    pub applied_bytes: u64,
    pub resync_bytes: u64,
    pub protocol_errors: u64,
    pub last_error: String,
    /// Connections refused by the authentication handshake (wrong key, garbage, silence).
    pub auth_failures: u64,
    pub last_auth_error: String,
    pub auth: &'static str,
    pub engine: &'static str,
    pub size: u64,
    pub lineage: super::backup_lineage::BackupLineageStatus,
}

pub(super) fn state_err(msg: impl Into<String>) -> ControlError {
    ControlError::new(ErrorCode::State, msg)
}

impl Backup {
    pub fn new(cfg: BackupConfig, disk: Disk, keeper: Arc<Keeper>) -> Arc<Backup> {
        Arc::new(Backup {
            cfg,
            disk,
            keeper,
            state: Mutex::new(State {
                buf: EpochBuffer::new(),
                failure: None,
                commit_failures: 0,
                committed_through: None,
                // Until a primary has synchronised it, the image is whatever it was: a
                // deliberate operator choice, reported as not consistent.
                consistent: false,
                primary_lineage: None,
                adopted: None,
                meta_written: None,
                sync_done: None,
                connected: false,
                generation: 0,
                activated: false,
                to_primary: None,
                conn_task: None,
                received_bytes: 0,
                applied_bytes: 0,
                resync_bytes: 0,
                protocol_errors: 0,
                last_error: String::new(),
                auth_failures: 0,
                last_auth_error: String::new(),
            }),
            progress: Notify::new(),
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Accepts primaries until activated. Each connection authenticates on its own task; one
    /// that passes replaces the current stream, one that fails changes nothing.
    pub async fn listen(self: Arc<Self>, listener: TcpListener) {
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        loop {
            let (mut sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("replication accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many handshakes in progress: closing a connection");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let authed = async {
                    sock.set_nodelay(true)?;
                    remus_proto::auth::nonblocking::accept(
                        &mut sock,
                        &me.cfg.security,
                        StreamKind::Disk,
                        me.cfg.peer_timeout,
                    )
                    .await
                }
                .await;
                match authed {
                    Ok(session) => me.adopt(sock, session, peer).await,
                    Err(e) => {
                        tracing::warn!(%peer, "refused a replication connection: {e}");
                        let mut st = me.state.lock().await;
                        st.auth_failures += 1;
                        st.last_auth_error = format!("{peer}: {e}");
                    }
                }
            });
        }
    }

    /// An authenticated primary: it replaces the current stream (the old primary, or an
    /// earlier connection of this one, is gone or about to find out).
    async fn adopt(
        self: Arc<Self>,
        sock: tokio::net::TcpStream,
        session: Option<remus_proto::auth::Session>,
        peer: std::net::SocketAddr,
    ) {
        let mut st = self.state.lock().await;
        if st.activated {
            tracing::warn!(%peer, "refusing a primary: this backup has been activated");
            return;
        }
        if let Some(t) = st.conn_task.take() {
            t.abort();
        }
        st.generation += 1;
        let gen = st.generation;
        let me = self.clone();
        let (rd, wr) = sock.into_split();
        let (send, recv) = match session {
            Some(s) => (Some(s.send), Some(s.recv)),
            None => (None, None),
        };
        let rd = OpenedRead::new(rd, recv);
        let wr = SealedWrite::new(wr, send);
        let task = tokio::spawn(async move {
            let r = me.clone().connection(rd, wr, gen).await;
            let mut st = me.state.lock().await;
            if st.generation == gen {
                st.connected = false;
                st.to_primary = None;
                if let Err(e) = &r {
                    st.last_error = e.to_string();
                }
            }
            drop(st);
            me.progress.notify_waiters();
            match r {
                Ok(()) => tracing::info!(%peer, "primary disconnected"),
                Err(e) => tracing::warn!(%peer, "primary connection ended: {e}"),
            }
        });
        st.conn_task = Some(task.abort_handle());
    }

    async fn connection(
        self: Arc<Self>,
        mut rd: OpenedRead<OwnedReadHalf>,
        mut wr: SealedWrite<tokio::net::tcp::OwnedWriteHalf>,
        gen: u64,
    ) -> std::io::Result<()> {
        let hello = tokio::time::timeout(self.cfg.peer_timeout, read_msg(&mut rd))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HELLO"))??;
        let Msg::Hello(h) = hello else {
            return Err(std::io::Error::other("expected HELLO"));
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        {
            let mut st = self.state.lock().await;
            if st.generation != gen {
                return Ok(());
            }
            let ack = Msg::HelloAck(HelloAck {
                version: PROTOCOL_VERSION,
                size: self.disk.size(),
                committed_through: st.committed_through,
                lineage: Some(self.lineage_view(&st)),
            });
            st.primary_lineage = h.lineage;
            wr.write_all(&ack.encode()).await?;
            if h.size != self.disk.size() || h.version != PROTOCOL_VERSION {
                return Err(std::io::Error::other(format!(
                    "primary image is {} bytes (protocol {}), ours is {}",
                    h.size,
                    h.version,
                    self.disk.size()
                )));
            }
            // A new stream: whatever an earlier one left uncommitted is resent by the primary.
            st.buf = EpochBuffer::new();
            st.connected = true;
            st.to_primary = Some(tx.clone());
        }
        tracing::info!(export = h.export, "primary connected");
        let heartbeat = self.cfg.heartbeat;
        let mut writer = tokio::spawn(async move {
            loop {
                match tokio::time::timeout(heartbeat, rx.recv()).await {
                    // An empty frame: the stream ends here (everything before it is sent).
                    Ok(Some(f)) if f.is_empty() => {
                        wr.shutdown().await?;
                        return std::io::Result::Ok(());
                    }
                    Ok(Some(f)) => wr.write_all(&f).await?,
                    Ok(None) => return std::io::Result::Ok(()),
                    Err(_) => wr.write_all(&Msg::Heartbeat.encode()).await?,
                }
            }
        });
        let r = self.receive(&mut rd, gen).await;
        if let Err(e) = &r {
            // Tell the primary why, so that it shows this error and not a broken pipe. Bounded:
            // a primary that does not read does not hold this side up.
            let why = Msg::Failed(Failure::new(None, e.to_string())).encode();
            let told = async {
                let _ = tx.send(why).await;
                let _ = tx.send(Vec::new()).await;
                let _ = (&mut writer).await;
            };
            let _ = tokio::time::timeout(self.cfg.peer_timeout, told).await;
        }
        writer.abort();
        r
    }

    async fn receive(&self, rd: &mut OpenedRead<OwnedReadHalf>, gen: u64) -> std::io::Result<()> {
        let size = self.disk.size();
        let in_range = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= size);
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        loop {
            let m = match tokio::time::timeout(self.cfg.peer_timeout, read_msg(rd)).await {
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "primary silent",
                    ))
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => {
                    let mut st = self.state.lock().await;
                    st.protocol_errors += 1;
                    return Err(e);
                }
                Ok(Ok(m)) => m,
            };
            let mut st = self.state.lock().await;
            if st.generation != gen || st.activated {
                return Ok(());
            }
            let r: std::io::Result<()> = match m {
                Msg::Write {
                    epoch,
                    offset,
                    data,
                } => {
                    if !in_range(offset, data.len() as u64) {
                        Err(bad(format!("write past the end at {offset}")))
                    } else {
                        st.received_bytes += data.len() as u64;
                        st.buf
                            .write(epoch, offset, Data::Bytes(data))
                            .map_err(|e| bad(e.to_string()))
                    }
                }
                Msg::Zero { epoch, offset, len } => {
                    if !in_range(offset, len) {
                        Err(bad(format!("zero past the end at {offset}")))
                    } else {
                        st.buf
                            .write(epoch, offset, Data::Zero(len))
                            .map_err(|e| bad(e.to_string()))
                    }
                }
                Msg::Barrier(e) => {
                    let r = st.buf.barrier(e).map_err(|e| bad(e.to_string()));
                    self.progress.notify_waiters();
                    r
                }
                Msg::ResyncWrite { offset, data } => {
                    if !in_range(offset, data.len() as u64) {
                        Err(bad(format!("resync past the end at {offset}")))
                    } else if let Err(e) = self.forget_claim(&mut st, "mid-resync").await {
                        Err(e)
                    } else {
                        st.consistent = false;
                        st.resync_bytes += data.len() as u64;
                        self.disk.write(offset, data).await.map(|_| ())
                    }
                }
                Msg::ResyncZero { offset, len } => {
                    if !in_range(offset, len) {
                        Err(bad(format!("resync past the end at {offset}")))
                    } else if let Err(e) = self.forget_claim(&mut st, "mid-resync").await {
                        Err(e)
                    } else {
                        st.consistent = false;
                        self.disk.zero(offset, len, true).await
                    }
                }
                Msg::SyncDone(e) => {
                    // A resync on a connection that began after a failed commit covered the
                    // regions that commit left half-written: commits may go on, and the image
                    // is consistent once epoch `e` commits.
                    if let Some(f) = st.failure.take_if(|f| f.generation < gen) {
                        tracing::info!(
                            failed = %f.epoch,
                            "resync after the failed commit is complete; consistent once epoch {e} commits"
                        );
                    }
                    st.sync_done = Some(e);
                    Ok(())
                }
                Msg::Heartbeat => Ok(()),
                m => Err(bad(format!("unexpected message from primary: {m:?}"))),
            };
            if let Err(e) = r {
                // Nothing of the bad frame was applied. Epochs already complete were verified
                // frame by frame and stay committable (the primary may be dead); the rest of
                // the stream is refused.
                st.protocol_errors += 1;
                return Err(e);
            }
            if st.buf.mem() > self.cfg.max_buffer {
                st.buf = EpochBuffer::new();
                return Err(std::io::Error::other(format!(
                    "uncommitted epochs exceed {} bytes: dropping the stream (the primary resyncs)",
                    self.cfg.max_buffer
                )));
            }
        }
    }

    /// `commit N`: waits until epoch N is complete in the stream, applies every epoch ≤ N,
    /// makes it durable, then acknowledges.
    pub async fn commit(&self, n: Epoch) -> Result<String, ControlError> {
        let deadline = tokio::time::Instant::now() + self.cfg.commit_timeout;
        let mut st = loop {
            let st = self.state.lock().await;
            if st.activated {
                return Err(state_err("activated: no more commits"));
            }
            if st.committed_through.is_some_and(|c| n <= c) {
                return Ok(format!("committed={n} already=true"));
            }
            if let Some(f) = &st.failure {
                return Err(state_err(format!(
                    "commit {n} refused: the commit of epoch {} failed ({}), and the image is \
                     inconsistent until the primary has resynchronised it",
                    f.epoch, f.error
                )));
            }
            if st.buf.complete_through().is_some_and(|c| c >= n) {
                break st;
            }
            if !st.connected {
                return Err(state_err(format!(
                    "epoch {n} is not complete and no primary is connected"
                )));
            }
            let notified = self.progress.notified();
            drop(st);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(state_err(format!(
                    "epoch {n} did not complete within {:?}",
                    self.cfg.commit_timeout
                )));
            }
        };
        // An epoch of another lineage than the one recorded changes the image away from what
        // the metadata says: forget it first (durably), or do not apply.
        if self
            .keeper
            .claim()
            .is_some_and(|c| Some(c.lineage) != st.primary_lineage)
        {
            self.forget_claim(&mut st, "taking a new primary's epochs")
                .await
                .map_err(|e| {
                    ControlError::new(
                        ErrorCode::Backend,
                        format!("commit {n} not applied: cannot update the lineage metadata: {e}"),
                    )
                })?;
        }
        let epochs = st
            .buf
            .take_through(n)
            .map_err(|e| state_err(e.to_string()))?;
        let bytes = match self.apply(&epochs).await {
            Ok(b) => b,
            Err(e) => {
                let error = e.to_string();
                tracing::error!(
                    epoch = %n,
                    "commit failed: {error}; the image is inconsistent until the primary resyncs it"
                );
                st.consistent = false;
                st.commit_failures += 1;
                st.last_error = format!("commit {n}: {error}");
                st.failure = Some(CommitFailure {
                    epoch: n,
                    error: error.clone(),
                    generation: st.generation,
                });
                if let Some(tx) = &st.to_primary {
                    let _ = tx.try_send(Msg::Failed(Failure::new(Some(n), error.clone())).encode());
                }
                return Err(ControlError::new(
                    ErrorCode::Backend,
                    format!(
                        "commit {n} failed: {error}; the image is inconsistent: later commits \
                         are refused until the primary has resynchronised it"
                    ),
                ));
            }
        };
        st.buf.committed(n);
        st.committed_through = Some(n);
        st.applied_bytes += bytes;
        if st.sync_done.is_some_and(|s| s <= n) {
            st.consistent = true;
        }
        self.committed_lineage(&mut st, n).await;
        if let Some(tx) = &st.to_primary {
            let _ = tx.try_send(Msg::Committed(n).encode());
        }
        Ok(format!(
            "committed={n} bytes={bytes} epochs={}",
            epochs.len()
        ))
    }

    /// Writes the epochs (oldest first) and makes them durable. Returns the bytes written.
    async fn apply(
        &self,
        epochs: &[(Epoch, crate::extent_map::ExtentMap)],
    ) -> std::io::Result<u64> {
        let mut bytes = 0u64;
        for (_, map) in epochs {
            for (off, d) in map.iter() {
                match d {
                    Data::Bytes(b) => {
                        bytes += b.len() as u64;
                        self.disk.write(off, b.clone()).await?;
                    }
                    Data::Zero(len) => self.disk.zero(off, *len, true).await?,
                }
            }
        }
        self.disk.flush().await?;
        Ok(bytes)
    }

    /// Failover: no more stream; uncommitted epochs are dropped; a commit in progress finishes
    /// first (it holds the lock). Refused if the image is mid-resync, or a commit failed,
    /// unless `force`.
    ///
    /// All or nothing: `bind` (the NBD listener the activated backup will serve on) runs after
    /// the checks and before anything changes; if it fails (the address is busy) the backup
    /// stays as it was, still receiving, and `activate` can be retried. Returns the bytes of
    /// uncommitted epochs dropped, and what `bind` made.
    pub async fn activate<T>(
        &self,
        force: bool,
        fence: Option<u64>,
        bind: impl FnOnce() -> Result<T, ControlError>,
    ) -> Result<(u64, T, LineageId), ControlError> {
        let mut st = self.state.lock().await;
        if st.activated {
            return Err(state_err("already activated"));
        }
        if !st.consistent && !force {
            let why = match &st.failure {
                Some(f) => format!("the commit of epoch {} failed ({})", f.epoch, f.error),
                None => "initial sync or resync not committed".into(),
            };
            return Err(state_err(format!(
                "the backup image is not consistent ({why}); 'activate force' serves it anyway"
            )));
        }
        let made = bind()?;
        let lineage = self.activation_lineage(&st, fence).await?;
        st.activated = true;
        st.generation += 1;
        if let Some(t) = st.conn_task.take() {
            t.abort();
        }
        st.to_primary = None;
        st.connected = false;
        let dropped = st.buf.discard_uncommitted() as u64;
        self.progress.notify_waiters();
        Ok((dropped, made, lineage))
    }

    pub async fn status(&self) -> BackupStatus {
        let st = self.state.lock().await;
        BackupStatus {
            role: if st.activated {
                "activated-backup"
            } else {
                "backup"
            },
            connected: st.connected,
            activated: st.activated,
            consistent: st.consistent,
            open_epoch: st.buf.open(),
            complete_through: st.buf.complete_through(),
            committed_through: st.committed_through,
            sync_done_epoch: st.sync_done,
            failed_commit: st.failure.as_ref().map(|f| f.epoch),
            commit_failures: st.commit_failures,
            buffered_bytes: st.buf.mem(),
            max_buffer: self.cfg.max_buffer,
            pending_epochs: st.buf.pending().collect(),
            received_bytes: st.received_bytes,
            applied_bytes: st.applied_bytes,
            resync_bytes: st.resync_bytes,
            protocol_errors: st.protocol_errors,
            last_error: st.last_error.clone(),
            auth_failures: st.auth_failures,
            last_auth_error: st.last_auth_error.clone(),
            auth: self.cfg.security.describe(),
            engine: self.disk.engine_name(),
            size: self.disk.size(),
            lineage: self.lineage_status(&st),
        }
    }
}
