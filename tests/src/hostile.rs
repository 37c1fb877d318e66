//! Helpers of the hostile-input tests (`tests/tests/hostile.rs`): a diskrep pair with the
//! backup's image where the test wants it, control-socket hammering under a low descriptor
//! limit, exit codes of a command.

use crate::diskrep_rig::{free_port, spawn_daemon, Daemon};
use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

pub fn err_reply(d: &Daemon, line: &str) -> (String, String) {
    match d.ctl(line).unwrap() {
        Reply::Err(e) => (e.code.to_string(), e.message),
        Reply::Ok(t) => panic!("{line}: expected an error, got ok {t}"),
    }
}

pub fn s(v: &serde_json::Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// Waits until `f` holds, polling; fails with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn image(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

pub fn diskrep_pair(dir: &Path, backup_img: &Path, size: u64) -> (Daemon, Daemon, u16) {
    let primary_img = dir.join("primary.img");
    image(&primary_img, size);
    image(backup_img, size);
    let (nbd, repl, bnbd) = (free_port(), free_port(), free_port());
    let b_ctl = dir.join("b.sock");
    let backup = spawn_daemon(
        &[
            "backup".into(),
            "--image".into(),
            backup_img.display().to_string(),
            "--repl-listen".into(),
            format!("127.0.0.1:{repl}"),
            "--listen".into(),
            format!("127.0.0.1:{bnbd}"),
            "--control".into(),
            b_ctl.display().to_string(),
            "--key-file".into(),
            crate::replication_key(dir).display().to_string(),
        ],
        b_ctl,
    )
    .unwrap();
    let p_ctl = dir.join("p.sock");
    let primary = spawn_daemon(
        &[
            "primary".into(),
            "--image".into(),
            primary_img.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{nbd}"),
            "--backup".into(),
            format!("127.0.0.1:{repl}"),
            "--control".into(),
            p_ctl.display().to_string(),
            "--key-file".into(),
            crate::replication_key(dir).display().to_string(),
        ],
        p_ctl,
    )
    .unwrap();
    (primary, backup, nbd)
}

pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// Runs the daemon with at most 64 open descriptors (as `ulimit -n 64` would).
pub fn low_fd_limit(cmd: &mut Command) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// 500 control connections, one after another, each asking `hello`: the daemon answers every
/// one and ends with the descriptors it started with. (It used to keep one per connection and
/// stop answering after about 60 under this limit.)
pub fn hammer_control(name: &str, pid: u32, control: &Path) {
    let before = open_fds(pid);
    for i in 0..500 {
        let mut c = ControlClient::connect(control)
            .unwrap_or_else(|e| panic!("{name}: connection {i}: {e}"));
        c.set_timeout(Some(Duration::from_secs(5))).unwrap();
        match c.request("hello") {
            Ok(Reply::Ok(_)) => {}
            r => panic!("{name}: connection {i}: {r:?}"),
        }
    }
    wait_for(Duration::from_secs(10), "descriptors released", || {
        open_fds(pid) <= before
    });
}

pub fn status_code(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
