//! Runs a system call inside another process with ptrace, as CRIU's parasite code does for its
//! own syscalls: seize one thread, save its registers, point it at a `syscall` instruction with
//! the call's number and arguments, let it run to the syscall's exit, read the result, restore
//! the registers and detach. No memory of the target is written (the `syscall` instruction used
//! is one already in its code: the one the thread is blocked in, or one in the vDSO), so its
//! other threads run on undisturbed; only the seized thread is stopped, for well under a
//! millisecond.
//!
//! Used to create a userfaultfd inside a QEMU that was started without the preload shim (a
//! uffd only acts on the memory of the process that created it). x86-64 only.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::io;
    use std::os::unix::fs::FileExt;

    const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
    const ERESTARTSYS: i64 = 512;
    const ERESTARTNOINTR: i64 = 513;
    const ERESTARTNOHAND: i64 = 514;
    const ERESTART_RESTARTBLOCK: i64 = 516;
    const NR_RESTART_SYSCALL: u64 = 219;

    fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
        // SAFETY: the requests used here take an address/data pair we own or plain integers.
        let r = unsafe { libc::ptrace(req, tid, addr, data) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// Waits for the next stop of `tid`; returns its wait status.
    fn wait_stop(tid: i32) -> io::Result<i32> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our tracee.
            let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Err(io::Error::other("the process ended during injection"));
            }
            return Ok(status);
        }
    }

    /// A seized thread, its registers saved; restored and detached on drop.
    pub struct Seized {
        tid: i32,
        saved: libc::user_regs_struct,
        syscall_ip: u64,
        /// A signal that arrived while we held the thread, delivered on detach.
        pending: i32,
    }

    impl Seized {
        pub fn attach(tid: i32) -> io::Result<Seized> {
            ptrace(
                libc::PTRACE_SEIZE,
                tid,
                0,
                libc::PTRACE_O_TRACESYSGOOD as usize,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("PTRACE_SEIZE {tid}: {e}")))?;
            let mut s = Seized {
                tid,
                // SAFETY: plain integers; overwritten below before use.
                saved: unsafe { std::mem::zeroed() },
                syscall_ip: 0,
                pending: 0,
            };
            ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0)?;
            let st = wait_stop(tid)?;
            let (sig, event) = (libc::WSTOPSIG(st), st >> 16);
            if !(sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_STOP) && event == 0 {
                // A signal-delivery stop came first: hold the signal back until we are done.
                s.pending = sig;
            }
            let mut regs: libc::user_regs_struct = s.saved;
            ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _ as usize)?;
            // Stopped inside a system call: the `syscall` instruction is just before rip. Resume
            // as the kernel would have (restart the call), since we run our own in between.
            let in_syscall = regs.orig_rax as i64 >= 0;
            let mut ip = 0;
            if in_syscall && read_mem(tid, regs.rip - 2, 2)? == SYSCALL_INSN {
                ip = regs.rip - 2;
            }
            if in_syscall {
                match -(regs.rax as i64) {
                    ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                        regs.rax = regs.orig_rax;
                        regs.rip -= 2;
                    }
                    ERESTART_RESTARTBLOCK => {
                        regs.rax = NR_RESTART_SYSCALL;
                        regs.rip -= 2;
                    }
                    _ => {}
                }
            }
            regs.orig_rax = u64::MAX;
            s.saved = regs;
            s.syscall_ip = if ip != 0 { ip } else { find_syscall_insn(tid)? };
            Ok(s)
        }

        /// Runs syscall `nr` with `args` in the thread; returns its raw result (-errno on
        /// failure).
        pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
            let mut regs = self.saved;
            regs.rax = nr as u64;
            regs.orig_rax = u64::MAX; // no syscall restart on the way back to user mode
            regs.rip = self.syscall_ip;
            regs.rdi = args[0];
            regs.rsi = args[1];
            regs.rdx = args[2];
            regs.r10 = args[3];
            regs.r8 = args[4];
            regs.r9 = args[5];
            ptrace(
                libc::PTRACE_SETREGS,
                self.tid,
                0,
                &regs as *const _ as usize,
            )?;
            // Entry stop, then exit stop.
            for _ in 0..2 {
                loop {
                    ptrace(libc::PTRACE_SYSCALL, self.tid, 0, 0)?;
                    let st = wait_stop(self.tid)?;
                    let sig = libc::WSTOPSIG(st);
                    if sig == libc::SIGTRAP | 0x80 {
                        break;
                    }
                    if st >> 16 == 0 && sig != libc::SIGTRAP {
                        self.pending = sig;
                    }
                }
            }
            ptrace(
                libc::PTRACE_GETREGS,
                self.tid,
                0,
                &mut regs as *mut _ as usize,
            )?;
            Ok(regs.rax as i64)
        }
    }

    impl Drop for Seized {
        fn drop(&mut self) {
            let _ = ptrace(
                libc::PTRACE_SETREGS,
                self.tid,
                0,
                &self.saved as *const _ as usize,
            );
            let _ = ptrace(libc::PTRACE_DETACH, self.tid, 0, self.pending as usize);
        }
    }

    fn read_mem(tid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = std::fs::File::open(format!("/proc/{tid}/mem"))?;
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, addr)?;
        Ok(b)
    }

    /// A `syscall` instruction in the vDSO (its fallback paths make real system calls).
    fn find_syscall_insn(tid: i32) -> io::Result<u64> {
        let maps = std::fs::read_to_string(format!("/proc/{tid}/maps"))?;
        for line in maps.lines().filter(|l| l.ends_with("[vdso]")) {
            let Some((a, b)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
            else {
                continue;
            };
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            let code = read_mem(tid, a, (b - a) as usize)?;
            if let Some(i) = code.windows(2).position(|w| w == SYSCALL_INSN) {
                return Ok(a + i as u64);
            }
        }
        Err(io::Error::other("no syscall instruction found in the vDSO"))
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86_64::Seized;

/// Runs one system call in process `pid` (its main thread) and returns its raw result.
#[cfg(target_arch = "x86_64")]
pub fn syscall_in(pid: i32, nr: i64, args: [u64; 6]) -> io::Result<i64> {
    Seized::attach(pid)?.syscall(nr, args)
}

/// A copy of descriptor `fd` of process `pid` (pidfd_getfd).
pub fn take_fd(pid: i32, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; non-negative results are descriptors we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

/// Creates a userfaultfd inside process `pid`, takes a copy, and closes the process's own
/// descriptor again (so that the uffd, and its tracking, ends with ours). Returns our copy and
/// the descriptor number it had in `pid`.
#[cfg(target_arch = "x86_64")]
pub fn make_uffd_in(pid: i32) -> io::Result<(OwnedFd, RawFd)> {
    const UFFD_USER_MODE_ONLY: u64 = 1;
    let mut s = Seized::attach(pid)?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let mut fd = s.syscall(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if fd == -(libc::EPERM as i64) {
        fd = s.syscall(
            libc::SYS_userfaultfd,
            [flags | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0],
        )?;
    }
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd as i32));
    }
    let ours = take_fd(pid, fd as RawFd);
    let closed = s.syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
    let ours = ours?;
    if closed? != 0 {
        return Err(io::Error::other(
            "could not close the injected uffd in the process",
        ));
    }
    Ok((ours, fd as RawFd))
}

#[cfg(not(target_arch = "x86_64"))]
pub fn make_uffd_in(_pid: i32) -> io::Result<(OwnedFd, RawFd)> {
    Err(io::Error::other(
        "syscall injection is implemented for x86-64 only",
    ))
}

#[cfg(not(target_arch = "x86_64"))]
pub fn syscall_in(_pid: i32, _nr: i64, _args: [u64; 6]) -> io::Result<i64> {
    Err(io::Error::other(
        "syscall injection is implemented for x86-64 only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn state(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit(") ")
            .next()
            .unwrap()
            .chars()
            .take(1)
            .collect()
    }

    #[test]
    fn a_syscall_runs_in_a_blocked_process_which_then_carries_on() {
        // `sleep` blocks in clock_nanosleep: the injected calls run in between, and the sleep
        // resumes (restarted) afterwards.
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let t = std::time::Instant::now();
        while state(child.id()) != "S" {
            assert!(t.elapsed().as_secs() < 10, "sleep never went to sleep");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let got = syscall_in(pid, libc::SYS_getpid, [0; 6]).unwrap();
        assert_eq!(got, pid as i64, "getpid ran in the child");
        let mut s = Seized::attach(pid).unwrap();
        let fd = s.syscall(libc::SYS_dup, [0, 0, 0, 0, 0, 0]).unwrap();
        assert!(fd > 2, "dup(0) in the child: {fd}");
        assert_eq!(
            s.syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])
                .unwrap(),
            0
        );
        let bad = s.syscall(libc::SYS_close, [9999, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(bad, -(libc::EBADF as i64), "errors come back as -errno");
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child still sleeps"
        );
        assert_ne!(state(child.id()), "t", "not left stopped");
        let (uffd, fd) = make_uffd_in(pid).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", uffd.as_raw_fd())).unwrap();
        assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
        assert!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_err(),
            "the child's copy is closed again"
        );
        assert!(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        let _ = child.wait();
    }
}
