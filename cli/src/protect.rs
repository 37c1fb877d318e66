//! `remus protect`: the primary host's side. Starts diskrep (the guest's disk, replicated),
//! netbuf (the guest's output, held per epoch), the guest's QEMU and checkpointd, shows the
//! initial sync, then watches them until a signal or a death.
//!
//! A daemon that dies is fatal here, by design: once checkpointd stops, the backup will take
//! over from its last checkpoint, so this copy of the VM must stop too (two running copies
//! would diverge). Output the dead set-up still holds belongs to uncommitted epochs and is
//! discarded with netbuf, never released.

use crate::config::{Config, Role};
use crate::metrics;
use crate::notify::Notifier;
use crate::preflight::{self, Problem};
use crate::progress::SyncView;
use crate::status::{ask_json, serving};
use crate::supervise::{Event, Supervisor};
use remus_proto::exit;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The stop order: checkpointd first (it tells the backup protection ends, so the backup does
/// not fail over), then the guest, then what served it.
const STOP_ORDER: &[&str] = &["checkpointd", "qemu", "netbuf", "diskrep"];

pub fn run(cfg: &Config) -> i32 {
    match protect(cfg) {
        Ok(code) => code,
        Err(p) => {
            eprintln!("remus protect: {}", p.message);
            p.code
        }
    }
}

fn protect(cfg: &Config) -> Result<i32, Problem> {
    cfg.validate(Role::Primary)
        .map_err(|e| Problem::new(exit::USAGE, e.0))?;
    preflight::require_root("the primary's daemons")?;
    let diskrep = preflight::find_daemon("diskrep")?;
    let netbuf = preflight::find_daemon("netbuf")?;
    let checkpointd = preflight::find_daemon("checkpointd")?;
    let qemu = preflight::find_program(&cfg.guest.qemu[0], "qemu-system-x86")?;
    preflight::interface_exists(&cfg.net.guest_if, "the guest's TAP")?;
    preflight::interface_exists(&cfg.net.uplink_if, "the uplink")?;
    if let Some(img) = &cfg.disk.image {
        preflight::file_exists(img, "disk image")?;
    }
    preflight::port_free(&cfg.disk.nbd.to_string(), "diskrep's NBD listener")?;
    preflight::resolve(&cfg.checkpoint_addr(), "the backup")?;
    let run_dir = cfg.run_dir();
    preflight::key_usable(cfg)?;
    let _pid = preflight::claim_run_dir(&run_dir)?;
    let _metrics = cfg
        .metrics
        .listen
        .map(|a| metrics::serve(a, metrics::Exporter::new(cfg, Role::Primary)))
        .transpose()?;
    let mut notify = Notifier::from_env();
    for s in ["netbuf", "diskrep", "checkpointd"] {
        let _ = std::fs::remove_file(cfg.socket(s));
    }
    let _ = std::fs::remove_file(cfg.qmp_socket());

    let t0 = Instant::now();
    let mut sup = Supervisor::new(&run_dir)?;
    say(
        t0,
        &format!(
            "protecting VM '{}' (logs in {})",
            cfg.name,
            run_dir.display()
        ),
    );
    if cfg.unfenced() {
        say(t0, "WARNING: no witness (witness = \"none\"): if the hosts lose each other but not the LAN (a network partition), both will run the VM: two copies with one address and diverging disks. Configure [witness] endpoints to fence.");
    }
    sup.spawn("diskrep", &diskrep, &cfg.diskrep_primary())?;
    sup.wait_control("diskrep", &cfg.socket("diskrep"))?;
    say(
        t0,
        &format!(
            "diskrep serves the disk on nbd://{}/{} and replicates to {}",
            cfg.disk.nbd,
            cfg.disk.export,
            cfg.disk_addr()
        ),
    );
    sup.spawn("netbuf", &netbuf, &cfg.netbuf())?;
    sup.wait_control("netbuf", &cfg.socket("netbuf"))?;
    say(
        t0,
        &format!(
            "netbuf holds {}'s output towards {}",
            cfg.net.guest_if, cfg.net.uplink_if
        ),
    );
    let mut qemu_args = cfg.qemu_primary();
    qemu_args.remove(0);
    // The uffd dirty tracker needs a userfaultfd made inside QEMU: the preload shim makes one
    // (without it checkpointd injects one with ptrace, or picks another tracker).
    let shim = preflight::find_daemon(crate::config::UFFD_SHIM).ok();
    let preload = std::env::var("LD_PRELOAD").ok();
    let env = cfg.qemu_primary_env(shim.as_deref(), preload.as_deref());
    sup.spawn_with_env("qemu", &qemu, &qemu_args, &env)?;
    let qmp = cfg.qmp_socket();
    sup.wait_until("qemu", "QMP socket", Duration::from_secs(30), || {
        qmp.exists()
    })?;
    say(t0, "the guest runs");
    sup.spawn("checkpointd", &checkpointd, &cfg.checkpointd_primary())?;
    sup.wait_control("checkpointd", &cfg.socket("checkpointd"))?;
    let run = Run {
        checkpointd: cfg.socket("checkpointd"),
        diskrep: cfg.socket("diskrep"),
        guest: Guest::Started,
    };
    Ok(run.watch(cfg, &mut sup, t0, &mut notify))
}

/// The guest a protection run stops when this copy of the VM must end.
pub(crate) enum Guest {
    /// remus started it: the supervised daemon "qemu".
    Started,
    /// `remus protect --attach`: a QEMU remus did not start, reached through its QMP socket.
    Attached { qmp: PathBuf },
}

impl Guest {
    /// Stops the guest at once (the backup runs the VM, or is about to take over).
    fn kill(&self, sup: &mut Supervisor, t0: Instant) {
        match self {
            Guest::Started => sup.kill("qemu"),
            Guest::Attached { qmp } => match crate::attach::kill_guest(qmp) {
                Ok(pid) => say(t0, &format!("the attached guest (QEMU pid {pid}) was killed")),
                Err(e) => say(t0, &format!("WARNING: could not kill the attached guest through {}: {e}; stop it by hand, the backup runs the VM", qmp.display())),
            },
        }
    }

    /// What a planned stop stops, in order: remus' own guest and daemons, or (attached) only
    /// checkpointd: the guest runs on, unprotected, as it ran before.
    fn stop_order(&self) -> &'static [&'static str] {
        match self {
            Guest::Started => STOP_ORDER,
            Guest::Attached { .. } => &["checkpointd"],
        }
    }
}

