//! Watching the LAN for the guest's frames: which host's port each one came in on, and when.
//!
//! One AF_PACKET socket per bridge port (in the LAN namespace: `lp` leads to the primary,
//! `lb` to the backup), each on its own thread that entered the namespace. Only frames coming
//! *in* from the host (not the bridge's own output towards it) whose source MAC is the guest's
//! are kept: that is "this copy of the VM said something on the LAN". A capture by hand would
//! be tcpdump; this keeps the evidence in the test's own terms.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// One frame from the guest's MAC: arrival (ms since the Unix epoch), the port, ethertype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub at_ms: u64,
    pub port: String,
    pub ethertype: u16,
    pub len: usize,
}

pub struct LanWatch {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn open(ns: &str, port: &str) -> Result<OwnedFd, String> {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    // SAFETY: setns on a valid namespace fd; affects this (watch) thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        return Err(format!("AF_PACKET: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(port).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("no interface {port} in {ns}"));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binding our socket to a valid sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(format!("bind {port}: {}", std::io::Error::last_os_error()));
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setting a receive timeout with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

impl LanWatch {
    /// Starts watching `ports` of namespace `ns` for frames from `mac`; returns once every
    /// socket is bound.
    pub fn start(ns: &str, ports: &[&str], mac: [u8; 6]) -> Result<LanWatch, String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in ports {
            let (ns, port) = (ns.to_string(), port.to_string());
            let (seen, stop) = (seen.clone(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let fd = match open(&ns, &port) {
                    Ok(fd) => {
                        let _ = ready_tx.send(Ok(()));
                        fd
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: zeroed sockaddr_ll filled in by recvfrom.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: receiving into our own buffer with its real length.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr() as *mut libc::c_void,
                            buf.len(),
                            0,
                            &mut from as *mut _ as *mut libc::sockaddr,
                            &mut len,
                        )
                    };
                    if n < 14 {
                        continue;
                    }
                    let n = n as usize;
                    if from.sll_pkttype == libc::PACKET_OUTGOING || buf[6..12] != mac {
                        continue;
                    }
                    let s = Seen {
                        at_ms: unix_ms(),
                        port: port.clone(),
                        ethertype: u16::from_be_bytes([buf[12], buf[13]]),
                        len: n,
                    };
                    if let Ok(mut v) = seen.lock() {
                        v.push(s);
                    }
                }
            }));
            ready_rx
                .recv()
                .map_err(|_| "watch thread ended".to_string())??;
        }
        Ok(LanWatch {
            seen,
            stop,
            threads,
        })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Frames on `port` at or after `from_ms`.
    pub fn on_after(&self, port: &str, from_ms: u64) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.port == port && s.at_ms >= from_ms)
            .collect()
    }
}

impl Drop for LanWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
