//! The Xen hypervisor (cargo feature `xen`): Remus over libxenguest's checkpointed
//! save/restore, driven by the same engine as QEMU.
//!
//! * [`primary`]: `xc_domain_save(..., XC_STREAM_REMUS)` on its own thread; its callbacks are
//!   the engine's pause / capture / resume, its stream is staged in memory ([`drain`]) and
//!   shipped afterwards in remus-proto frames.
//! * [`backup`]: checkpoints staged whole by the engine; a committed one is fed to
//!   `xc_domain_restore(..., XC_STREAM_REMUS)` (on its own thread), which calls back when it
//!   has it. Failover ends its stream: libxenguest completes from the last whole checkpoint and
//!   returns with the domain paused; it is unpaused once diskrep is active.
//!
//! This has not run on a Xen host (there is none here). It is built against Debian's real
//! headers and libraries and tested with a stand-in libxenctrl/libxenguest that calls the
//! callbacks in the order xg_sr_save.c / xg_sr_restore.c do.

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/xen_bindings.rs"));
}

pub mod backup;
pub mod drain;
pub mod primary;

use std::io;

/// An open `xc_interface`, closed on drop.
pub struct Xc(*mut ffi::xc_interface);

impl Xc {
    pub fn open() -> io::Result<Xc> {
        // SAFETY: null loggers select libxc's defaults; the handle is checked.
        let h = unsafe { ffi::xc_interface_open(std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if h.is_null() {
            return Err(io::Error::other(
                "xc_interface_open failed (not dom0, or no Xen hypervisor)",
            ));
        }
        Ok(Xc(h))
    }

    pub fn pause(&self, dom: u32) -> io::Result<()> {
        // SAFETY: valid handle.
        if unsafe { ffi::xc_domain_pause(self.0, dom) } != 0 {
            return Err(io::Error::other(format!("xc_domain_pause({dom}) failed")));
        }
        Ok(())
    }

    /// Suspends the domain (SHUTDOWN_suspend): what xc_domain_save checks for before it takes
    /// the final dirty pages of a checkpoint.
    pub fn suspend(&self, dom: u32) -> io::Result<()> {
        // SAFETY: valid handle.
        if unsafe { ffi::xc_domain_shutdown(self.0, dom, ffi::SHUTDOWN_suspend as i32) } != 0 {
            return Err(io::Error::other(format!("suspending domain {dom} failed")));
        }
        Ok(())
    }

    /// Resumes a suspended domain cooperatively (fast resume, as Remus does).
    pub fn resume(&self, dom: u32) -> io::Result<()> {
        // SAFETY: valid handle.
        if unsafe { ffi::xc_domain_resume(self.0, dom, 1) } != 0 {
            return Err(io::Error::other(format!("resuming domain {dom} failed")));
        }
        Ok(())
    }

    pub fn unpause(&self, dom: u32) -> io::Result<()> {
        // SAFETY: valid handle.
        if unsafe { ffi::xc_domain_unpause(self.0, dom) } != 0 {
            return Err(io::Error::other(format!("xc_domain_unpause({dom}) failed")));
        }
        Ok(())
    }
}

/// Runs one blocking libxenguest call (`xc_domain_save` / `xc_domain_restore`, which return
/// only when the stream ends) on a thread of its own, with an `xc_interface` of its own (libxc
/// handles are not shared between threads), and hands its return code to `ended` (-1 when no
/// handle could be opened).
pub(super) fn spawn_libxc(
    name: &str,
    call: impl FnOnce(Xc) -> std::os::raw::c_int + Send + 'static,
    ended: impl FnOnce(std::os::raw::c_int) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rc = match Xc::open() {
                Ok(xc) => call(xc),
                Err(e) => {
                    tracing::error!("{e}");
                    -1
                }
            };
            ended(rc);
        })
        .map(|_| ())
}

impl Drop for Xc {
    fn drop(&mut self) {
        // SAFETY: closing the handle we opened.
        unsafe { ffi::xc_interface_close(self.0) };
    }
}
