//! The primary side of the Xen driver: `xc_domain_save` with Remus callbacks.

use super::{ffi, Xc};
use crate::peers::Peer;
use crate::wire::Msg;
use anyhow::{bail, Context, Result};
use remus_proto::Epoch;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_void};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct SaveOpts {
    pub domid: u32,
    pub backup: String,
    pub interval: Duration,
    pub ack_timeout: Duration,
    pub netbuf: Option<PathBuf>,
    pub diskrep: Option<PathBuf>,
    /// The checkpoint stream's key (or the explicit opt-out).
    pub security: remus_proto::auth::Security,
}

struct Ctx<'a> {
    xc: &'a Xc,
    domid: u32,
    netbuf: Peer,
    diskrep: Peer,
    /// The epoch the guest is running in.
    epoch: Epoch,
    last_suspend: Option<Instant>,
    interval: Duration,
    ack_timeout: Duration,
    acks: mpsc::Receiver<Epoch>,
    checkpoints: u64,
    error: Option<String>,
    /// Between a successful suspend and its postcopy: only then does a failure leave the domain
    /// suspended (the stream goes through a relay, so a dead backup is now often noticed after
    /// postcopy, at the ack).
    suspended: bool,
}

impl Ctx<'_> {
    fn suspend(&mut self) -> Result<()> {
        // Fixed cadence, measured suspend to suspend.
        if let Some(t) = self.last_suspend {
            if let Some(wait) = (t + self.interval).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        self.last_suspend = Some(Instant::now());
        self.xc.suspend(self.domid)?;
        self.suspended = true;
        let open = self.epoch.next();
        self.netbuf.request(&format!("barrier {open}"))?;
        self.diskrep.request(&format!("barrier {open}"))?;
        Ok(())
    }

    fn postcopy(&mut self) -> Result<()> {
        self.xc.resume(self.domid)?;
        self.suspended = false;
        Ok(())
    }

    /// Checkpoint `self.epoch` is flushed: wait for its ack, then release its output.
    fn checkpoint(&mut self) -> Result<()> {
        let closed = self.epoch;
        self.epoch = closed.next();
        let deadline = Instant::now() + self.ack_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(e) if e == closed => break,
                Ok(e) if e < closed => continue, // late duplicate
                Ok(e) => bail!("the backup acknowledged epoch {e}, which was never sent"),
                Err(_) => bail!("no ack for epoch {closed} within {:?}", self.ack_timeout),
            }
        }
        self.netbuf.request(&format!("release {closed}"))?;
        self.checkpoints += 1;
        Ok(())
    }
}

unsafe fn ctx<'a>(data: *mut c_void) -> &'a mut Ctx<'a> {
    // SAFETY (caller): `data` is the Ctx we passed in save_callbacks, alive for the whole call.
    unsafe { &mut *(data as *mut Ctx) }
}

unsafe extern "C" fn on_suspend(data: *mut c_void) -> c_int {
    // SAFETY: see ctx().
    let c = unsafe { ctx(data) };
    match c.suspend() {
        Ok(()) => 1,
        Err(e) => {
            c.error = Some(format!("suspend: {e:#}"));
            0
        }
    }
}

unsafe extern "C" fn on_postcopy(data: *mut c_void) -> c_int {
    // SAFETY: see ctx().
    let c = unsafe { ctx(data) };
    match c.postcopy() {
        Ok(()) => 1,
        Err(e) => {
            c.error = Some(format!("postcopy: {e:#}"));
            -1
        }
    }
}

unsafe extern "C" fn on_checkpoint(data: *mut c_void) -> c_int {
    // SAFETY: see ctx().
    let c = unsafe { ctx(data) };
    match c.checkpoint() {
        Ok(()) => 1,
        Err(e) => {
            // Stop checkpointing; the caller then runs unprotected.
            c.error = Some(format!("checkpoint: {e:#}"));
            0
        }
    }
}

/// Runs Remus for `domid` until the backup fails; returns the number of checkpoints taken.
/// On return the domain runs unprotected and netbuf passes everything.
pub fn run(opts: SaveOpts) -> Result<u64> {
    let xc = Xc::open()?;
    // The backup proves the key (and we ours) before anything is sent.
    let link = crate::link::connect(
        &opts.backup,
        &opts.security,
        crate::link::handshake_timeout(Duration::from_millis(300)),
    )
    .with_context(|| format!("connect to the backup at {}", opts.backup))?;
    let mut netbuf = Peer::connect("netbuf", opts.netbuf.as_deref())?;
    let mut diskrep = Peer::connect("diskrep", opts.diskrep.as_deref())?;
    let first = crate::peers::first_epoch(&mut netbuf, &mut diskrep)?;
    // Before libxenguest's stream: who we are and where epoch numbering starts.
    let mut out = link.writer;
    Msg::Hello(crate::wire::Hello {
        version: crate::wire::VERSION,
        ram_size: 0,
        page_size: crate::ram::PAGE as u32,
        vm: format!("xen-domain-{}", opts.domid),
        first_epoch: first.0,
        driver: "xen".into(),
        generation: None,
    })
    .write_to(&mut out)?;
    out.flush()?;
    // libxenguest writes to a plain descriptor: one end of a socket pair, whose other end is
    // relayed into the authenticated link.
    let (xen_end, relay_end) = UnixStream::pair()?;
    let tcp = link.sock;
    std::thread::Builder::new()
        .name("xen-relay".into())
        .spawn(move || {
            if let Err(e) = crate::link::relay(relay_end, out) {
                tracing::warn!("relaying the Xen stream: {e}");
            }
            let _ = tcp.shutdown(std::net::Shutdown::Write);
        })?;
    let (tx, acks) = mpsc::channel();
    let mut rd = link.reader;
    std::thread::spawn(move || {
        while let Ok(Some(m)) = Msg::read_from(&mut rd) {
            if let Msg::Ack(e) = m {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    let mut c = Box::new(Ctx {
        xc: &xc,
        domid: opts.domid,
        netbuf,
        diskrep,
        epoch: first,
        last_suspend: None,
        interval: opts.interval,
        ack_timeout: opts.ack_timeout,
        acks,
        checkpoints: 0,
        error: None,
        suspended: false,
    });
    // SAFETY: an all-zero save_callbacks is valid (every callback absent); we fill ours in.
    let mut cbs: ffi::save_callbacks = unsafe { std::mem::zeroed() };
    cbs.suspend = Some(on_suspend);
    cbs.postcopy = Some(on_postcopy);
    cbs.checkpoint = Some(on_checkpoint);
    cbs.data = &mut *c as *mut Ctx as *mut c_void;
    const XCFLAGS_LIVE: u32 = 1;
    // SAFETY: valid handle, open socket, callbacks and data outliving the call.
    let rc = unsafe {
        ffi::xc_domain_save(
            xc.0,
            xen_end.as_raw_fd(),
            opts.domid,
            XCFLAGS_LIVE,
            &mut cbs,
            ffi::xc_stream_type_t::XC_STREAM_REMUS,
            -1,
        )
    };
    let why = c
        .error
        .clone()
        .unwrap_or_else(|| format!("xc_domain_save returned {rc}"));
    tracing::warn!("checkpointing stopped: {why}; the domain continues unprotected");
    // Whatever happened, the guest runs and its output flows (a failure between suspend and
    // postcopy leaves it suspended).
    if c.suspended {
        let _ = xc.resume(opts.domid);
    }
    let _ = c.netbuf.request("release-all");
    // The relay sees the end of the stream and closes the link.
    drop(xen_end);
    Ok(c.checkpoints)
}
