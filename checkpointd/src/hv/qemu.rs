//! The primary's QEMU: paused and resumed over QMP, its changed RAM pages found by a
//! [`DirtyTracker`] in the shared RAM file, its device state taken over QMP.

use super::{Guest, PrimaryHv, Sent, Staged};
use crate::compress;
use crate::dirty::{self, DirtyPage, DirtyTracker};
use crate::heartbeat::SharedWriter;
use crate::qmp::Qmp;
use crate::ram::{GuestRam, PAGE};
use crate::wire::{Msg, PAGES_PER_FRAME};
use anyhow::{Context, Result};
use remus_proto::Epoch;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct QemuOpts {
    pub qmp: PathBuf,
    pub ram: PathBuf,
    pub state_dir: PathBuf,
    /// XOR each dirty page with its previous copy and LZ4 it (needs pipeline depth 1).
    pub compress: bool,
    /// How dirty pages are found (`auto`: uffd, soft-dirty or comparison, the first that works).
    pub dirty_tracker: dirty::Kind,
    /// May a uffd be created inside QEMU with ptrace when QEMU has none (no preload shim)?
    pub uffd_inject: bool,
    /// Check every checkpoint's dirty set against a full comparison; a missed page is fatal.
    pub validate_dirty: bool,
    /// Which QEMU RAM blocks a checkpoint carries besides guest RAM (see device_state).
    pub ram_blocks: crate::device_state::RamBlocks,
}

pub struct Qemu {
    qmp: Qmp,
    ram: GuestRam,
    tracker: Box<dyn DirtyTracker>,
    tracker_kind: dirty::Kind,
    tracker_reason: String,
    device_state: crate::device_state::Capture,
    compress: bool,
    validate: bool,
    /// The device state of the last checkpoint shipped: compressed checkpoints send theirs as
    /// a delta against it (at depth 1 it is the backup's restore point by then).
    last_device: Option<Vec<u8>>,
}

pub struct Captured {
    epoch: Epoch,
    pages: Vec<DirtyPage>,
    device: Vec<u8>,
}

impl Staged for Captured {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
    fn pages(&self) -> usize {
        self.pages.len()
    }
    fn raw_bytes(&self) -> usize {
        self.pages.len() * PAGE + self.device.len()
    }
}

impl Qemu {
    pub fn open(opts: &QemuOpts) -> Result<Qemu> {
        let mut qmp = Qmp::connect(&opts.qmp)?;
        let ram =
            GuestRam::map(&opts.ram).with_context(|| format!("map {}", opts.ram.display()))?;
        let (tracker, tracker_kind, tracker_reason) = dirty_tracker(opts, &qmp, &ram)?;
        std::fs::create_dir_all(&opts.state_dir)?;
        let device_state = crate::device_state::Capture::new(
            &mut qmp,
            opts.ram_blocks,
            opts.state_dir.join("device-state"),
        )?;
        Ok(Qemu {
            qmp,
            ram,
            tracker,
            tracker_kind,
            tracker_reason,
            device_state,
            compress: opts.compress,
            validate: opts.validate_dirty,
            last_device: None,
        })
    }
}

impl PrimaryHv for Qemu {
    type Checkpoint = Captured;

    fn guest(&self) -> Guest {
        Guest {
            driver: "qemu",
            ram_size: self.ram.bytes().len() as u64,
        }
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        if self.compress && depth != 1 {
            anyhow::bail!("compression needs pipeline depth 1 (XOR deltas are against the previous, acknowledged checkpoint)");
        }
        Ok(())
    }

    fn describe(&self, st: &mut crate::status::Status) {
        st.dirty_tracker = self.tracker_kind.to_string();
        st.dirty_tracker_reason = self.tracker_reason.clone();
    }

    fn validates(&self) -> bool {
        self.validate
    }

    fn pause(&mut self) -> Result<Instant> {
        let t = Instant::now();
        self.qmp.execute("stop", None)?;
        Ok(t)
    }

    fn capture(&mut self, close: Epoch) -> Result<Captured> {
        let device = self.device_state.take(&mut self.qmp)?;
        let mut pages = Vec::new();
        self.tracker
            .collect(self.ram.bytes(), &mut pages)
            .context("finding the dirty pages")?;
        Ok(Captured {
            epoch: close,
            pages,
            device,
        })
    }

    fn resume(&mut self) -> Result<()> {
        self.qmp.execute("cont", None)?;
        Ok(())
    }

