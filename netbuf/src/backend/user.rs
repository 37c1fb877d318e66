//! The userspace backend: two AF_PACKET sockets and an [`EpochQueue`] between them.
//!
//! guest → uplink: every frame goes through the queue (held while protected, forwarded at once
//! while unprotected). uplink → guest: forwarded at once, never held.
//!
//! Ordering: frames leave the uplink in arrival order because the queue lock is held while a
//! frame is forwarded and while a release drains, so a pass-through frame can never overtake a
//! released one.

use super::packet::{PacketSocket, MAX_FRAME, VNET_HDR_LEN};
use super::Backend;
use crate::queue::{EpochQueue, Limits, Push, WireLen};
use crate::stats::Stats;
use remus_proto::control::ControlError;
use remus_proto::Epoch;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A held frame: the vnet header followed by the Ethernet frame.
struct Held(Vec<u8>);

impl WireLen for Held {
    fn wire_len(&self) -> usize {
        self.0.len().saturating_sub(VNET_HDR_LEN)
    }
}

pub struct UserBackend {
    queue: Mutex<EpochQueue<Held>>,
    guest: PacketSocket,
    uplink: PacketSocket,
    inbound_frames: AtomicU64,
    inbound_bytes: AtomicU64,
    io_errors: AtomicU64,
    stop: AtomicBool,
}

impl UserBackend {
    pub fn new(guest_if: &str, uplink_if: &str, limits: Limits) -> io::Result<Arc<UserBackend>> {
        if guest_if == uplink_if {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the guest and uplink interfaces must differ",
            ));
        }
        Ok(Arc::new(UserBackend {
            queue: Mutex::new(EpochQueue::new(limits)),
            guest: PacketSocket::open(guest_if)?,
            uplink: PacketSocket::open(uplink_if)?,
            inbound_frames: AtomicU64::new(0),
            inbound_bytes: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, EpochQueue<Held>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_error(&self, what: &str, e: &io::Error) {
        let n = self.io_errors.fetch_add(1, Ordering::Relaxed);
        // Log the first few and then every 1000th, so a broken link cannot flood the log.
        if n < 10 || n.is_multiple_of(1000) {
            tracing::warn!("{what}: {e} (io errors so far: {})", n + 1);
        }
    }

    fn send_uplink(&self, frame: &mut [u8]) {
        if let Err(e) = self.uplink.send(frame) {
            self.io_error("send to uplink", &e);
        }
    }

    /// Starts the two forwarding threads.
    pub fn spawn(self: &Arc<Self>) -> io::Result<Vec<JoinHandle<()>>> {
        let out = self.clone();
        let inb = self.clone();
        Ok(vec![
            std::thread::Builder::new()
                .name("guest-to-uplink".into())
                .spawn(move || out.outbound_loop())?,
            std::thread::Builder::new()
                .name("uplink-to-guest".into())
                .spawn(move || inb.inbound_loop())?,
        ])
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn outbound_loop(&self) {
        let mut buf = vec![0u8; MAX_FRAME];
        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.guest.recv(&mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    self.io_error("receive from guest", &e);
                    continue;
                }
            };
            let mut q = self.lock();
            if !q.is_protected() {
                // Fast path: account and send straight from the receive buffer.
                q.count_passthrough(n - VNET_HDR_LEN);
                self.send_uplink(&mut buf[..n]);
                continue;
            }
            match q.push(Held(buf[..n].to_vec())) {
                Push::Held => {}
                Push::Forward(mut f) => self.send_uplink(&mut f.0),
                Push::Dropped(_) => {}
            }
        }
    }

    fn inbound_loop(&self) {
        let mut buf = vec![0u8; MAX_FRAME];
        while !self.stop.load(Ordering::Relaxed) {
            match self.uplink.recv(&mut buf) {
                Ok(Some(n)) => {
                    self.inbound_frames.fetch_add(1, Ordering::Relaxed);
                    self.inbound_bytes
                        .fetch_add((n - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                    if let Err(e) = self.guest.send(&mut buf[..n]) {
                        self.io_error("send to guest", &e);
                    }
                }
                Ok(None) => {}
                Err(e) => self.io_error("receive from uplink", &e),
            }
        }
    }
}

impl Backend for UserBackend {
    fn name(&self) -> &'static str {
        "user"
    }

    fn max_depth(&self) -> Option<usize> {
        None
    }

    fn barrier(&self, e: Epoch) -> Result<(), ControlError> {
        self.lock().barrier(e)
    }

    fn release_through(&self, e: Epoch) -> Result<u64, ControlError> {
        let mut q = self.lock();
        let mut n = 0;
        for mut f in q.release_through(e)? {
            self.send_uplink(&mut f.0);
            n += 1;
        }
        Ok(n)
    }

    fn release_all(&self) -> Result<u64, ControlError> {
        let mut q = self.lock();
        let mut n = 0;
        for mut f in q.release_all() {
            self.send_uplink(&mut f.0);
            n += 1;
        }
        Ok(n)
    }

    fn discard(&self) -> Result<u64, ControlError> {
        Ok(self.lock().discard())
    }

    fn stats(&self) -> Stats {
        let q = self.lock();
        Stats {
            backend: "user",
            protected: q.is_protected(),
            open_epoch: q.ledger().open(),
            released_through: q.ledger().released_through(),
            last_barrier: q.ledger().last_barrier(),
            max_depth: None,
            epochs: q.held_per_epoch().copied().collect(),
            held_frames: q.held_frames() as u64,
            held_bytes: q.held_bytes() as u64,
            limits: q.limits(),
            counters: q.counters(),
            inbound_frames: self.inbound_frames.load(Ordering::Relaxed),
            inbound_bytes: self.inbound_bytes.load(Ordering::Relaxed),
            io_errors: self.io_errors.load(Ordering::Relaxed),
        }
    }
}
