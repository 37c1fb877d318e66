//! The primary's Xen: `xc_domain_save(..., XC_STREAM_REMUS)` on its own thread, its callbacks
//! turned into engine events, its stream drained into local staging ([`super::drain`]).
//!
//! Per checkpoint, libxenguest calls `suspend` (it waits there until the engine pauses: the
//! engine, not libxenguest, keeps the cadence), writes the dirty pages and a CHECKPOINT record,
//! calls `postcopy` (it waits there: the engine cuts the staged stream, then resumes the
//! domain) and `checkpoint` (returns at once: acks, output release and failure handling are
//! the engine's, as for QEMU). So the suspend covers the capture into memory only; the
//! checkpoint goes to the backup afterwards, in remus-proto frames between heartbeats.

use super::drain::Drain;
use super::{ffi, Xc};
use crate::heartbeat::SharedWriter;
use crate::hv::{Guest, PrimaryHv, Sent, Staged};
use crate::wire::{Msg, XEN_STREAM_CHUNK};
use anyhow::{anyhow, bail, Result};
use remus_proto::Epoch;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_void};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// From the engine to the callbacks.
enum Cmd {
    Suspend,
    Resume,
}

/// From the callbacks (and the save thread) to the engine.
enum Ev {
    /// libxenguest waits in `suspend` for the engine.
    AtSuspend,
    Suspended(Result<(), String>),
    /// libxenguest waits in `postcopy`: the checkpoint's records are all written.
    AtPostcopy,
    Resumed(Result<(), String>),
    /// `xc_domain_save` returned.
    Ended(i32),
}

struct Ctx {
    xc: Xc,
    domid: u32,
    cmds: Receiver<Cmd>,
    events: Sender<Ev>,
    /// Between a successful suspend and its resume.
    suspended: std::cell::Cell<bool>,
}

impl Ctx {
    /// Reports `ev` and waits for the engine's command; `None` once the engine is gone.
    fn ask(&self, ev: Ev) -> Option<Cmd> {
        self.events.send(ev).ok()?;
        self.cmds.recv().ok()
    }
}

unsafe fn ctx<'a>(data: *mut c_void) -> &'a Ctx {
    // SAFETY (caller): `data` is the Ctx passed in save_callbacks, alive for the whole call.
    unsafe { &*(data as *const Ctx) }
}

unsafe extern "C" fn on_suspend(data: *mut c_void) -> c_int {
    // SAFETY: see ctx().
    let c = unsafe { ctx(data) };
    let Some(Cmd::Suspend) = c.ask(Ev::AtSuspend) else {
        // The engine is gone (protection ended): no more checkpoints, domain left running.
        return 0;
    };
    let r = c.xc.suspend(c.domid).map_err(|e| e.to_string());
    let ok = r.is_ok();
    c.suspended.set(ok);
    let _ = c.events.send(Ev::Suspended(r));
    ok as c_int
}

unsafe extern "C" fn on_postcopy(data: *mut c_void) -> c_int {
    // SAFETY: see ctx().
    let c = unsafe { ctx(data) };
    // Whatever the engine says (or if it is gone), the domain must not stay suspended.
    let _ = c.ask(Ev::AtPostcopy);
    let r = c.xc.resume(c.domid).map_err(|e| e.to_string());
    let ok = r.is_ok();
    if ok {
        c.suspended.set(false);
    }
    let _ = c.events.send(Ev::Resumed(r));
    if ok {
        1
    } else {
        -1
    }
}

unsafe extern "C" fn on_checkpoint(data: *mut c_void) -> c_int {
    // SAFETY: see ctx().
    let c = unsafe { ctx(data) };
    // Another checkpoint unless the engine is gone. Commands never wait here: `suspend`
    // takes the next one.
    match c.cmds.try_recv() {
        Err(TryRecvError::Disconnected) => 0,
        _ => 1,
    }
}

pub struct Xen {
    domid: u32,
    xc: Xc,
    cmds: Option<Sender<Cmd>>,
    events: Receiver<Ev>,
    drain: Arc<Drain>,
}

pub struct Checkpoint {
    epoch: Epoch,
    stream: Vec<u8>,
}

impl Staged for Checkpoint {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
    fn pages(&self) -> usize {
        // libxenguest's records are opaque here: its log-dirty bitmap is its own.
        0
    }
    fn raw_bytes(&self) -> usize {
        self.stream.len()
    }
}

impl Xen {
    /// Starts `xc_domain_save` for `domid` on its own thread: it runs the live pre-copy into
    /// staging, then waits in `suspend` for the engine's first checkpoint.
    pub fn start(domid: u32) -> Result<Xen> {
        let xc = Xc::open()?;
        let (xen_end, drain_end) = UnixStream::pair()?;
        let drain = Drain::start(drain_end)?;
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let ended = ev_tx.clone();
        super::spawn_libxc(
            "xc_domain_save",
            move |xc| {
                let ctx = Ctx {
                    xc,
                    domid,
                    cmds: cmd_rx,
                    events: ev_tx,
                    suspended: false.into(),
                };
                save(&ctx, &xen_end)
            },
            move |rc| {
                let _ = ended.send(Ev::Ended(rc));
            },
        )?;
        Ok(Xen {
            domid,
            xc,
            cmds: Some(cmd_tx),
            events: ev_rx,
            drain,
        })
    }

