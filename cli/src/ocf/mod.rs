//! `ocf:remus:vm`, a Pacemaker resource agent for one remus-protected VM: `remus ocf ACTION`,
//! installed as /usr/lib/ocf/resource.d/remus/vm (dist/ocf/vm, a two-line wrapper).
//!
//! A promotable clone: the promoted instance runs the VM (`remus protect`, or a backup that
//! took the VM over); the unpromoted instance is its backup (`remus receive`). The agent starts
//! remus detached (its own session, output in RUN_DIR/remus.log) and learns what runs from
//! remus' pid file and the daemons' status, so it keeps no state of its own.
//!
//! Written in Rust inside `remus` rather than as a shell script: its decisions (core.rs) are
//! the same status rules as `remus status`, unit- and property-tested, and it needs no JSON
//! tool on the cluster nodes. Fencing: the agent never restores a VM itself; promoting a backup
//! that holds a checkpoint is `remus failover`, so whatever rules remus applies before a
//! takeover (its witness, when one is configured) apply to Pacemaker's promotions too.

pub mod core;
pub mod metadata;

use self::core::{code, Local, Monitor, Notification};
use crate::config::{Config, Role};
use crate::preflight::{self, alive, read_pid};
use crate::status::{ask, ask_json, Error};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pause between two attempts of a cold start.
const RETRY: Duration = Duration::from_secs(1);

