//! The backup daemon's loop, for any hypervisor: receives checkpoints, drives
//! [`BackupCore`], stages each checkpoint whole, and hands committed ones to a [`BackupHv`]; on
//! failover the hypervisor runs the VM from the last of them.

use crate::core::backup::{Action, BackupCore, Input};
use crate::hv::BackupHv;
use crate::peers::Peer;
use crate::wire::{Hello, Msg};
use anyhow::{bail, Context, Result};
use remus_proto::Epoch;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct BackupOpts {
    pub listen: String,
    /// Created at the start (the hypervisor keeps its restore point there).
    pub state_dir: Option<PathBuf>,
    /// Failure detection, grace and claim retries (peer_timeout is the detector's floor).
    pub core: crate::core::backup::Config,
    /// Who decides whether this side may restore the VM.
    pub witness: crate::witness::WitnessConfig,
    pub diskrep: Option<PathBuf>,
    /// Control socket (`hello`, `status [json]`, `failover`).
    pub control: Option<PathBuf>,
    /// The checkpoint stream's key (or the explicit opt-out).
    pub security: remus_proto::auth::Security,
}

enum Event {
    Msg(Msg),
    Broken(String),
    Claimed(crate::core::claim::Outcome),
}

/// A restored VM: what runs it (QEMU's process, a Xen domain), and the control socket, which keeps answering `status`.
pub struct Restored<R> {
    pub vm: R,
    pub control: Option<remus_proto::ctl_socket::ControlServer>,
}

/// How a backup run ended without an error.
pub enum Outcome<R> {
    /// Failover: the VM runs here now.
    Restored(Restored<R>),
    /// The primary ended protection on purpose; nothing was restored.
    StoodDown,
    /// The primary holds the generation: nothing was restored.
    Fenced(String),
}

