//! What a checkpoint carries besides guest RAM, captured during the pause.
//!
//! QEMU has RAM blocks outside the shared guest RAM: the firmware (`pc.bios`), option ROMs
//! (`pc.rom`, a NIC's ROM BAR), ACPI tables built for fw_cfg (`/rom@etc/...`), video memory.
//! A QEMU started with `-incoming` leaves every ROM block empty (QEMU's `rom_reset` expects the
//! migration stream to fill them), so a guest restored from `xen-save-devices-state` alone runs
//! on zeroed firmware: a failover while SeaBIOS and option ROMs still run resets it, and so
//! would any reboot after a failover. With [`RamBlocks::All`] (the default) the device state is
//! QEMU's own migration stream with `x-ignore-shared`: every block except the shared guest RAM,
//! then every device, exactly as QEMU migrates them; it costs the measured difference in pause
//! (BENCHMARKS.md). [`RamBlocks::Main`] keeps the faster `xen-save-devices-state`.

use crate::qmp::Qmp;
use serde_json::json;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RamBlocks {
    /// Every RAM block besides the shared guest RAM travels with the device state (QEMU's
    /// migration stream, x-ignore-shared).
    #[default]
    All,
    /// Only the shared guest RAM; devices through xen-save-devices-state (faster; a restored
    /// guest has empty firmware blocks).
    Main,
}

pub struct Capture {
    mode: RamBlocks,
    /// xen-save-devices-state's file.
    file: PathBuf,
}

/// The QEMU migration stream's header (`QEVM`, version 3) followed by a configuration section:
/// a stream from `migrate`, which a restoring QEMU must read with `send-configuration` on.
pub fn has_configuration(stream: &[u8]) -> bool {
    stream.len() > 8 && &stream[..8] == b"QEVM\0\0\0\x03" && stream[8] == 0x07
}

impl Capture {
    pub fn new(qmp: &mut Qmp, mode: RamBlocks, file: PathBuf) -> io::Result<Capture> {
        if mode == RamBlocks::All {
            qmp.execute(
                "migrate-set-capabilities",
                Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
            )?;
        }
        Ok(Capture { mode, file })
    }

    /// The device state (and with `All` the other RAM blocks) of the paused guest.
    pub fn take(&mut self, qmp: &mut Qmp) -> io::Result<Vec<u8>> {
        match self.mode {
            RamBlocks::Main => {
                qmp.execute(
                    "xen-save-devices-state",
                    Some(json!({"filename": self.file.to_string_lossy(), "live": false})),
                )?;
                std::fs::read(&self.file)
            }
            RamBlocks::All => migrate_to_memory(qmp),
        }
    }
}

/// `migrate` into a memfd handed to QEMU with `getfd`; waits for it to complete.
fn migrate_to_memory(qmp: &mut Qmp) -> io::Result<Vec<u8>> {
    // SAFETY: memfd_create with a static name; a non-negative result is ours.
    let fd = unsafe { libc::memfd_create(c"remus-device-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mem = unsafe { OwnedFd::from_raw_fd(fd) };
    qmp.send_fd("remus-state", mem.as_raw_fd())?;
    qmp.execute("migrate", Some(json!({"uri": "fd:remus-state"})))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = qmp.execute("query-migrate", None)?;
        match st.get("status").and_then(|s| s.as_str()) {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => {
                return Err(io::Error::other(format!(
                    "saving the device state (migrate): {}",
                    st.get("error-desc")
                        .and_then(|e| e.as_str())
                        .unwrap_or("failed")
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(io::Error::other(
                    "saving the device state (migrate) timed out",
                ))
            }
            _ => std::thread::sleep(Duration::from_micros(100)),
        }
    }
    // QEMU reports the migration "completed" from its migration thread a moment before the
    // main loop moves the run state from finish-migrate to postmigrate; a `cont` in between is
    // refused ("Migration is not finalized yet") and would end protection. Wait for the move.
    loop {
        let st = qmp.execute("query-status", None)?;
        match st.get("status").and_then(|s| s.as_str()) {
            Some("finish-migrate") if Instant::now() > deadline => {
                return Err(io::Error::other(
                    "saving the device state (migrate): QEMU never left finish-migrate",
                ))
            }
            Some("finish-migrate") => std::thread::sleep(Duration::from_micros(100)),
            _ => break,
        }
    }
    let file = std::fs::File::from(mem);
    let len = file.metadata()?.len() as usize;
    let mut v = vec![0u8; len];
    file.read_exact_at(&mut v, 0)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_stream_is_told_from_a_device_state_file() {
        assert!(has_configuration(b"QEVM\0\0\0\x03\x07\0\0\0\x02pc"));
        assert!(
            !has_configuration(b"QEVM\0\0\0\x03\x04\0\0\0\x01"),
            "xen-save-devices-state"
        );
        assert!(!has_configuration(b"QEVM"));
        assert!(!has_configuration(b""));
    }
}
