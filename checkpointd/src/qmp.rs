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
        let greeting = q.read_value()?;
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
