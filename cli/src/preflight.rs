//! Checks made before anything starts, each failing with a message a stranger can act on and
//! the exit code scripts branch on: a missing package, missing privileges, a busy port, an
//! unknown interface. Half a protection set-up is never left running because of a typo.

use remus_proto::exit;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Why remus cannot go on: the message and the exit code.
#[derive(Debug)]
pub struct Problem {
    pub code: i32,
    pub message: String,
}

impl Problem {
    pub fn new(code: i32, message: impl Into<String>) -> Problem {
        Problem {
            code,
            message: message.into(),
        }
    }
}

pub type Check<T = ()> = Result<T, Problem>;

pub fn require_root(what: &str) -> Check {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(Problem::new(
            exit::PRIVILEGE,
            format!("needs root for {what} (network namespaces, TAP and AF_PACKET sockets, QEMU's TAP networking); run it with sudo"),
        ))
    }
}

/// A remus daemon: next to this `remus` binary first (a build tree or an install prefix), then
/// on PATH.
pub fn find_daemon(name: &str) -> Check<PathBuf> {
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    on_path(name).ok_or_else(|| {
        Problem::new(
            exit::NOT_FOUND,
            format!("{name} not found next to remus or on PATH: build the workspace (cargo build --workspace) or install all four binaries together"),
        )
    })
}

/// A program from a Debian package; the message names the package to install.
pub fn find_program(name: &str, package: &str) -> Check<PathBuf> {
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| p.is_file())
    } else {
        on_path(name)
    };
    found.ok_or_else(|| {
        Problem::new(
            exit::NOT_FOUND,
            format!("{name} not found: install the Debian package {package} (apt-get install {package}, or make setup)"),
        )
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

pub fn interface_exists(name: &str, role: &str) -> Check {
    if Path::new("/sys/class/net").join(name).exists() {
        Ok(())
    } else {
        Err(Problem::new(
            exit::NOT_FOUND,
            format!("unknown interface {name} ({role}) on this host: see `ip link show`; a guest TAP is made with `ip tuntap add {name} mode tap`"),
        ))
    }
}

pub fn file_exists(path: &Path, role: &str) -> Check {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        Ok(_) => Err(Problem::new(
            exit::NOT_FOUND,
            format!("{role} {} is empty: create it at the disk's size (qemu-img create -f raw FILE SIZE)", path.display()),
        )),
        Err(e) => Err(Problem::new(
            exit::for_io_error(&e),
            format!("{role} {}: {e}", path.display()),
        )),
    }
}

/// The replication key loads (exists, 64 hex digits, mode 0600), or there is none (the
/// explicit opt-out, which is warned about here).
pub fn key_usable(cfg: &crate::config::Config) -> Check {
    let Some(path) = cfg.key_file() else {
        eprintln!(
            "remus: WARNING: [replication] key_file = \"none\": {}",
            remus_proto::auth::Security::INSECURE_WARNING
        );
        return Ok(());
    };
    remus_proto::auth::Key::load(path).map(|_| ()).map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::InvalidInput => exit::USAGE,
            _ => exit::for_io_error(&e),
        };
        Problem::new(
            code,
            format!("the replication key: {e} (make one with `remus keygen PATH` and copy it to both hosts)"),
        )
    })
}

/// Resolves `addr` (HOST:PORT). A malformed address is a usage error (2); a host name that
/// does not resolve is "not found" (6): the config is well formed, the name is unknown here.
pub fn resolve(addr: &str, role: &str) -> Check<SocketAddr> {
    let resolved = addr.to_socket_addrs().map_err(|e| {
        let code = if e.kind() == ErrorKind::InvalidInput {
            exit::USAGE
        } else {
            exit::NOT_FOUND
        };
        Problem::new(code, format!("{role} address {addr}: {e}"))
    })?;
    resolved.into_iter().next().ok_or_else(|| {
        Problem::new(
            exit::NOT_FOUND,
            format!("{role} address {addr} resolves to nothing"),
        )
    })
}

