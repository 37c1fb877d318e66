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
    fn something_else_first_is_refused() {
        let (_d, p) = peer(&[r#"{"return":{}}"#]);
        let e = Qmp::connect(&p).err().unwrap();
        assert!(e.to_string().contains("not a QMP greeting"), "{e}");
    }
}
