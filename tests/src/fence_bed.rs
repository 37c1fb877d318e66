//! The partition-matrix harness (tests/tests/remus_fence.rs): one topology with a witness
//! (etcd) and one guest image for every case; a case starts a fresh protected pair
//! (`remus receive`, `remus protect`) with a client talking to the guest and the LAN watched,
//! makes its cut, and ends in [`Bed::finish`], which checks what every case must hold and
//! writes the evidence (the generation's history, the LAN frames, the replies).

use crate::guest::{build_image, repo_root};
use crate::lan::LanWatch;
use crate::netns::{bin, unique_prefix};
use remus::demo::client::{Client, Ended};
use remus::demo::topology::Topology;
use remus::demo::verdict;
use remus::demo::witness::Etcd;
use remus::demo::HostSetup;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

pub fn now_ms() -> u64 {
    remus::demo::client::unix_ms()
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

pub struct Bed {
    pub topo: Topology,
    pub etcd: Etcd,
    pub dir: PathBuf,
    pub image: PathBuf,
    pub prefix: String,
    pub evidence: PathBuf,
}

/// One protected pair with a client talking to the guest and the LAN watched.
pub struct Pair {
    pub recv: Child,
    pub rlog: PathBuf,
    pub prot: Child,
    pub plog: PathBuf,
    pub client: Option<Client>,
    pub lan: LanWatch,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in [&mut self.recv, &mut self.prot] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `cond` holds (polling every 50 ms), panicking with `what` after `timeout`.
pub fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn exit_code_within(c: &mut Child, d: Duration, what: &str) -> Option<i32> {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s.code();
        }
        assert!(t.elapsed() < d, "{what} did not exit within {d:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn status(run: &Path) -> serde_json::Value {
    let o = Command::new(bin("remus"))
        .args(["status", "--json", "--dir", &run.to_string_lossy()])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

impl Bed {
    /// The topology, the witness and the guest image every case shares.
    pub fn create() -> Bed {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(format!("remus-fence-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let image = build_image(&prefix, &[], &repo_root().join("cli/guest/service.sh")).unwrap();
        let topo = Topology::create(&prefix).unwrap();
        let etcd = Etcd::start(&topo, "wit", &dir).unwrap();
        let evidence = repo_root().join("target/fence-evidence");
        let _ = std::fs::remove_dir_all(&evidence);
        Bed {
            topo,
            etcd,
            dir,
            image,
            prefix,
            evidence,
        }
    }

    pub fn setup(&self, host: &'static str) -> PathBuf {
        HostSetup {
            dir: &self.dir,
            host,
            prefix: &self.prefix,
            image: &self.image,
            disk_mib: 8,
            interval_ms: 100,
            peer_timeout_ms: 300,
            witness: true,
        }
        .write()
        .unwrap()
    }

    pub fn run_dir(&self, host: &str) -> PathBuf {
        self.dir.join(host)
    }

    pub fn start(&self, host: &str, verb: &str, cfg: &Path) -> (Child, PathBuf) {
        let log = cfg.with_extension(format!("{verb}.log"));
        let _ = std::fs::remove_file(&log);
        let c = self
            .topo
            .command(host, &bin("remus"))
            .args([verb, "--config"])
            .arg(cfg)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        (c, log)
    }

    /// Fresh disks, `remus receive` then `remus protect`, the guest's service up and the
    /// backup committing checkpoints taken after it (a checkpoint from the firmware phase is
    /// not resumable), then a client connected and the LAN watched.
    pub fn pair(&self) -> Pair {
        let t = Instant::now();
        let _ = std::fs::remove_file(self.dir.join("backup-console.log"));
        let _ = std::fs::remove_file(self.dir.join("primary-console.log"));
        let bcfg = self.setup("backup");
        let pcfg = self.setup("primary");
        assert!(self.topo.wait_empty("prim", Duration::from_secs(10)));
        assert!(self.topo.wait_empty("back", Duration::from_secs(10)));
        let (mut recv, rlog) = self.start("back", "receive", &bcfg);
        until("remus receive", Duration::from_secs(30), || {
            assert!(recv.try_wait().unwrap().is_none(), "{}", read(&rlog));
            read(&rlog).contains("waiting for the primary")
        });
        let (mut prot, plog) = self.start("prim", "protect", &pcfg);
        let console = self.dir.join("primary-console.log");
        until(
            "protection and the guest's service",
            Duration::from_secs(240),
            || {
                assert!(prot.try_wait().unwrap().is_none(), "{}", read(&plog));
                read(&plog).contains("PROTECTED") && read(&console).contains("SERVICE up")
            },
        );
        let committed = || status(&self.run_dir("backup"))["committed_through"].as_u64();
        let c0 = committed().unwrap_or(0);
        until(
            "checkpoints after the service",
            Duration::from_secs(60),
            || committed().is_some_and(|c| c >= c0 + 3),
        );
        let lan = LanWatch::start(&self.topo.ns("lan"), &["lp", "lb"], GUEST_MAC).unwrap();
        let addr = remus::demo::topology::GUEST_ADDR.parse().unwrap();
        let client = Client::start(&self.topo.ns("cli"), addr, Duration::from_secs(60)).unwrap();
        let pair = Pair {
            recv,
            rlog,
            prot,
            plog,
            client: Some(client),
            lan,
        };
        self.replies_after(&pair, 0, 10, "first replies");
        eprintln!(
            "  pair protected, guest serving, client connected in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        pair
    }

    /// Waits for `n` replies after `from_ms`.
    pub fn replies_after(&self, p: &Pair, from_ms: u64, n: usize, what: &str) {
        let c = p.client.as_ref().unwrap();
        until(what, Duration::from_secs(30), || {
            if let Ended::Broken(why) = c.ended() {
                panic!("{what}: the client's connection broke: {why}");
            }
            c.snapshot()
                .iter()
                .filter(|r| r.at_unix_ms > from_ms)
                .count()
                >= n
        });
    }

    pub fn link(&self, host: &str, dev: &str, state: &str) {
        self.topo
            .on(host, &["link", "set", "dev", dev, state])
            .unwrap();
    }

    /// Drops everything `host` sends on `dev` (a one-way cut), with nftables.
    pub fn drop_out(&self, host: &str, dev: &str) {
        let rules = format!(
            "table inet cut {{ chain out {{ type filter hook output priority 0; oifname \"{dev}\" drop; }}; }}"
        );
        let o = self
            .topo
            .command(host, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(rules.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(o.status.success(), "nft: {o:?}");
    }

    pub fn undrop(&self, host: &str) {
        let _ = self
            .topo
            .command(host, "nft")
            .args(["delete", "table", "inet", "cut"])
            .output();
    }

    /// Every process of `host` gets `sig` (SIGSTOP freezes the whole host, SIGCONT thaws it).
    pub fn signal_host(&self, host: &str, sig: i32) {
        for p in self.topo.pids(host) {
            // SAFETY: kill(2) on a process of our own test namespace.
            unsafe { libc::kill(p, sig) };
        }
    }

    /// Ends the case: the checks every case shares, and its evidence. `survivor` is the host
    /// that runs the VM at the end ("primary" or "backup"); `quiet` is the other host's LAN
    /// port and the instant from which it must send nothing.
    pub fn finish(&self, case: &str, mut p: Pair, cut_ms: u64, survivor: &str, quiet: (&str, u64)) {
        self.replies_after(&p, now_ms(), 10, "replies at the end");
        let (replies, ended) = p.client.take().unwrap().finish();
        let frames = p.lan.seen();
        let (history, owner_problem) = self.etcd.judge("demo", survivor).unwrap();
        // Stop everything, so the survivor's disk is complete.
        let run = self.run_dir(survivor);
        let _ = Command::new(bin("remus"))
            .args(["stop", "--run-dir", &run.to_string_lossy()])
            .output();
        drop(p);
        self.topo.crash("prim");
        self.topo.crash("back");
        assert!(self.topo.wait_empty("prim", Duration::from_secs(10)));
        assert!(self.topo.wait_empty("back", Duration::from_secs(10)));
        let disk = std::fs::read(self.dir.join(format!("{survivor}.img"))).unwrap();

        let ev = self.evidence.join(case);
        std::fs::create_dir_all(&ev).unwrap();
        let text: String = history.iter().map(|(r, v)| format!("{r} {v}\n")).collect();
        std::fs::write(ev.join("generation.txt"), &text).unwrap();
        let lan: String = frames
            .iter()
            .map(|s| {
                format!(
                    "{} {:+} {} 0x{:04x} {}\n",
                    s.at_ms,
                    s.at_ms as i64 - cut_ms as i64,
                    s.port,
                    s.ethertype,
                    s.len
                )
            })
            .collect();
        std::fs::write(ev.join("lan.txt"), lan).unwrap();
        let raw: Vec<(u64, i64, u64)> = replies
            .iter()
            .map(|r| (r.n, r.written, r.at_unix_ms))
            .collect();
        let rtext: String = raw
            .iter()
            .map(|(n, w, a)| format!("{n} {w} {a}\n"))
            .collect();
        std::fs::write(ev.join("replies.txt"), rtext).unwrap();

        let mut j = verdict::judge_replies(&raw, cut_ms);
        if let Ended::Broken(why) = ended {
            j.problems.push(format!("the connection broke: {why}"));
        }
        let k = verdict::judge_disk(&mut j, &disk);
        // At most one copy on the LAN: the quiet side's port is silent from its instant on,
        // and no primary frame follows a backup frame.
        let (quiet_port, quiet_from) = quiet;
        let late: Vec<_> = frames
            .iter()
            .filter(|s| s.port == quiet_port && s.at_ms >= quiet_from)
            .collect();
        if !late.is_empty() {
            j.problems.push(format!(
                "{} frame(s) on {quiet_port} after {:+} ms from the cut, first at {:+} ms",
                late.len(),
                quiet_from as i64 - cut_ms as i64,
                late[0].at_ms as i64 - cut_ms as i64
            ));
        }
        let first_lb = frames.iter().find(|s| s.port == "lb").map(|s| s.at_ms);
        let last_lp = frames
            .iter()
            .filter(|s| s.port == "lp")
            .map(|s| s.at_ms)
            .max();
        if let (Some(b), Some(p)) = (first_lb, last_lp) {
            if p >= b {
                j.problems.push(format!("two copies on the LAN: a primary frame at {:+} ms after the backup's first at {:+} ms", p as i64 - cut_ms as i64, b as i64 - cut_ms as i64));
            }
        }
        j.problems.extend(owner_problem);
        let summary = format!(
            "{case}: {} — survivor {survivor}, {} replies ({} before the cut), longest gap {} ms, disk records 0..={}, generation revisions {}, LAN frames lp/lb {}/{} (last lp {:+} ms, first lb {:+} ms)",
            if j.problems.is_empty() { "OK" } else { "FAILED" },
            j.replies,
            j.before_crash,
            j.longest_gap_ms,
            k.map_or(-1, |k| k as i64),
            history.len(),
            frames.iter().filter(|s| s.port == "lp").count(),
            frames.iter().filter(|s| s.port == "lb").count(),
            last_lp.map_or(0, |t| t as i64 - cut_ms as i64),
            first_lb.map_or(0, |t| t as i64 - cut_ms as i64),
        );
        std::fs::write(
            ev.join("summary.txt"),
            format!("{summary}\n{:#?}\n", j.problems),
        )
        .unwrap();
        eprintln!("{summary}");
        assert!(
            j.problems.is_empty(),
            "{case}: {:#?}\nevidence in {}",
            j.problems,
            ev.display()
        );
    }

    /// The primary won (it runs on unprotected) and the backup stood down: fenced (9) or told
    /// to stop (0), never restoring.
    pub fn primary_won(&self, p: &mut Pair, backup_code: &[i32]) {
        until("the primary to win", Duration::from_secs(20), || {
            assert!(p.prot.try_wait().unwrap().is_none(), "{}", read(&p.plog));
            read(&p.plog).contains("PROTECTION LOST")
        });
        let code = exit_code_within(&mut p.recv, Duration::from_secs(30), "remus receive");
        let r = read(&p.rlog);
        assert!(
            code.is_some_and(|c| backup_code.contains(&c)),
            "receive exited {code:?}:\n{r}"
        );
        assert!(!r.contains("FAILOVER"), "{r}");
        assert!(
            !self.dir.join("backup-console.log").exists(),
            "a VM was started on the backup"
        );
    }

    /// The backup won and runs the VM; the primary is fenced (exit 9) by the time `fenced` is
    /// true.
    pub fn backup_won(&self, p: &mut Pair) {
        until("the backup to take over", Duration::from_secs(20), || {
            assert!(p.recv.try_wait().unwrap().is_none(), "{}", read(&p.rlog));
            read(&p.rlog).contains("FAILOVER")
        });
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.image);
        for h in ["primary", "backup"] {
            let _ = std::fs::remove_file(format!("/dev/shm/{}-{h}-ram", self.prefix));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}
