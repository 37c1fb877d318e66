//! The Pacemaker resource agent `ocf:remus:vm` (dist/ocf/vm → `remus ocf`):
//! - Pacemaker's tools accept the documented configuration (dist/pacemaker), and Pacemaker's
//!   own scheduler confirms the agent's central rule: a backup that took the VM over must be
//!   reported running-unpromoted with the top promotion score (then it is promoted), never
//!   "promoted" by its unpromoted monitor (then it is stopped and restarted).
//! - `ocf-tester` (resource-agents) passes against the real agent on the namespace topology,
//!   with a real peer receiving.
//! - Transitions computed by Pacemaker's scheduler (crm_simulate) from the documented
//!   configuration, executed against the real agent on both hosts: a cold start, a crash of
//!   the primary's host (the backup took over by itself and is promoted in place), and a
//!   planned move (a live switch-over started from the pre-demote notification).

use remus::demo::topology::Topology;
use remus_tests::guest::{build_image, repo_root};
use remus_tests::netns::{bin, require_root, unique_prefix};
use remus_tests::pacemaker::{self, Op};
use remus_tests::two_hosts::TwoHosts;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The heavy tests of this file one at a time (each runs a protected guest).
static HEAVY: Mutex<()> = Mutex::new(());

const ADDRESSES: &str = "hosta=10.99.0.1 hostb=10.99.0.2";

