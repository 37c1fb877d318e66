//! The uffd tracker: QEMU's guest-RAM mapping is registered write-protected on a userfaultfd
//! with `UFFD_FEATURE_WP_ASYNC`, so a write to a protected page only clears its protection
//! (the kernel resolves the fault itself; nobody waits). One `PAGEMAP_SCAN` ioctl on
//! `/proc/QEMU/pagemap` per checkpoint returns the written pages and protects them again
//! (`PM_SCAN_WP_MATCHING`). Linux ≥ 6.7.
//!
//! A uffd acts only on the memory of the process that created it, so it is created inside
//! QEMU: by the preload shim (found among QEMU's descriptors), or by a `userfaultfd` syscall
//! injected with ptrace ([`crate::inject`]). checkpointd takes a copy with `pidfd_getfd` and
//! does the rest (UFFDIO_API, UFFDIO_REGISTER) on it.
//!
//! Hand-written: the `userfaultfd` crate creates the uffd in its own process, has no WP_ASYNC,
//! and no crate wraps PAGEMAP_SCAN; the few ioctls below are the whole interface.

use super::indexed::PageSource;
use super::qemu_ram::Segment;
use super::PAGE;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// <linux/userfaultfd.h>
const UFFD_API: u64 = 0xaa;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// The final value (Linux 6.7); the early patches' 1 << 14 is now another feature and gives a
/// synchronous uffd that blocks the writer.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_API: libc::c_ulong = iowr(0xaa, 0x3f, 24);
const UFFDIO_REGISTER: libc::c_ulong = iowr(0xaa, 0x00, 32);
// <linux/fs.h>
const PAGEMAP_SCAN: libc::c_ulong = iowr(b'f' as u64, 16, std::mem::size_of::<PmScanArg>() as u64);
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Without it an unregistered range reports every page as written.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

const fn iowr(ty: u64, nr: u64, size: u64) -> libc::c_ulong {
    ((3 << 30) | (size << 16) | (ty << 8) | nr) as libc::c_ulong
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

fn ioctl<T>(fd: RawFd, req: libc::c_ulong, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is the #[repr(C)] struct this request takes, valid for the call.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// UFFDIO_API with WP_ASYNC.
fn enable_wp_async(uffd: RawFd) -> io::Result<()> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_API, &mut api).map(|_| ())
}

fn register_wp(uffd: RawFd, addr: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister {
        start: addr,
        len,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_REGISTER, &mut r).map(|_| ())
}

/// Walks `[start, end)` of the process behind `pagemap`: calls `found` with each written
/// range and write-protects it again.
fn scan(
    pagemap: &File,
    start: u64,
    end: u64,
    regions: &mut [PageRegion],
    mut found: impl FnMut(u64, u64),
) -> io::Result<()> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start,
        end,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        max_pages: 0,
        category_inverted: 0,
        category_mask: PAGE_IS_WRITTEN,
        category_anyof_mask: 0,
        return_mask: PAGE_IS_WRITTEN,
    };
    loop {
        let n = ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg)? as usize;
        for r in &regions[..n.min(regions.len())] {
            found(r.start, r.end);
        }
        if arg.walk_end >= end {
            return Ok(());
        }
        if arg.walk_end <= arg.start {
            return Err(io::Error::other(format!(
                "PAGEMAP_SCAN made no progress at {:#x}",
                arg.start
            )));
        }
        // The region buffer filled up: go on from where the walk stopped.
        arg.start = arg.walk_end;
    }
}

fn new_uffd_here() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE: user-mode faults only, which
        // is all write-protect tracking of a process's own writes needs.
        fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether this kernel has everything the tracker needs, tried for real on a page of our own:
/// a uffd with WP_ASYNC, registration in WP mode, PAGEMAP_SCAN, and a write seen by the scan.
pub fn kernel_supports() -> Result<(), String> {
    let uffd = new_uffd_here().map_err(|e| format!("userfaultfd: {e}"))?;
    enable_wp_async(uffd.as_raw_fd()).map_err(|e| {
        format!("the kernel has no UFFD_FEATURE_WP_ASYNC (Linux 6.7 added it): UFFDIO_API: {e}")
    })?;
    // SAFETY: an anonymous private page, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    let page = p as *mut u8;
    let result = (|| {
        // SAFETY: our page.
        unsafe { page.write_volatile(1) };
        register_wp(uffd.as_raw_fd(), p as u64, PAGE as u64)
            .map_err(|e| format!("UFFDIO_REGISTER (write-protect): {e}"))?;
        let pagemap =
            File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
        let mut regions = [PageRegion::default(); 4];
        let (a, b) = (p as u64, p as u64 + PAGE as u64);
        scan(&pagemap, a, b, &mut regions, |_, _| {})
            .map_err(|e| format!("the kernel has no PAGEMAP_SCAN (Linux 6.7 added it): {e}"))?;
        let mut seen = 0;
        scan(&pagemap, a, b, &mut regions, |_, _| seen += 1).map_err(|e| e.to_string())?;
        if seen != 0 {
            return Err("PAGEMAP_SCAN reports an unwritten page as written".into());
        }
        // SAFETY: our page; the write-protect fault is resolved by the kernel (WP_ASYNC).
        unsafe { page.write_volatile(2) };
        scan(&pagemap, a, b, &mut regions, |_, _| seen += 1).map_err(|e| e.to_string())?;
        if seen != 1 {
            return Err("PAGEMAP_SCAN missed a write".into());
        }
        Ok(())
    })();
    // SAFETY: unmapping our page.
    unsafe { libc::munmap(p, PAGE) };
    result
}

