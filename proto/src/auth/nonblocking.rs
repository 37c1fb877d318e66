//! The handshake and the record layer over tokio sockets (diskrep).

use super::handshake::{Connector, Listener, Next, OPENING_LEN, PROOF_LEN, REPLY_LEN};
use super::record::{Opener, Sealer, LEN_BYTES};
use super::{Security, Session, StreamKind};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

async fn bounded<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, f).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("authentication handshake did not finish within {timeout:?}"),
        )
    })?
}

/// The connector's handshake (the primary), bounded by `timeout`. `Ok(None)`: both insecure.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    security: &Security,
    stream: StreamKind,
    timeout: Duration,
) -> io::Result<Option<Session>> {
    bounded(timeout, async {
        let c = Connector::start(security, stream)?;
        sock.write_all(c.opening()).await?;
        let mut reply = [0u8; REPLY_LEN];
        sock.read_exact(&mut reply).await?;
        let (proof, session) = c.finish(&reply)?;
        if let Some(p) = proof {
            sock.write_all(&p).await?;
        }
        Ok(session)
    })
    .await
}

/// The listener's handshake (the backup), bounded by `timeout`. Nothing but the handshake's
/// own bytes is sent before the connector's proof checks.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    security: &Security,
    stream: StreamKind,
    timeout: Duration,
) -> io::Result<Option<Session>> {
    bounded(timeout, async {
        let mut opening = [0u8; OPENING_LEN];
        sock.read_exact(&mut opening).await?;
        match Listener::reply(security, stream, &opening) {
            Err((e, reply)) => {
                if let Some(r) = reply {
                    let _ = sock.write_all(&r).await;
                }
                Err(e.into())
            }
            Ok((reply, Next::Insecure)) => {
                sock.write_all(&reply).await?;
                Ok(None)
            }
            Ok((reply, Next::ReadProof(l))) => {
                sock.write_all(&reply).await?;
                let mut proof = [0u8; PROOF_LEN];
                sock.read_exact(&mut proof).await?;
                Ok(Some(l.finish(&proof)?))
            }
        }
    })
    .await
}

/// The sending half: each `write_all` is sealed into records (plain when insecure). Not
/// cancel-safe: a write abandoned half way leaves the stream unusable, so callers drop the
/// connection when they abandon one (as they do).
pub struct SealedWrite<W> {
    inner: W,
    sealer: Option<Sealer>,
}

impl<W: AsyncWrite + Unpin> SealedWrite<W> {
    pub fn new(inner: W, sealer: Option<Sealer>) -> SealedWrite<W> {
        SealedWrite { inner, sealer }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.sealer {
            None => self.inner.write_all(data).await,
            Some(s) => self.inner.write_all(&s.seal_all(data)).await,
        }
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

enum Phase {
    Len,
    Rest([u8; LEN_BYTES]),
}

/// The receiving half: only bytes of records that passed are returned. Cancel-safe (its state
/// survives an abandoned read).
pub struct OpenedRead<R> {
    inner: R,
    opener: Option<Opener>,
    phase: Phase,
    raw: Vec<u8>,
    filled: usize,
    plain: Vec<u8>,
    at: usize,
}

impl<R: AsyncRead + Unpin> OpenedRead<R> {
    pub fn new(inner: R, opener: Option<Opener>) -> OpenedRead<R> {
        OpenedRead {
            inner,
            opener,
            phase: Phase::Len,
            raw: vec![0; LEN_BYTES],
            filled: 0,
            plain: Vec::new(),
            at: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OpenedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let Some(opener) = &mut me.opener else {
            return Pin::new(&mut me.inner).poll_read(cx, out);
        };
        while me.at == me.plain.len() {
            while me.filled < me.raw.len() {
                let mut rb = ReadBuf::new(&mut me.raw[me.filled..]);
                match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            // A clean end only between records.
                            if me.filled == 0 && matches!(me.phase, Phase::Len) {
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        me.filled += n;
                    }
                }
            }
            match me.phase {
                Phase::Len => {
                    let len = [me.raw[0], me.raw[1], me.raw[2], me.raw[3]];
                    let n = opener.rest_len(len)?;
                    me.phase = Phase::Rest(len);
                    me.raw.resize(n, 0);
                    me.filled = 0;
                }
                Phase::Rest(len) => {
                    opener.open(len, &mut me.raw)?;
                    std::mem::swap(&mut me.plain, &mut me.raw);
                    me.at = 0;
                    me.phase = Phase::Len;
                    me.raw.clear();
                    me.raw.resize(LEN_BYTES, 0);
                    me.filled = 0;
                }
            }
        }
        let n = out.remaining().min(me.plain.len() - me.at);
        out.put_slice(&me.plain[me.at..me.at + n]);
        me.at += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Key;

    /// Records read through a pipe that hands out a few bytes at a time, and a read abandoned
    /// half way (a timeout) that loses nothing.
    #[tokio::test]
    async fn records_survive_dribbling_and_cancelled_reads() {
        let sec = Security::Keyed {
            key: Key::generate().unwrap(),
            encrypt: false,
        };
        let (mut a, mut b) = tokio::io::duplex(7);
        let s2 = sec.clone();
        let listener = tokio::spawn(async move {
            let s = accept(&mut b, &s2, StreamKind::Disk, Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
            let mut r = OpenedRead::new(b, Some(s.recv));
            let mut first = [0u8; 10];
            // Too short a wait for 10 bytes through a 7-byte pipe read one record at a time:
            // abandoned, then resumed.
            let _ = tokio::time::timeout(Duration::from_micros(1), r.read_exact(&mut first)).await;
            let mut all = Vec::new();
            r.read_to_end(&mut all).await.unwrap();
            all
        });
        let s = connect(&mut a, &sec, StreamKind::Disk, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        let mut w = SealedWrite::new(a, Some(s.send));
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        for chunk in data.chunks(333) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        let got = listener.await.unwrap();
        // The abandoned read may have taken some bytes into its buffer; the rest follow in
        // order, none twice.
        assert!(data.ends_with(&got), "got {} bytes", got.len());
        assert!(data.len() - got.len() <= 10);
    }
}
