//! `libremus_uffd_shim.so`: preloaded into QEMU (`LD_PRELOAD`) by `remus protect`, it creates
//! a userfaultfd inside QEMU's process before QEMU's `main` runs, and leaves it there unused.
//!
//! Why: checkpointd's uffd dirty tracker needs a uffd made by QEMU's process (a uffd acts only
//! on the memory of the process that created it). checkpointd finds it among QEMU's
//! descriptors (`/proc/PID/fd`, `anon_inode:[userfaultfd]`, not yet initialised), takes a copy
//! with `pidfd_getfd`, and does everything else itself (UFFDIO_API with WP_ASYNC, registering
//! the guest RAM, PAGEMAP_SCAN). Nothing in QEMU ever reads this descriptor, and with WP_ASYNC
//! no fault ever waits on it. Without the shim checkpointd injects the same syscall with
//! ptrace, which needs ptrace rights over QEMU and stops one of its threads briefly.
//!
//! A Rust cdylib rather than a C file: cargo builds it with the rest (no C compiler step), and
//! the constructor is one entry in `.init_array` (what C's `__attribute__((constructor))` makes),
//! too small to take a crate for.

/// Runs when the dynamic loader loads the library, before QEMU's `main`.
#[used]
#[link_section = ".init_array"]
static MAKE_UFFD_AT_LOAD: extern "C" fn() = make_uffd;

const UFFD_USER_MODE_ONLY: libc::c_long = 1;

extern "C" fn make_uffd() {
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_long;
    // SAFETY: plain system calls; the descriptor is deliberately left open for checkpointd.
    unsafe {
        let mut fd = libc::syscall(libc::SYS_userfaultfd, flags);
        if fd < 0 && *libc::__errno_location() == libc::EPERM {
            // vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE: user-mode faults only, which
            // is all tracking QEMU's own writes needs.
            fd = libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
        }
        if fd < 0 {
            let msg = b"remus-uffd-shim: userfaultfd failed; checkpointd will use another dirty tracker\n";
            libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        }
    }
}
