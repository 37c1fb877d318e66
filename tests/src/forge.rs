//! An attacker's tools for the authentication tests (tests/tests/hostile_auth.rs): a recording
//! proxy (to capture a real primary's handshake and frames for replay), a silent squatter, a
//! stream sent with no handshake at all, and a handshake with the wrong key.

use remus_proto::auth::handshake::{Connector, REPLY_LEN};
use remus_proto::auth::{Key, Security, StreamKind};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards one connection from `listener` to `target` both ways and records every byte the
/// connector sent.
pub struct Recorder {
    pub sent: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    pub fn start(listener: TcpListener, target: String) -> Recorder {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let rec = sent.clone();
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let (mut c2, mut s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let (mut client, mut server) = (client, server);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = server.shutdown(std::net::Shutdown::Write);
        });
        Recorder { sent }
    }

    pub fn captured(&self) -> Vec<u8> {
        self.sent.lock().unwrap().clone()
    }
}

/// Sends `bytes` on a new connection to `addr` and returns everything the peer answered
/// before it closed the connection (or went quiet for `quiet`).
pub fn send_and_listen(addr: &str, bytes: &[u8], quiet: Duration) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(quiet)).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A handshake with a key that is not the VM's: the opening, the listener's reply, then a
/// proof that cannot be right, then `frames`. Returns what the listener answered.
pub fn wrong_key(addr: &str, stream: StreamKind, frames: &[u8]) -> Vec<u8> {
    let security = Security::Keyed {
        key: Key::generate().unwrap(),
        encrypt: false,
    };
    let c = Connector::start(&security, stream).unwrap();
    let mut bytes = c.opening().to_vec();
    bytes.extend_from_slice(&[0x5a; 32]);
    bytes.extend_from_slice(frames);
    let answer = send_and_listen(addr, &bytes, Duration::from_secs(5));
    assert!(
        answer.len() <= REPLY_LEN,
        "the listener said more than its handshake reply to a wrong key: {} bytes",
        answer.len()
    );
    answer
}

/// Holds a connection open without a word.
pub fn squat(addr: &str) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}