/// A protection run once checkpointd primary answers: the sockets it is watched through.
pub(crate) struct Run {
    pub checkpointd: PathBuf,
    pub diskrep: PathBuf,
    pub guest: Guest,
}

impl Run {
    /// Shows the initial sync until PROTECTED, then watches the daemons until a signal or a
    /// death; returns the exit code.
    pub(crate) fn watch(
        &self,
        cfg: &Config,
        sup: &mut Supervisor,
        t0: Instant,
        notify: &mut Notifier,
    ) -> i32 {
        // The initial sync: the disk (whole, or what diverged) and a first full memory
        // checkpoint reach the backup.
        let tty = std::io::stderr().is_terminal();
        let mut printed = String::new();
        let mut last_print = Instant::now() - Duration::from_secs(10);
        loop {
            if let Some(e) = sup.poll() {
                if tty {
                    eprintln!();
                }
                return self.finish(sup, e, t0, notify);
            }
            let d = ask_json(&self.diskrep, "status json").ok().map(serving);
            let c = ask_json(&self.checkpointd, "status json").ok();
            if let Some(d) = d {
                let v = SyncView::from_status(&d, c.as_ref(), cfg.guest.ram_mib);
                let line = v.render(30);
                notify.status(&line);
                if tty {
                    eprint!("\r{line}\x1b[K");
                    let _ = std::io::stderr().flush();
                    if v.done() {
                        eprintln!();
                    }
                } else if line != printed
                    && (v.done() || last_print.elapsed() > Duration::from_secs(1))
                {
                    // Not a terminal (a log, a pipe): a line a second at most, and the last one.
                    eprintln!("{line}");
                    printed = line;
                    last_print = Instant::now();
                }
                if v.done() {
                    if let Some(plan) = d["lineage"]["plan"].as_str() {
                        say(t0, &format!("disk: {plan}"));
                    }
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        say(t0, &format!(
            "PROTECTED: a checkpoint every {} ms; output leaves only after the backup has it (status: remus status --dir {})",
            cfg.replication.interval_ms,
            cfg.run_dir().display()
        ));
        notify.ready(&format!(
            "PROTECTED: a checkpoint every {} ms",
            cfg.replication.interval_ms
        ));
        let mut lost = false;
        let mut claiming = false;
        let mut last_look = Instant::now();
        loop {
            if let Some(e) = sup.poll() {
                return self.finish(sup, e, t0, notify);
            }
            if !lost && last_look.elapsed() > Duration::from_millis(500) {
                last_look = Instant::now();
                if let Ok(c) = ask_json(&self.checkpointd, "status json") {
                    notify.status(&running_status(&c));
                    if c["phase"] == "claiming" {
                        // Output stays held until the witness says this side may run alone.
                        if !claiming {
                            claiming = true;
                            say(t0, &format!(
                                "BACKUP LOST: {}; output is held until the witness decides who runs the VM",
                                c["reason"].as_str().unwrap_or("?")
                            ));
                            notify.milestone(&format!(
                                "BACKUP LOST: {}; output held until the witness decides",
                                c["reason"].as_str().unwrap_or("?")
                            ));
                        }
                    } else if c["phase"] != "protected" && c["phase"] != "fenced" {
                        // checkpointd keeps the VM running (availability) and has told the
                        // backup its checkpoints are stale; nothing restarts protection by
                        // itself.
                        lost = true;
                        say(t0, &format!(
                            "PROTECTION LOST: {}; the VM runs on unprotected and the backup stood down (remus stop, then remus receive and remus protect, to protect it again)",
                            c["reason"].as_str().unwrap_or("?")
                        ));
                        notify.milestone(&format!(
                            "PROTECTION LOST: {}; the VM runs unprotected",
                            c["reason"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of a protect run: a signal is a clean stop (0); a fenced checkpointd (the
    /// backup runs the VM) stops the rest (9); any other death stops the rest (1).
    fn finish(&self, sup: &mut Supervisor, e: Event, t0: Instant, notify: &mut Notifier) -> i32 {
        // checkpointd stops first. A takeover the backup announced just before the signal
        // (a switch-over, as Pacemaker's move does it, then the demote) ends it fenced, not
        // stopped: report what happened, not a planned stop.
        let e = match e {
            Event::Signal => match sup.stop("checkpointd", Duration::from_secs(5)) {
                Some(status) if status.code() == Some(exit::FENCED) => Event::Exited {
                    name: "checkpointd",
                    status,
                    log_tail: sup.log_tail("checkpointd", 6),
                },
                _ => Event::Signal,
            },
            e => e,
        };
        notify.stopping(match e {
            Event::Signal => "stopping: protection ends, then the guest",
            _ => "a daemon ended: stopping this copy of the VM (the backup takes over)",
        });
        let code = match e {
            Event::Exited {
                name: "checkpointd",
                status,
                log_tail,
            } if status.code() == Some(exit::FENCED) => {
                let why = log_tail
                    .lines()
                    .rev()
                    .find(|l| l.contains("fenced"))
                    .unwrap_or("fenced")
                    .to_string();
                say(t0, &format!("FENCED: the backup runs the VM; this copy was stopped and its held output discarded ({why})"));
                self.guest.kill(sup, t0);
                exit::FENCED
            }
            Event::Signal => {
                say(
                    t0,
                    match self.guest {
                        Guest::Started => "stopping: protection ends (the backup is told not to fail over), then the guest",
                        Guest::Attached { .. } => "stopping: protection ends (the backup is told not to fail over); the attached guest runs on, unprotected",
                    },
                );
                exit::OK
            }
            e => {
                let p = sup.explain(e);
                eprintln!("remus protect: {}", p.message);
                say(t0, "stopping this copy of the VM: the backup takes over from its last committed checkpoint");
                // The guest goes at once: it must not run on unprotected. checkpointd is
                // killed, not stopped: a clean stop would tell the backup to stand down
                // instead of taking over.
                self.guest.kill(sup, t0);
                sup.kill("checkpointd");
                exit::FAILURE
            }
        };
        sup.stop_all(self.guest.stop_order(), Duration::from_secs(5));
        say(t0, "stopped");
        code
    }
}

/// The running state in one line, for systemd's STATUS=.
fn running_status(c: &serde_json::Value) -> String {
    format!(
        "{}: epoch {} committed, {:.1} checkpoints/s, pause p99 {} us",
        c["phase"].as_str().unwrap_or("?").to_uppercase(),
        c["committed_through"],
        c["rate"].as_f64().unwrap_or(0.0),
        c["pause_p99_us"]
    )
}

pub fn say(t0: Instant, what: &str) {
    let t = t0.elapsed();
    eprintln!("[{:4}.{}s] {what}", t.as_secs(), t.subsec_millis() / 100);
}