/// The agent's inputs: Pacemaker passes parameters and meta attributes in the environment.
struct Env {
    config: Option<PathBuf>,
    addresses: String,
    timeout: Duration,
    monitor: Monitor,
    node: String,
    notification: Notification,
    /// Running as a clone instance under Pacemaker: promotion scores are set.
    clone: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn words(name: &str) -> Vec<String> {
    var(name)
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

impl Env {
    fn from_process() -> Env {
        let meta = |k: &str| var(&format!("OCF_RESKEY_CRM_meta_{k}"));
        let timeout_ms = meta("timeout")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(20_000);
        Env {
            config: var("OCF_RESKEY_config").map(PathBuf::from),
            addresses: var("OCF_RESKEY_addresses").unwrap_or_default(),
            // Leave the caller time to read the answer: finish 2 s before its deadline.
            timeout: Duration::from_millis(timeout_ms.saturating_sub(2_000).max(1_000)),
            monitor: Monitor::from_meta(meta("interval").as_deref(), meta("role").as_deref()),
            node: meta("on_node").unwrap_or_else(nodename),
            notification: Notification {
                kind: meta("notify_type").unwrap_or_default(),
                operation: meta("notify_operation").unwrap_or_default(),
                promote: words("OCF_RESKEY_CRM_meta_notify_promote_uname"),
                demote: words("OCF_RESKEY_CRM_meta_notify_demote_uname"),
            },
            clone: meta("clone_max").is_some(),
        }
    }
}

/// This host's name as the kernel has it (what Pacemaker's node name usually is).
fn nodename() -> String {
    // SAFETY: uname fills the struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates nodename.
    unsafe { std::ffi::CStr::from_ptr(u.nodename.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Logs a line Pacemaker keeps with the operation.
fn log(msg: &str) {
    eprintln!("remus ocf: {msg}");
}

/// Fails the action with `code`, giving Pacemaker the reason to show (OCF 1.1 exit reason).
fn fail(code: i32, msg: &str) -> i32 {
    eprintln!("ocf-exit-reason:{msg}");
    code
}

/// Entry point: `remus ocf ACTION`.
pub fn run(action: &str) -> i32 {
    if action == "meta-data" {
        print!("{}", metadata::METADATA);
        return code::SUCCESS;
    }
    if !matches!(
        action,
        "start" | "stop" | "monitor" | "promote" | "demote" | "notify" | "validate-all"
    ) {
        return fail(
            code::ERR_UNIMPLEMENTED,
            &format!("unknown action {action:?}"),
        );
    }
    let env = Env::from_process();
    let host = match Host::load(&env) {
        Ok(h) => h,
        Err(c) => return c,
    };
    match action {
        "validate-all" => host.validate(),
        "start" => host.start(),
        "stop" => host.stop(),
        "monitor" => host.monitor(),
        "promote" => host.promote(),
        "demote" => host.demote(),
        _ => host.notify(),
    }
}

/// One host's side of the VM, as the agent drives it.
struct Host<'a> {
    env: &'a Env,
    cfg: Config,
    path: PathBuf,
    /// When the action must have answered (its timeout, less a margin), whatever it does.
    deadline: Instant,
}

impl<'a> Host<'a> {
    fn load(env: &'a Env) -> Result<Host<'a>, i32> {
        let Some(path) = env.config.clone() else {
            return Err(fail(
                code::ERR_CONFIGURED,
                "the parameter config is required",
            ));
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            fail(
                code::ERR_INSTALLED,
                &format!("config {}: {e}", path.display()),
            )
        })?;
        let cfg = Config::parse(&text).map_err(|e| {
            fail(
                code::ERR_CONFIGURED,
                &format!("config {}: {e}", path.display()),
            )
        })?;
        Ok(Host {
            env,
            cfg,
            path,
            deadline: Instant::now() + env.timeout,
        })
    }

    /// Where this host listens when it receives, and where it replicates to when it protects.
    fn address(&self, role: Role) -> Result<Option<String>, i32> {
        if self.env.addresses.trim().is_empty() {
            return Ok(None);
        }
        let mut mine = None;
        let mut others = Vec::new();
        for entry in self.env.addresses.split_whitespace() {
            let Some((node, addr)) = entry.split_once('=') else {
                return Err(fail(
                    code::ERR_CONFIGURED,
                    &format!("addresses: {entry:?} is not NODE=ADDRESS"),
                ));
            };
            if node == self.env.node {
                mine = Some(addr.to_string());
            } else {
                others.push(addr.to_string());
            }
        }
        match (role, mine, others.as_slice()) {
            (Role::Backup, Some(a), _) => Ok(Some(a)),
            (Role::Primary, _, [peer]) => Ok(Some(peer.clone())),
            (Role::Backup, None, _) => Err(fail(
                code::ERR_CONFIGURED,
                &format!(
                    "addresses names no address for this node ({})",
                    self.env.node
                ),
            )),
            (Role::Primary, _, _) => Err(fail(
                code::ERR_CONFIGURED,
                "addresses must name exactly one other node (the peer)",
            )),
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.cfg.run_dir()
    }

    fn remus_pid(&self) -> Option<i32> {
        read_pid(&self.run_dir().join("remus.pid")).filter(|p| alive(*p))
    }

    fn observe(&self) -> Local {
        let pid = self.remus_pid();
        let status = |name: &str| ask_json(&self.cfg.socket(name), "status json").ok();
        let (c, d) = match pid {
            Some(_) => (status("checkpointd"), status("diskrep")),
            None => (None, None),
        };
        core::classify(pid.is_some(), c.as_ref(), d.as_ref())
    }

    fn validate(&self) -> i32 {
        if let Err(e) = self.cfg.validate(Role::Primary) {
            return fail(
                code::ERR_CONFIGURED,
                &format!("{}: {e}", self.path.display()),
            );
        }
        for role in [Role::Primary, Role::Backup] {
            if let Err(c) = self.address(role) {
                return c;
            }
        }
        if let Err(p) = preflight::require_root("remus' daemons") {
            return fail(code::ERR_PERM, &p.message);
        }
        for d in ["diskrep", "netbuf", "checkpointd"] {
            if let Err(p) = preflight::find_daemon(d) {
                return fail(code::ERR_INSTALLED, &p.message);
            }
        }
        if let Err(p) = preflight::find_program(&self.cfg.guest.qemu[0], "qemu-system-x86") {
            return fail(code::ERR_INSTALLED, &p.message);
        }
        code::SUCCESS
    }

    /// Starts `remus receive` or `remus protect` in a session of its own (it outlives this
    /// call), its output appended to RUN_DIR/remus.log.
    fn spawn(&self, role: Role) -> Result<Child, i32> {
        let verb = match role {
            Role::Primary => "protect",
            Role::Backup => "receive",
        };
        let dir = self.run_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(code::ERR_PERM, &format!("{}: {e}", dir.display())))?;
        let log_path = dir.join("remus.log");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| fail(code::ERR_PERM, &format!("{}: {e}", log_path.display())))
        };
        let exe = std::env::current_exe()
            .map_err(|e| fail(code::ERR_INSTALLED, &format!("the remus program: {e}")))?;
        let mut cmd = Command::new(exe);
        cmd.arg(verb).arg("--config").arg(&self.path);
        if let Some(a) = self.address(role)? {
            cmd.args(["--backup", &a]);
        }
        cmd.stdin(Stdio::null()).stdout(open()?).stderr(open()?);
        // SAFETY: setsid is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        log(&format!(
            "starting remus {verb} (log {})",
            log_path.display()
        ));
        cmd.spawn()
            .map_err(|e| fail(code::ERR_INSTALLED, &format!("start remus {verb}: {e}")))
    }

