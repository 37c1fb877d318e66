//! The primary daemon's loop, for any hypervisor: drives [`PrimaryCore`] with real time, a
//! [`PrimaryHv`], netbuf, diskrep, the witness and the connection to the backup. An epoch
//! turns over here, in [`checkpoint`].

use crate::core::primary::{Action, Config, Input, PrimaryCore};
use crate::hv::{PrimaryHv, Staged};
use crate::peers::Peer;
use crate::wire::{Hello, Msg, VERSION};
use anyhow::{Context, Result};
use remus_proto::Epoch;
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct PrimaryOpts {
    pub backup: String,
    pub vm: String,
    pub core: Config,
    pub netbuf: Option<PathBuf>,
    pub diskrep: Option<PathBuf>,
    /// One JSON line per checkpoint (epoch, pause, dirty pages, bytes, ship time).
    pub stats_log: Option<PathBuf>,
    /// Control socket (`hello`, `status [json]`).
    pub control: Option<PathBuf>,
    /// Who decides, when the backup is lost, whether this side may run on alone.
    pub witness: crate::witness::WitnessConfig,
    /// The checkpoint stream's key (or the explicit opt-out).
    pub security: remus_proto::auth::Security,
}

/// How a primary run ended without an error.
#[derive(Debug)]
pub enum Ended {
    /// SIGINT/SIGTERM: protection ended on purpose, the backup was told.
    Stopped,
    /// The backup runs the VM (it took over, or won the generation): this copy was stopped.
    Fenced(String),
}

