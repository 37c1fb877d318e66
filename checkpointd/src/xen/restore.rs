//! The backup side of the Xen driver: `xc_domain_restore` with a Remus checkpoint callback.

use super::{ffi, Xc};
use crate::peers::Peer;
use crate::wire::Msg;
use anyhow::{Context, Result};
use remus_proto::Epoch;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_ulong, c_void};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

pub struct RestoreOpts {
    pub domid: u32,
    pub listen: String,
    pub diskrep: Option<PathBuf>,
    /// The checkpoint stream's key (or the explicit opt-out).
    pub security: remus_proto::auth::Security,
}

struct Ctx {
    diskrep: Peer,
    acks: std::io::BufWriter<remus_proto::auth::blocking::SealedWriter<TcpStream>>,
    next: Epoch,
    committed: Option<Epoch>,
    error: Option<String>,
    /// diskrep could not commit an epoch: its image may hold part of it, so nothing may be
    /// resumed on it.
    disk_failed: bool,
}

unsafe extern "C" fn on_checkpoint(data: *mut c_void) -> c_int {
    // SAFETY: `data` is the Ctx passed in restore_callbacks, alive for the whole call.
    let c = unsafe { &mut *(data as *mut Ctx) };
    let e = c.next;
    // libxenguest has applied checkpoint e to the paused domain; its disk must match before
    // the primary may release e's output.
    if let Err(err) = c.diskrep.request(&format!("commit {e}")) {
        c.disk_failed = true;
        c.error = Some(format!("checkpoint {e}: the disk commit failed: {err}"));
        return ffi::XGR_CHECKPOINT_ERROR as c_int;
    }
    let r = Msg::Ack(e)
        .write_to(&mut c.acks)
        .and_then(|_| c.acks.flush());
    match r {
        Ok(()) => {
            c.committed = Some(e);
            c.next = e.next();
            ffi::XGR_CHECKPOINT_SUCCESS as c_int
        }
        Err(err) => {
            c.error = Some(format!("checkpoint {e}: {err}"));
            ffi::XGR_CHECKPOINT_ERROR as c_int
        }
    }
}

/// Receives one primary's stream; when it ends, activates diskrep and unpauses the domain.
/// Returns the last committed epoch.
pub fn run(opts: RestoreOpts) -> Result<Option<Epoch>> {
    let xc = Xc::open()?;
    let listener =
        TcpListener::bind(&opts.listen).with_context(|| format!("listen on {}", opts.listen))?;
    // Only a primary that proves the key is taken (see crate::link).
    let link = crate::link::accept(
        listener,
        &opts.security,
        crate::link::handshake_timeout(std::time::Duration::from_millis(300)),
        std::sync::Arc::new(|_| {}),
    )?;
    tracing::info!(peer = %link.peer, "primary connected (Xen stream)");
    let mut hs = link.reader;
    let first = match Msg::read_from(&mut hs)? {
        Some(Msg::Hello(h)) if h.version == crate::wire::VERSION && h.driver == "xen" => {
            Epoch(h.first_epoch)
        }
        other => anyhow::bail!("expected a remus HELLO before the Xen stream, got {other:?}"),
    };
    // libxenguest reads a plain descriptor: one end of a socket pair, fed from the
    // authenticated link (only bytes that passed their check reach it).
    let (xen_end, relay_end) = UnixStream::pair()?;
    std::thread::Builder::new()
        .name("xen-relay".into())
        .spawn(move || {
            if let Err(e) = crate::link::relay(hs, &relay_end) {
                tracing::warn!("the primary's Xen stream: {e}");
            }
            // libxenguest sees the end of the stream: failover.
            let _ = relay_end.shutdown(std::net::Shutdown::Write);
        })?;
    let mut c = Box::new(Ctx {
        diskrep: Peer::connect("diskrep", opts.diskrep.as_deref())?,
        acks: link.writer,
        next: first,
        committed: None,
        error: None,
        disk_failed: false,
    });
    // SAFETY: an all-zero restore_callbacks is valid (every callback absent).
    let mut cbs: ffi::restore_callbacks = unsafe { std::mem::zeroed() };
    cbs.checkpoint = Some(on_checkpoint);
    cbs.data = &mut *c as *mut Ctx as *mut c_void;
    let (mut store_mfn, mut console_mfn): (c_ulong, c_ulong) = (0, 0);
    // SAFETY: valid handle and fd; out-pointers and callbacks outlive the call. The event
    // channels and backend domains would come from the toolstack that created the domain.
    let rc = unsafe {
        ffi::xc_domain_restore(
            xc.0,
            xen_end.as_raw_fd(),
            opts.domid,
            0,
            &mut store_mfn,
            0,
            0,
            &mut console_mfn,
            0,
            ffi::xc_stream_type_t::XC_STREAM_REMUS,
            &mut cbs,
            -1,
        )
    };
    if let Some(e) = &c.error {
        tracing::warn!("{e}");
    }
    if c.disk_failed {
        anyhow::bail!(
            "{}: the backup's disk matches no checkpoint, so the domain is not resumed",
            c.error.as_deref().unwrap_or("a disk commit failed")
        );
    }
    tracing::warn!(rc, committed = ?c.committed, "stream ended: failing over");
    if c.committed.is_none() {
        anyhow::bail!("no checkpoint was ever committed: nothing consistent to resume");
    }
    c.diskrep.request("activate")?;
    xc.unpause(opts.domid)?;
    Ok(c.committed)
}
