//! Scraping a Prometheus endpoint that listens inside a network namespace, and reading the
//! Prometheus text format back into numbers.
//!
//! The request is made from a thread that enters the namespace (setns(2) changes only the
//! calling thread), so no curl is needed and the test process stays where it is.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The response to one GET: status code, Content-Type, body.
#[derive(Debug)]
pub struct Scrape {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` from `addr` as seen inside network namespace `ns`, with an optional Accept.
pub fn get_in_netns(
    ns: &str,
    addr: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<Scrape, String> {
    let (ns, addr, path, accept) = (
        ns.to_string(),
        addr.to_string(),
        path.to_string(),
        accept.map(str::to_string),
    );
    std::thread::spawn(move || -> Result<Scrape, String> {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .map_err(|e| format!("netns {ns}: {e}"))?;
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
        }
        let mut s =
            TcpStream::connect(&addr).map_err(|e| format!("connect {addr} in {ns}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8(raw).map_err(|e| e.to_string())?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok(Scrape {
            status,
            content_type,
            body: body.to_string(),
        })
    })
    .join()
    .map_err(|_| "scrape thread panicked".to_string())?
}

/// Every sample of a Prometheus text exposition: `name{labels}` → value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