/// Removes files and directories when the test ends, passed or not.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// The agent as `make install` installs it: dist/ocf/vm with the remus it was installed with
/// as its default, and remus with its daemons in a directory of their own (DIR/bin), as
/// `make install` puts them in PREFIX/bin. Not the build's own: ocf-tester runs the agent as
/// `nobody`, who cannot reach a build tree under a private home (a clone in /root).
fn install_agent(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for name in [
        "remus",
        "netbuf",
        "diskrep",
        "checkpointd",
        "libremus_uffd_shim.so",
    ] {
        let (from, to) = (PathBuf::from(bin(name)), bin_dir.join(name));
        // A hard link where the build is on the same file system; a copy where it is not.
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = dir.join("ocf/resource.d/remus");
    std::fs::create_dir_all(&d).unwrap();
    let text = std::fs::read_to_string(repo_root().join("dist/ocf/vm")).unwrap();
    assert!(text.contains("/usr/local/bin/remus"));
    let agent = d.join("vm");
    let remus = bin_dir.join("remus");
    std::fs::write(
        &agent,
        text.replace("/usr/local/bin/remus", &remus.to_string_lossy()),
    )
    .unwrap();
    for p in [
        dir,
        &bin_dir,
        &dir.join("ocf"),
        &dir.join("ocf/resource.d"),
        &d,
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent
}

/// One protected-guest set-up on two namespace hosts (hosta = prim, hostb = back).
struct Site {
    topo: Topology,
    dir: PathBuf,
    /// Each host's own /etc/remus/vm1.toml.
    pcfg: PathBuf,
    bcfg: PathBuf,
    agent: PathBuf,
    etcd: remus::demo::witness::Etcd,
    _cleanup: Cleanup,
}

impl Site {
    fn new(name: &str) -> Site {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(format!("remus-ocf-{name}-{prefix}"));
        let image = build_image(&prefix, &[], &repo_root().join("cli/guest/service.sh")).unwrap();
        let cleanup = Cleanup(vec![
            dir.clone(),
            image.clone(),
            format!("/dev/shm/{prefix}-primary-ram").into(),
            format!("/dev/shm/{prefix}-backup-ram").into(),
        ]);
        // remus' fencing witness (every takeover the agent asks for is claimed there) and
        // both hosts' configs.
        let TwoHosts {
            etcd,
            topo,
            bcfg,
            pcfg,
        } = TwoHosts::create(&prefix, &dir, &image).unwrap();
        let agent = install_agent(&dir);
        Site {
            topo,
            dir,
            pcfg,
            bcfg,
            agent,
            etcd,
            _cleanup: cleanup,
        }
    }

    fn ns_of(node: &str) -> &'static str {
        match node {
            "hosta" => "prim",
            "hostb" => "back",
            n => panic!("no host for node {n}"),
        }
    }

    fn config_of(&self, node: &str) -> &Path {
        match node {
            "hosta" => &self.pcfg,
            _ => &self.bcfg,
        }
    }

    fn run_dir(&self, node: &str) -> PathBuf {
        self.dir
            .join(if node == "hosta" { "primary" } else { "backup" })
    }

    /// Runs the agent's `action` on `node` with `env`: (exit code, what it said).
    fn agent(&self, node: &str, action: &str, env: &[(String, String)]) -> (i32, String) {
        let o = self
            .topo
            .command(Self::ns_of(node), &self.agent.to_string_lossy())
            .arg(action)
            .env("OCF_ROOT", self.dir.join("ocf"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("OCF_RESKEY_config", self.config_of(node))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// `remus status --json` of `node`'s run directory.
    fn status(&self, node: &str) -> serde_json::Value {
        let o = Command::new(bin("remus"))
            .args(["status", "--json", "--dir"])
            .arg(self.run_dir(node))
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for h in ["primary", "backup"] {
            for f in ["remus.log", "checkpointd.log", "diskrep.log"] {
                let p = self.dir.join(h).join(f);
                if let Ok(t) = std::fs::read_to_string(&p) {
                    let tail: Vec<&str> = t.lines().rev().take(10).collect();
                    out += &format!(
                        "--- {}\n{}\n",
                        p.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        out
    }

    fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            assert!(
                t.elapsed() < timeout,
                "{what}: not after {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pids of QEMU processes on `ns`.
    fn qemus(&self, ns: &str) -> Vec<i32> {
        self.topo
            .pids(ns)
            .into_iter()
            .filter(|p| {
                // argv[0]: checkpointd's own command line names QEMU too.
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| {
                        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                        String::from_utf8_lossy(argv0).contains("qemu-system")
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// The VM is protected and its guest is past its firmware, with checkpoints committed on
    /// the backup after that (a switch-over needs a resumable checkpoint).
    fn wait_protected_and_booted(&self) {
        self.wait("protected", Duration::from_secs(180), || {
            self.status("hosta")["protected"] == true
        });
        let console = self.dir.join("primary-console.log");
        self.wait("the guest's service", Duration::from_secs(120), || {
            std::fs::read_to_string(&console)
                .unwrap_or_default()
                .contains("SERVICE up")
        });
        let committed = || {
            self.status("hostb")["committed_through"]
                .as_u64()
                .unwrap_or(0)
        };
        let c0 = committed();
        self.wait("commits after boot", Duration::from_secs(60), || {
            committed() >= c0 + 2
        });
    }

    /// Executes a transition's resource actions like Pacemaker's executor, the agent's
    /// promotion scores going to the same CIB file; each must return what Pacemaker expects.
    fn execute(&self, ops: &[Op], cib: &Path) {
        for op in ops {
            let mut env = op.env.clone();
            env.push(("CIB_file".into(), cib.display().to_string()));
            let (code, said) = self.agent(&op.node, &op.task, &env);
            assert_eq!(
                code,
                op.expect,
                "{} on {}: {said}\nthe transition: {:?}\n{}",
                op.task,
                op.node,
                ops.iter()
                    .map(|o| format!("{} {}", o.task, o.node))
                    .collect::<Vec<_>>(),
                self.logs()
            );
        }
    }

    /// A recurring monitor as Pacemaker runs it between transitions.
    fn monitor(&self, node: &str, role: &str, interval: &str, cib: &Path) -> i32 {
        let env: Vec<(String, String)> = [
            ("OCF_RESKEY_CRM_meta_interval", interval),
            ("OCF_RESKEY_CRM_meta_role", role),
            ("OCF_RESKEY_CRM_meta_on_node", node),
            ("OCF_RESKEY_CRM_meta_clone_max", "2"),
            ("OCF_RESKEY_CRM_meta_timeout", "20000"),
            ("OCF_RESKEY_addresses", ADDRESSES),
            ("OCF_RESOURCE_INSTANCE", "vm1"),
            ("CIB_file", &cib.display().to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        self.agent(node, "monitor", &env).0
    }
}

/// A transient node attribute of `node` in a CIB file (the promotion score is `master-vm1`).
fn attribute(cib: &Path, node: &str, name: &str) -> Option<String> {
    let o = Command::new("crm_attribute")
        .env("CIB_file", cib)
        .args([
            "--node",
            node,
            "--name",
            name,
            "--lifetime",
            "reboot",
            "--query",
            "--quiet",
        ])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn pacemaker_accepts_the_configuration_and_promotes_a_backup_that_took_over_in_place() {
    let d = tempfile::tempdir().unwrap();
    let cib0 = d.path().join("cib0.xml");
    std::fs::write(&cib0, pacemaker::cib()).unwrap();
    let (ok, said) = pacemaker::verify(&cib0);
    assert!(ok && !said.contains("error"), "crm_verify: {said}");

    // With nothing running, the VM cold-starts where the documented preference says.
    let cib1 = d.path().join("cib1.xml");
    let t = pacemaker::transition(&cib0, &[], &cib1);
    assert!(t.summary.contains("Promoted hosta"), "{}", t.summary);
    assert!(
        t.ops
            .iter()
            .any(|o| o.task == "promote" && o.node == "hosta"),
        "{t:?}"
    );
    assert!(
        t.ops.iter().any(|o| o.task == "start" && o.node == "hostb"),
        "{t:?}"
    );
    assert!(
        t.ops.iter().any(|o| o.task == "notify"
            && o.env
                .iter()
                .any(|(k, v)| k == "OCF_RESKEY_CRM_meta_notify_type" && v == "pre")),
        "notifications are on: {t:?}"
    );

    // hosta fails; hostb took the VM over by itself and asks for the top score, as the agent
    // does. Pacemaker promotes it where it runs: nothing is stopped.
    let set = Command::new("crm_attribute")
        .env("CIB_file", &cib1)
        .env("OCF_RESOURCE_INSTANCE", "vm1")
        .args(["--node", "hostb", "--promotion", "--update", "100"])
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    let t = pacemaker::transition(&cib1, &["--node-fail", "hosta"], &d.path().join("cib2.xml"));
    assert!(
        t.summary.contains("Promote") && t.summary.contains("Promoted hostb"),
        "{}",
        t.summary
    );
    assert!(
        !t.summary.contains("Recover")
            && !t.ops.iter().any(|o| o.task == "stop" || o.task == "demote"),
        "{t:?}"
    );
    // Had its unpromoted monitor said "promoted" (8), Pacemaker would recover it: stop the VM.
    let t = pacemaker::transition(
        &cib1,
        &[
            "--node-fail",
            "hosta",
            "--op-inject",
            "vm1_monitor_11000@hostb=8",
        ],
        &d.path().join("cib3.xml"),
    );
    assert!(t.summary.contains("Recover"), "{}", t.summary);
    assert!(
        t.ops.iter().any(|o| o.task == "stop" && o.node == "hostb"),
        "{t:?}"
    );
}

/// Keeps `remus receive` running on the backup host, as Pacemaker would restart a stopped
/// unpromoted instance (it stands down and exits whenever its primary stops on purpose).
struct ReceiveLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReceiveLoop {
    fn start(site: &Site) -> ReceiveLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (ns, cfg, log) = (
            site.topo.ns("back"),
            site.bcfg.clone(),
            site.dir.join("backup-receive.log"),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                let mut c: Child = Command::new("ip")
                    .args(["netns", "exec", &ns, &bin("remus"), "receive", "--config"])
                    .arg(&cfg)
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .unwrap();
                while !s.load(Ordering::Relaxed) {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        });
        ReceiveLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ReceiveLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn ocf_tester_passes_on_the_namespace_topology() {
    require_root();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let site = Site::new("tester");
    // The peer: hostb receives, restarted whenever it stands down.
    let _peer = ReceiveLoop::start(&site);
    site.wait("hostb receiving", Duration::from_secs(30), || {
        site.status("hostb")["checkpointd"]["phase"] == "waiting"
    });
    let hosta = Site::ns_of("hosta");
    let o = site
        .topo
        .command(hosta, "ocf-tester")
        .args(["-n", "vm1"])
        .arg("-o")
        .arg(format!("config={}", site.pcfg.display()))
        .arg("-o")
        .arg(format!("addresses={ADDRESSES}"))
        .args(["-o", "CRM_meta_on_node=hosta"])
        .arg(&site.agent)
        .env("OCF_ROOT", site.dir.join("ocf"))
        .stdin(Stdio::null())
        .output()
        .expect("ocf-tester (make setup installs resource-agents)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.contains("passed all tests"),
        "ocf-tester: {said}\n{}",
        site.logs()
    );
    // It ended with the resource stopped: nothing of it is left on hosta.
    assert!(site.qemus("prim").is_empty(), "a VM left on hosta");
}

#[test]
fn pacemaker_transitions_drive_the_agent_through_cold_start_crash_and_move() {
    require_root();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());

    // 1. A cold start where the preference points (hosta), then a crash of hosta's host: the
    // backup takes the VM over by itself, and Pacemaker promotes it there without a restart.
    let site = Site::new("crash");
    let d = &site.dir;
    let cib0 = d.join("cib0.xml");
    std::fs::write(&cib0, pacemaker::cib()).unwrap();
    let cib1 = d.join("cib1.xml");
    let t = pacemaker::transition(&cib0, &[], &cib1);
    site.execute(&t.ops, &cib1);
    site.wait_protected_and_booted();
    // Recurring monitors between transitions set the scores the next one is computed from.
    assert_eq!(site.monitor("hosta", "Promoted", "10000", &cib1), 8);
    assert_eq!(site.monitor("hostb", "Unpromoted", "11000", &cib1), 0);
    assert_eq!(
        attribute(&cib1, "hosta", "master-vm1").as_deref(),
        Some("100")
    );
    assert_eq!(
        attribute(&cib1, "hostb", "master-vm1").as_deref(),
        Some("50")
    );

    site.topo.crash("prim");
    site.wait("the backup's takeover", Duration::from_secs(15), || {
        site.status("hostb")["checkpointd"]["phase"] == "failedover"
    });
    let running = site.qemus("back");
    assert_eq!(running.len(), 1, "one restored VM on hostb");
    assert_eq!(site.monitor("hostb", "Unpromoted", "11000", &cib1), 0);
    assert_eq!(
        attribute(&cib1, "hostb", "master-vm1").as_deref(),
        Some("100")
    );
    let cib2 = d.join("cib2.xml");
    let t = pacemaker::transition(&cib1, &["--node-fail", "hosta"], &cib2);
    assert!(
        t.summary.contains("Promoted hostb") && !t.summary.contains("Recover"),
        "{}",
        t.summary
    );
    site.execute(&t.ops, &cib2);
    assert_eq!(
        site.qemus("back"),
        running,
        "the VM was promoted where it ran, not restarted"
    );
    let (history, problem) = site.etcd.judge("demo", "backup").unwrap();
    assert!(
        problem.is_none(),
        "the backup took over with the generation: {problem:?}: {history:?}"
    );
    drop(site);

    // 2. A planned move: the preference changes to hostb. hostb takes the VM over live in the
    // pre-demote notification, hosta's copy stops, hosta becomes the (waiting) backup.
    let site = Site::new("move");
    let d = &site.dir;
    let cib0 = d.join("cib0.xml");
    std::fs::write(&cib0, pacemaker::cib()).unwrap();
    let cib1 = d.join("cib1.xml");
    let t = pacemaker::transition(&cib0, &[], &cib1);
    site.execute(&t.ops, &cib1);
    site.wait_protected_and_booted();
    assert_eq!(site.monitor("hostb", "Unpromoted", "11000", &cib1), 0);
    let moved = d.join("cib1-moved.xml");
    let text = std::fs::read_to_string(&cib1).unwrap();
    assert!(text.contains(r#"node="hosta" score="10""#));
    std::fs::write(
        &moved,
        text.replace(r#"node="hosta" score="10""#, r#"node="hostb" score="200""#),
    )
    .unwrap();
    let cib2 = d.join("cib2.xml");
    let t = pacemaker::transition(&moved, &[], &cib2);
    assert!(
        t.summary.contains("Demote") && t.summary.contains("Promoted hostb"),
        "{}",
        t.summary
    );
    site.execute(&t.ops, &cib2);
    assert_eq!(site.status("hostb")["checkpointd"]["phase"], "failedover");
    assert_eq!(site.qemus("back").len(), 1, "the VM runs on hostb");
    site.wait("hosta's copy gone", Duration::from_secs(10), || {
        site.qemus("prim").is_empty()
    });
    assert_eq!(
        site.monitor("hosta", "Unpromoted", "11000", &cib2),
        0,
        "hosta is the backup"
    );
    assert_eq!(site.monitor("hostb", "Promoted", "10000", &cib2), 8);
    let log = std::fs::read_to_string(site.run_dir("hosta").join("remus.log")).unwrap_or_default();
    assert!(
        log.contains("FENCED: the backup runs the VM"),
        "hosta stopped its copy on hearing the takeover:\n{log}"
    );
    // The move went through remus' fencing: the backup won the generation at the witness.
    let (history, problem) = site.etcd.judge("demo", "backup").unwrap();
    assert!(problem.is_none(), "{problem:?}: {history:?}");
}