/// The features a uffd was initialised with (from /proc/PID/fdinfo), if it was.
fn fdinfo_features(pid: i32, fd: RawFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let api = info.lines().find_map(|l| l.strip_prefix("API:"))?;
    let features = api.trim().split(':').nth(1)?;
    u64::from_str_radix(features, 16).ok()
}

/// QEMU's descriptors that are userfaultfds we can use: not initialised yet (made by the
/// shim), or initialised with WP_ASYNC (by an earlier checkpointd run). QEMU's own postcopy
/// uffd, if any, is neither.
fn usable_uffds_in(pid: i32) -> Vec<(RawFd, bool)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:[userfaultfd]" {
            continue;
        }
        match fdinfo_features(pid, fd) {
            Some(0) => v.push((fd, false)),
            Some(f) if f & UFFD_FEATURE_WP_ASYNC != 0 => v.push((fd, true)),
            _ => {}
        }
    }
    v.sort();
    v
}

/// A usable uffd of QEMU's and how it was obtained: the shim's (or an earlier run's), or, when
/// there is none and `inject` allows, one created by a syscall injected with ptrace (QEMU's own
/// copy is closed again, so the tracking ends with checkpointd).
fn acquire(pid: i32, inject: bool) -> Result<(OwnedFd, bool, String), String> {
    if let Some(&(fd, initialised)) = usable_uffds_in(pid).first() {
        let uffd = crate::inject::take_fd(pid, fd)
            .map_err(|e| format!("pidfd_getfd of QEMU's fd {fd}: {e}"))?;
        let how = if initialised {
            format!("QEMU's uffd (fd {fd}) set up by an earlier run")
        } else {
            format!("uffd made in QEMU by the preload shim (fd {fd})")
        };
        return Ok((uffd, initialised, how));
    }
    if !inject {
        return Err("QEMU has no uffd (start it with remus-uffd-shim preloaded)".into());
    }
    let (uffd, fd) = crate::inject::make_uffd_in(pid)
        .map_err(|e| format!("QEMU has no uffd and injecting one with ptrace failed: {e}"))?;
    Ok((
        uffd,
        false,
        format!("uffd made in QEMU by a syscall injected with ptrace (its fd {fd}, closed again)"),
    ))
}

/// The written pages of QEMU's RAM mapping, from PAGEMAP_SCAN.
pub struct UffdSource {
    /// Keeps the registration alive (and ends it when checkpointd ends, if QEMU holds no copy).
    _uffd: OwnedFd,
    pagemap: File,
    segments: Vec<Segment>,
    regions: Vec<PageRegion>,
}

impl UffdSource {
    /// Sets up tracking of QEMU (`pid`)'s RAM mapping `segments`; says how the uffd was made.
    pub fn setup(
        pid: i32,
        segments: Vec<Segment>,
        inject: bool,
    ) -> Result<(UffdSource, String), String> {
        kernel_supports()?;
        let (uffd, initialised, how) = acquire(pid, inject)?;
        if !initialised {
            enable_wp_async(uffd.as_raw_fd())
                .map_err(|e| format!("UFFDIO_API on QEMU's uffd: {e}"))?;
        }
        for s in &segments {
            register_wp(uffd.as_raw_fd(), s.addr, s.pages * PAGE as u64).map_err(|e| {
                format!(
                    "UFFDIO_REGISTER of QEMU's RAM at {:#x}: {e}{}",
                    s.addr,
                    if e.raw_os_error() == Some(libc::EBUSY) {
                        " (another uffd tracks it)"
                    } else {
                        ""
                    }
                )
            })?;
        }
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| format!("/proc/{pid}/pagemap: {e}"))?;
        Ok((
            UffdSource {
                _uffd: uffd,
                pagemap,
                segments,
                regions: vec![PageRegion::default(); 4096],
            },
            how,
        ))
    }
}

impl PageSource for UffdSource {
    fn written(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
        for s in &self.segments {
            let end = s.addr + s.pages * PAGE as u64;
            scan(&self.pagemap, s.addr, end, &mut self.regions, |a, b| {
                let first = s.first_page + (a - s.addr) / PAGE as u64;
                let last = s.first_page + (b - s.addr).div_ceil(PAGE as u64);
                out.extend(first..last);
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(UFFDIO_API, 0xc018aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020aa00);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(PAGEMAP_SCAN, 0xc0606610);
    }

    #[test]
    fn the_probe_answers_on_this_kernel() {
        // Linux >= 6.7 (this project's hosts) must be supported; elsewhere the reason must name
        // what is missing.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        match kernel_supports() {
            Ok(()) => {}
            Err(e) if (major, minor) < (6, 7) => assert!(
                e.contains("WP_ASYNC") || e.contains("PAGEMAP_SCAN") || e.contains("userfaultfd"),
                "{e}"
            ),
            Err(e) => panic!("Linux {major}.{minor} has what the uffd tracker needs, but: {e}"),
        }
    }
}
