//! The NBD connection handler (tokio). Negotiation and request checks are the pure functions of
//! `handshake` and `request`; this file moves bytes, runs requests concurrently (bounded per
//! connection) and answers them as they complete, in any order.

use super::consts::*;
use super::handshake::{self, Export, Next};
use super::request::{self, Command, Verdict, REQUEST_LEN};
use crate::node::Node;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Semaphore};

/// Requests in flight per connection; the reader stops reading when this many are pending.
pub const MAX_INFLIGHT: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client connection to the end. Errors are the connection's, never the server's.
pub async fn serve<S>(stream: S, node: Arc<Node>, peer: String) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let export = node.export();
    let go = tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut rd, &mut wr, &export))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    if !go {
        return Ok(());
    }
    tracing::debug!(%peer, "NBD transmission phase");
    transmit(rd, wr, node, export).await
}

async fn negotiate<R, W>(rd: &mut R, wr: &mut W, export: &Export) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&handshake::greeting()).await?;
    wr.flush().await?;
    let client_flags = rd.read_u32().await?;
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "client does not speak fixed newstyle",
        ));
    }
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown client flags {client_flags:#x}"),
        ));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    loop {
        let magic = rd.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad option magic {magic:#x}"),
            ));
        }
        let opt = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("option {opt} of {len} bytes is too long"),
            ));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        let out = handshake::handle_option(opt, &data, export, no_zeroes);
        wr.write_all(&out.reply).await?;
        wr.flush().await?;
        match out.next {
            Next::Continue => {}
            Next::Transmit => return Ok(true),
            Next::Abort | Next::Close => return Ok(false),
        }
    }
}

type ReplyMsg = ([u8; 16], Option<Vec<u8>>);

async fn transmit<R, W>(mut rd: R, wr: W, node: Arc<Node>, export: Export) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<ReplyMsg>(MAX_INFLIGHT * 2);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(256 * 1024, wr);
        while let Some((h, data)) = rx.recv().await {
            w.write_all(&h).await?;
            if let Some(d) = data {
                w.write_all(&d).await?;
            }
            if rx.is_empty() {
                w.flush().await?;
            }
        }
        w.flush().await?;
        io::Result::Ok(())
    });
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let mut hdr = [0u8; REQUEST_LEN];
    let result = loop {
        match rd.read_exact(&mut hdr).await {
            Ok(_) => {}
            // The client went away without NBD_CMD_DISC: nothing in flight is lost (every
            // completed write is on disk), so this is not an error worth more than a log line.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        let h = match request::parse_header(&hdr) {
            Ok(h) => h,
            Err(bad) => {
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad request magic {:#x}: closing", bad.0),
                ))
            }
        };
        let cmd = match request::check(&h, export.size, export.read_only) {
            Verdict::Ok(c) => c,
            Verdict::Refuse { errno, drain } => {
                if drain > 0 {
                    let mut sink = tokio::io::sink();
                    let n =
                        tokio::io::copy(&mut (&mut rd).take(u64::from(drain)), &mut sink).await?;
                    if n < u64::from(drain) {
                        break Ok(());
                    }
                }
                let _ = tx
                    .send((request::simple_reply_header(errno, h.cookie), None))
                    .await;
                continue;
            }
        };
        if cmd == Command::Disconnect {
            break Ok(());
        }
        let payload = match cmd {
            Command::Write { len, .. } => {
                let mut d = vec![0u8; len as usize];
                if let Err(e) = rd.read_exact(&mut d).await {
                    break Err(e);
                }
                Some(d)
            }
            _ => None,
        };
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("semaphore closed"))?;
        let node = node.clone();
        let tx = tx.clone();
        let cookie = h.cookie;
        tokio::spawn(async move {
            let (errno, data) = execute(&node, cmd, payload).await;
            let _ = tx
                .send((request::simple_reply_header(errno, cookie), data))
                .await;
            drop(permit);
        });
    };
    // Let every request in flight finish and be answered before hanging up.
    let _ = slots.acquire_many(MAX_INFLIGHT as u32).await;
    drop(tx);
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("NBD reply writer: {e}"),
        Err(e) => tracing::warn!("NBD reply writer panicked: {e}"),
    }
    result
}

fn errno_of(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => ENOSPC,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EPERM) | Some(libc::EACCES) => EPERM,
        Some(libc::EOPNOTSUPP) => ENOTSUP,
        _ => EIO,
    }
}

/// Runs one checked request; returns the errno to answer with and any read data. A write's
/// regions are recorded in the activity log before it is issued, and released after it is
/// reported to the replicator (or marked for resync if it failed).
async fn execute(node: &Node, cmd: Command, payload: Option<Vec<u8>>) -> (u32, Option<Vec<u8>>) {
    let disk = node.disk();
    let span = match cmd {
        Command::Write { offset, len, .. } => Some((offset, u64::from(len))),
        Command::Trim { offset, len, .. } | Command::WriteZeroes { offset, len, .. } => {
            Some((offset, u64::from(len)))
        }
        _ => None,
    };
    let logged = match span {
        Some((offset, len)) => match node.begin_write(offset, len).await {
            Ok(regions) => Some(regions),
            Err(e) => return (errno_of(&e), None),
        },
        None => None,
    };
    let r: io::Result<Option<Vec<u8>>> = async {
        match cmd {
            Command::Read { offset, len } => Ok(Some(disk.read(offset, len as usize).await?)),
            Command::Write { offset, fua, .. } => {
                let data = payload.unwrap_or_default();
                let data = disk.write(offset, data).await?;
                if fua {
                    disk.flush().await?;
                }
                node.written(offset, &data).await;
                Ok(None)
            }
            Command::Flush => disk.flush().await.map(|_| None),
            Command::Trim { offset, len, fua } => {
                disk.zero(offset, u64::from(len), true).await?;
                if fua {
                    disk.flush().await?;
                }
                node.zeroed(offset, u64::from(len)).await;
                Ok(None)
            }
            Command::WriteZeroes {
                offset,
                len,
                fua,
                may_trim,
            } => {
                disk.zero(offset, u64::from(len), may_trim).await?;
                if fua {
                    disk.flush().await?;
                }
                node.zeroed(offset, u64::from(len)).await;
                Ok(None)
            }
            Command::Disconnect | Command::Nothing => Ok(None),
        }
    }
    .await;
    if let (Some((offset, len)), Some(regions)) = (span, logged) {
        if r.is_err() {
            node.write_failed(offset, len).await;
        }
        node.end_write(regions);
    }
    match r {
        Ok(d) => (0, d),
        Err(e) => {
            tracing::warn!("I/O error on {cmd:?}: {e}");
            (errno_of(&e), None)
        }
    }
}
