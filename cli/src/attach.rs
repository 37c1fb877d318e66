//! `remus protect --attach`: protects a guest that already runs, instead of starting one.
//!
//! Protection needs three things of a running QEMU, and nothing else: its RAM in a shared
//! memory-backend-file (checkpointd maps it), a QMP socket (pause, device state, resume), and
//! its disk and network behind a diskrep and a netbuf whose control sockets are in the run
//! directory. attach starts only checkpointd primary: it asks diskrep to replicate to the
//! backup (`replicate HOST:PORT`; the disk lineage decides how much is resynced) and lets
//! checkpointd drive netbuf's epochs from unprotected pass-through. Memory starts with a full
//! checkpoint, as on any protection start.
//!
//! Two guests qualify:
//! * the guest a failover restored on this host (`remus receive` took over): its RAM is the
//!   backup's RAM image, its QMP socket is in checkpointd backup's state directory, its disk is
//!   served by the activated diskrep and its TAP sits behind receive's netbuf, which has run
//!   in pass-through since receive started. So the VM never stops and the network is not
//!   touched: this is re-protection after a failover.
//! * a guest started by hand or by libvirt as cli/README.md ("attach") describes, with diskrep
//!   (`diskrep primary` without `--backup`) and netbuf started beforehand.
//!
//! The attached guest is not remus' own: a planned stop ends protection and leaves it running;
//! only when this copy must end (fenced, or a daemon died so the backup takes over) is it
//! killed, through the pid behind its QMP socket.

use crate::config::{Config, GuestHandles, Role};
use crate::notify::Notifier;
use crate::preflight::{self, Problem};
use crate::protect::{say, Guest, Run};
use crate::status::{ask, ask_json, Error};
use crate::supervise::Supervisor;
use remus_proto::exit;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which guest was found, and how it is reached.
#[derive(Debug, PartialEq)]
pub enum Found {
    /// A failover restored it here; `remus receive` still runs it.
    Restored(GuestHandles),
    /// Started outside remus (`--qmp`, or the run directory's qmp.sock).
    Running(GuestHandles),
}

/// What this host's checkpointd (if any answers on the run directory's socket) says.
#[derive(Debug, PartialEq)]
pub enum Local {
    /// Nothing answers: no `remus receive` here.
    Nothing,
    /// A backup that took over: its restored guest runs here.
    FailedOver,
    /// A backup (or a primary) in this phase: nothing to attach to.
    Other { role: String, phase: String },
}

impl Local {
    pub fn from_status(c: Option<&serde_json::Value>) -> Local {
        match c {
            None => Local::Nothing,
            Some(c) if c["role"] == "backup" && c["phase"] == "failedover" => Local::FailedOver,
            Some(c) => Local::Other {
                role: c["role"].as_str().unwrap_or("?").into(),
                phase: c["phase"].as_str().unwrap_or("?").into(),
            },
        }
    }
}

/// Decides which guest to attach to (pure: the caller asked checkpointd and looked at `qmp`).
pub fn choose(cfg: &Config, local: Local, qmp: Option<PathBuf>) -> Result<Found, Problem> {
    let run_dir = cfg.run_dir();
    match local {
        Local::FailedOver => Ok(Found::Restored(GuestHandles {
            // checkpointd backup restores with its QMP socket in its state directory.
            qmp: qmp.unwrap_or_else(|| run_dir.join("state").join("qmp.sock")),
            ram: cfg.ram_file(Role::Backup),
            // Beside receive's checkpointd backup, which keeps the plain names.
            control: cfg.socket("checkpointd-primary"),
            state_dir: run_dir.join("state-primary"),
        })),
        Local::Other { role, phase } => Err(Problem::new(
            exit::BUSY,
            format!(
                "this host's checkpointd ({}) is a {role} in phase {phase}: there is no restored guest to attach to here (attach follows a failover, or protects a guest started by hand with nothing of remus running for it)",
                cfg.socket("checkpointd").display()
            ),
        )),
        Local::Nothing => Ok(Found::Running(GuestHandles {
            qmp: qmp.unwrap_or_else(|| cfg.qmp_socket()),
            ram: cfg.ram_file(Role::Primary),
            control: cfg.socket("checkpointd"),
            state_dir: run_dir.join("state"),
        })),
    }
}

