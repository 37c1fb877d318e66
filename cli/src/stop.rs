//! `remus stop`: ends a `remus protect` or `remus receive` run through its pid file, and waits
//! until it has stopped its daemons.

use crate::preflight::{alive, read_pid};
use remus_proto::exit;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(run_dir: &Path, timeout: Duration) -> i32 {
    // `remus protect --attach` beside a `remus receive` (after a failover) is stopped first:
    // protection ends, the guest runs on; a second `remus stop` then ends the receive.
    let attached = run_dir.join("protect.pid");
    let pid_file = if read_pid(&attached).is_some_and(alive) {
        attached
    } else {
        run_dir.join("remus.pid")
    };
    let Some(pid) = read_pid(&pid_file).filter(|p| alive(*p)) else {
        eprintln!(
            "remus stop: nothing runs for {} (no live pid in {})",
            run_dir.display(),
            pid_file.display()
        );
        return exit::NOT_FOUND;
    };
    // SAFETY: SIGTERM to the pid the supervisor recorded and that is alive.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("remus stop: signal pid {pid}: {e}");
        return exit::for_io_error(&e);
    }
    let t = Instant::now();
    while alive(pid) && pid_file.exists() {
        if t.elapsed() > timeout {
            eprintln!("remus stop: pid {pid} still running after {timeout:?}");
            return exit::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped (pid {pid}, {} ms)", t.elapsed().as_millis());
    exit::OK
}
