//! The soft-dirty tracker, for kernels with CONFIG_MEM_SOFT_DIRTY (Debian 12's 6.1): writing
//! "4" to `/proc/PID/clear_refs` clears every page's soft-dirty bit and write-protects it; the
//! next write sets bit 55 of the page's `/proc/PID/pagemap` entry. Per checkpoint: read 8 bytes
//! per guest page, then clear. Still O(RAM), but 8 bytes a page instead of 4096.
//!
//! Limits (documented in the README): it sees only writes through the process's own mapping,
//! and the kernel drops a written page's bit when it unmaps that page before the scan (reclaim
//! to swap, or the process discarding it with MADV_DONTNEED/MADV_REMOVE); a later write faults
//! it in dirty again, but a write followed by a discard is then seen only as the page vanishing.

use super::indexed::PageSource;
use super::qemu_ram::Segment;
use super::PAGE;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

const SOFT_DIRTY: u64 = 1 << 55;

/// Whether soft-dirty tracking works here, tried on a page of our own: after `clear_refs` 4 the
/// bit is clear, after a write it is set.
pub fn kernel_supports() -> Result<(), String> {
    let mut page = vec![0u8; PAGE * 2];
    let off = page.as_ptr().align_offset(PAGE);
    let p = &mut page[off..off + 1];
    p[0] = 1;
    let addr = p.as_ptr() as u64;
    let pagemap =
        File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let bit = || -> Result<bool, String> {
        let mut e = [0u8; 8];
        pagemap
            .read_exact_at(&mut e, addr / PAGE as u64 * 8)
            .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
        Ok(u64::from_le_bytes(e) & SOFT_DIRTY != 0)
    };
    clear(&mut open_clear_refs("self")?)?;
    let after_clear = bit()?;
    // SAFETY: writing our own buffer; volatile so that the write happens after the clear.
    unsafe { (p.as_mut_ptr()).write_volatile(2) };
    let after_write = bit()?;
    if after_clear || !after_write {
        return Err(
            "the kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY is not set)".into(),
        );
    }
    Ok(())
}

fn open_clear_refs(pid: &str) -> Result<File, String> {
    OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))
        .map_err(|e| format!("/proc/{pid}/clear_refs: {e}"))
}

fn clear(f: &mut File) -> Result<(), String> {
    f.write_all(b"4").map_err(|e| format!("clear_refs: {e}"))
}

/// The soft-dirty pages of a process's mapping of the RAM file.
pub struct SoftDirtySource {
    pagemap: File,
    clear_refs: File,
    segments: Vec<Segment>,
    buf: Vec<u8>,
}

impl SoftDirtySource {
    pub fn setup(pid: i32, segments: Vec<Segment>) -> Result<(SoftDirtySource, String), String> {
        kernel_supports()?;
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| format!("/proc/{pid}/pagemap: {e}"))?;
        let clear_refs = open_clear_refs(&pid.to_string())?;
        Ok((
            SoftDirtySource {
                pagemap,
                clear_refs,
                segments,
                buf: Vec::new(),
            },
            format!("soft-dirty bits of process {pid} (clear_refs 4, pagemap bit 55)"),
        ))
    }
}

impl PageSource for SoftDirtySource {
    fn written(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
        for s in &self.segments {
            self.buf.resize(s.pages as usize * 8, 0);
            self.pagemap
                .read_exact_at(&mut self.buf, s.addr / PAGE as u64 * 8)?;
            for (i, e) in self.buf.chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
                if e & SOFT_DIRTY != 0 {
                    out.push(s.first_page + i as u64);
                }
            }
        }
        clear(&mut self.clear_refs).map_err(io::Error::other)
    }
}
