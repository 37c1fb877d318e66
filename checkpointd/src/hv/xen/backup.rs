//! The backup's Xen: `xc_domain_restore(..., XC_STREAM_REMUS)` on its own thread, fed one
//! whole, committed checkpoint at a time. The engine stages each checkpoint until its END and
//! its disk commit, so libxenguest never sees part of one; [`BackupHv::apply`] returns once
//! libxenguest has called back for it (it holds that checkpoint: the restore point).

use super::{ffi, Xc};
use crate::hv::BackupHv;
use crate::wire::{Hello, Msg};
use anyhow::{bail, Result};
use remus_proto::Epoch;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_ulong, c_void};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};

enum Ev {
    /// libxenguest has a whole checkpoint (its `checkpoint` callback).
    Checkpoint,
    /// `xc_domain_restore` returned.
    Ended(i32),
}

pub struct XenBackup {
    domid: u32,
    xc: Xc,
    /// What libxenguest reads.
    feed: UnixStream,
    events: Receiver<Ev>,
}

/// A checkpoint of libxenguest's stream, staged until committed.
#[derive(Default)]
pub struct Staging {
    stream: Vec<u8>,
}

unsafe extern "C" fn on_checkpoint(data: *mut c_void) -> c_int {
    // SAFETY: `data` is the Sender passed in restore_callbacks, alive for the whole call.
    let tx = unsafe { &*(data as *const Sender<Ev>) };
    // The engine committed the disk before it fed this checkpoint; a failover comes as the
    // end of the stream, so this never asks for one.
    match tx.send(Ev::Checkpoint) {
        Ok(()) => ffi::XGR_CHECKPOINT_SUCCESS as c_int,
        Err(_) => ffi::XGR_CHECKPOINT_ERROR as c_int,
    }
}

impl XenBackup {
    /// Checks the primary's HELLO and starts `xc_domain_restore` into domain `domid` (created
    /// by the toolstack), waiting for the first checkpoint.
    pub fn open(domid: u32, hello: &Hello) -> Result<XenBackup> {
        if hello.version != crate::wire::VERSION || hello.driver != "xen" {
            bail!(
                "incompatible primary: protocol {} (ours {}), driver {:?} (ours \"xen\")",
                hello.version,
                crate::wire::VERSION,
                hello.driver
            );
        }
        let xc = Xc::open()?;
        let (xen_end, feed) = UnixStream::pair()?;
        let (tx, events) = mpsc::channel();
        let ended = tx.clone();
        super::spawn_libxc(
            "xc_domain_restore",
            move |xc| restore(&xc, &xen_end, domid, &tx),
            move |rc| {
                let _ = ended.send(Ev::Ended(rc));
            },
        )?;
        Ok(XenBackup {
            domid,
            xc,
            feed,
            events,
        })
    }
}

fn restore(xc: &Xc, fd: &UnixStream, domid: u32, tx: &Sender<Ev>) -> c_int {
    // SAFETY: an all-zero restore_callbacks is valid (every callback absent).
    let mut cbs: ffi::restore_callbacks = unsafe { std::mem::zeroed() };
    cbs.checkpoint = Some(on_checkpoint);
    cbs.data = tx as *const Sender<Ev> as *mut c_void;
    let (mut store_mfn, mut console_mfn): (c_ulong, c_ulong) = (0, 0);
    // SAFETY: valid handle and fd; out-pointers and callbacks outlive the call. The event
    // channels and backend domains would come from the toolstack that created the domain.
    unsafe {
        ffi::xc_domain_restore(
            xc.0,
            fd.as_raw_fd(),
            domid,
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
    }
}

impl BackupHv for XenBackup {
    type Staging = Staging;
    /// The checkpoint the domain was resumed from.
    type Running = Epoch;

    fn stage(&mut self, open: Option<(Epoch, &mut Staging)>, m: Msg) -> Result<(), String> {
        match (open, m) {
            (Some((r, s)), Msg::XenStream(e, bytes)) if r == e => {
                s.stream.extend_from_slice(&bytes);
                Ok(())
            }
            (_, Msg::XenStream(..)) => Err("Xen stream of no open checkpoint".into()),
            _ => Err("a frame that is no part of a Xen checkpoint".into()),
        }
    }

    fn finish(
        &mut self,
        epoch: Epoch,
        s: &mut Staging,
        pages: u64,
        stream_bytes: u64,
    ) -> Result<(), String> {
        if pages != 0 || s.stream.len() as u64 != stream_bytes {
            return Err(format!("checkpoint {epoch} incomplete"));
        }
        Ok(())
    }

    fn apply(&mut self, epoch: Epoch, s: Staging) -> Result<(u64, u64)> {
        self.feed.write_all(&s.stream)?;
        match self.events.recv() {
            Ok(Ev::Checkpoint) => Ok((0, s.stream.len() as u64)),
            Ok(Ev::Ended(rc)) => {
                bail!("xc_domain_restore ended (rc {rc}) before it took checkpoint {epoch}")
            }
            Err(_) => bail!("xc_domain_restore's thread ended"),
        }
    }

    fn activate(&mut self, epoch: Epoch) -> Result<Epoch> {
        // The end of the stream: libxenguest completes from the last whole checkpoint (the
        // engine's restore point: it never saw a later byte) and returns, domain paused.
        self.feed.shutdown(std::net::Shutdown::Write)?;
        match self.events.recv() {
            Ok(Ev::Ended(0)) => {}
            Ok(Ev::Checkpoint) => bail!("libxenguest took a checkpoint it was never fed"),
            Ok(Ev::Ended(rc)) => bail!("xc_domain_restore failed (rc {rc})"),
            Err(_) => bail!("xc_domain_restore's thread ended"),
        }
        self.xc.unpause(self.domid)?;
        Ok(epoch)
    }
}
