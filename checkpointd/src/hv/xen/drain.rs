//! The primary's local staging for libxenguest's stream. `xc_domain_save` writes to one end of
//! a socket pair; a thread drains the other end into memory as fast as it is written, so that
//! the domain's suspend covers the capture only and never waits on the network (Xen's
//! migration v2 dropped the staging buffer the Remus paper used; this puts it back).
//!
//! Cutting a checkpoint: once libxenguest calls `postcopy`, it has written every record of
//! the checkpoint and writes nothing more until the callback returns. [`Drain::cut`] then
//! reads, under the same lock as the thread, whatever is still in the socket; what the buffer
//! holds is exactly that checkpoint's records (the first one also carries the stream's
//! header and the live pre-copy).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

pub struct Drain {
    sock: UnixStream,
    /// Bytes read since the last cut, and whether the writer has closed its end.
    buf: Mutex<(Vec<u8>, bool)>,
}

impl Drain {
    /// Starts draining `sock` (the reading end) on its own thread.
    pub fn start(sock: UnixStream) -> io::Result<Arc<Drain>> {
        sock.set_nonblocking(true)?;
        let d = Arc::new(Drain {
            sock,
            buf: Mutex::new((Vec::new(), false)),
        });
        let t = d.clone();
        std::thread::Builder::new()
            .name("xen-drain".into())
            .spawn(move || t.run())?;
        Ok(d)
    }

    fn run(&self) {
        loop {
            let mut p = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; waits without holding the lock.
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
            let mut g = self.lock();
            if self.read_available(&mut g).is_err() || g.1 {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u8>, bool)> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends whatever the socket holds now; notes the end of the stream.
    fn read_available(&self, g: &mut (Vec<u8>, bool)) -> io::Result<()> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            match (&self.sock).read(&mut chunk) {
                Ok(0) => {
                    g.1 = true;
                    return Ok(());
                }
                Ok(n) => g.0.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything written since the last cut. Only call it while the writer is stopped (in a
    /// libxenguest callback), or the cut falls inside a record.
    pub fn cut(&self) -> io::Result<Vec<u8>> {
        let mut g = self.lock();
        self.read_available(&mut g)?;
        Ok(std::mem::take(&mut g.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_cut_holds_exactly_what_was_written_before_it() {
        let (mut w, r) = UnixStream::pair().unwrap();
        let d = Drain::start(r).unwrap();
        // Far beyond a socket buffer: the thread must drain while we write.
        let first: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        w.write_all(&first).unwrap();
        assert_eq!(d.cut().unwrap(), first);
        w.write_all(b"second").unwrap();
        assert_eq!(d.cut().unwrap(), b"second");
        assert_eq!(d.cut().unwrap(), b"");
    }
}