pub fn run(cfg: &Config, qmp: Option<PathBuf>) -> i32 {
    match attach(cfg, qmp) {
        Ok(code) => code,
        Err(p) => {
            eprintln!("remus protect --attach: {}", p.message);
            p.code
        }
    }
}

fn attach(cfg: &Config, qmp: Option<PathBuf>) -> Result<i32, Problem> {
    cfg.validate(Role::Primary)
        .map_err(|e| Problem::new(exit::USAGE, e.0))?;
    preflight::require_root("checkpointd (it maps the guest's RAM and may ptrace QEMU)")?;
    let checkpointd = preflight::find_daemon("checkpointd")?;
    preflight::resolve(&cfg.checkpoint_addr(), "the backup")?;
    preflight::key_usable(cfg)?;
    let local = Local::from_status(
        ask_json(&cfg.socket("checkpointd"), "status json")
            .ok()
            .as_ref(),
    );
    let found = choose(cfg, local, qmp)?;
    let g = match &found {
        Found::Restored(g) | Found::Running(g) => g.clone(),
    };
    let diskrep = cfg.socket("diskrep");
    let netbuf = cfg.socket("netbuf");
    require(&diskrep, "diskrep", "the daemon serving the guest's disk: diskrep primary --image IMAGE --listen NBD --control RUN_DIR/diskrep.sock --key-file KEY (no --backup), before the guest starts")?;
    require(&netbuf, "netbuf", "the guest's TAP behind netbuf: netbuf run --guest-if TAP --uplink-if UPLINK --control RUN_DIR/netbuf.sock")?;
    guest_ram(&g.ram, cfg.guest.ram_mib)?;
    if !g.qmp.exists() {
        return Err(Problem::new(
            exit::NOT_FOUND,
            format!(
                "no QMP socket at {}: start QEMU with -qmp unix:{},server=on,wait=off (or give --qmp PATH)",
                g.qmp.display(),
                g.qmp.display()
            ),
        ));
    }
    let _pid = preflight::claim_pid_file(&cfg.run_dir(), "protect.pid")?;
    let mut notify = Notifier::from_env();
    let t0 = Instant::now();
    let mut sup = Supervisor::new(&cfg.run_dir())?;
    sup.tag_logs("-primary");
    say(
        t0,
        &format!(
            "attaching to {} guest of VM '{}' (QMP {}, RAM {}); it keeps running",
            match found {
                Found::Restored(_) => "the failed-over",
                Found::Running(_) => "the running",
            },
            cfg.name,
            g.qmp.display(),
            g.ram.display()
        ),
    );
    if cfg.unfenced() {
        say(t0, "WARNING: no witness (witness = \"none\"): a network partition would leave two running copies.");
    }
    // The disk first: what the backup lacks is resynced (the lineage decides how much) while
    // checkpointd starts; protection is reached only once both are in.
    match ask(&diskrep, &format!("replicate {}", cfg.disk_addr())) {
        Ok(t) => say(t0, &format!("diskrep: {t}")),
        Err(Error::Refused(e)) => {
            return Err(Problem::new(
                exit::REJECTED,
                format!("diskrep refused to replicate to {}: {e}", cfg.disk_addr()),
            ))
        }
        Err(Error::Unreachable(e)) => return Err(Problem::new(exit::UNREACHABLE, e)),
    }
    let _ = std::fs::remove_file(&g.control);
    sup.spawn("checkpointd", &checkpointd, &cfg.checkpointd_primary_on(&g))?;
    sup.wait_control("checkpointd", &g.control)?;
    let run = Run {
        checkpointd: g.control.clone(),
        diskrep,
        guest: Guest::Attached { qmp: g.qmp.clone() },
    };
    Ok(run.watch(cfg, &mut sup, t0, &mut notify))
}

