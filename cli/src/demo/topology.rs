//! Two simulated hosts, a client, a LAN and a witness, as network namespaces on this machine:
//!
//! ```text
//!  PREFIX-prim: tap0 (guest) ─ netbuf ─ uplink ─┐           ┌─ uplink ─ netbuf ─ tap0 :PREFIX-back
//!               repl 10.99.0.1 ═════════════════╪═ (wire) ══╪═ repl 10.99.0.2
//!               wit 10.97.0.1 ──┐    PREFIX-lan: br0 ── c0 10.88.0.2 :PREFIX-cli
//!                   PREFIX-wit: br0 10.97.0.10 (etcd) ──┴── wit 10.97.0.2 :PREFIX-back
//! ```
//! The two hosts are wired alike: netbuf is the only path between a host's TAP and its uplink
//! (`remus receive` runs it in pass-through), so the VM can run, and be protected, on either.
//! The guest is 10.88.0.10 on the LAN, wherever it runs. Each host reaches the witness over
//! its own link (`wit`), so a test can cut the replication link, a host's witness link, or
//! both. Dropping the topology kills every process inside it and deletes the namespaces.

use std::process::Command;

pub struct Topology {
    pub prefix: String,
    created: Vec<String>,
}

pub const GUEST_ADDR: &str = "10.88.0.10:7000";
pub const BACKUP_REPL: &str = "10.99.0.2";
/// The primary host's replication address (where it receives once the roles have turned).
pub const PRIMARY_REPL: &str = "10.99.0.1";
/// The witness (etcd) on its own network, reached by each host over its `wit` link.
pub const WITNESS_ADDR: &str = "10.97.0.10";

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e} (install iproute2)"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Topology {
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// `ip netns exec NS` + program: a command that runs on `host`.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// `ip -n NS ARGS` on `host` (a test cuts links with it: `link set dev repl down`).
    pub fn on(&self, host: &str, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(host);
        let mut a = vec!["-n", &ns];
        a.extend_from_slice(args);
        ip(&a)
    }

    pub fn create(prefix: &str) -> Result<Topology, String> {
        let mut t = Topology {
            prefix: prefix.to_string(),
            created: Vec::new(),
        };
        for h in ["lan", "prim", "back", "cli", "wit"] {
            let ns = t.ns(h);
            ip(&["netns", "add", &ns])?;
            t.created.push(ns.clone());
            t.on(h, &["link", "set", "dev", "lo", "up"])?;
            // No IPv6 chatter (router solicitations, DAD) in held output or on the LAN.
            for k in ["all", "default"] {
                let o = t
                    .command(h, "sysctl")
                    .args(["-qw", &format!("net.ipv6.conf.{k}.disable_ipv6=1")])
                    .output()
                    .map_err(|e| format!("sysctl: {e}"))?;
                if !o.status.success() {
                    return Err(format!(
                        "sysctl in {ns}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
            }
        }
        let (lan, prim, back, cli) = (t.ns("lan"), t.ns("prim"), t.ns("back"), t.ns("cli"));
        let wit = t.ns("wit");
        t.on("lan", &["link", "add", "br0", "type", "bridge"])?;
        t.on("wit", &["link", "add", "br0", "type", "bridge"])?;
        for (ns, name, peer_ns, peer) in [
            (&prim, "uplink", &lan, "lp"),
            (&back, "uplink", &lan, "lb"),
            (&cli, "c0", &lan, "lc"),
            (&prim, "repl", &back, "repl"),
            (&prim, "wit", &wit, "wp"),
            (&back, "wit", &wit, "wb"),
        ] {
            ip(&[
                "link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer, "netns",
                peer_ns,
            ])?;
        }
        for port in ["lp", "lb", "lc"] {
            t.on("lan", &["link", "set", "dev", port, "master", "br0"])?;
        }
        for port in ["wp", "wb"] {
            t.on("wit", &["link", "set", "dev", port, "master", "br0"])?;
        }
        t.on("prim", &["tuntap", "add", "tap0", "mode", "tap"])?;
        t.on("back", &["tuntap", "add", "tap0", "mode", "tap"])?;
        for (h, devs) in [
            ("lan", &["br0", "lp", "lb", "lc"][..]),
            ("prim", &["tap0", "uplink", "repl", "wit"][..]),
            ("back", &["tap0", "uplink", "repl", "wit"][..]),
            ("cli", &["c0"][..]),
            ("wit", &["br0", "wp", "wb"][..]),
        ] {
            for d in devs {
                t.on(h, &["link", "set", "dev", d, "up"])?;
            }
        }
        t.on("cli", &["addr", "add", "10.88.0.2/24", "dev", "c0"])?;
        t.on(
            "prim",
            &["addr", "add", &format!("{PRIMARY_REPL}/24"), "dev", "repl"],
        )?;
        t.on("prim", &["addr", "add", "10.97.0.1/24", "dev", "wit"])?;
        t.on("back", &["addr", "add", "10.97.0.2/24", "dev", "wit"])?;
        t.on(
            "wit",
            &["addr", "add", &format!("{WITNESS_ADDR}/24"), "dev", "br0"],
        )?;
        t.on(
            "back",
            &["addr", "add", &format!("{BACKUP_REPL}/24"), "dev", "repl"],
        )?;
        Ok(t)
    }

    pub fn pids(&self, host: &str) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.ns(host)])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The primary host dies: every process on it is frozen at one instant (SIGSTOP), then
    /// killed (SIGKILL), so none of them acts after the crash moment (no goodbye, no last
    /// release). Returns how many processes died.
    pub fn crash(&self, host: &str) -> usize {
        let pids = self.pids(host);
        for sig in [libc::SIGSTOP, libc::SIGKILL] {
            for p in &pids {
                // SAFETY: kill(2) on processes running inside our own namespace.
                unsafe { libc::kill(*p, sig) };
            }
        }
        pids.len()
    }
}

impl Topology {
    /// Waits until nothing runs on `host` any more (killed processes die asynchronously and
    /// hold their ports until they are gone); false after `timeout`.
    pub fn wait_empty(&self, host: &str, timeout: std::time::Duration) -> bool {
        let t = std::time::Instant::now();
        while !self.pids(host).is_empty() {
            if t.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in &self.created {
            let host = ns
                .trim_start_matches(&format!("{}-", self.prefix))
                .to_string();
            for p in self.pids(&host) {
                // SAFETY: as in `crash`.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        // Killed processes die asynchronously; wait for them, so that whoever looks after us
        // (a test, the next demo round) finds nothing running and no port held.
        for ns in &self.created {
            let host = ns
                .trim_start_matches(&format!("{}-", self.prefix))
                .to_string();
            self.wait_empty(&host, std::time::Duration::from_secs(5));
        }
        for ns in &self.created {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
