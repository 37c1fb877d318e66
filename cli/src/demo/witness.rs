//! The demo's witness: one etcd member (Debian's etcd-server) in the witness namespace, with
//! its data in the round's directory. Production uses a 3-member cluster; one member is what
//! decides here. Tests kill and restart it (the data directory keeps the generation).
//!
//! The history of a generation key is read back with etcdctl (Debian's etcd-client), one
//! revision at a time: etcd keeps every revision until it is compacted, which is the evidence
//! of who claimed what, and when.

use super::topology::{Topology, WITNESS_ADDR};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A key's revisions, oldest first: (mod_revision, value).
pub type History = Vec<(i64, String)>;

pub struct Etcd {
    ns: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub fn endpoint() -> String {
    format!("http://{WITNESS_ADDR}:2379")
}

impl Etcd {
    /// Starts etcd on `host` of `topo` (normally "wit") with its data and log under `dir`,
    /// and waits until it answers.
    pub fn start(topo: &Topology, host: &str, dir: &Path) -> Result<Etcd, String> {
        let mut e = Etcd {
            ns: topo.ns(host),
            data: dir.join("witness.etcd"),
            log: dir.join("witness.log"),
            child: None,
        };
        e.restart()?;
        Ok(e)
    }

    /// (Re)starts the member on the same data directory and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let peer = "http://127.0.0.1:2380";
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd", "--name", "witness"])
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &format!("{},http://127.0.0.1:2379", endpoint()),
                "--advertise-client-urls",
                &endpoint(),
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &format!("witness={peer}"),
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start etcd: {e} (install etcd-server: make setup)"))?;
        self.child = Some(child);
        let t = Instant::now();
        while !self.healthy() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "etcd exited ({st}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "etcd did not answer within 20 s (log {})",
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcdctl"])
            .args([
                "--endpoints",
                "http://127.0.0.1:2379",
                "--command-timeout",
                "2s",
            ])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| format!("etcdctl: {e} (install etcd-client: make setup)"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    fn healthy(&self) -> bool {
        self.etcdctl(&["endpoint", "health"]).is_ok()
    }

    /// The witness dies (SIGKILL: no goodbye to anyone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling the process group we created for our own child.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the member: a frozen etcd accepts connections and
    /// requests but answers nothing, as a wedged or partitioned member would.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling the process group we created for our own child.
            unsafe { libc::kill(-(c.id() as i32), sig) };
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Every revision of `key`, oldest first: (mod_revision, value).
    pub fn history(&self, key: &str) -> Result<History, String> {
        let mut out = Vec::new();
        let mut at: Option<i64> = None;
        loop {
            let rev = at.map(|r| format!("--rev={r}"));
            let mut args = vec!["get", key, "-w", "fields"];
            if let Some(r) = &rev {
                args.push(r);
            }
            let fields = self.etcdctl(&args)?;
            let Some(mod_rev) = fields
                .lines()
                .find_map(|l| l.strip_prefix("\"ModRevision\" : "))
                .and_then(|v| v.trim().parse::<i64>().ok())
            else {
                break;
            };
            let r = format!("--rev={mod_rev}");
            let value = self.etcdctl(&["get", key, "--print-value-only", &r])?;
            out.push((mod_rev, value.trim().to_string()));
            if mod_rev <= 1 {
                break;
            }
            at = Some(mod_rev - 1);
        }
        out.reverse();
        Ok(out)
    }
}

impl Etcd {
    /// The history of `vm`'s generation, and a problem if its last owner is not `role`
    /// ("primary" or "backup"): the side that runs the VM must hold the generation.
    pub fn judge(&self, vm: &str, role: &str) -> Result<(History, Option<String>), String> {
        let h = self
            .history(&remus_proto::generation::key("/remus", vm))
            .map_err(|e| format!("witness history: {e}"))?;
        let owner = h
            .last()
            .and_then(|(_, v)| remus_proto::generation::Generation::from_json(v.as_bytes()).ok())
            .map(|g| g.owner);
        let problem = (!owner
            .as_deref()
            .is_some_and(|o| o.starts_with(&format!("{role}@"))))
        .then(|| {
            format!(
                "the {role} runs the VM but the witness says the generation belongs to {owner:?}"
            )
        });
        Ok((h, problem))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
