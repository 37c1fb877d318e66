//! The io_uring engine. Submitters push their entry into the shared submission queue and call
//! io_uring_enter themselves (a page-cache write usually completes right there, with no thread
//! hop); one completion thread waits for completions and hands results back. Short transfers
//! are resubmitted for the rest.

use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

struct Shared {
    ring: IoUring,
    fd: types::Fd,
    /// Serialises producers of the submission queue (single-producer in the ABI).
    sq: Mutex<()>,
    /// Serialises consumers of the completion queue (the reaper, and submitters that find
    /// their own completion already posted).
    cq: Mutex<()>,
    inflight: Mutex<HashMap<u64, Op>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    _file: Arc<File>,
}

pub struct Ring {
    shared: Arc<Shared>,
}

const STOP: u64 = u64::MAX;
const ENTRIES: u32 = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Queues `op` and submits it from the calling thread.
    fn submit(&self, mut op: Op) -> io::Result<()> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(io::Error::other("io_uring engine is shutting down"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) % (u64::MAX - 1);
        let sqe = sqe_for(&mut op, self.fd, id);
        // The op (and the heap buffer the entry points into) is parked before the kernel can
        // complete it.
        lock(&self.inflight).insert(id, op);
        let _g = lock(&self.sq);
        loop {
            // SAFETY: producers are serialised by `sq`; the entry's buffers live in `inflight`
            // until the completion thread reaps it.
            let pushed = unsafe { self.ring.submission_shared().push(&sqe).is_ok() };
            if pushed {
                break;
            }
            // Queue full: hand what is queued to the kernel and try again.
            self.ring.submitter().submit()?;
        }
        self.ring.submitter().submit()?;
        drop(_g);
        // Page-cache I/O usually completes inside io_uring_enter: reap it here rather than
        // waking the completion thread to do it (saves a thread hop per request).
        if let Ok(g) = self.cq.try_lock() {
            self.drain(g);
        }
        Ok(())
    }

    /// Completes every posted completion. Returns true if the stop marker was seen.
    fn drain(&self, _g: std::sync::MutexGuard<'_, ()>) -> bool {
        // SAFETY: `cq` is held, so this is the only consumer of the completion queue.
        let cqes: Vec<(u64, i32)> = unsafe { self.ring.completion_shared() }
            .map(|c| (c.user_data(), c.result()))
            .collect();
        drop(_g);
        let mut stop = false;
        for (id, res) in cqes {
            if id == STOP {
                stop = true;
                continue;
            }
            let op = lock(&self.inflight).remove(&id);
            if let Some(again) = op.and_then(|op| complete(op, res)) {
                if let Err(e) = self.submit(again) {
                    tracing::error!("io_uring resubmit failed: {e}");
                }
            }
        }
        stop
    }

    fn push_stop(&self) {
        let _g = lock(&self.sq);
        let sqe = opcode::Nop::new().build().user_data(STOP);
        // SAFETY: serialised by `sq`; a NOP references no memory.
        unsafe {
            let _ = self.ring.submission_shared().push(&sqe);
        }
        let _ = self.ring.submitter().submit();
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.push_stop();
    }
}

impl Ring {
    pub fn start(file: Arc<File>) -> io::Result<Ring> {
        let ring = IoUring::new(ENTRIES)?;
        let shared = Arc::new(Shared {
            ring,
            fd: types::Fd(file.as_raw_fd()),
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            _file: file,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("io_uring-cq".into())
            .spawn(move || reap(s))?;
        Ok(Ring { shared })
    }

    fn submit(&self, op: Op) -> io::Result<()> {
        self.shared.submit(op)
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

/// The completion thread: waits for completions, completes or resubmits their ops.
fn reap(s: Arc<Shared>) {
    loop {
        // SAFETY: to_submit 0, GETEVENTS, no argument: only waits for a completion.
        let r = unsafe {
            s.ring
                .submitter()
                .enter::<libc::sigset_t>(0, 1, 1 /* IORING_ENTER_GETEVENTS */, None)
        };
        if let Err(e) = r {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::error!("io_uring wait failed: {e}");
                for (_, op) in lock(&s.inflight).drain() {
                    complete(op, -libc::EIO);
                }
                return;
            }
        }
        if s.drain(lock(&s.cq)) {
            return;
        }
    }
}