    /// Polls until `done` holds for what runs here. A child of ours that ends first is a
    /// failure with its exit code.
    fn wait_until(
        &self,
        mut child: Option<&mut Child>,
        what: &str,
        done: impl Fn(&Local) -> bool,
    ) -> Result<Local, i32> {
        loop {
            let l = self.observe();
            if done(&l) {
                return Ok(l);
            }
            if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                let exit = st.code().unwrap_or(remus_proto::exit::FAILURE);
                return Err(fail(
                    core::from_remus_exit(exit),
                    &format!(
                        "remus ended (exit {exit}) before {what}; see {}",
                        self.run_dir().join("remus.log").display()
                    ),
                ));
            }
            if Instant::now() > self.deadline {
                return Err(fail(
                    code::ERR_GENERIC,
                    &format!("not {what} within the action's timeout (now {l:?})"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends whatever remus runs here (a planned stop), SIGKILL if it outlives the timeout.
    fn stop_remus(&self) -> Result<(), i32> {
        let Some(pid) = self.remus_pid() else {
            return Ok(());
        };
        log(&format!("stopping remus (pid {pid})"));
        // SAFETY: signalling the pid remus recorded in its own pid file, checked alive.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while alive(pid) && Instant::now() < self.deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            log(&format!("remus (pid {pid}) outlived its stop: SIGKILL"));
            // SAFETY: as above; its daemons get SIGTERM from the kernel (PR_SET_PDEATHSIG).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(500));
        }
        if alive(pid) {
            return Err(fail(
                code::ERR_GENERIC,
                &format!("remus (pid {pid}) does not stop"),
            ));
        }
        Ok(())
    }

    /// Tells Pacemaker where the VM should run (only under Pacemaker, as a clone).
    fn set_score(&self, l: &Local) {
        if !self.env.clone {
            return;
        }
        let mut cmd = Command::new("crm_attribute");
        cmd.arg("--promotion").arg("--quiet");
        if !self.env.node.is_empty() {
            cmd.args(["--node", &self.env.node]);
        }
        match core::promotion_score(l) {
            Some(s) => cmd.args(["--update", &s.to_string()]),
            None => cmd.arg("--delete"),
        };
        match cmd.stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => log(&format!(
                "crm_attribute: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => log(&format!("crm_attribute: {e}")),
        }
    }

    fn start(&self) -> i32 {
        loop {
            match self.observe() {
                l if l.started() => {
                    self.set_score(&l);
                    return code::SUCCESS;
                }
                Local::Stopped => {
                    let started = self.spawn(Role::Backup).and_then(|mut child| {
                        self.wait_until(Some(&mut child), "receiving", Local::started)
                    });
                    return match started {
                        Ok(l) => {
                            self.set_score(&l);
                            code::SUCCESS
                        }
                        Err(c) => c,
                    };
                }
                // Its remus is ending on its own: let it, then start afresh.
                Local::StandingDown | Local::Fenced => {
                    if let Err(c) = self.stop_remus() {
                        return c;
                    }
                }
                // Starting, or ending: look again.
                Local::Unknown(why) => {
                    if Instant::now() > self.deadline {
                        return fail(code::ERR_GENERIC, &why);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                l => return fail(code::ERR_GENERIC, &format!("cannot start: {l:?}")),
            }
        }
    }

    fn stop(&self) -> i32 {
        if let Err(c) = self.stop_remus() {
            return c;
        }
        self.set_score(&Local::Stopped);
        code::SUCCESS
    }

    fn monitor(&self) -> i32 {
        let l = self.observe();
        let c = core::monitor(&l, self.env.monitor);
        if let Local::Unknown(why) = &l {
            return fail(c, why);
        }
        if c == code::SUCCESS || c == code::RUNNING_PROMOTED {
            self.set_score(&l);
        }
        c
    }

    /// Asks the local backup to take the VM over (remus failover, with remus' fencing rules)
    /// and waits until the VM runs here.
    fn take_over(&self) -> Result<Local, i32> {
        log("remus failover: the VM is taken over from the last committed checkpoint");
        match ask(&self.cfg.socket("checkpointd"), "failover") {
            Ok(_) => {}
            Err(Error::Refused(m)) | Err(Error::Unreachable(m)) => {
                return Err(fail(code::ERR_GENERIC, &format!("remus failover: {m}")))
            }
        }
        self.wait_until(None, "running the VM", |l| {
            l.runs_vm() || matches!(l, Local::Stopped | Local::Fenced | Local::StandingDown)
        })
        .and_then(|l| {
            if l.runs_vm() {
                Ok(l)
            } else {
                Err(fail(
                    code::ERR_GENERIC,
                    &format!("the takeover did not happen ({l:?}): remus' fencing gave the VM to the other host, or the backup ended"),
                ))
            }
        })
    }

    fn promote(&self) -> i32 {
        let l = match self.observe() {
            l if l.runs_vm() => l,
            Local::Receiving { .. } => match self.take_over() {
                Ok(l) => l,
                Err(c) => return c,
            },
            Local::Waiting => {
                // A cold start: nothing holds the VM's state, Pacemaker chose this host (an
                // operator's role=Promoted preference; see core.rs).
                log("cold start: the VM boots here from this host's disk");
                if let Err(c) = self.stop_remus() {
                    return c;
                }
                match self.cold_start() {
                    Ok(l) => l,
                    Err(c) => return c,
                }
            }
            Local::DiskFailed => {
                return fail(
                    code::ERR_GENERIC,
                    "cannot promote: this backup's disk commit failed; it holds no usable disk",
                )
            }
            l => return fail(code::ERR_GENERIC, &format!("cannot promote: {l:?}")),
        };
        self.set_score(&l);
        code::SUCCESS
    }

    /// `remus protect` until the VM runs here. remus protect needs its backup listening; a
    /// peer whose `remus receive` is being restarted (it stands down when a primary stops) is
    /// waited for: a protect that ends with a plain failure is tried again until the deadline.
    fn cold_start(&self) -> Result<Local, i32> {
        loop {
            let mut child = self.spawn(Role::Primary)?;
            let attempt = self.wait_until(Some(&mut child), "running the VM", Local::runs_vm);
            match attempt {
                Err(c) if c == code::ERR_GENERIC && Instant::now() + RETRY < self.deadline => {
                    let _ = child.wait();
                    log("remus protect ended before the VM ran (is the peer receiving?); trying again");
                    std::thread::sleep(RETRY);
                }
                r => return r,
            }
        }
    }

    fn demote(&self) -> i32 {
        let l = self.observe();
        if matches!(
            l,
            Local::Waiting | Local::Receiving { .. } | Local::DiskFailed
        ) {
            self.set_score(&l);
            return code::SUCCESS;
        }
        // The VM stops here (a primary's stop is a planned stop: its backup stands down). A
        // remus that is ending (its checkpointd gone after a takeover) is stopped the same way.
        if l.runs_vm() {
            log("demote: the VM stops on this host");
        } else if let Local::Unknown(why) = &l {
            log(&format!("demote: {why}; stopping it"));
        }
        if let Err(c) = self.stop_remus() {
            return c;
        }
        match self.spawn(Role::Backup) {
            Ok(mut child) => match self.wait_until(Some(&mut child), "receiving", Local::started) {
                Ok(l) => {
                    self.set_score(&l);
                    code::SUCCESS
                }
                Err(c) => c,
            },
            Err(c) => c,
        }
    }

    fn notify(&self) -> i32 {
        let n = &self.env.notification;
        let l = self.observe();
        if core::takes_over_before_demote(n, &self.env.node, &l) {
            // A failed takeover is not the notification's failure: promote will see it.
            match self.take_over() {
                Ok(l) => self.set_score(&l),
                Err(_) => log("switch-over: the takeover failed; promote will report it"),
            }
        } else if l.started() {
            self.set_score(&l);
        }
        code::SUCCESS
    }
}