pub fn run<H: PrimaryHv>(mut hv: H, opts: PrimaryOpts, stop: Arc<AtomicBool>) -> Result<Ended> {
    let mut netbuf = Peer::connect("netbuf", opts.netbuf.as_deref())?;
    let mut diskrep = Peer::connect("diskrep", opts.diskrep.as_deref())?;
    let mut cfg = opts.core;
    if let Some(d) = netbuf.max_depth()? {
        cfg.depth = cfg.depth.min(d);
    }
    hv.check_depth(cfg.depth)?;
    let first = crate::peers::first_epoch(&mut netbuf, &mut diskrep)?;
    // Protection starts a generation owned by this side; acting alone later needs the next.
    let mut witness = opts.witness.open(&opts.vm, "primary")?;
    let (generation, mut known) =
        crate::witness::start_generation(witness.as_mut(), Some(first.0), Duration::from_secs(10))?;
    tracing::info!(
        witness = witness.describe(),
        ?generation,
        "generation started"
    );
    let mut stats = match &opts.stats_log {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };

    // The backup proves the key (and we ours) before anything, the HELLO included, is sent.
    let link = crate::link::connect(
        &opts.backup,
        &opts.security,
        crate::link::handshake_timeout(cfg.peer_timeout),
    )
    .with_context(|| format!("connect to the backup at {}", opts.backup))?;
    let sock = link.sock;
    // A backup that stops reading (frozen, wedged) must not freeze us in a blocking write with
    // the guest's output held: a write with no progress at all for 4 peer timeouts (at least
    // 1 s) fails, which ends protection. A draining link makes progress on every write, however
    // slow; the margin is for a backup whose reader is briefly starved of CPU (at 1x the peer
    // timeout, a booting guest's big checkpoints on a loaded 2-core machine tripped it).
    sock.set_write_timeout(Some((cfg.peer_timeout * 4).max(Duration::from_secs(1))))?;
    let out: crate::heartbeat::SharedWriter =
        std::sync::Arc::new(std::sync::Mutex::new(link.writer));
    let guest = hv.guest();
    crate::heartbeat::send(
        &out,
        &Msg::Hello(Hello {
            version: VERSION,
            ram_size: guest.ram_size,
            page_size: crate::ram::PAGE as u32,
            vm: opts.vm.clone(),
            first_epoch: first.0,
            driver: guest.driver.into(),
            generation: (!opts.witness.is_none()).then_some(known),
        }),
    )?;
    let _heartbeat = crate::heartbeat::Heartbeat::start(out.clone(), cfg.heartbeat)?;

    let (tx, rx) = mpsc::channel::<Input>();
    let claims = {
        let tx = tx.clone();
        crate::witness::Worker::spawn(witness, Duration::from_secs(1), move |o| {
            let _ = tx.send(Input::Claimed(o));
        })?
    };
    if !opts.witness.is_none() {
        claims.started(&generation);
    }
    let mut rsock = link.reader;
    std::thread::Builder::new()
        .name("backup-reader".into())
        .spawn(move || loop {
            match Msg::read_from(&mut rsock) {
                Ok(Some(Msg::Ack(e))) => {
                    if tx.send(Input::Acked(e)).is_err() {
                        return;
                    }
                }
                Ok(Some(Msg::TakingOver(e))) => {
                    if tx.send(Input::BackupTookOver(e)).is_err() {
                        return;
                    }
                }
                Ok(Some(Msg::DiskFailed(e, why))) => {
                    if tx.send(Input::BackupFailed(e, why)).is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {
                    if tx.send(Input::Heard).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Input::ShipFailed("backup closed the connection".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Input::ShipFailed(format!("backup stream: {e}")));
                    return;
                }
            }
        })?;

    let status: crate::status::SharedStatus =
        Arc::new(std::sync::Mutex::new(crate::status::Status::new("primary")));
    {
        let mut st = crate::status::lock(&status);
        hv.describe(&mut st);
        st.auth = opts.security.describe().into();
    }
    let _server = match &opts.control {
        Some(p) => Some(crate::status::serve(p, status.clone(), None)?),
        None => None,
    };
    let mut shipped_at: std::collections::BTreeMap<Epoch, Instant> = Default::default();
    let mut core = PrimaryCore::new(cfg, Instant::now());
    let mut captured: Option<(H::Checkpoint, Duration)> = None;
    let mut actions = core.handle(Instant::now(), Input::Start { first });
    tracing::info!(interval = ?cfg.interval, depth = cfg.depth, "protection started");
    while !stop.load(Ordering::Relaxed) {
        let mut more = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::Checkpoint { close, open } => {
                    let (c, pause) = checkpoint(&mut hv, &mut netbuf, &mut diskrep, close, open)?;
                    while let Ok(input) = rx.try_recv() {
                        more.extend(core.handle(Instant::now(), input));
                    }
                    more.extend(core.handle(
                        Instant::now(),
                        Input::Captured {
                            epoch: c.epoch(),
                            pause,
                        },
                    ));
                    if hv.validates() {
                        crate::status::lock(&status).validated_checkpoints += 1;
                    }
                    captured = Some((c, pause));
                }
                Action::Ship(e) => {
                    let Some((c, pause)) = captured.take().filter(|(c, _)| c.epoch() == e) else {
                        continue;
                    };
                    let t = Instant::now();
                    let shipped = hv.ship(&out, &c);
                    match shipped {
                        Ok(sent) => {
                            let ship_time = t.elapsed();
                            if let Some(f) = stats.as_mut() {
                                let _ = writeln!(
                                    f,
                                    "{}",
                                    json!({"epoch": e, "unix_ms": crate::status::unix_ms(),
                                           "pause_us": pause.as_micros() as u64,
                                           "dirty_pages": c.pages(),
                                           "raw_bytes": c.raw_bytes(),
                                           "bytes": sent.wire_bytes,
                                           "compress_us": sent.compress.as_micros() as u64,
                                           "ship_us": ship_time.as_micros() as u64})
                                );
                            }
                            while let Ok(input) = rx.try_recv() {
                                more.extend(core.handle(Instant::now(), input));
                            }
                            shipped_at.insert(e, Instant::now());
                            crate::status::lock(&status).checkpoint(
                                pause,
                                c.pages() as u64,
                                sent.wire_bytes as u64,
                            );
                            more.extend(core.handle(Instant::now(), Input::Shipped(e)));
                            hv.shipped(c);
                        }
                        Err(err) => more.extend(
                            core.handle(Instant::now(), Input::ShipFailed(write_error(&err))),
                        ),
                    }
                }
                Action::Release(e) => {
                    netbuf.request(&format!("release {e}"))?;
                    let acked = shipped_at.range(..=e).next_back().map(|(_, t)| t.elapsed());
                    shipped_at.retain(|k, _| *k > e);
                    if let (Some(f), Some(d)) = (stats.as_mut(), acked) {
                        let _ = writeln!(
                            f,
                            "{}",
                            json!({"acked": e, "ack_us": d.as_micros() as u64, "unix_ms": crate::status::unix_ms()})
                        );
                    }
                }
                Action::GoUnprotected(reason) => {
                    tracing::warn!("protection lost: {reason}; the VM continues unprotected");
                    // Tell the backup (if it is alive but slow or frozen) that its
                    // checkpoints are stale: failing over from one later would contradict
                    // what the world sees from now on. The writer holds whole frames only (a
                    // failed write leaves its frame out and keeps what came before), so the
                    // stop follows a well-formed stream; it is sent from its own thread without
                    // a timeout, reaching a frozen backup as soon as it reads again.
                    // A backup that took over says so before it closes the connection, but
                    // our write may have failed first: read what is still in flight before
                    // letting any output go.
                    if let Some(e) = takeover_in_flight(&rx, Duration::from_millis(200)) {
                        more.extend(core.handle(Instant::now(), Input::BackupTookOver(e)));
                        continue;
                    }
                    tell_backup_to_stand_down(&sock, &out);
                    netbuf.request("release-all")?;
                }
                Action::Fence(why) => {
                    crate::status::lock(&status).witness = Some(claims.status());
                    return Ok(fence_this_copy(&mut hv, &mut netbuf, &status, why));
                }
                Action::Claim => claims.claim(known, core.released_through().map(|e| e.0)),
                Action::PauseGuest => {
                    tracing::warn!(
                        "netbuf is nearly full and the witness has not answered: pausing the guest"
                    );
                    hv.halt()?;
                }
                Action::ResumeGuest => {
                    hv.unhalt()?;
                }
                Action::Heartbeat => {
                    if crate::heartbeat::send(&out, &Msg::Heartbeat).is_err() {
                        more.extend(
                            core.handle(
                                Instant::now(),
                                Input::ShipFailed("heartbeat failed".into()),
                            ),
                        );
                    }
                }
            }
        }
        {
            let mut st = crate::status::lock(&status);
            st.phase = format!("{:?}", core.phase()).to_lowercase();
            st.reason = core.reason().to_string();
            st.open_epoch = Some(core.open_epoch());
            st.committed_through = core.released_through();
            st.unacked = core.unacked();
            st.witness = Some(claims.status());
        }
        // Output held with the claim unresolved: the guest must not overflow netbuf.
        if core.phase() == crate::core::primary::Phase::Claiming {
            if let Some(t) = netbuf.request("stats json")? {
                if serde_json::from_str(&t).is_ok_and(|v| crate::witness::netbuf_nearly_full(&v)) {
                    more.extend(core.handle(Instant::now(), Input::OutputFull));
                }
            }
        }
        if let crate::core::claim::State::Won(g) = core.claim().state() {
            known = *g;
        }
        actions = more;
        // Whatever the backup said while we were busy (shipping can take longer than the
        // peer timeout) counts before any deadline is judged.
        while let Ok(input) = rx.try_recv() {
            actions.extend(core.handle(Instant::now(), input));
        }
        if !actions.is_empty() {
            continue;
        }
        let wait = core
            .next_deadline()
            .saturating_duration_since(Instant::now());
        actions = match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(input) => core.handle(Instant::now(), input),
            Err(_) => core.poll(Instant::now()),
        };
    }
    // SIGINT/SIGTERM is a planned end of protection: tell the backup, so that the silence
    // that follows is not taken for a crash (a failover now would start a second VM).
    if let Err(e) = crate::heartbeat::send(&out, &Msg::Stop) {
        tracing::warn!(
            "protection ended; could not tell the backup ({e}): the held output stays held, \
             since the backup may still fail over to an earlier checkpoint"
        );
        return Ok(Ended::Stopped);
    }
    // A backup that decided to take over before reading the stop (an operator's switch-over
    // at the same moment) says so before it restores: it runs the VM from a checkpoint this
    // side may have outrun, so this copy must end and its held output must never leave.
    if let Some(e) = takeover_in_flight(&rx, Duration::from_millis(200)) {
        let why = format!("the backup took over from checkpoint {e} as protection ended");
        return Ok(fence_this_copy(&mut hv, &mut netbuf, &status, why));
    }
    tracing::info!("protection ended; the backup was told not to fail over");
    // The backup will restore nothing now, so what the guest said may go: a guest that
    // outlives its protection (an attached one, or one another HA system runs) keeps its
    // network, unprotected, as after a protection loss.
    if let Err(e) = netbuf.request("release-all") {
        tracing::warn!("could not release the held output: {e}");
    }
    Ok(Ended::Stopped)
}

