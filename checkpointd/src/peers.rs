//! The control sockets of netbuf and diskrep, as checkpointd drives them.

use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use std::io;
use std::path::Path;
use std::time::Duration;

/// One daemon's control connection (absent when that daemon is not used).
pub struct Peer {
    name: &'static str,
    client: Option<ControlClient>,
}

impl Peer {
    pub fn connect(name: &'static str, path: Option<&Path>) -> io::Result<Peer> {
        let client = match path {
            Some(p) => {
                let c = ControlClient::connect(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("{name} at {}: {e}", p.display()))
                })?;
                c.set_timeout(Some(Duration::from_secs(30)))?;
                Some(c)
            }
            None => None,
        };
        Ok(Peer { name, client })
    }

    pub fn present(&self) -> bool {
        self.client.is_some()
    }

    /// Sends one command; Ok(None) if this peer is not configured.
    pub fn request(&mut self, line: &str) -> io::Result<Option<String>> {
        let Some(c) = self.client.as_mut() else {
            return Ok(None);
        };
        match c.request(line)? {
            Reply::Ok(t) => Ok(Some(t)),
            Reply::Err(e) => Err(io::Error::other(format!(
                "{} refused '{line}': {} {}",
                self.name, e.code, e.message
            ))),
        }
    }

    /// The highest epoch this peer has seen barriered (netbuf `last_barrier`, diskrep
    /// `epoch`, or `serving.epoch` once activated): a new run of checkpoints must number its epochs beyond it.
    pub fn last_epoch(&mut self) -> io::Result<Option<u64>> {
        let (verb, field) = match self.name {
            "netbuf" => ("stats json", "last_barrier"),
            _ => ("status json", "epoch"),
        };
        let Some(t) = self.request(verb)? else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.name))
        })?;
        // An activated diskrep backup (the guest a failover restored, protected again) is a
        // primary too: its serving side's epoch is the one barriers must exceed.
        Ok(v[field].as_u64().or_else(|| v["serving"][field].as_u64()))
    }

    /// The pipeline depth the peer supports (netbuf's `hello`), None if unlimited or absent.
    pub fn max_depth(&mut self) -> io::Result<Option<usize>> {
        let Some(t) = self.request("hello")? else {
            return Ok(None);
        };
        Ok(t.split_whitespace()
            .find_map(|w| w.strip_prefix("max_depth="))
            .and_then(|d| d.parse().ok()))
    }
}

/// The first epoch a new run may use: at or beyond everything netbuf and diskrep have seen
/// (the first checkpoint closes it and opens the next, which must be new to both).
pub fn first_epoch(netbuf: &mut Peer, diskrep: &mut Peer) -> io::Result<remus_proto::Epoch> {
    let a = netbuf.last_epoch()?.unwrap_or(0);
    let b = diskrep.last_epoch()?.unwrap_or(0);
    Ok(remus_proto::Epoch(a.max(b)))
}
