//! The backup daemon's loop: receives checkpoints, drives [`BackupCore`], keeps the committed
//! RAM image and device state, and on failover restores the VM in a new QEMU.

use crate::compress::{self, Encoded};
use crate::core::backup::{Action, BackupCore, Input};
use crate::peers::Peer;
use crate::qmp::Qmp;
use crate::wire::Msg;
use anyhow::{bail, Context, Result};
use remus_proto::Epoch;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct BackupOpts {
    pub listen: String,
    pub ram_image: PathBuf,
    pub state_dir: PathBuf,
    /// Failure detection, grace and claim retries (peer_timeout is the detector's floor).
    pub core: crate::core::backup::Config,
    /// Who decides whether this side may restore the VM.
    pub witness: crate::witness::WitnessConfig,
    pub diskrep: Option<PathBuf>,
    /// The QEMU command line to restore with (without RAM backend, QMP or -incoming).
    pub qemu: Vec<String>,
    /// Control socket (`hello`, `status [json]`, `failover`).
    pub control: Option<PathBuf>,
    /// The checkpoint stream's key (or the explicit opt-out).
    pub security: remus_proto::auth::Security,
}

#[derive(Default)]
struct Staging {
    pages: Vec<(u64, Encoded)>,
    /// The checkpoint compressed pages are XOR deltas against.
    base: Option<Epoch>,
    device: Vec<u8>,
    /// A compressed device state: its base checkpoint and the delta.
    device_z: Option<(Epoch, Vec<u8>)>,
}

/// Decodes a compressed device state against the restore point's (which must be `base`).
fn decode_device(s: &mut Staging, committed: &Path, promoted: Option<Epoch>) -> Result<(), String> {
    let Some((base, z)) = s.device_z.take() else {
        return Ok(());
    };
    if Some(base) != promoted {
        return Err(format!(
            "device state compressed against checkpoint {base}, but the restore point is {promoted:?}"
        ));
    }
    let old =
        std::fs::read(committed).map_err(|e| format!("the restore point's device state: {e}"))?;
    s.device = compress::decode_device(&z, &old).map_err(|e| format!("device state: {e}"))?;
    Ok(())
}

/// Decodes every compressed page against the restore image (which must hold `base`). Nothing
/// is written: a bad page voids the whole checkpoint.
fn decode_all(
    s: &mut Staging,
    image: &std::fs::File,
    promoted: Option<Epoch>,
) -> Result<(), String> {
    let Some(base) = s.base else {
        return Ok(());
    };
    if Some(base) != promoted {
        return Err(format!(
            "compressed against checkpoint {base}, but the restore point is {promoted:?}"
        ));
    }
    let mut old = vec![0u8; crate::ram::PAGE];
    for (idx, enc) in s.pages.iter_mut() {
        if let Encoded::Xor(_) = enc {
            image
                .read_exact_at(&mut old, *idx * crate::ram::PAGE as u64)
                .map_err(|e| e.to_string())?;
            let page = compress::decode(enc, &old).map_err(|e| e.to_string())?;
            *enc = Encoded::Raw(page);
        }
    }
    Ok(())
}

enum Event {
    Msg(Msg),
    Broken(String),
    Claimed(crate::core::claim::Outcome),
}

/// A restored VM: its QEMU, and the control socket, which keeps answering `status`.
pub struct Restored {
    pub qemu: Child,
    pub control: Option<remus_proto::ctl_socket::ControlServer>,
}

/// How a backup run ended without an error.
pub enum Outcome {
    /// Failover: the VM runs here now.
    Restored(Restored),
    /// The primary ended protection on purpose; nothing was restored.
    StoodDown,
    /// The primary holds the generation: nothing was restored.
    Fenced(String),
}