/// The backup runs the VM: stop this copy first (nothing more it computes may reach anyone),
/// then drop its held output, which belongs to epochs the backup does not have.
fn fence_this_copy<H: PrimaryHv>(
    hv: &mut H,
    netbuf: &mut Peer,
    status: &crate::status::SharedStatus,
    why: String,
) -> Ended {
    let paused = hv.halt();
    let discarded = netbuf.request("discard");
    {
        let mut st = crate::status::lock(status);
        st.phase = "fenced".into();
        st.reason = why.clone();
    }
    tracing::error!(
        "{why}; this copy of the VM is stopped (pause: {}, held output discarded: {})",
        paused.is_ok(),
        discarded.is_ok()
    );
    Ended::Fenced(format!(
        "{why}: this copy of the VM was stopped to prevent a split brain"
    ))
}

/// Waits up to `wait` for a takeover notice the backup reader may still deliver; stops early
/// when the reader reports the end of the stream (nothing can follow it).
fn takeover_in_flight(rx: &mpsc::Receiver<Input>, wait: Duration) -> Option<Epoch> {
    let deadline = Instant::now() + wait;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Input::BackupTookOver(e)) => return Some(e),
            Ok(Input::ShipFailed(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A write that timed out means the backup stopped reading; say so rather than "EAGAIN".
fn write_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "the backup stopped reading (no progress within the peer timeout)".into()
        }
        _ => e.to_string(),
    }
}