/// A daemon the attached guest needs must already answer; `how` says how to start it.
fn require(socket: &Path, name: &str, how: &str) -> Result<(), Problem> {
    match ask(socket, "hello") {
        Ok(_) => Ok(()),
        Err(Error::Unreachable(e) | Error::Refused(e)) => Err(Problem::new(
            exit::UNREACHABLE,
            format!(
                "{name} does not answer at {} ({e}); attach needs {how}",
                socket.display()
            ),
        )),
    }
}

/// The guest's RAM file must exist and be the configured size (checkpointd maps it whole).
fn guest_ram(ram: &Path, ram_mib: u64) -> Result<(), Problem> {
    let len = std::fs::metadata(ram)
        .map_err(|e| {
            Problem::new(
                exit::for_io_error(&e),
                format!(
                    "guest RAM file {}: {e}; QEMU must run with -object memory-backend-file,id=remus-ram,size={ram_mib}M,mem-path={},share=on -machine memory-backend=remus-ram",
                    ram.display(),
                    ram.display()
                ),
            )
        })?
        .len();
    if len != ram_mib << 20 {
        return Err(Problem::new(
            exit::USAGE,
            format!(
                "guest RAM file {} holds {len} bytes, but [guest] ram_mib = {ram_mib} ({} bytes): not this guest's RAM",
                ram.display(),
                ram_mib << 20
            ),
        ));
    }
    Ok(())
}

/// Kills the QEMU behind `qmp` at once (SIGKILL to the pid SO_PEERCRED names: the process
/// listening there, whether or not it accepts us); returns its pid.
pub fn kill_guest(qmp: &Path) -> std::io::Result<i32> {
    let s = std::os::unix::net::UnixStream::connect(qmp)?;
    let pid = remus_proto::peer::peer_pid(&s)?;
    // SAFETY: kill(2) of the process that listens on the guest's QMP socket.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_over_backup_offers_its_restored_guest() {
        let cfg = Config {
            run_dir: Some("/run/remus/t".into()),
            ..Config::default()
        };
        let local = Local::from_status(Some(&json!({"role": "backup", "phase": "failedover"})));
        let Found::Restored(g) = choose(&cfg, local, None).unwrap() else {
            panic!("not the restored guest")
        };
        assert_eq!(g.qmp, PathBuf::from("/run/remus/t/state/qmp.sock"));
        assert_eq!(g.ram, cfg.ram_file(Role::Backup));
        // Never receive's own socket or state directory.
        assert_ne!(g.control, cfg.socket("checkpointd"));
        assert_ne!(g.state_dir, PathBuf::from("/run/remus/t/state"));
    }

    #[test]
    fn a_backup_that_did_not_take_over_has_nothing_to_attach() {
        for phase in ["waiting", "receiving", "stopped"] {
            let local = Local::from_status(Some(&json!({"role": "backup", "phase": phase})));
            let e = choose(&Config::default(), local, None).unwrap_err();
            assert_eq!(e.code, exit::BUSY);
            assert!(e.message.contains(phase), "{}", e.message);
        }
    }

    #[test]
    fn without_remus_here_the_given_qmp_socket_is_used() {
        let cfg = Config::default();
        let q = PathBuf::from("/var/run/libvirt/qemu/vm1.qmp");
        match choose(&cfg, Local::Nothing, Some(q.clone())).unwrap() {
            Found::Running(g) => {
                assert_eq!(g.qmp, q);
                assert_eq!(g.ram, cfg.ram_file(Role::Primary));
                assert_eq!(g.control, cfg.socket("checkpointd"));
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn a_ram_file_of_another_size_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        assert!(guest_ram(f.path(), 1).is_ok());
        assert_eq!(guest_ram(f.path(), 2).unwrap_err().code, exit::USAGE);
        assert_eq!(
            guest_ram(Path::new("/nonexistent/ram"), 1)
                .unwrap_err()
                .code,
            exit::NOT_FOUND
        );
    }
}