    fn send(&self, c: Cmd) -> Result<()> {
        self.cmds
            .as_ref()
            .and_then(|t| t.send(c).ok())
            .ok_or_else(|| anyhow!("xc_domain_save has ended"))
    }

    /// The next event from the save thread; its end is an error.
    fn next(&self) -> Result<Ev> {
        match self.events.recv() {
            Ok(Ev::Ended(rc)) => bail!("xc_domain_save ended (rc {rc})"),
            Ok(ev) => Ok(ev),
            Err(_) => bail!("xc_domain_save's thread ended"),
        }
    }
}

/// Runs `xc_domain_save` to its end; the domain is left running whatever happened.
fn save(c: &Ctx, fd: &UnixStream) -> c_int {
    // SAFETY: an all-zero save_callbacks is valid (every callback absent); we fill ours in.
    let mut cbs: ffi::save_callbacks = unsafe { std::mem::zeroed() };
    cbs.suspend = Some(on_suspend);
    cbs.postcopy = Some(on_postcopy);
    cbs.checkpoint = Some(on_checkpoint);
    cbs.data = c as *const Ctx as *mut c_void;
    const XCFLAGS_LIVE: u32 = 1;
    // SAFETY: valid handle and socket; callbacks and their data outlive the call.
    let rc = unsafe {
        ffi::xc_domain_save(
            c.xc.0,
            fd.as_raw_fd(),
            c.domid,
            XCFLAGS_LIVE,
            &mut cbs,
            ffi::xc_stream_type_t::XC_STREAM_REMUS,
            -1,
        )
    };
    // A failure between suspend and postcopy leaves the domain suspended.
    if c.suspended.get() {
        let _ = c.xc.resume(c.domid);
    }
    rc
}

impl PrimaryHv for Xen {
    type Checkpoint = Checkpoint;

    fn guest(&self) -> Guest {
        // The backup's libxenguest learns the domain's size from the stream itself.
        Guest {
            driver: "xen",
            ram_size: 0,
        }
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        // libxenguest's stream is one sequence: the backup must feed it every checkpoint, in
        // order. With several in flight, the backup's core may supersede a staged checkpoint
        // by a later one, and the superseded one is never applied.
        if depth != 1 {
            bail!("the Xen driver needs pipeline depth 1 (libxenguest's stream cannot skip a checkpoint)");
        }
        Ok(())
    }

    fn describe(&self, st: &mut crate::status::Status) {
        st.dirty_tracker = "xen-log-dirty".into();
        st.dirty_tracker_reason = format!(
            "libxenguest's log-dirty mode (xc_domain_save, domain {})",
            self.domid
        );
    }

    fn pause(&mut self) -> Result<Instant> {
        // The first time, libxenguest is still in its live pre-copy: the pause starts when
        // it asks for the suspend.
        match self.next()? {
            Ev::AtSuspend => {}
            _ => bail!("libxenguest out of step: expected its suspend callback"),
        }
        let t = Instant::now();
        self.send(Cmd::Suspend)?;
        match self.next()? {
            Ev::Suspended(Ok(())) => Ok(t),
            Ev::Suspended(Err(e)) => bail!("suspending domain {}: {e}", self.domid),
            _ => bail!("libxenguest out of step: expected the suspend's outcome"),
        }
    }

    fn capture(&mut self, close: Epoch) -> Result<Checkpoint> {
        match self.next()? {
            Ev::AtPostcopy => {}
            _ => bail!("libxenguest out of step: expected its postcopy callback"),
        }
        Ok(Checkpoint {
            epoch: close,
            stream: self.drain.cut()?,
        })
    }

    fn resume(&mut self) -> Result<()> {
        self.send(Cmd::Resume)?;
        match self.next()? {
            Ev::Resumed(Ok(())) => Ok(()),
            Ev::Resumed(Err(e)) => bail!("resuming domain {}: {e}", self.domid),
            _ => bail!("libxenguest out of step: expected the resume's outcome"),
        }
    }

    fn ship(&mut self, out: &SharedWriter, c: &Checkpoint) -> std::io::Result<Sent> {
        let put = |m: Msg| m.write_to(&mut *crate::heartbeat::lock(out));
        put(Msg::Begin(c.epoch))?;
        for chunk in c.stream.chunks(XEN_STREAM_CHUNK) {
            put(Msg::XenStream(c.epoch, chunk.to_vec()))?;
        }
        put(Msg::End {
            epoch: c.epoch,
            pages: 0,
            device_bytes: c.stream.len() as u64,
        })?;
        crate::heartbeat::lock(out).flush()?;
        Ok(Sent {
            wire_bytes: c.stream.len(),
            compress: Duration::ZERO,
        })
    }

    fn shipped(&mut self, _c: Checkpoint) {}

    fn halt(&mut self) -> Result<()> {
        Ok(self.xc.pause(self.domid)?)
    }

    fn unhalt(&mut self) -> Result<()> {
        Ok(self.xc.unpause(self.domid)?)
    }
}

impl Drop for Xen {
    fn drop(&mut self) {
        // The save thread's callbacks see the engine gone: no further checkpoint, and a
        // suspended domain is resumed (by `postcopy`, or once xc_domain_save returns). The
        // process may exit only once xc_domain_save has returned: exiting while libxenguest is
        // still inside the call (writing its stream, logging) races the C runtime's exit
        // handlers against it. A call that does not return within the deadline is left.
        self.cmds = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                // Its end, or its thread already gone (the end was read by `next`), or the
                // deadline.
                Ok(Ev::Ended(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
