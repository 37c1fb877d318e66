//! Setting up the checkpoint stream's connection: the authentication handshake (remus-proto
//! auth) on both sides, for the QEMU and the Xen drivers alike.
//!
//! The backup runs every accepted connection's handshake on its own thread, bounded in time
//! and in number: a silent connection, garbage or a wrong key delays nobody, and the first
//! connection that authenticates is the primary. After that the port is closed. Nothing, not
//! even the fact that this is a checkpointd, is told to a peer before it has proved the key
//! (the handshake's own bytes aside).

use remus_proto::auth::blocking::{OpenedReader, SealedWriter};
use remus_proto::auth::{Security, Session, StreamKind};
use std::io::{self, BufWriter};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Most handshakes in progress at once; connections beyond it are closed at once.
const MAX_PENDING: usize = 16;

/// How long a handshake may take. Generous against a loaded machine; a squatter holds only
/// its own thread this long.
pub fn handshake_timeout(peer_timeout: Duration) -> Duration {
    (peer_timeout * 10).max(Duration::from_secs(2))
}

/// An authenticated connection: the socket, the sealed sending side (buffered) and the opened
/// receiving side.
pub struct Link {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub writer: BufWriter<SealedWriter<TcpStream>>,
    pub reader: OpenedReader<TcpStream>,
}

fn link(sock: TcpStream, peer: SocketAddr, session: Option<Session>) -> io::Result<Link> {
    let (send, recv) = match session {
        Some(s) => (Some(s.send), Some(s.recv)),
        None => (None, None),
    };
    Ok(Link {
        writer: BufWriter::with_capacity(1 << 20, SealedWriter::new(sock.try_clone()?, send)),
        reader: OpenedReader::new(sock.try_clone()?, recv),
        sock,
        peer,
    })
}

/// The primary's side: connect to the backup and authenticate.
pub fn connect(addr: &str, security: &Security, timeout: Duration) -> io::Result<Link> {
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let peer = sock.peer_addr()?;
    let session =
        remus_proto::auth::blocking::connect(&sock, security, StreamKind::Checkpoint, timeout)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("authenticating the backup at {addr}: {e}"),
                )
            })?;
    link(sock, peer, session)
}

/// Told of each connection the handshake refused, with the reason.
pub type OnRefused = Arc<dyn Fn(String) + Send + Sync>;

/// The backup's side: the first connection on `listener` that authenticates. Refused ones are
/// logged and passed to `refused`.
pub fn accept(
    listener: TcpListener,
    security: &Security,
    timeout: Duration,
    refused: OnRefused,
) -> io::Result<Link> {
    listener.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel::<Link>();
    let done = Arc::new(AtomicBool::new(false));
    let pending = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let security = security.clone();
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            // Polls so that it can stop (and close the port) once a primary is linked.
            while !d.load(Ordering::Relaxed) {
                let (sock, peer) = match listener.accept() {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if pending.load(Ordering::Relaxed) >= MAX_PENDING {
                    tracing::warn!(%peer, "too many handshakes in progress: closing a connection");
                    continue;
                }
                pending.fetch_add(1, Ordering::Relaxed);
                let (tx, security, pending, refused) =
                    (tx.clone(), security.clone(), pending.clone(), refused.clone());
                let spawned = std::thread::Builder::new()
                    .name("handshake".into())
                    .spawn(move || {
                        let r = sock.set_nonblocking(false).and_then(|_| sock.set_nodelay(true)).and_then(|_| {
                            remus_proto::auth::blocking::accept(&sock, &security, StreamKind::Checkpoint, timeout)
                        });
                        pending.fetch_sub(1, Ordering::Relaxed);
                        match r.and_then(|s| link(sock, peer, s)) {
                            Ok(l) => {
                                if tx.send(l).is_err() {
                                    tracing::warn!(%peer, "refused a second primary: one is connected");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(%peer, "refused a connection: {e}");
                                refused(format!("{peer}: {e}"));
                            }
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("handshake thread: {e}");
                }
            }
        })?;
    let l = rx
        .recv()
        .map_err(|_| io::Error::other("the accepting thread ended"));
    done.store(true, Ordering::Relaxed);
    l
}

/// Copies `from` to `to` until `from` ends, flushing after every read: libxenguest reads and
/// writes a plain file descriptor, so the Xen driver hands it one end of a socket pair and
/// relays the other through the authenticated link (each chunk is sent at once, not held
/// back by a buffer).
pub fn relay(mut from: impl io::Read, mut to: impl io::Write) -> io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