/// Runs until the VM has been restored, the primary ends protection, or nothing can be
/// restored. `open` checks the primary's HELLO and sets up the hypervisor for its stream.
pub fn run<H: BackupHv>(
    opts: BackupOpts,
    open: impl FnOnce(&Hello) -> Result<H>,
) -> Result<Outcome<H::Running>> {
    if let Some(d) = &opts.state_dir {
        std::fs::create_dir_all(d)?;
    }
    let status: crate::status::SharedStatus =
        std::sync::Arc::new(std::sync::Mutex::new(crate::status::Status::new("backup")));
    {
        let mut st = crate::status::lock(&status);
        st.phase = "waiting".into();
        st.auth = opts.security.describe().into();
    }
    // Listening before the control socket answers: whoever sees the control socket (a
    // test, `remus receive`) may connect at once.
    let listener =
        TcpListener::bind(&opts.listen).with_context(|| format!("listen on {}", opts.listen))?;
    let (fail_tx, fail_rx) = mpsc::channel::<()>();
    let _server = match &opts.control {
        Some(p) => Some(crate::status::serve(
            p,
            status.clone(),
            Some(std::sync::Mutex::new(fail_tx)),
        )?),
        None => None,
    };
    tracing::info!(listen = opts.listen, "waiting for the primary");
    // Only a primary that proves the key is taken; squatters, garbage and wrong keys are
    // refused on their own threads and delay nobody.
    let link = crate::link::accept(
        listener,
        &opts.security,
        crate::link::handshake_timeout(opts.core.peer_timeout),
        {
            let status = status.clone();
            std::sync::Arc::new(move |why: String| {
                let mut st = crate::status::lock(&status);
                st.auth_refused += 1;
                st.last_auth_error = why;
            })
        },
    )?;
    let (sock, peer) = (link.sock, link.peer);
    // Acks, heartbeats and the takeover notice are tiny: a write that makes no progress for
    // the peer timeout means the primary stopped reading, and must not block a failover.
    sock.set_write_timeout(Some(opts.core.peer_timeout.max(Duration::from_millis(100))))?;
    tracing::info!(%peer, auth = opts.security.describe(), "primary connected");
    let mut rsock = link.reader;
    let hello = match Msg::read_from(&mut rsock)? {
        Some(Msg::Hello(h)) => h,
        other => bail!("expected HELLO, got {other:?}"),
    };
    let mut hv = open(&hello)?;
    // Both sides fence through the same witness, or neither does: a backup that restores
    // without asking would defeat a primary that asks, and the reverse.
    let known = match (hello.generation, opts.witness.is_none()) {
        (Some(g), false) => g,
        (None, true) => remus_proto::generation::GenerationRef {
            number: 0,
            revision: 0,
        },
        (None, false) => bail!(
            "the primary runs without a witness but this backup has one: configure the same witness on both (or witness = \"none\" on both)"
        ),
        (Some(_), true) => bail!(
            "the primary fences through a witness but this backup has none: configure the same witness on both"
        ),
    };
    if hello.vm.is_empty()
        || !hello
            .vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("the primary's VM name {:?} is not a valid name", hello.vm);
    }
    let mut diskrep = Peer::connect("diskrep", opts.diskrep.as_deref())?;
    let (tx, rx) = mpsc::channel::<Event>();
    let claims = {
        let tx = tx.clone();
        let w = opts.witness.open(&hello.vm, "backup")?;
        crate::witness::Worker::spawn(w, Duration::from_secs(1), move |o| {
            let _ = tx.send(Event::Claimed(o));
        })?
    };
    std::thread::Builder::new()
        .name("primary-reader".into())
        .spawn(move || loop {
            match Msg::read_from(&mut rsock) {
                Ok(Some(m)) => {
                    if tx.send(Event::Msg(m)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Event::Broken("primary closed the stream".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Event::Broken(e.to_string()));
                    return;
                }
            }
        })?;
    let out: crate::heartbeat::SharedWriter =
        std::sync::Arc::new(std::sync::Mutex::new(link.writer));
    let _heartbeat = crate::heartbeat::Heartbeat::start(out.clone(), opts.core.peer_timeout / 4)?;
    let mut core = BackupCore::new(opts.core, Instant::now());
    let mut receiving: Option<(Epoch, H::Staging)> = None;
    let mut ready: BTreeMap<Epoch, H::Staging> = BTreeMap::new();
    let mut actions = core.handle(Instant::now(), Input::Heard);
    loop {
        let mut more = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::DiscardPartial(e) => {
                    tracing::warn!(epoch = %e, "discarding a partial checkpoint");
                    receiving = None;
                }
                Action::CommitDisk(e) => {
                    let input = match diskrep.request(&format!("commit {e}")) {
                        Ok(_) => Input::DiskCommitted(e),
                        Err(err) => Input::DiskCommitFailed(e, err.to_string()),
                    };
                    more.extend(core.handle(Instant::now(), input));
                }
                Action::Promote(e) => {
                    let Some(s) = ready.remove(&e) else {
                        bail!("promote of checkpoint {e}, which is not staged");
                    };
                    ready.retain(|k, _| *k > e);
                    let (pages, bytes) = hv.apply(e, s)?;
                    crate::status::lock(&status).checkpoint(Duration::ZERO, pages, bytes);
                }
                Action::Ack(e) => {
                    let _ = crate::heartbeat::send(&out, &Msg::Ack(e));
                }
                Action::Activate(e) => {
                    crate::status::lock(&status).failover_decided_unix_ms =
                        Some(crate::status::unix_ms());
                    tracing::warn!(epoch = %e, "failing over: restoring the VM from checkpoint {e}");
                    // If the primary is alive after all (starved, partitioned one way), it
                    // must stop its copy: say so first. Best effort, bounded by the timeout.
                    if let Err(err) = crate::heartbeat::send(&out, &Msg::TakingOver(e)) {
                        tracing::info!("takeover notice not delivered: {err}");
                    }
                    // The disk's new lineage records the generation won at the witness.
                    diskrep.request(&match claims.status().generation {
                        Some(n) => format!("activate generation={n}"),
                        None => "activate".to_string(),
                    })?;
                    let vm = hv.activate(e)?;
                    {
                        let mut st = crate::status::lock(&status);
                        st.phase = "failedover".into();
                        st.restored_unix_ms = Some(crate::status::unix_ms());
                        // The generation this side won (the loop ends here).
                        st.witness = Some(claims.status());
                    }
                    return Ok(Outcome::Restored(Restored {
                        vm,
                        control: _server,
                    }));
                }
                Action::ReportDiskFailure(e, why) => {
                    let reason = core.disk_failure().unwrap_or_default();
                    tracing::error!(
                        epoch = %e,
                        "{reason}: nothing more is acknowledged, and this backup will not \
                         restore the VM; telling the primary"
                    );
                    crate::status::lock(&status).reason = reason;
                    if let Err(err) = crate::heartbeat::send(&out, &Msg::DiskFailed(e, why)) {
                        tracing::warn!("could not tell the primary: {err}");
                    }
                }
                Action::CannotActivate(why) => bail!("cannot fail over: {why}"),
                Action::Claim => {
                    tracing::warn!("the primary is suspect: claiming the generation");
                    claims.claim(known, core.committed().map(|e| e.0));
                }
                Action::Lost(why) => {
                    {
                        let mut st = crate::status::lock(&status);
                        st.phase = "fenced".into();
                        st.reason = why.clone();
                        st.witness = Some(claims.status());
                    }
                    tracing::warn!("{why}: the primary runs the VM; this backup restores nothing");
                    return Ok(Outcome::Fenced(why));
                }
                Action::StandDown => {
                    crate::status::lock(&status).phase = "stopped".into();
                    tracing::info!("the primary ended protection; standing down without failover");
                    return Ok(Outcome::StoodDown);
                }
            }
        }
        actions = more;
        {
            let mut st = crate::status::lock(&status);
            st.phase = format!("{:?}", core.phase()).to_lowercase();
            st.committed_through = core.committed();
            st.witness = Some(claims.status());
            st.detection_timeout_ms = Some(core.detection_timeout().as_millis() as u64);
            st.max_heartbeat_gap_ms = Some(core.max_heartbeat_gap().as_millis() as u64);
        }
        if fail_rx.try_recv().is_ok() {
            tracing::warn!("failover requested on the control socket");
            actions.extend(core.handle(Instant::now(), Input::Failover));
        }
        if !actions.is_empty() {
            continue;
        }
        let now = Instant::now();
        actions = match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(Event::Msg(m)) => match m {
                Msg::Begin(e) => {
                    receiving = Some((e, H::Staging::default()));
                    core.handle(now, Input::Begin(e))
                }
                Msg::End {
                    epoch,
                    pages,
                    device_bytes,
                } => match receiving.take() {
                    Some((r, mut s)) if r == epoch => {
                        match hv.finish(epoch, &mut s, pages, device_bytes) {
                            Ok(()) => {
                                ready.insert(epoch, s);
                                core.handle(now, Input::End(epoch))
                            }
                            Err(why) => core.handle(now, Input::Corrupt(why)),
                        }
                    }
                    _ => core.handle(
                        now,
                        Input::Corrupt(format!("checkpoint {epoch} incomplete")),
                    ),
                },
                m @ (Msg::Pages(..)
                | Msg::PagesZ { .. }
                | Msg::Device(..)
                | Msg::DeviceZ { .. }
                | Msg::XenStream(..)) => {
                    match hv.stage(receiving.as_mut().map(|(e, s)| (*e, s)), m) {
                        Ok(()) => core.handle(now, Input::Heard),
                        Err(why) => core.handle(now, Input::Corrupt(why)),
                    }
                }
                Msg::Heartbeat => core.handle(now, Input::Heartbeat),
                Msg::Hello(_) | Msg::Ack(_) => core.handle(now, Input::Heard),
                Msg::Stop => core.handle(now, Input::PrimaryStopped),
                // Only a backup says these; from a primary they are noise, but a sign of life.
                Msg::TakingOver(_) | Msg::DiskFailed(..) => core.handle(now, Input::Heard),
            },
            Ok(Event::Claimed(o)) => core.handle(now, Input::Claimed(o)),
            Ok(Event::Broken(why)) => {
                tracing::warn!("primary stream ended: {why}");
                core.poll(now)
            }
            Err(_) => core.poll(now),
        };
    }
}
