//! A small tmpfs mounted for one test: a real file system that fills up (ENOSPC) and that has
//! no FALLOC_FL_ZERO_RANGE. Mounted and resized with mount(2) directly (no helper program);
//! unmounted (lazily, so a process still holding a file cannot keep it) when dropped, also when
//! the test panics.

use anyhow::{bail, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Tmpfs {
    pub dir: PathBuf,
}

fn cstr(s: &[u8]) -> Result<CString> {
    Ok(CString::new(s)?)
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on a new directory `dir`.
    pub fn mount(dir: &Path, mib: u64) -> Result<Tmpfs> {
        crate::netns::require_root();
        std::fs::create_dir_all(dir)?;
        let t = Tmpfs {
            dir: dir.to_path_buf(),
        };
        t.call(0, mib)?;
        Ok(t)
    }

    /// Changes the size limit (contents stay).
    pub fn resize(&self, mib: u64) -> Result<()> {
        self.call(libc::MS_REMOUNT, mib)
    }

    fn call(&self, flags: libc::c_ulong, mib: u64) -> Result<()> {
        let target = cstr(self.dir.as_os_str().as_bytes())?;
        let fstype = cstr(b"tmpfs")?;
        let data = cstr(format!("size={mib}m,mode=0700").as_bytes())?;
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr() as *const libc::c_void,
            )
        };
        if r != 0 {
            bail!(
                "mount tmpfs on {}: {}",
                self.dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Bytes in use (statfs).
    pub fn used(&self) -> Result<u64> {
        let target = cstr(self.dir.as_os_str().as_bytes())?;
        // SAFETY: an all-zero statfs is a valid out-buffer.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out-pointer.
        if unsafe { libc::statfs(target.as_ptr(), &mut st) } != 0 {
            bail!(
                "statfs {}: {}",
                self.dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok((st.f_blocks - st.f_bfree) * st.f_bsize as u64)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = cstr(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a valid path; MNT_DETACH only detaches our own mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
