//! A thin, blocking QMP client: one command at a time, asynchronous events skipped. Tolerant of
//! fields and enum values it does not know (QEMU versions differ): replies are plain JSON.

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn proto(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    pub fn connect(path: &Path) -> io::Result<Qmp> {
        let s = UnixStream::connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("QMP socket {}: {e}", path.display())))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = s.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
        };
        // A client that connects while QEMU is still starting can see an event (RESUME) ahead
        // of the greeting (seen with QEMU 7.2): events are skipped, anything else is refused.
        let mut greeting = q.read_value()?;
        while greeting.get("event").is_some() {
            greeting = q.read_value()?;
        }
        if greeting.get("QMP").is_none() {
            return Err(proto(format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// The process at the other end of the socket (QEMU), from SO_PEERCRED.
    pub fn peer_pid(&self) -> io::Result<i32> {
        remus_proto::peer::peer_pid(&self.writer)
    }

    /// Hands QEMU a descriptor under `name` (QMP `getfd`, the descriptor in SCM_RIGHTS).
    pub fn send_fd(&mut self, name: &str, fd: std::os::fd::RawFd) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let line = format!(
            "{}\n",
            json!({"execute": "getfd", "arguments": {"fdname": name}})
        );
        let mut iov = libc::iovec {
            iov_base: line.as_ptr() as *mut libc::c_void,
            iov_len: line.len(),
        };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
        let mut cbuf = vec![0u8; space];
        // SAFETY: msghdr of our iovec and control buffer; CMSG_* walk that buffer, which is
        // sized by CMSG_SPACE for one descriptor.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, fd);
            libc::sendmsg(self.writer.as_raw_fd(), &msg, 0)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != line.len() {
            return Err(proto("short write of getfd".into()));
        }
        self.reply("getfd").map(|_| ())
    }

    fn read_value(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QEMU closed QMP",
            ));
        }
        serde_json::from_str(&line).map_err(|e| proto(format!("bad QMP JSON {line:?}: {e}")))
    }

    /// Runs one command and returns its `return` value; a QMP `error` becomes an io::Error.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> io::Result<Value> {
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        self.reply(cmd)
    }

    /// Reads the reply to `cmd`, skipping events.
    fn reply(&mut self, cmd: &str) -> io::Result<Value> {
        loop {
            let v = self.read_value()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(io::Error::other(format!(
                    "QMP {cmd}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// Plays QEMU's side: `lines` first, then an answer to every command.
    fn peer(lines: &'static [&'static str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            for l in lines {
                writeln!(w, "{l}").unwrap();
            }
            for cmd in BufReader::new(s).lines() {
                if cmd.is_err() {
                    return;
                }
                writeln!(w, r#"{{"event":"STOP"}}"#).unwrap();
                writeln!(w, r#"{{"return":{{}}}}"#).unwrap();
            }
        });
        (dir, path)
    }

    #[test]
    fn events_before_the_greeting_and_between_replies_are_skipped() {
        let (_d, p) = peer(&[
            r#"{"event":"RESUME","timestamp":{"seconds":1,"microseconds":2}}"#,
            r#"{"QMP":{"version":{},"capabilities":[]}}"#,
        ]);
        let mut q = Qmp::connect(&p).unwrap();
        assert_eq!(q.execute("stop", None).unwrap(), json!({}));
    }

    #[test]
    fn a_descriptor_reaches_qemu_with_getfd() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            writeln!(w, r#"{{"QMP":{{"version":{{}},"capabilities":[]}}}}"#).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap(); // qmp_capabilities
            writeln!(w, r#"{{"return":{{}}}}"#).unwrap();
            // getfd: the descriptor comes with the line.
            let mut buf = [0u8; 256];
            let mut cbuf = [0u8; 64];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let (n, fd) = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = cbuf.len() as _;
                let n = libc::recvmsg(s.as_raw_fd(), &mut msg, 0);
                let c = libc::CMSG_FIRSTHDR(&msg);
                assert!(!c.is_null(), "no descriptor sent");
                (
                    n,
                    std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int),
                )
            };
            let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            writeln!(w, r#"{{"return":{{}}}}"#).unwrap();
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            use std::os::fd::FromRawFd;
            (text, f.metadata().unwrap().len())
        });
        let mut q = Qmp::connect(&path).unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(1234).unwrap();
        q.send_fd("remus-state", f.as_raw_fd()).unwrap();
        let (text, len) = peer.join().unwrap();
        assert!(text.contains(r#""fdname":"remus-state""#), "{text}");
        assert_eq!(len, 1234, "the peer got our file");
    }

    #[test]
    fn something_else_first_is_refused() {
        let (_d, p) = peer(&[r#"{"return":{}}"#]);
        let e = Qmp::connect(&p).err().unwrap();
        assert!(e.to_string().contains("not a QMP greeting"), "{e}");
    }
}