fn tell_backup_to_stand_down(sock: &TcpStream, out: &crate::heartbeat::SharedWriter) {
    let (sock, out) = (sock.try_clone(), out.clone());
    let spawned = std::thread::Builder::new()
        .name("stand-down".into())
        .spawn(move || {
            if let Ok(s) = sock {
                let _ = s.set_write_timeout(None);
            }
            match crate::heartbeat::send(&out, &Msg::Stop) {
                Ok(()) => tracing::warn!("told the backup to stand down"),
                Err(e) => tracing::warn!("could not tell the backup to stand down: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("could not tell the backup to stand down: {e}");
    }
}

/// The epoch turns over: pause, mark the boundary in netbuf and diskrep, capture into staging,
/// resume. The pause covers capture only (shipping comes after); its length is returned.
fn checkpoint<H: PrimaryHv>(
    hv: &mut H,
    netbuf: &mut Peer,
    diskrep: &mut Peer,
    close: Epoch,
    open: Epoch,
) -> Result<(H::Checkpoint, Duration)> {
    let t = hv.pause()?;
    // From here until the resume the guest sends and writes nothing: frames and writes from
    // now on belong to `open`.
    netbuf.request(&format!("barrier {open}"))?;
    diskrep.request(&format!("barrier {open}"))?;
    let c = hv.capture(close)?;
    hv.resume()?;
    Ok((c, t.elapsed()))
}
