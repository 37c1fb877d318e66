//! `remus receive`: the backup host's side. Starts diskrep backup (buffers the primary's writes
//! per epoch, applies an epoch on commit), netbuf in pass-through between the restored guest's
//! TAP and the uplink, and checkpointd backup (stages checkpoints, detects the primary's
//! failure, restores the guest on this host), then watches them.
//!
//! netbuf runs from the start, unprotected (every frame passes), so that the guest a failover
//! restores here is already behind it: `remus protect --attach` can protect it again against
//! another host without touching the network (see `attach`).
//!
//! Endings: the primary ends protection on purpose (checkpointd exits 0 without restoring:
//! exit 0); the primary won the generation at the witness (nothing restored: exit 9); failover (the VM then runs here under checkpointd; when the guest ends, remus
//! ends with its QEMU's exit code); a daemon dies (exit 1); SIGINT/SIGTERM (exit 0).

use crate::config::{Config, Role};
use crate::metrics;
use crate::notify::Notifier;
use crate::preflight::{self, Problem};
use crate::protect::say;
use crate::status::ask_json;
use crate::supervise::{describe, Event, Supervisor};
use remus_proto::exit;
use std::time::{Duration, Instant};

pub fn run(cfg: &Config) -> i32 {
    match receive(cfg) {
        Ok(code) => code,
        Err(p) => {
            eprintln!("remus receive: {}", p.message);
            p.code
        }
    }
}

fn receive(cfg: &Config) -> Result<i32, Problem> {
    cfg.validate(Role::Backup)
        .map_err(|e| Problem::new(exit::USAGE, e.0))?;
    preflight::require_root("the backup's daemons")?;
    let diskrep = preflight::find_daemon("diskrep")?;
    let netbuf = preflight::find_daemon("netbuf")?;
    let checkpointd = preflight::find_daemon("checkpointd")?;
    preflight::find_program(&cfg.guest.qemu[0], "qemu-system-x86")?;
    preflight::interface_exists(&cfg.net.guest_if, "the restored guest's TAP")?;
    preflight::interface_exists(
        &cfg.net.uplink_if,
        "the uplink (netbuf passes the restored guest's output to it)",
    )?;
    if let Some(img) = &cfg.disk.image {
        preflight::file_exists(img, "disk image")?;
    }
    preflight::port_free(&cfg.checkpoint_addr(), "checkpointd's replication listener")?;
    preflight::port_free(&cfg.disk_addr(), "diskrep's replication listener")?;
    preflight::port_free(
        &cfg.disk.nbd.to_string(),
        "diskrep's NBD listener (after failover)",
    )?;
    let run_dir = cfg.run_dir();
    preflight::key_usable(cfg)?;
    let _pid = preflight::claim_run_dir(&run_dir)?;
    let _metrics = cfg
        .metrics
        .listen
        .map(|a| metrics::serve(a, metrics::Exporter::new(cfg, Role::Backup)))
        .transpose()?;
    let mut notify = Notifier::from_env();
    for s in ["diskrep", "netbuf", "checkpointd"] {
        let _ = std::fs::remove_file(cfg.socket(s));
    }

    let t0 = Instant::now();
    let mut sup = Supervisor::new(&run_dir)?;
    say(
        t0,
        &format!(
            "receiving VM '{}' (logs in {})",
            cfg.name,
            run_dir.display()
        ),
    );
    sup.spawn("diskrep", &diskrep, &cfg.diskrep_backup())?;
    sup.wait_control("diskrep", &cfg.socket("diskrep"))?;
    // Unprotected until a `remus protect --attach` here drives its epochs: nothing passes
    // before a failover (no guest on the TAP), everything after.
    sup.spawn("netbuf", &netbuf, &cfg.netbuf())?;
    sup.wait_control("netbuf", &cfg.socket("netbuf"))?;
    sup.spawn("checkpointd", &checkpointd, &cfg.checkpointd_backup())?;
    sup.wait_control("checkpointd", &cfg.socket("checkpointd"))?;
    say(
        t0,
        &format!(
            "waiting for the primary on {} (memory) and {} (disk); failover after {} ms of silence",
            cfg.checkpoint_addr(),
            cfg.disk_addr(),
            cfg.replication.peer_timeout_ms
        ),
    );
    notify.status(&format!(
        "waiting for the primary on {}",
        cfg.checkpoint_addr()
    ));
    let mut reported_commit = false;
    let mut failed_over = false;
    loop {
        match sup.poll() {
            None => {}
            Some(Event::Signal) => {
                notify.stopping("stopping");
                say(t0, "stopping");
                sup.stop_all(
                    &["checkpointd", "netbuf", "diskrep"],
                    Duration::from_secs(5),
                );
                return Ok(exit::OK);
            }
            Some(Event::Exited {
                name: "checkpointd",
                status,
                log_tail,
            }) => {
                notify.stopping("checkpointd ended");
                sup.stop_all(&["netbuf", "diskrep"], Duration::from_secs(5));
                if failed_over {
                    say(
                        t0,
                        &format!("the restored guest ended ({})", describe(&status)),
                    );
                    return Ok(status.code().unwrap_or(exit::FAILURE));
                }
                if status.success() {
                    say(
                        t0,
                        "the primary ended protection (a planned stop, or it gave up on this backup): nothing restored",
                    );
                    return Ok(exit::OK);
                }
                if status.code() == Some(exit::FENCED) {
                    say(
                        t0,
                        "FENCED: the primary holds the generation at the witness and runs the VM: nothing restored here",
                    );
                    return Ok(exit::FENCED);
                }
                eprintln!(
                    "remus receive: checkpointd exited ({}):\n{log_tail}",
                    describe(&status)
                );
                return Ok(exit::FAILURE);
            }
            Some(e) => {
                notify.stopping("a daemon ended");
                let p = sup.explain(e);
                eprintln!("remus receive: {}", p.message);
                sup.stop_all(
                    &["checkpointd", "netbuf", "diskrep"],
                    Duration::from_secs(5),
                );
                return Ok(exit::FAILURE);
            }
        }
        if !failed_over {
            if let Ok(c) = ask_json(&cfg.socket("checkpointd"), "status json") {
                let receiving = format!(
                    "RECEIVING: checkpoint {} committed; this host can take over",
                    c["committed_through"]
                );
                if !reported_commit && c["committed_through"].is_u64() {
                    reported_commit = true;
                    say(t0, &format!("RECEIVING: checkpoint {} committed (memory and disk); this host can take over", c["committed_through"]));
                    notify.ready(&receiving);
                } else if reported_commit && c["phase"] == "receiving" {
                    notify.status(&receiving);
                }
                if c["phase"] == "failedover" {
                    failed_over = true;
                    let (dec, res) = (
                        c["failover_decided_unix_ms"].as_u64(),
                        c["restored_unix_ms"].as_u64(),
                    );
                    notify.ready(&format!(
                        "FAILOVER: the guest runs here from checkpoint {}",
                        c["committed_through"]
                    ));
                    say(
                        t0,
                        &format!(
                            "FAILOVER: the guest runs here from checkpoint {} (restored in {} ms)",
                            c["committed_through"],
                            res.zip(dec).map(|(r, d)| r.saturating_sub(d)).unwrap_or(0)
                        ),
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