/// Runs until the VM has been restored, the primary ends protection, or nothing can be
/// restored.
pub fn run(opts: BackupOpts) -> Result<Outcome> {
    std::fs::create_dir_all(&opts.state_dir)?;
    let status: crate::status::SharedStatus =
        std::sync::Arc::new(std::sync::Mutex::new(crate::status::Status::new("backup")));
    {
        let mut st = crate::status::lock(&status);
        st.phase = "waiting".into();
        st.auth = opts.security.describe().into();
    }
    let (fail_tx, fail_rx) = mpsc::channel::<()>();
    let _server = match &opts.control {
        Some(p) => Some(crate::status::serve(
            p,
            status.clone(),
            Some(std::sync::Mutex::new(fail_tx)),
        )?),
        None => None,
    };
    let listener =
        TcpListener::bind(&opts.listen).with_context(|| format!("listen on {}", opts.listen))?;
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
    if hello.version != crate::wire::VERSION
        || hello.driver != "qemu"
        || hello.page_size as usize != crate::ram::PAGE
        || hello.ram_size == 0
        || !hello.ram_size.is_multiple_of(crate::ram::PAGE as u64)
    {
        bail!(
            "incompatible primary: protocol {} (ours {}), driver {:?} (ours \"qemu\"), page size {}, RAM {} bytes",
            hello.version,
            crate::wire::VERSION,
            hello.driver,
            hello.page_size,
            hello.ram_size
        );
    }
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
    let pages_total = hello.ram_size / crate::ram::PAGE as u64;
    // A new run starts from zeroes: the primary's first checkpoint carries only the pages that
    // are not zero, so whatever an earlier run (or a guest restored on this image) left here
    // would otherwise survive into the restore point.
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&opts.ram_image)?;
    image.set_len(hello.ram_size)?;
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
    let mut receiving: Option<(Epoch, Staging)> = None;
    let mut ready: BTreeMap<Epoch, Staging> = BTreeMap::new();
    let committed_dev = opts.state_dir.join("device-state.committed");
    let mut promoted: Option<Epoch> = None;
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
                    for (idx, page) in &s.pages {
                        let Encoded::Raw(page) = page else {
                            bail!("checkpoint {e} promoted with undecoded pages");
                        };
                        image.write_all_at(page, idx * crate::ram::PAGE as u64)?;
                    }
                    promoted = Some(e);
                    crate::status::lock(&status).checkpoint(
                        Duration::ZERO,
                        s.pages.len() as u64,
                        (s.pages.len() * crate::ram::PAGE + s.device.len()) as u64,
                    );
                    // The device state replaces the old one atomically.
                    let tmp = opts.state_dir.join("device-state.tmp");
                    std::fs::write(&tmp, &s.device)?;
                    std::fs::rename(&tmp, &committed_dev)?;
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
                    image.sync_data()?;
                    let qemu = restore(&opts, hello.ram_size, &committed_dev)?;
                    {
                        let mut st = crate::status::lock(&status);
                        st.phase = "failedover".into();
                        st.restored_unix_ms = Some(crate::status::unix_ms());
                        // The generation this side won (the loop ends here).
                        st.witness = Some(claims.status());
                    }
                    return Ok(Outcome::Restored(Restored {
                        qemu,
                        control: _server,
                    }));
                }
                Action::ReportDiskFailure(e, why) => {
                    tracing::error!(
                        epoch = %e,
                        "the disk commit failed ({why}): nothing more is acknowledged, and this \
                         backup will not restore the VM; telling the primary"
                    );
                    crate::status::lock(&status).reason = core.disk_failure().unwrap_or_default();
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
                    receiving = Some((e, Staging::default()));
                    core.handle(now, Input::Begin(e))
                }
                Msg::Pages(e, pages) => match receiving.as_mut() {
                    // A page index beyond the guest's RAM is never written anywhere.
                    Some(_) if pages.iter().any(|(i, _)| *i >= pages_total) => core.handle(
                        now,
                        Input::Corrupt("page index beyond the guest's RAM".into()),
                    ),
                    Some((r, s)) if *r == e => {
                        s.pages
                            .extend(pages.into_iter().map(|(i, p)| (i, Encoded::Raw(p))));
                        core.handle(now, Input::Heard)
                    }
                    _ => core.handle(now, Input::Corrupt("pages of no open checkpoint".into())),
                },
                Msg::PagesZ { epoch, base, pages } => match receiving.as_mut() {
                    Some(_) if pages.iter().any(|(i, _)| *i >= pages_total) => core.handle(
                        now,
                        Input::Corrupt("page index beyond the guest's RAM".into()),
                    ),
                    Some((r, s)) if *r == epoch && s.base.is_none_or(|b| b == base) => {
                        s.base = Some(base);
                        s.pages.extend(pages);
                        core.handle(now, Input::Heard)
                    }
                    _ => core.handle(now, Input::Corrupt("compressed pages out of place".into())),
                },
                Msg::Device(e, d) => match receiving.as_mut() {
                    Some((r, s)) if *r == e => {
                        s.device = d;
                        core.handle(now, Input::Heard)
                    }
                    _ => core.handle(
                        now,
                        Input::Corrupt("device state of no open checkpoint".into()),
                    ),
                },
                Msg::DeviceZ { epoch, base, z } => match receiving.as_mut() {
                    Some((r, s)) if *r == epoch => {
                        s.device_z = Some((base, z));
                        core.handle(now, Input::Heard)
                    }
                    _ => core.handle(
                        now,
                        Input::Corrupt("device state of no open checkpoint".into()),
                    ),
                },
                Msg::End {
                    epoch,
                    pages,
                    device_bytes,
                } => match receiving.take() {
                    Some((r, mut s)) if r == epoch && s.pages.len() as u64 == pages => {
                        let decoded = decode_device(&mut s, &committed_dev, promoted)
                            .and_then(|()| {
                                if s.device.len() as u64 == device_bytes {
                                    Ok(())
                                } else {
                                    Err(format!(
                                        "{} bytes of device state, END says {device_bytes}",
                                        s.device.len()
                                    ))
                                }
                            })
                            .and_then(|()| decode_all(&mut s, &image, promoted));
                        match decoded {
                            Ok(()) => {
                                ready.insert(epoch, s);
                                core.handle(now, Input::End(epoch))
                            }
                            Err(why) => core
                                .handle(now, Input::Corrupt(format!("checkpoint {epoch}: {why}"))),
                        }
                    }
                    _ => core.handle(
                        now,
                        Input::Corrupt(format!("checkpoint {epoch} incomplete")),
                    ),
                },
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