/// Binds and releases `addr`, so a port another program holds, or an address this host does
/// not have, is reported before any daemon starts.
pub fn port_free(addr: &str, role: &str) -> Check {
    let a = &resolve(addr, role)?;
    match TcpListener::bind(a) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Err(Problem::new(
            exit::BUSY,
            format!(
                "port busy: {a} ({role}) is in use by another program (ss -ltnp 'sport = :{}')",
                a.port()
            ),
        )),
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => Err(Problem::new(
            exit::NOT_FOUND,
            format!(
                "{role} address {} is not on this host (ip addr show)",
                a.ip()
            ),
        )),
        Err(e) => Err(Problem::new(
            exit::for_io_error(&e),
            format!("{role} {a}: {e}"),
        )),
    }
}

/// The run directory, owned by this process through `remus.pid`; a live owner means another
/// remus already protects or receives this VM here.
pub fn claim_run_dir(dir: &Path) -> Check<PidFile> {
    claim_pid_file(dir, "remus.pid")
}

/// As [`claim_run_dir`], with the pid file `name` (`remus protect --attach` beside the
/// `remus receive` whose restored guest it protects uses its own).
pub fn claim_pid_file(dir: &Path, name: &str) -> Check<PidFile> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Problem::new(
            exit::for_io_error(&e),
            format!("run directory {}: {e}", dir.display()),
        )
    })?;
    let path = dir.join(name);
    if let Some(pid) = read_pid(&path).filter(|p| alive(*p)) {
        return Err(Problem::new(
            exit::BUSY,
            format!(
                "another remus (pid {pid}) runs for {}: stop it first (remus stop --run-dir {})",
                dir.display(),
                dir.display()
            ),
        ));
    }
    std::fs::write(&path, format!("{}\n", std::process::id()))
        .map_err(|e| Problem::new(exit::for_io_error(&e), format!("{}: {e}", path.display())))?;
    Ok(PidFile(path))
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Removed when the supervisor ends, however it ends short of SIGKILL.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ports_and_foreign_addresses_are_told_apart() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        let p = port_free(&a, "diskrep NBD").unwrap_err();
        assert_eq!(p.code, exit::BUSY);
        assert!(p.message.contains("port busy"), "{}", p.message);
        drop(l);
        assert!(port_free(&a, "x").is_ok());
        let p = port_free("192.0.2.1:7791", "checkpoint listener").unwrap_err();
        assert_eq!(p.code, exit::NOT_FOUND, "{}", p.message);
        assert_eq!(
            port_free("not an address", "x").unwrap_err().code,
            exit::USAGE
        );
        // Well formed, but no such host: not found, not a usage error.
        let p = resolve("no-such-host.invalid:7791", "the backup").unwrap_err();
        assert_eq!(p.code, exit::NOT_FOUND, "{}", p.message);
        assert!(p.message.contains("no-such-host.invalid"), "{}", p.message);
    }

    #[test]
    fn missing_things_are_named() {
        let p = interface_exists("nonexistent-if0", "guest TAP").unwrap_err();
        assert_eq!(p.code, exit::NOT_FOUND);
        assert!(p.message.contains("nonexistent-if0"));
        assert!(interface_exists("lo", "x").is_ok());
        let p = find_program("qemu-system-nonesuch", "qemu-system-x86").unwrap_err(); // setup-check: not run
        assert!(
            p.message.contains("apt-get install qemu-system-x86"),
            "{}",
            p.message
        );
        assert_eq!(
            file_exists(Path::new("/nonexistent/img"), "disk image")
                .unwrap_err()
                .code,
            exit::NOT_FOUND
        );
    }

    #[test]
    fn a_run_dir_has_one_owner() {
        let d = tempfile::tempdir().unwrap();
        let pid = claim_run_dir(d.path()).unwrap();
        let p = claim_run_dir(d.path()).unwrap_err();
        assert_eq!(
            p.code,
            exit::BUSY,
            "we are alive, so the second claim fails"
        );
        drop(pid);
        assert!(!d.path().join("remus.pid").exists());
        // A stale pid file (its process is gone) does not block.
        std::fs::write(d.path().join("remus.pid"), "999999999\n").unwrap();
        assert!(claim_run_dir(d.path()).is_ok());
    }
}
