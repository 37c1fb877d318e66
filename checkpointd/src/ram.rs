//! Guest RAM in a shared file, and finding the pages that changed since the last checkpoint.
//!
//! QEMU does not export its dirty log, and this host's kernel has no soft-dirty tracking, so
//! the [`ComparingTracker`] compares every page with its copy from the previous checkpoint
//! (two threads), copying changed pages into both that copy and the checkpoint. A soft-dirty
//! tracker would implement the same trait where the kernel has CONFIG_MEM_SOFT_DIRTY.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub const PAGE: usize = 4096;

/// A read-only shared mapping of the guest's RAM file.
pub struct GuestRam {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only from our side and lives as long as the struct.
unsafe impl Send for GuestRam {}
unsafe impl Sync for GuestRam {}

impl GuestRam {
    pub fn map(path: &Path) -> io::Result<GuestRam> {
        let f = OpenOptions::new().read(true).open(path)?;
        let len = f.metadata()?.len() as usize;
        if len == 0 || !len.is_multiple_of(PAGE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a RAM file ({len} bytes)", path.display()),
            ));
        }
        // SAFETY: mapping a file we opened; checked length; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestRam {
            ptr: p as *const u8,
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: valid mapping of len bytes for our lifetime. The guest may change it
        // concurrently while running; we only read it while the guest is paused.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A page that changed since the previous checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyPage {
    pub idx: u64,
    pub new: Box<[u8]>,
    /// Its contents at the previous checkpoint, when the tracker keeps them (compression).
    pub old: Option<Box<[u8]>>,
}

/// Finds changed pages. Called while the guest is paused.
pub trait DirtyTracker: Send {
    /// Appends every page changed since the last call.
    fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>);
}

pub struct ComparingTracker {
    last: Vec<u8>,
    threads: usize,
    keep_old: bool,
}

impl ComparingTracker {
    /// `last` starts zeroed: the first checkpoint carries every non-zero page (initial sync),
    /// and the backup's RAM image starts as a zero-filled file.
    pub fn new(len: usize, threads: usize, keep_old: bool) -> Self {
        ComparingTracker {
            last: vec![0u8; len],
            threads: threads.max(1),
            keep_old,
        }
    }
}

impl DirtyTracker for ComparingTracker {
    fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>) {
        let keep_old = self.keep_old;
        let pages = ram.len() / PAGE;
        let per = pages.div_ceil(self.threads);
        let chunks: Vec<(usize, &mut [u8])> = self
            .last
            .chunks_mut(per * PAGE)
            .enumerate()
            .map(|(i, c)| (i * per, c))
            .collect();
        let found: Vec<Vec<DirtyPage>> = std::thread::scope(|s| {
            let hs: Vec<_> = chunks
                .into_iter()
                .map(|(first, last)| {
                    s.spawn(move || {
                        let mut v = Vec::new();
                        for (k, old) in last.chunks_mut(PAGE).enumerate() {
                            let idx = first + k;
                            let cur = &ram[idx * PAGE..(idx + 1) * PAGE];
                            if cur != &old[..] {
                                let prev = keep_old.then(|| Box::from(&old[..]));
                                old.copy_from_slice(cur);
                                v.push(DirtyPage {
                                    idx: idx as u64,
                                    new: Box::from(cur),
                                    old: prev,
                                });
                            }
                        }
                        v
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for v in found {
            out.extend(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_changed_pages() {
        let mut ram = vec![0u8; 64 * PAGE];
        let mut t = ComparingTracker::new(ram.len(), 3, true);
        let mut out = Vec::new();
        t.collect(&ram, &mut out);
        assert!(out.is_empty(), "zero RAM: nothing to send");
        ram[5 * PAGE + 7] = 1;
        ram[63 * PAGE] = 2;
        t.collect(&ram, &mut out);
        let idx: Vec<u64> = out.iter().map(|p| p.idx).collect();
        assert_eq!(idx, vec![5, 63]);
        assert_eq!(out[0].new[7], 1);
        assert_eq!(
            out[0].old.as_deref().map(|o| o[7]),
            Some(0),
            "previous contents kept"
        );
        out.clear();
        t.collect(&ram, &mut out);
        assert!(out.is_empty(), "unchanged since last time");
    }
}
