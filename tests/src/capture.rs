//! Drives `framecheck capture` in a namespace and collects what it saw, in order.

use crate::frames::Kind;
use crate::netns::{ChildGuard, Netns};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub struct Capture {
    _child: ChildGuard,
    rx: Receiver<String>,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` frames sent from `src` ("guest" or "client") and
    /// waits until the capture socket is live.
    pub fn start(ns: &Netns, framecheck: &str, ifname: &str, src: &str) -> Result<Capture> {
        let mut child = ns.spawn(framecheck, &["capture", "--if", ifname, "--from", src])?;
        let out = child.child().stdout.take().context("capture stdout")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let c = Capture { _child: child, rx };
        match c.rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l == "ready" => Ok(c),
            other => bail!("capture did not start: {other:?}"),
        }
    }

    /// Everything captured within `window`, waiting the whole window.
    pub fn collect_for(&self, window: Duration) -> Vec<(Kind, u16)> {
        let deadline = Instant::now() + window;
        let mut v = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(l) => v.extend(parse(&l)),
                Err(_) => break,
            }
        }
        v
    }

    /// Waits until `n` frames arrived (or `timeout`), then returns them.
    pub fn collect_n(&self, n: usize, timeout: Duration) -> Vec<(Kind, u16)> {
        let deadline = Instant::now() + timeout;
        let mut v = Vec::new();
        while v.len() < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.rx.recv_timeout(left) {
                Ok(l) => v.extend(parse(&l)),
                Err(_) => break,
            }
        }
        v
    }
}

fn parse(line: &str) -> Option<(Kind, u16)> {
    let mut w = line.split_whitespace();
    let k = Kind::parse(w.next()?)?;
    let t = w.next()?.parse().ok()?;
    Some((k, t))
}