    fn ship(&mut self, out: &SharedWriter, c: &Captured) -> std::io::Result<Sent> {
        ship(out, c, self.compress, self.last_device.as_deref())
    }

    fn shipped(&mut self, c: Captured) {
        self.last_device = Some(c.device);
    }

    fn halt(&mut self) -> Result<()> {
        self.qmp.execute("stop", None)?;
        Ok(())
    }

    fn unhalt(&mut self) -> Result<()> {
        self.qmp.execute("cont", None)?;
        Ok(())
    }
}

/// Chooses and sets up the dirty tracker for QEMU (found as the QMP socket's peer), logs the
/// choice and why.
fn dirty_tracker(
    opts: &QemuOpts,
    qmp: &Qmp,
    ram: &GuestRam,
) -> Result<(Box<dyn DirtyTracker>, dirty::Kind, String)> {
    let len = ram.bytes().len();
    let pid = qmp
        .peer_pid()
        .context("QEMU's pid (the QMP socket's peer)")?;
    let guest = dirty::build::Guest {
        pid,
        ram: &opts.ram,
        ram_len: len,
        keep_old: opts.compress,
        inject: opts.uffd_inject,
    };
    let s = dirty::select(opts.dirty_tracker, |k| dirty::build::build(k, &guest))
        .map_err(anyhow::Error::msg)?;
    tracing::info!(tracker = %s.kind, reason = %s.reason, qemu_pid = pid, "dirty tracking");
    let tracker: Box<dyn DirtyTracker> = if opts.validate_dirty {
        tracing::warn!("--validate-dirty: every checkpoint is also compared in full (slow)");
        Box::new(dirty::validate::Validating::new(s.tracker, len))
    } else {
        s.tracker
    };
    Ok((tracker, s.kind, s.reason))
}

/// Ships one checkpoint, taking the writer's lock per frame: compressing a booting guest's
/// tens of MiB can take seconds, and the heartbeat thread must get its frames in between, or
/// the backup hears nothing and takes over from a live primary.
fn ship(
    writer: &SharedWriter,
    c: &Captured,
    compress: bool,
    last_device: Option<&[u8]>,
) -> std::io::Result<Sent> {
    let first_checkpoint = last_device.is_none();
    let put = |m: Msg| m.write_to(&mut *crate::heartbeat::lock(writer));
    let mut sent = Sent {
        wire_bytes: c.device.len(),
        compress: Duration::ZERO,
    };
    put(Msg::Begin(c.epoch))?;
    // The first checkpoint has no previous one to XOR against (its "old" pages are the zeroes
    // the backup's image starts with, but raw is as good for a full copy). Epochs are
    // consecutive, so the base of a later one is the epoch before it.
    let base = (compress && !first_checkpoint).then(|| Epoch(c.epoch.0 - 1));
    for chunk in c.pages.chunks(PAGES_PER_FRAME) {
        match base {
            Some(base) => {
                let t = Instant::now();
                let pages: Vec<(u64, compress::Encoded)> = chunk
                    .iter()
                    .map(|p| {
                        let enc = match &p.old {
                            Some(old) => compress::encode(&p.new, old),
                            None => compress::Encoded::Raw(p.new.clone()),
                        };
                        (p.idx, enc)
                    })
                    .collect();
                sent.compress += t.elapsed();
                sent.wire_bytes += pages.iter().map(|(_, e)| e.wire_len() + 12).sum::<usize>();
                put(Msg::PagesZ {
                    epoch: c.epoch,
                    base,
                    pages,
                })?;
            }
            None => {
                sent.wire_bytes += chunk.len() * (PAGE + 8);
                let pages = chunk.iter().map(|p| (p.idx, p.new.clone())).collect();
                put(Msg::Pages(c.epoch, pages))?;
            }
        }
    }
    match (base, last_device) {
        (Some(base), Some(old)) => {
            let t = Instant::now();
            let z = compress::encode_device(&c.device, old);
            sent.compress += t.elapsed();
            sent.wire_bytes = sent.wire_bytes - c.device.len() + z.len() + 8;
            put(Msg::DeviceZ {
                epoch: c.epoch,
                base,
                z,
            })?;
        }
        _ => put(Msg::Device(c.epoch, c.device.clone()))?,
    }
    put(Msg::End {
        epoch: c.epoch,
        pages: c.pages.len() as u64,
        device_bytes: c.device.len() as u64,
    })?;
    crate::heartbeat::lock(writer).flush()?;
    Ok(sent)
}
