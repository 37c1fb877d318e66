//! Guest RAM in a shared file, mapped read-only by checkpointd. Finding the pages that changed
//! since the last checkpoint is [`crate::dirty`]'s job.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub use crate::dirty::compare::ComparingTracker;
pub use crate::dirty::{DirtyPage, DirtyTracker, PAGE};

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
