//! Starting, watching and stopping one VM's daemons.
//!
//! Each daemon runs in its own process group, so a terminal's Ctrl-C reaches only remus, which
//! then stops the daemons in the order that keeps the VM's promises (see `stop_all`), and so a
//! daemon's own children (the QEMU a backup checkpointd restores) stop with it. Each gets
//! SIGTERM if remus itself dies (PR_SET_PDEATHSIG): an unsupervised protection set-up, whose
//! failures nobody would report, is not left behind. Output goes to RUN_DIR/NAME.log.

use crate::preflight::Problem;
use remus_proto::ctl_socket::ControlClient;
use remus_proto::exit;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

pub enum Event {
    /// A daemon ended on its own.
    Exited {
        name: &'static str,
        status: ExitStatus,
        log_tail: String,
    },
    /// SIGINT or SIGTERM reached remus.
    Signal,
}

pub struct Supervisor {
    daemons: Vec<Daemon>,
    run_dir: PathBuf,
    stop: Arc<AtomicBool>,
    /// Appended to each log's name (`remus protect --attach` beside a `remus receive`
    /// logs checkpointd primary to checkpointd-primary.log).
    log_tag: &'static str,
}

pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Supervisor {
    pub fn new(run_dir: &Path) -> Result<Supervisor, Problem> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| Problem::new(exit::FAILURE, format!("signal handler: {e}")))?;
        }
        Ok(Supervisor {
            daemons: Vec::new(),
            run_dir: run_dir.to_path_buf(),
            stop,
            log_tag: "",
        })
    }

    pub fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn log_of(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}{}.log", self.log_tag))
    }

    /// The last `lines` lines of the named daemon's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.log_of(name), lines)
    }

    /// Logs go to RUN_DIR/NAME`tag`.log from now on.
    pub fn tag_logs(&mut self, tag: &'static str) {
        self.log_tag = tag;
    }

    pub fn spawn(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
    ) -> Result<(), Problem> {
        self.spawn_with_env(name, program, args, &[])
    }

    /// Like [`Supervisor::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<(), Problem> {
        let log = self.log_of(name);
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| {
                    Problem::new(exit::for_io_error(&e), format!("{}: {e}", log.display()))
                })
        };
        let (out, err) = (open()?, open()?);
        let mut cmd = Command::new(program);
        cmd.args(args)
            // Only remus speaks for a systemd unit (Type=notify); a daemon must not.
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; this runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Problem::new(
                exit::for_io_error(&e),
                format!("start {name} ({}): {e}", program.display()),
            )
        })?;
        self.daemons.push(Daemon { name, child, log });
        Ok(())
    }

    /// Waits until `ready` holds, reporting the daemon's death or a signal meanwhile.
    pub fn wait_until(
        &mut self,
        name: &'static str,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Problem> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            match self.poll() {
                Some(Event::Signal) => return Err(Problem::new(exit::FAILURE, "interrupted")),
                Some(e) => return Err(self.explain(e)),
                None => {}
            }
            if Instant::now() > deadline {
                return Err(Problem::new(
                    exit::FAILURE,
                    format!(
                        "{name}: {what} not ready after {timeout:?}; its log ({}):\n{}",
                        self.log_of(name).display(),
                        tail(&self.log_of(name), 8)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a daemon's control socket to answer `hello`.
    pub fn wait_control(&mut self, name: &'static str, socket: &Path) -> Result<(), Problem> {
        self.wait_until(name, "control socket", Duration::from_secs(20), || {
            ControlClient::connect(socket)
                .and_then(|mut c| c.request("hello"))
                .is_ok()
        })
    }

    /// A daemon that ended, or a signal; `None` while all is well.
    pub fn poll(&mut self) -> Option<Event> {
        if self.interrupted() {
            return Some(Event::Signal);
        }
        for i in 0..self.daemons.len() {
            if let Ok(Some(status)) = self.daemons[i].child.try_wait() {
                let d = self.daemons.remove(i);
                return Some(Event::Exited {
                    name: d.name,
                    status,
                    log_tail: tail(&d.log, 6),
                });
            }
        }
        None
    }

    pub fn explain(&self, e: Event) -> Problem {
        match e {
            Event::Signal => Problem::new(exit::FAILURE, "interrupted"),
            Event::Exited {
                name,
                status,
                log_tail,
            } => Problem::new(
                exit::FAILURE,
                format!(
                    "{name} exited ({}); the end of {}:\n{log_tail}",
                    describe(&status),
                    self.log_of(name).display()
                ),
            ),
        }
    }

    pub fn running(&self, name: &str) -> bool {
        self.daemons.iter().any(|d| d.name == name)
    }

    /// Stops the named daemon (its whole process group): SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, name: &str, grace: Duration) -> Option<ExitStatus> {
        let i = self.daemons.iter().position(|d| d.name == name)?;
        let mut d = self.daemons.remove(i);
        let pgid = d.child.id() as i32;
        // SAFETY: signalling the process group we created for our own child.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                // Whatever it started (a restored QEMU) goes with it.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return Some(st);
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return d.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the named daemon's process group with SIGKILL at once: no goodbye to any peer.
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.daemons.iter().position(|d| d.name == name) {
            let mut d = self.daemons.remove(i);
            // SAFETY: signalling the process group we created for our own child.
            unsafe { libc::kill(-(d.child.id() as i32), libc::SIGKILL) };
            let _ = d.child.wait();
        }
    }

    /// Stops every daemon in `order` (names not running are skipped), then any left, newest
    /// first.
    pub fn stop_all(&mut self, order: &[&str], grace: Duration) {
        for name in order {
            self.stop(name, grace);
        }
        while let Some(d) = self.daemons.last() {
            let name = d.name;
            self.stop(name, grace);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all(&[], Duration::from_secs(2));
    }
}
