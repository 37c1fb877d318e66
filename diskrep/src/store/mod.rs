//! Local disk I/O: a fixed-size image file behind an async API. Two engines: io_uring (one
//! ring thread, woken through an eventfd) and a pread/pwrite fallback on tokio's blocking pool
//! for kernels or sandboxes where io_uring is unavailable. Which one runs is logged.

mod sync;
mod uring;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring if the kernel allows it, else pread/pwrite.
    Auto,
    Uring,
    Sync,
}

enum Engine {
    Sync,
    Uring(uring::Ring),
}

/// An open disk image. Cheap to clone.
#[derive(Clone)]
pub struct Disk {
    file: Arc<File>,
    size: u64,
    engine: Arc<Engine>,
    /// Writes in flight, whichever path they took.
    writes: Arc<AtomicU64>,
}

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

impl Disk {
    pub fn open(path: &Path, engine: EngineChoice) -> io::Result<Disk> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("open disk image {}: {e}", path.display()))
            })?;
        let size = file.metadata()?.len();
        let file = Arc::new(file);
        let engine = match engine {
            EngineChoice::Sync => Engine::Sync,
            EngineChoice::Uring => Engine::Uring(uring::Ring::start(file.clone())?),
            EngineChoice::Auto => match uring::Ring::start(file.clone()) {
                Ok(r) => Engine::Uring(r),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); using pread/pwrite");
                    Engine::Sync
                }
            },
        };
        tracing::info!(
            image = %path.display(),
            size,
            engine = match engine { Engine::Sync => "pread/pwrite", Engine::Uring(_) => "io_uring" },
            "disk open"
        );
        Ok(Disk {
            file,
            size,
            engine: Arc::new(engine),
            writes: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn engine_name(&self) -> &'static str {
        match *self.engine {
            Engine::Sync => "pread/pwrite",
            Engine::Uring(_) => "io_uring",
        }
    }

    pub async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            // io_uring reports a 0-byte transfer like the end of the file.
            return Ok(Vec::new());
        }
        match &*self.engine {
            Engine::Sync => sync::read(self.file.clone(), offset, len).await,
            Engine::Uring(r) => r.read(offset, len).await,
        }
    }

    /// Writes `data` and hands the buffer back (the caller often needs it afterwards).
    ///
    /// A buffered write that must allocate (the usual case on ext4) cannot complete inside
    /// io_uring_enter and is punted to an io-wq worker, one thread hop more than the blocking
    /// pool. So a lone write (nothing else in flight: queue depth 1) goes to the blocking
    /// pool, and writes that overlap others go through the ring, where batching wins.
    /// Measured in BENCHMARKS.md.
    pub async fn write(&self, offset: u64, data: Vec<u8>) -> io::Result<Vec<u8>> {
        if data.is_empty() {
            return Ok(data);
        }
        match &*self.engine {
            Engine::Sync => sync::write(self.file.clone(), offset, data).await,
            Engine::Uring(r) => {
                let alone = self.writes.fetch_add(1, Ordering::Relaxed) == 0;
                let res = if alone {
                    sync::write(self.file.clone(), offset, data).await
                } else {
                    r.write(offset, data).await
                };
                self.writes.fetch_sub(1, Ordering::Relaxed);
                res
            }
        }
    }

    /// fdatasync: every completed write is durable afterwards.
    pub async fn flush(&self) -> io::Result<()> {
        match &*self.engine {
            Engine::Sync => sync::fdatasync(self.file.clone()).await,
            Engine::Uring(r) => r.fdatasync().await,
        }
    }

    async fn fallocate(&self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        match &*self.engine {
            Engine::Sync => sync::fallocate(self.file.clone(), offset, len, mode).await,
            Engine::Uring(r) => r.fallocate(offset, len, mode).await,
        }
    }

    /// Makes [offset, offset+len) read as zeroes. With `deallocate` the blocks may be freed
    /// (TRIM, WRITE_ZEROES without NO_HOLE, the backup applying zeroes); without it they are
    /// meant to stay allocated (NO_HOLE).
    ///
    /// File systems differ: tmpfs has no FALLOC_FL_ZERO_RANGE, some have no hole punching.
    /// Each way is tried in turn, and writing zeroes is the last resort, in 1 MiB pieces so
    /// that memory stays bounded whatever the length. Punching comes before writing because
    /// writing zeroes allocates: on a nearly full file system (a small tmpfs) it fails with
    /// ENOSPC where a punched hole frees space, and a backup that fails there is resynced
    /// with the same zeroes again and again.
    pub async fn zero(&self, offset: u64, len: u64, deallocate: bool) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let unsupported = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            )
        };
        let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        let zero_range = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        if deallocate {
            for mode in [punch, zero_range] {
                match self.fallocate(offset, len, mode).await {
                    Err(e) if unsupported(&e) => {}
                    r => return r,
                }
            }
        } else {
            match self.fallocate(offset, len, zero_range).await {
                Err(e) if unsupported(&e) => {}
                r => return r,
            }
            match self.fallocate(offset, len, punch).await {
                Ok(()) => {
                    // The range reads as zeroes now. Allocating it again is what NO_HOLE asks
                    // for, but only as a preference (the NBD spec's SHOULD): if there is no
                    // room, or no support, the zeroes stand and the request succeeded.
                    if let Err(e) = self.fallocate(offset, len, FALLOC_FL_KEEP_SIZE).await {
                        tracing::debug!("re-allocating zeroed range at {offset}: {e}");
                    }
                    return Ok(());
                }
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
        let mut off = offset;
        while off < offset + len {
            let n = (offset + len - off).min(1 << 20) as usize;
            buf.truncate(n);
            buf = self.write(off, buf).await?;
            off += n as u64;
        }
        Ok(())
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
