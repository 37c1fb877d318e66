//! Real network namespaces for tests, removed when dropped (also when a test panics): every
//! process inside is killed first, then the namespace is deleted, which destroys its veths.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short prefix unique to this process and call, for namespace and interface names
/// (interface names have at most 15 characters).
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("r{}{}", std::process::id() % 10_000, n)
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces, AF_PACKET); `make test` runs it as root");
    }
}

/// Runs a command and fails with its output if it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("spawn {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Spawns a long-running process inside the namespace, killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {program} in {}", self.name))?;
        Ok(ChildGuard(Some(child)))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a pid listed as living in our test namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair with one end in each namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    a.exec(&["ip", "link", "set", "dev", a_if, "up"])?;
    b.exec(&["ip", "link", "set", "dev", b_if, "up"])?;
    Ok(())
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until drop")
    }

    /// Sends SIGTERM and waits up to `secs` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, secs: u64) -> Option<i32> {
        let c = self.0.as_mut()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Path of a workspace binary built next to the running test (`make test` builds them first).
pub fn bin(name: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` (make test does) first",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// A child started in its own process group; dropping it kills the whole group (SIGKILL), so
/// grandchildren (e.g. a QEMU a daemon started) die with it.
pub struct GroupGuard(pub Child);

impl GroupGuard {
    pub fn spawn(cmd: &mut Command) -> Result<GroupGuard> {
        use std::os::unix::process::CommandExt;
        Ok(GroupGuard(cmd.process_group(0).spawn().context("spawn")?))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for our own child.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Runs `f` on a scratch thread that has entered network namespace `ns` (sockets created there
/// stay in that namespace), leaving the caller's namespace untouched.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on a valid namespace fd, affecting only this scratch thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}
