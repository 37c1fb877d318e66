//! The netbuf test topology, three real namespaces:
//!
//! ```text
//!  guest ns            host ns (netbuf runs here)          client ns
//!  g0 10.77.0.1 ── veth ── gh  [netbuf] hup ── veth ── c0 10.77.0.2
//! ```
//! No namespace runs IPv6 and `gh`/`hup` carry no addresses, so the only frames crossing are
//! the ones a test sends (and the guest's and client's own IPv4 traffic).

use crate::netns::{bin, veth, ChildGuard, Netns};
use anyhow::{bail, Result};
use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct NetbufTopo {
    // Declaration order is drop order: the daemon goes before its namespaces.
    pub daemon: Option<ChildGuard>,
    pub guest: Netns,
    pub host: Netns,
    pub client: Netns,
    pub control: PathBuf,
    pub prefix: String,
}

impl NetbufTopo {
    pub fn new() -> Result<NetbufTopo> {
        let p = crate::netns::unique_prefix();
        let guest = Netns::new(&format!("{p}-guest"))?;
        let host = Netns::new(&format!("{p}-host"))?;
        let client = Netns::new(&format!("{p}-client"))?;
        let control = std::env::temp_dir().join(format!("{p}-netbuf.sock"));
        let t = NetbufTopo {
            daemon: None,
            guest,
            host,
            client,
            control,
            prefix: p,
        };
        // No IPv6 autoconfiguration chatter (MLD, DAD, RS) from any stack: the tests count
        // frames exactly. The IPv6 frames under test are built by hand.
        for ns in [&t.guest, &t.host, &t.client] {
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        }
        veth(&t.guest, "g0", &t.host, "gh")?;
        veth(&t.host, "hup", &t.client, "c0")?;
        t.guest
            .exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "g0"])?;
        t.client
            .exec(&["ip", "addr", "add", "10.77.0.2/24", "dev", "c0"])?;
        Ok(t)
    }

    /// Starts `netbuf run` (user backend unless `extra` says otherwise) and waits until its
    /// control socket answers.
    pub fn start_netbuf(&mut self, extra: &[&str]) -> Result<()> {
        let ctl = self.control.to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "--guest-if",
            "gh",
            "--uplink-if",
            "hup",
            "--control",
            &ctl,
        ];
        args.extend_from_slice(extra);
        let mut child = self.host.spawn(&bin("netbuf"), &args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.child().try_wait() {
                bail!("netbuf exited at start: {st}");
            }
            if let Ok(mut c) = ControlClient::connect(&self.control) {
                if let Ok(Reply::Ok(_)) = c.request("hello") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("netbuf did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(child);
        Ok(())
    }

    pub fn client(&self) -> Result<ControlClient> {
        Ok(ControlClient::connect(&self.control)?)
    }

    /// Sends tagged frames from the guest side.
    pub fn send_from_guest(&self, frames: &[&str]) -> Result<()> {
        let mut v = vec!["send", "--if", "g0", "--from", "guest"];
        v.extend_from_slice(frames);
        let fc = bin("framecheck");
        let mut args = vec![fc.as_str()];
        args.extend_from_slice(&v);
        self.guest.exec(&args).map(|_| ())
    }

    pub fn netbuf_ctl(&self, args: &[&str]) -> std::process::Output {
        let ctl = self.control.to_string_lossy().into_owned();
        let mut v = vec!["ctl", "--control", ctl.as_str()];
        v.extend_from_slice(args);
        std::process::Command::new(bin("netbuf"))
            .args(&v)
            .output()
            .expect("run netbuf ctl")
    }
}

impl Drop for NetbufTopo {
    fn drop(&mut self) {
        self.daemon.take();
        let _ = std::fs::remove_file(&self.control);
    }
}