/// Starts QEMU on the committed RAM image and loads the committed device state into it.
fn restore(opts: &BackupOpts, ram_size: u64, device: &Path) -> Result<Child> {
    let t = Instant::now();
    let qmp_path = opts.state_dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_path);
    let (prog, args) = opts
        .qemu
        .split_first()
        .context("no QEMU command given for restoring")?;
    // A migration stream (the primary's default, carrying every RAM block) has a
    // configuration section; xen-save-devices-state's file has none.
    let mut head = [0u8; 9];
    let full_stream = std::fs::File::open(device)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
        .is_ok()
        && crate::device_state::has_configuration(&head);
    let mut cmd = Command::new(prog);
    cmd.args(args).args([
        "-object",
        &format!(
            "memory-backend-file,id=remus-ram,size={ram_size},mem-path={},share=on",
            opts.ram_image.display()
        ),
        "-machine",
        "memory-backend=remus-ram",
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp_path.display()),
        "-incoming",
        "defer",
    ]);
    if !full_stream {
        cmd.args(["-global", "migration.send-configuration=off"]);
    }
    let mut child = cmd.spawn().with_context(|| format!("start {prog}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut qmp = loop {
        match Qmp::connect(&qmp_path) {
            Ok(q) => break q,
            Err(e) => {
                if let Ok(Some(st)) = child.try_wait() {
                    bail!("restoring QEMU exited: {st}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("restoring QEMU's QMP never came up: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )?;
    qmp.execute(
        "migrate-incoming",
        Some(json!({"uri": format!("exec:cat {}", device.display())})),
    )?;
    loop {
        let st = qmp.execute("query-status", None)?;
        if st.get("running").and_then(|v| v.as_bool()) == Some(true) {
            break;
        }
        // The primary's migration stream was taken with its guest paused, and QEMU keeps the
        // source's run state: start it once the stream is loaded.
        if matches!(
            st.get("status").and_then(|v| v.as_str()),
            Some("paused" | "prelaunch" | "postmigrate")
        ) {
            qmp.execute("cont", None)?;
            continue;
        }
        if Instant::now() > deadline {
            bail!("restored VM did not start running: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!(
        activation_ms = t.elapsed().as_millis() as u64,
        "VM restored and running"
    );
    Ok(child)
}
