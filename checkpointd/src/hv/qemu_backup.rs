//! The backup's QEMU: checkpoints staged in memory, applied to the committed RAM image (a
//! file) and device state; on failover a new QEMU runs on them.

use super::BackupHv;
use crate::compress::{self, Encoded};
use crate::qmp::Qmp;
use crate::wire::{Hello, Msg};
use anyhow::{bail, Context, Result};
use remus_proto::Epoch;
use serde_json::json;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct QemuBackupOpts {
    pub ram_image: PathBuf,
    pub state_dir: PathBuf,
    /// The QEMU command line to restore with (without RAM backend, QMP or -incoming).
    pub qemu: Vec<String>,
}

pub struct QemuBackup {
    opts: QemuBackupOpts,
    ram_size: u64,
    pages_total: u64,
    image: std::fs::File,
    committed_dev: PathBuf,
    /// The restore point (compressed checkpoints are deltas against it).
    promoted: Option<Epoch>,
}

impl QemuBackup {
    /// Checks that the primary's guest can be restored here and starts a new RAM image.
    pub fn open(opts: QemuBackupOpts, hello: &Hello) -> Result<QemuBackup> {
        if hello.version != crate::wire::VERSION
            || hello.driver != "qemu"
            || hello.page_size as usize != crate::ram::PAGE
            || hello.ram_size == 0
            || !hello.ram_size.is_multiple_of(crate::ram::PAGE as u64)
        {
            bail!(
                "incompatible primary: protocol {} (ours {}), driver {:?} (ours \"qemu\"), page size {}, RAM {} bytes",
                hello.version,
                crate::wire::VERSION,
                hello.driver,
                hello.page_size,
                hello.ram_size
            );
        }
        // A new run starts from zeroes: the primary's first checkpoint carries only the pages
        // that are not zero, so whatever an earlier run (or a guest restored on this image)
        // left here would otherwise survive into the restore point.
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&opts.ram_image)?;
        image.set_len(hello.ram_size)?;
        Ok(QemuBackup {
            committed_dev: opts.state_dir.join("device-state.committed"),
            opts,
            ram_size: hello.ram_size,
            pages_total: hello.ram_size / crate::ram::PAGE as u64,
            image,
            promoted: None,
        })
    }
}

impl BackupHv for QemuBackup {
    type Staging = Staging;
    type Running = Child;

    fn stage(&mut self, open: Option<(Epoch, &mut Staging)>, m: Msg) -> Result<(), String> {
        // A page index beyond the guest's RAM is never written anywhere.
        let total = self.pages_total;
        match m {
            Msg::Pages(e, pages) => match open {
                Some(_) if pages.iter().any(|(i, _)| *i >= total) => {
                    Err("page index beyond the guest's RAM".into())
                }
                Some((r, s)) if r == e => {
                    s.pages
                        .extend(pages.into_iter().map(|(i, p)| (i, Encoded::Raw(p))));
                    Ok(())
                }
                _ => Err("pages of no open checkpoint".into()),
            },
            Msg::PagesZ { epoch, base, pages } => match open {
                Some(_) if pages.iter().any(|(i, _)| *i >= total) => {
                    Err("page index beyond the guest's RAM".into())
                }
                Some((r, s)) if r == epoch && s.base.is_none_or(|b| b == base) => {
                    s.base = Some(base);
                    s.pages.extend(pages);
                    Ok(())
                }
                _ => Err("compressed pages out of place".into()),
            },
            Msg::Device(e, d) => match open {
                Some((r, s)) if r == e => {
                    s.device = d;
                    Ok(())
                }
                _ => Err("device state of no open checkpoint".into()),
            },
            Msg::DeviceZ { epoch, base, z } => match open {
                Some((r, s)) if r == epoch => {
                    s.device_z = Some((base, z));
                    Ok(())
                }
                _ => Err("device state of no open checkpoint".into()),
            },
            _ => Err("a frame that is no part of a QEMU checkpoint".into()),
        }
    }

    fn finish(
        &mut self,
        epoch: Epoch,
        s: &mut Staging,
        pages: u64,
        device_bytes: u64,
    ) -> Result<(), String> {
        if s.pages.len() as u64 != pages {
            return Err(format!("checkpoint {epoch} incomplete"));
        }
        decode_device(s, &self.committed_dev, self.promoted)
            .and_then(|()| {
                if s.device.len() as u64 == device_bytes {
                    Ok(())
                } else {
                    Err(format!(
                        "{} bytes of device state, END says {device_bytes}",
                        s.device.len()
                    ))
                }
            })
            .and_then(|()| decode_all(s, &self.image, self.promoted))
            .map_err(|why| format!("checkpoint {epoch}: {why}"))
    }

