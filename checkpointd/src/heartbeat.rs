//! Liveness on its own thread. A checkpoint can keep either daemon's loop busy for longer than
//! the peer timeout (the first, full copy; applying it on the backup; a slow capture under
//! load), and a peer that only heard from the loop would then declare a live partner dead:
//! a spurious failover is a split brain. So heartbeats come from a thread that does nothing
//! else, through the same writer as the stream (one frame at a time under its lock).

use crate::wire::Msg;
use remus_proto::auth::blocking::SealedWriter;
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stream's sending side: buffered, then sealed into authenticated records.
pub type SharedWriter = Arc<Mutex<BufWriter<SealedWriter<TcpStream>>>>;

pub fn lock(w: &SharedWriter) -> std::sync::MutexGuard<'_, BufWriter<SealedWriter<TcpStream>>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes one message and flushes it.
pub fn send(w: &SharedWriter, m: &Msg) -> std::io::Result<()> {
    let mut g = lock(w);
    m.write_to(&mut *g)?;
    g.flush()
}

/// Sends a heartbeat every `every` until `stop` is set or the connection fails.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
}

impl Heartbeat {
    pub fn start(w: SharedWriter, every: Duration) -> std::io::Result<Heartbeat> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    if send(&w, &Msg::Heartbeat).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Heartbeat { stop })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
