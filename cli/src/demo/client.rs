//! The demo's client: one TCP connection to the guest for the whole run, a request every
//! 50 ms, every reply recorded with its arrival time. It records; `verdict` judges.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One reply: the guest's counter, the last record its disk writer had fsync'd, and when the
/// reply arrived (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub n: u64,
    pub written: i64,
    pub at_unix_ms: u64,
}

/// How the connection ended, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Running,
    Stopped,
    /// Reset, FIN, a malformed line: the promise is broken.
    Broken(String),
}

pub struct Client {
    pub replies: Arc<Mutex<Vec<Reply>>>,
    /// A line to send instead of the next request, and the counter value its reply will carry
    /// once sent (the guest answers every line in order, the k-th with n = k).
    command: Arc<Mutex<Command>>,
    ended: Arc<Mutex<Ended>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The one command in flight, if any.
#[derive(Default)]
struct Command {
    pending: Option<String>,
    /// The reply number the last command sent will get.
    sent_as: Option<u64>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Enters network namespace `ns` on this thread only (sockets made here stay in it).
fn enter(ns: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f =
        std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("netns {ns}: {e}"))?;
    // SAFETY: setns on a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn parse_reply(line: &str) -> Option<(u64, i64)> {
    let mut it = line.split_whitespace();
    let n = it.next()?.parse().ok()?;
    let w = it.next()?.parse().ok()?;
    it.next().is_none().then_some((n, w))
}

impl Client {
    /// Connects from namespace `ns` (retrying while the guest's service comes up) and starts
    /// the request loop.
    pub fn start(ns: &str, addr: SocketAddr, connect_timeout: Duration) -> Result<Client, String> {
        let ns = ns.to_string();
        let sock = std::thread::spawn(move || -> Result<TcpStream, String> {
            enter(&ns)?;
            let t = Instant::now();
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => return Ok(s),
                    Err(e) if t.elapsed() < connect_timeout => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(format!("cannot connect to the guest at {addr}: {e}")),
                }
            }
        })
        .join()
        .map_err(|_| "client thread panicked".to_string())??;
        sock.set_read_timeout(Some(Duration::from_millis(10)))
            .map_err(|e| e.to_string())?;
        let replies = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(Ended::Running));
        let stop = Arc::new(AtomicBool::new(false));
        let command = Arc::new(Mutex::new(Command::default()));
        let (r2, e2, s2, c2) = (
            replies.clone(),
            ended.clone(),
            stop.clone(),
            command.clone(),
        );
        let thread = std::thread::spawn(move || {
            let end = run(sock, &r2, &s2, &c2);
            if let Ok(mut e) = e2.lock() {
                *e = end;
            }
        });
        Ok(Client {
            replies,
            command,
            ended,
            stop,
            thread: Some(thread),
        })
    }

    pub fn snapshot(&self) -> Vec<Reply> {
        self.replies.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn ended(&self) -> Ended {
        self.ended
            .lock()
            .map(|e| e.clone())
            .unwrap_or(Ended::Running)
    }

    /// Sends `line` (the guest's `hold` or `go`) in place of the next request and waits for
    /// its reply.
    pub fn send_line(&self, line: &str, timeout: Duration) -> Result<Reply, String> {
        {
            let mut c = self.command.lock().map_err(|_| "client lock poisoned")?;
            c.pending = Some(line.to_string());
            c.sent_as = None;
        }
        let t = Instant::now();
        loop {
            let n = self.command.lock().ok().and_then(|c| c.sent_as);
            if let Some(r) = n.and_then(|n| self.snapshot().into_iter().find(|r| r.n == n)) {
                return Ok(r);
            }
            if let Ended::Broken(why) = self.ended() {
                return Err(format!("the connection broke: {why}"));
            }
            if t.elapsed() > timeout {
                return Err(format!("no reply to {line:?} after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the loop and returns every reply and how the connection ended.
    pub fn finish(mut self) -> (Vec<Reply>, Ended) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.snapshot(), self.ended())
    }
}

fn run(
    sock: TcpStream,
    replies: &Mutex<Vec<Reply>>,
    stop: &AtomicBool,
    command: &Mutex<Command>,
) -> Ended {
    let Ok(mut w) = sock.try_clone() else {
        return Ended::Broken("cannot clone the socket".into());
    };
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    let mut next = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let mut out = "x\n".to_string();
            if let Ok(mut c) = command.lock() {
                if let Some(p) = c.pending.take() {
                    out = format!("{p}\n");
                    c.sent_as = Some(sent + 1);
                }
            }
            if let Err(e) = w.write_all(out.as_bytes()) {
                return Ended::Broken(format!("send: {e}"));
            }
            sent += 1;
            next += Duration::from_millis(50);
        }
        match r.read_line(&mut line) {
            Ok(0) => return Ended::Broken("the guest closed the connection".into()),
            Ok(_) if line.ends_with('\n') => {
                let Some((n, written)) = parse_reply(&line) else {
                    return Ended::Broken(format!("malformed reply {line:?}"));
                };
                if let Ok(mut v) = replies.lock() {
                    v.push(Reply {
                        n,
                        written,
                        at_unix_ms: unix_ms(),
                    });
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Ended::Broken(format!("receive: {e}")),
        }
    }
    Ended::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_strictly() {
        assert_eq!(parse_reply("12 7\n"), Some((12, 7)));
        assert_eq!(parse_reply("1 -1\n"), Some((1, -1)));
        assert_eq!(parse_reply("12\n"), None);
        assert_eq!(parse_reply("12 7 9\n"), None);
        assert_eq!(parse_reply("x 7\n"), None);
    }
}