    fn apply(&mut self, e: Epoch, s: Staging) -> Result<(u64, u64)> {
        for (idx, page) in &s.pages {
            let Encoded::Raw(page) = page else {
                bail!("checkpoint {e} promoted with undecoded pages");
            };
            self.image
                .write_all_at(page, idx * crate::ram::PAGE as u64)?;
        }
        self.promoted = Some(e);
        // The device state replaces the old one atomically.
        let tmp = self.opts.state_dir.join("device-state.tmp");
        std::fs::write(&tmp, &s.device)?;
        std::fs::rename(&tmp, &self.committed_dev)?;
        Ok((
            s.pages.len() as u64,
            (s.pages.len() * crate::ram::PAGE + s.device.len()) as u64,
        ))
    }

    fn activate(&mut self, _epoch: Epoch) -> Result<Child> {
        self.image.sync_data()?;
        restore(&self.opts, self.ram_size, &self.committed_dev)
    }
}

#[derive(Default)]
pub struct Staging {
    pages: Vec<(u64, Encoded)>,
    /// The checkpoint compressed pages are XOR deltas against.
    base: Option<Epoch>,
    device: Vec<u8>,
    /// A compressed device state: its base checkpoint and the delta.
    device_z: Option<(Epoch, Vec<u8>)>,
}

/// Decodes a compressed device state against the restore point's (which must be `base`).
fn decode_device(s: &mut Staging, committed: &Path, promoted: Option<Epoch>) -> Result<(), String> {
    let Some((base, z)) = s.device_z.take() else {
        return Ok(());
    };
    if Some(base) != promoted {
        return Err(format!(
            "device state compressed against checkpoint {base}, but the restore point is {promoted:?}"
        ));
    }
    let old =
        std::fs::read(committed).map_err(|e| format!("the restore point's device state: {e}"))?;
    s.device = compress::decode_device(&z, &old).map_err(|e| format!("device state: {e}"))?;
    Ok(())
}

/// Decodes every compressed page against the restore image (which must hold `base`). Nothing
/// is written: a bad page voids the whole checkpoint.
fn decode_all(
    s: &mut Staging,
    image: &std::fs::File,
    promoted: Option<Epoch>,
) -> Result<(), String> {
    let Some(base) = s.base else {
        return Ok(());
    };
    if Some(base) != promoted {
        return Err(format!(
            "compressed against checkpoint {base}, but the restore point is {promoted:?}"
        ));
    }
    let mut old = vec![0u8; crate::ram::PAGE];
    for (idx, enc) in s.pages.iter_mut() {
        if let Encoded::Xor(_) = enc {
            image
                .read_exact_at(&mut old, *idx * crate::ram::PAGE as u64)
                .map_err(|e| e.to_string())?;
            let page = compress::decode(enc, &old).map_err(|e| e.to_string())?;
            *enc = Encoded::Raw(page);
        }
    }
    Ok(())
}

/// Starts QEMU on the committed RAM image and loads the committed device state into it.
fn restore(opts: &QemuBackupOpts, ram_size: u64, device: &Path) -> Result<Child> {
    let t = Instant::now();
    let qmp_path = opts.state_dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_path);
    let (prog, args) = opts
        .qemu
        .split_first()
        .context("no QEMU command given for restoring")?;
    // A migration stream (the primary's default, carrying every RAM block) has a
    // configuration section; xen-save-devices-state's file has none.
    let mut head = [0u8; 9];
    let full_stream = std::fs::File::open(device)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
        .is_ok()
        && crate::device_state::has_configuration(&head);
    let mut cmd = Command::new(prog);
    cmd.args(args).args([
        "-object",
        &format!(
            "memory-backend-file,id=remus-ram,size={ram_size},mem-path={},share=on",
            opts.ram_image.display()
        ),
        "-machine",
        "memory-backend=remus-ram",
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp_path.display()),
        "-incoming",
        "defer",
    ]);
    if !full_stream {
        cmd.args(["-global", "migration.send-configuration=off"]);
    }
    let mut child = cmd.spawn().with_context(|| format!("start {prog}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut qmp = loop {
        match Qmp::connect(&qmp_path) {
            Ok(q) => break q,
            Err(e) => {
                if let Ok(Some(st)) = child.try_wait() {
                    bail!("restoring QEMU exited: {st}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("restoring QEMU's QMP never came up: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )?;
    qmp.execute(
        "migrate-incoming",
        Some(json!({"uri": format!("exec:cat {}", device.display())})),
    )?;
    loop {
        let st = qmp.execute("query-status", None)?;
        if st.get("running").and_then(|v| v.as_bool()) == Some(true) {
            break;
        }
        // The primary's migration stream was taken with its guest paused, and QEMU keeps the
        // source's run state: start it once the stream is loaded.
        if matches!(
            st.get("status").and_then(|v| v.as_str()),
            Some("paused" | "prelaunch" | "postmigrate")
        ) {
            qmp.execute("cont", None)?;
            continue;
        }
        if Instant::now() > deadline {
            bail!("restored VM did not start running: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!(
        activation_ms = t.elapsed().as_millis() as u64,
        "VM restored and running"
    );
    Ok(child)
}
