//! The io_uring engine: one thread owns the ring. Submitters queue an operation on a channel
//! and bump an eventfd; the ring keeps a read posted on that eventfd, so new work wakes the
//! thread even while it waits for completions. Short transfers are resubmitted for the rest.

use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

enum Op {
    Read {
        offset: u64,
        buf: Vec<u8>,
        done: usize,
        tx: oneshot::Sender<io::Result<Vec<u8>>>,
    },
    Write {
        offset: u64,
        buf: Vec<u8>,
        done: usize,
        tx: oneshot::Sender<io::Result<Vec<u8>>>,
    },
    Fsync {
        tx: oneshot::Sender<io::Result<()>>,
    },
    Fallocate {
        offset: u64,
        len: u64,
        mode: i32,
        tx: oneshot::Sender<io::Result<()>>,
    },
}

pub struct Ring {
    tx: Option<mpsc::Sender<Op>>,
    wake: Arc<OwnedFd>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Close the channel, then wake the thread so it sees that and exits.
        self.tx.take();
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

const WAKE: u64 = u64::MAX;
const ENTRIES: u32 = 256;

impl Ring {
    pub fn start(file: Arc<File>) -> io::Result<Ring> {
        let ring = IoUring::new(ENTRIES)?;
        // SAFETY: eventfd(2); the fd is owned at once.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh valid fd.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let (tx, rx) = mpsc::channel();
        let w = wake.clone();
        std::thread::Builder::new()
            .name("io_uring".into())
            .spawn(move || run(ring, file, rx, w))?;
        Ok(Ring { tx: Some(tx), wake })
    }

    fn submit(&self, op: Op) -> io::Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(|| io::Error::other("io_uring engine is shutting down"))?
            .send(op)
            .map_err(|_| io::Error::other("io_uring thread is gone"))?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }

    pub async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Read {
            offset,
            buf: vec![0u8; len],
            done: 0,
            tx,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring dropped a read"))?
    }

    pub async fn write(&self, offset: u64, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Write {
            offset,
            buf,
            done: 0,
            tx,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring dropped a write"))?
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Fsync { tx })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring dropped an fsync"))?
    }

    pub async fn fallocate(&self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Fallocate {
            offset,
            len,
            mode,
            tx,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring dropped a fallocate"))?
    }
}

fn sqe_for(op: &mut Op, fd: types::Fd, id: u64) -> io_uring::squeue::Entry {
    match op {
        Op::Read {
            offset, buf, done, ..
        } => opcode::Read::new(fd, buf[*done..].as_mut_ptr(), (buf.len() - *done) as u32)
            .offset(*offset + *done as u64)
            .build(),
        Op::Write {
            offset, buf, done, ..
        } => opcode::Write::new(fd, buf[*done..].as_ptr(), (buf.len() - *done) as u32)
            .offset(*offset + *done as u64)
            .build(),
        Op::Fsync { .. } => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
        Op::Fallocate {
            offset, len, mode, ..
        } => opcode::Fallocate::new(fd, *len)
            .offset(*offset)
            .mode(*mode)
            .build(),
    }
    .user_data(id)
}

/// Completes an op with `res`; returns the op back if it must be resubmitted (short transfer).
fn complete(op: Op, res: i32) -> Option<Op> {
    let err = |res: i32| io::Error::from_raw_os_error(-res);
    match op {
        Op::Read {
            offset,
            buf,
            mut done,
            tx,
        } => {
            if res < 0 {
                let _ = tx.send(Err(err(res)));
                return None;
            }
            if res == 0 {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the image",
                )));
                return None;
            }
            done += res as usize;
            if done < buf.len() {
                return Some(Op::Read {
                    offset,
                    buf,
                    done,
                    tx,
                });
            }
            let _ = tx.send(Ok(buf));
            None
        }
        Op::Write {
            offset,
            buf,
            mut done,
            tx,
        } => {
            if res <= 0 {
                let _ = tx.send(Err(if res == 0 {
                    io::Error::new(io::ErrorKind::WriteZero, "write made no progress")
                } else {
                    err(res)
                }));
                return None;
            }
            done += res as usize;
            if done < buf.len() {
                return Some(Op::Write {
                    offset,
                    buf,
                    done,
                    tx,
                });
            }
            let _ = tx.send(Ok(buf));
            None
        }
        Op::Fsync { tx } | Op::Fallocate { tx, .. } => {
            let _ = tx.send(if res < 0 { Err(err(res)) } else { Ok(()) });
            None
        }
    }
}

fn run(mut ring: IoUring, file: Arc<File>, rx: mpsc::Receiver<Op>, wake: Arc<OwnedFd>) {
    let fd = types::Fd(file.as_raw_fd());
    let mut inflight: HashMap<u64, Op> = HashMap::new();
    let mut next_id: u64 = 0;
    let mut wake_buf = [0u8; 8];
    let mut wake_armed = false;
    let mut backlog: std::collections::VecDeque<Op> = Default::default();
    loop {
        if !wake_armed {
            let sqe = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            // SAFETY: wake_buf lives as long as this loop; the ring is drained before exit.
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                wake_armed = true;
            }
        }
        loop {
            match rx.try_recv() {
                Ok(op) => backlog.push_back(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if inflight.is_empty() && backlog.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        while let Some(mut op) = backlog.pop_front() {
            let id = next_id;
            next_id = next_id.wrapping_add(1) % (u64::MAX - 1);
            let sqe = sqe_for(&mut op, fd, id);
            // SAFETY: the buffers the entry points at are owned by `op`, which stays in
            // `inflight` (heap-stable Vec storage) until its completion is reaped.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                backlog.push_front(op);
                break; // submission queue full: submit what we have first
            }
            inflight.insert(id, op);
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::error!("io_uring submit failed: {e}");
                for (_, op) in inflight.drain() {
                    complete(op, -libc::EIO);
                }
                return;
            }
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (id, res) in cqes {
            if id == WAKE {
                wake_armed = false;
                continue;
            }
            if let Some(op) = inflight.remove(&id) {
                if let Some(again) = complete(op, res) {
                    backlog.push_back(again);
                }
            }
        }
    }
}
