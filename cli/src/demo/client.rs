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
    ended: Arc<Mutex<Ended>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        let (r2, e2, s2) = (replies.clone(), ended.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let end = run(sock, &r2, &s2);
            if let Ok(mut e) = e2.lock() {
                *e = end;
            }
        });
        Ok(Client {
            replies,
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

    /// Stops the loop and returns every reply and how the connection ended.
    pub fn finish(mut self) -> (Vec<Reply>, Ended) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.snapshot(), self.ended())
    }
}

fn run(sock: TcpStream, replies: &Mutex<Vec<Reply>>, stop: &AtomicBool) -> Ended {
    let Ok(mut w) = sock.try_clone() else {
        return Ended::Broken("cannot clone the socket".into());
    };
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            if let Err(e) = w.write_all(b"x\n") {
                return Ended::Broken(format!("send: {e}"));
            }
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
