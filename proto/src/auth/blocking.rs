//! The handshake and the record layer over blocking sockets (checkpointd).

use super::handshake::{Connector, Listener, Next, OPENING_LEN, PROOF_LEN, REPLY_LEN};
use super::record::{Opener, Sealer, LEN_BYTES};
use super::{Security, Session, StreamKind};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("authentication handshake: {what} did not arrive in time"),
    )
}

/// Reads exactly `buf.len()` bytes before `deadline`, however the peer dribbles them.
fn read_by(sock: &mut TcpStream, buf: &mut [u8], deadline: Instant, what: &str) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                    "authentication handshake: the peer closed the connection before its {what}"
                ),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out(what))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs `f` with the socket's timeouts set for the handshake, restoring them after.
fn with_timeouts<T>(
    sock: &TcpStream,
    timeout: Duration,
    f: impl FnOnce(&mut TcpStream, Instant) -> io::Result<T>,
) -> io::Result<T> {
    let (r, w) = (sock.read_timeout()?, sock.write_timeout()?);
    let mut s = sock.try_clone()?;
    s.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let out = f(&mut s, Instant::now() + timeout);
    sock.set_read_timeout(r)?;
    sock.set_write_timeout(w)?;
    out
}

/// The connector's handshake (the primary). `Ok(None)`: both sides insecure.
pub fn connect(
    sock: &TcpStream,
    security: &Security,
    stream: StreamKind,
    timeout: Duration,
) -> io::Result<Option<Session>> {
    with_timeouts(sock, timeout, |s, deadline| {
        let c = Connector::start(security, stream)?;
        s.write_all(c.opening())?;
        let mut reply = [0u8; REPLY_LEN];
        read_by(s, &mut reply, deadline, "answer")?;
        let (proof, session) = c.finish(&reply)?;
        if let Some(p) = proof {
            s.write_all(&p)?;
        }
        Ok(session)
    })
}

/// The listener's handshake (the backup). Nothing but the handshake's own bytes is sent
/// before the connector's proof checks.
pub fn accept(
    sock: &TcpStream,
    security: &Security,
    stream: StreamKind,
    timeout: Duration,
) -> io::Result<Option<Session>> {
    with_timeouts(sock, timeout, |s, deadline| {
        let mut opening = [0u8; OPENING_LEN];
        read_by(s, &mut opening, deadline, "opening")?;
        match Listener::reply(security, stream, &opening) {
            Err((e, reply)) => {
                if let Some(r) = reply {
                    let _ = s.write_all(&r);
                }
                Err(e.into())
            }
            Ok((reply, Next::Insecure)) => {
                s.write_all(&reply)?;
                Ok(None)
            }
            Ok((reply, Next::ReadProof(l))) => {
                s.write_all(&reply)?;
                let mut proof = [0u8; PROOF_LEN];
                read_by(s, &mut proof, deadline, "proof of the key")?;
                Ok(Some(l.finish(&proof)?))
            }
        }
    })
}

/// Writes through the session's sealer (each `write` one record), or plainly when insecure.
/// Put a `BufWriter` in front: records are then up to its capacity.
pub struct SealedWriter<W> {
    inner: W,
    sealer: Option<Sealer>,
    buf: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    pub fn new(inner: W, sealer: Option<Sealer>) -> SealedWriter<W> {
        SealedWriter {
            inner,
            sealer,
            buf: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(s) = &mut self.sealer else {
            return self.inner.write(data);
        };
        if data.is_empty() {
            return Ok(0);
        }
        self.buf.clear();
        let n = s.seal_into(data, &mut self.buf);
        // A record is sent whole or the stream is broken (the caller drops the connection).
        self.inner.write_all(&self.buf)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads through the session's opener: only bytes of records that passed are returned.
pub struct OpenedReader<R> {
    inner: R,
    opener: Option<Opener>,
    plain: Vec<u8>,
    at: usize,
}

impl<R: Read> OpenedReader<R> {
    pub fn new(inner: R, opener: Option<Opener>) -> OpenedReader<R> {
        OpenedReader {
            inner,
            opener,
            plain: Vec::new(),
            at: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for OpenedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(o) = &mut self.opener else {
            return self.inner.read(out);
        };
        while self.at == self.plain.len() {
            let mut len = [0u8; LEN_BYTES];
            let mut got = 0;
            while got < LEN_BYTES {
                match self.inner.read(&mut len[got..]) {
                    Ok(0) if got == 0 => return Ok(0),
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let n = o.rest_len(len)?;
            self.plain.resize(n, 0);
            self.inner.read_exact(&mut self.plain)?;
            o.open(len, &mut self.plain)?;
            self.at = 0;
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Key;
    use std::net::TcpListener;

    #[test]
    fn handshake_and_records_over_a_socket_and_a_silent_peer_times_out() {
        let sec = Security::Keyed {
            key: Key::generate().unwrap(),
            encrypt: true,
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s2 = sec.clone();
        let t = std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let sess = accept(&sock, &s2, StreamKind::Checkpoint, Duration::from_secs(5))
                .unwrap()
                .unwrap();
            let mut r = OpenedReader::new(&sock, Some(sess.recv));
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            // A silent connector: the handshake gives up at its deadline.
            let (silent, _) = l.accept().unwrap();
            let t0 = Instant::now();
            let e = accept(
                &silent,
                &s2,
                StreamKind::Checkpoint,
                Duration::from_millis(300),
            )
            .err()
            .unwrap();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(t0.elapsed() < Duration::from_secs(3));
            got
        });
        let sock = TcpStream::connect(addr).unwrap();
        let sess = connect(&sock, &sec, StreamKind::Checkpoint, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let mut w = io::BufWriter::new(SealedWriter::new(&sock, Some(sess.send)));
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        drop(w);
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        let _silent = TcpStream::connect(addr).unwrap();
        assert_eq!(t.join().unwrap(), data);
    }
}
