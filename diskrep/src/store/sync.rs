//! The pread/pwrite engine: each operation on tokio's blocking thread pool.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("I/O task failed: {e}")))?
}

pub async fn read(file: Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
}

pub async fn write(file: Arc<File>, offset: u64, data: Vec<u8>) -> io::Result<Vec<u8>> {
    blocking(move || {
        file.write_all_at(&data, offset)?;
        Ok(data)
    })
    .await
}

pub async fn fdatasync(file: Arc<File>) -> io::Result<()> {
    blocking(move || file.sync_data()).await
}

pub async fn fallocate(file: Arc<File>, offset: u64, len: u64, mode: i32) -> io::Result<()> {
    blocking(move || {
        // SAFETY: fallocate on our open file descriptor.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
    .await
}
