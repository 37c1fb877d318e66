//! `remus protect`, `receive`, `status` and `stop` over their real interfaces: the errors a
//! stranger meets first (each with its documented exit code), a planned stop that must not
//! fail over, and a dying daemon that must be reported and hand the VM to the backup.

use remus::demo::topology::Topology;
use remus_tests::guest::{build_image, repo_root};
use remus_tests::netns::{bin, require_root, unique_prefix};
use remus_tests::two_hosts::TwoHosts;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn remus(args: &[&str]) -> Output {
    Command::new(bin("remus")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `remus ARGS`, expects exit `code` and `needle` in its standard error.
fn refused(args: &[&str], code: i32, needle: &str) {
    let o = remus(args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "remus {args:?}: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(needle),
        "remus {args:?}: {}",
        stderr(&o)
    );
}

#[test]
fn first_mistakes_get_clear_messages_and_stable_exit_codes() {
    require_root();
    let d = std::env::temp_dir().join(format!("remus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let img = d.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img = img.to_string_lossy().into_owned();
    let run = d.join("run").to_string_lossy().into_owned();
    let key = remus_tests::replication_key(&d).display().to_string();
    // A primary on this host's loopback: everything exists, so each case below changes one
    // thing.
    let on_lo = |changes: &[&str]| -> Vec<String> {
        let mut flags: Vec<(String, String)> = [
            ("--image", img.as_str()),
            ("--run-dir", run.as_str()),
            ("--guest-if", "lo"),
            ("--uplink-if", "lo"),
            ("--key-file", key.as_str()),
        ]
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect();
        for c in changes.chunks(2) {
            match flags.iter_mut().find(|(f, _)| f == c[0]) {
                Some(slot) => slot.1 = c[1].to_string(),
                None => flags.push((c[0].to_string(), c[1].to_string())),
            }
        }
        let mut v = vec!["protect".to_string()];
        v.extend(flags.into_iter().flat_map(|(f, x)| [f, x]));
        v.extend(["--".into(), "qemu-system-x86_64".into()]);
        v
    };

    // A typo in the config file: usage (2), naming the key.
    let cfg = d.join("bad.toml");
    std::fs::write(&cfg, "[guest]\nram = 64\n").unwrap();
    refused(
        &["protect", "--config", &cfg.to_string_lossy()],
        2,
        "unknown field `ram`",
    );
    refused(&["protect", "--image", &img], 2, "no guest");
    // Not root: 5, before anything is touched.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin("remus"))
        .args(args(&on_lo(&[])))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
    // A missing package is named.
    let mut v = on_lo(&[]);
    *v.last_mut().unwrap() = "qemu-system-nonesuch".into();
    refused(&args(&v), 6, "apt-get install qemu-system-x86");
    refused(
        &args(&on_lo(&["--guest-if", "nosuchtap0"])),
        6,
        "unknown interface nosuchtap0",
    );
    refused(
        &args(&on_lo(&["--image", "/nonexistent.img"])),
        6,
        "/nonexistent.img",
    );
    // A busy NBD port: 7, with the port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    refused(
        &args(&on_lo(&["--nbd", &port])),
        7,
        &format!("port busy: {port}"),
    );
    drop(held);
    // The backup's replication address must be on this host.
    let mut v = on_lo(&["--backup", "192.0.2.9"]);
    v[0] = "receive".into();
    refused(&args(&v), 6, "192.0.2.9 is not on this host");
    // A run directory owned by a live remus: 7 (this test process plays the live owner).
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(d.join("run/remus.pid"), std::process::id().to_string()).unwrap();
    refused(&args(&on_lo(&["--nbd", "127.0.0.1:0"])), 7, "another remus");
    std::fs::remove_file(d.join("run/remus.pid")).unwrap();
    refused(&["stop", "--run-dir", &run], 6, "nothing runs");
    // The replication key: required, a missing one is not found (6), one others may read is
    // refused (2); `remus keygen` writes it 0600 and never overwrites one (7).
    refused(
        &args(&on_lo(&["--key-file", "/nonexistent.key"])),
        6,
        "/nonexistent.key",
    );
    let fresh = d.join("fresh.key");
    let _ = std::fs::remove_file(&fresh);
    let o = remus(&["keygen", &fresh.to_string_lossy()]);
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&fresh).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&fresh).unwrap();
    refused(
        &["keygen", &fresh.to_string_lossy()],
        7,
        "never overwritten",
    );
    assert_eq!(std::fs::read(&fresh).unwrap(), before);
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &args(&on_lo(&["--key-file", &fresh.to_string_lossy()])),
        2,
        "chmod 600",
    );
    // --attach protects a guest that already runs: here none does and no diskrep serves one,
    // so it stops there (4), saying what attach needs; --qmp belongs to --attach (2).
    let mut v = on_lo(&[]);
    v.insert(1, "--attach".into());
    refused(&args(&v), 4, "diskrep does not answer");
    assert_eq!(
        remus(&["protect", "--qmp", "/run/x.qmp"]).status.code(),
        Some(2)
    );
    // Bad arguments.
    assert_eq!(remus(&["demo", "--rounds", "0"]).status.code(), Some(2));
    assert_eq!(remus(&["demo", "--cycles", "0"]).status.code(), Some(2));
    assert_eq!(
        remus(&["protect", "--interval-ms", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(remus(&["frobnicate"]).status.code(), Some(2));
    // --help documents the exit codes.
    let h = String::from_utf8_lossy(&remus(&["help", "protect"]).stdout).into_owned();
    assert!(h.contains("7  busy") && h.contains("6  not found"), "{h}");
    let _ = std::fs::remove_dir_all(&d);
}

fn wait_for(path: &Path, text: &str, timeout: Duration, also: &mut Child) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(text) {
            return s;
        }
        if let Ok(Some(st)) = also.try_wait() {
            panic!(
                "waiting for {text:?}: the process ended ({st}):\n{s}\n{}",
                neighbour_logs(path)
            );
        }
        assert!(
            t.elapsed() < timeout,
            "no {text:?} in {} after {timeout:?}:\n{s}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(topo: &Topology, host: &str, verb: &str, cfg: &Path) -> (Child, PathBuf) {
    let log = cfg.with_extension(format!("{verb}.log"));
    let c = topo
        .command(host, &bin("remus"))
        .args([verb, "--config"])
        .arg(cfg)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    (c, log)
}

/// `remus receive` ended by itself with 0, saying the primary ended protection, and no VM was
/// ever started on the backup.
fn backup_stood_down(recv: &mut Child, rlog: &Path, dir: &Path) {
    let code = exits_within(recv, Duration::from_secs(10));
    let r = std::fs::read_to_string(rlog).unwrap();
    assert_eq!(code, Some(0), "{r}");
    assert!(
        r.contains("the primary ended protection") && !r.contains("FAILOVER"),
        "{r}"
    );
    no_vm_on_the_backup(dir);
}

/// After a stall of the backup: `remus receive` ended without starting a VM, either because it
/// read the primary's STOP (exit 0) or, when the STOP could not reach it (the primary gives up
/// a write into a full socket after its write timeout, e.g. in the middle of a boot-time
/// checkpoint of tens of MiB), because the witness told it on waking that the primary still
/// holds the generation (exit 9, fenced). Both leave exactly one copy; a restore fails this.
fn stalled_backup_did_not_take_over(recv: &mut Child, rlog: &Path, dir: &Path) {
    let code = exits_within(recv, Duration::from_secs(10));
    let r = std::fs::read_to_string(rlog).unwrap();
    match code {
        Some(0) => assert!(r.contains("the primary ended protection"), "{r}"),
        Some(9) => assert!(
            r.contains("FENCED") && r.contains("nothing restored here"),
            "{r}"
        ),
        other => panic!("remus receive exited {other:?}:\n{r}"),
    }
    assert!(!r.contains("FAILOVER"), "{r}");
    no_vm_on_the_backup(dir);
}

fn no_vm_on_the_backup(dir: &Path) {
    assert!(
        !dir.join("backup-console.log").exists(),
        "a VM was started on the backup after the primary ended protection"
    );
}

/// The other logs next to `path` (the other host's remus, the daemons' logs), for a failure
/// message that shows both sides.
fn neighbour_logs(path: &Path) -> String {
    let Some(dir) = path.parent() else {
        return String::new();
    };
    let mut out = String::new();
    let mut files: Vec<PathBuf> = ["primary", "backup"]
        .iter()
        .flat_map(|h| {
            ["checkpointd.log", "diskrep.log", "netbuf.log"]
                .iter()
                .map(move |f| dir.join(h).join(f))
        })
        .collect();
    files.extend(
        ["primary.protect.log", "backup.receive.log"]
            .iter()
            .map(|f| dir.join(f)),
    );
    files.extend(
        ["backup-console.log", "primary-console.log"]
            .iter()
            .map(|f| dir.join(f)),
    );
    for f in files.iter().filter(|f| f.as_path() != path) {
        if let Ok(t) = std::fs::read_to_string(f) {
            let tail: Vec<&str> = t.lines().rev().take(8).collect();
            out += &format!(
                "--- {}\n{}\n",
                f.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    out
}

struct Pair {
    recv: Child,
    rlog: PathBuf,
    prot: Child,
    plog: PathBuf,
}

/// `remus receive` on the backup, then `remus protect` on the primary, until both say the
/// VM is protected (PROTECTED, and a first checkpoint committed on the backup).
fn protect_pair(topo: &Topology, bcfg: &Path, pcfg: &Path) -> Pair {
    let (mut recv, rlog) = start(topo, "back", "receive", bcfg);
    wait_for(
        &rlog,
        "waiting for the primary",
        Duration::from_secs(30),
        &mut recv,
    );
    let (mut prot, plog) = start(topo, "prim", "protect", pcfg);
    wait_for(&plog, "PROTECTED", Duration::from_secs(180), &mut prot);
    wait_for(&rlog, "RECEIVING", Duration::from_secs(30), &mut recv);
    Pair {
        recv,
        rlog,
        prot,
        plog,
    }
}

fn exits_within(c: &mut Child, d: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < d {
        if let Some(s) = c.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    panic!("did not exit within {d:?}");
}

#[test]
fn planned_stop_stall_death_and_switch_over_each_end_with_one_running_copy() {
    require_root();
    let prefix = unique_prefix();
    let dir = std::env::temp_dir().join(format!("remus-cli-{prefix}"));
    let image = build_image(&prefix, &[], &repo_root().join("cli/guest/service.sh")).unwrap();
    let _cleanup = Cleanup(TwoHosts::leftovers(&prefix, &dir, &image));
    let TwoHosts {
        topo,
        etcd: _etcd,
        bcfg,
        pcfg,
    } = TwoHosts::create(&prefix, &dir, &image).unwrap();
    let (prun, brun) = (dir.join("primary"), dir.join("backup"));

    // 1. Protect, look, stop on purpose: the backup must not take over.
    let Pair {
        mut recv,
        rlog,
        mut prot,
        plog,
    } = protect_pair(&topo, &bcfg, &pcfg);
    let text = std::fs::read_to_string(&plog).unwrap();
    assert!(
        text.contains("initial sync ["),
        "the initial sync is shown:\n{text}"
    );
    wait_for(&rlog, "RECEIVING", Duration::from_secs(30), &mut recv);
    // A steady rate needs the guest booted (its first checkpoints are tens of MiB) and a few
    // checkpoints behind it.
    wait_for(
        &dir.join("primary-console.log"),
        "SERVICE up",
        Duration::from_secs(120),
        &mut prot,
    );
    let t = Instant::now();
    let (o, v) = loop {
        let o = remus(&["status", "--json", "--dir", &prun.to_string_lossy()]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["checkpoint_rate"].as_f64().unwrap_or(0.0) > 1.0
            || t.elapsed() > Duration::from_secs(20)
        {
            break (o, v);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert_eq!(
        (v["role"].as_str(), v["protected"].as_bool()),
        (Some("primary"), Some(true)),
        "{v}"
    );
    assert!(v["checkpoint_rate"].as_f64().unwrap() > 1.0, "{v}");
    assert!(
        v["frames_held"].is_u64() && v["epochs_unacked"].is_u64(),
        "{v}"
    );
    assert!(v["diskrep"]["link"] == "protected", "{v}");
    // The witness: the primary started a generation it owns, and etcd answers.
    assert!(
        v["owner"]
            .as_str()
            .is_some_and(|o| o.starts_with("primary@"))
            && v["witness_reachable"] == true
            && v["generation"].as_u64() >= Some(1),
        "{v}"
    );
    let o = remus(&["status", "--dir", &brun.to_string_lossy()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("role backup"),
        "{o:?}"
    );
    // A second protect for the same VM on the same host is refused.
    let (mut again, alog) = start(&topo, "prim", "protect", &pcfg);
    assert_eq!(
        exits_within(&mut again, Duration::from_secs(10)),
        Some(7),
        "{}",
        std::fs::read_to_string(&alog).unwrap()
    );

    let o = remus(&["stop", "--run-dir", &prun.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(exits_within(&mut prot, Duration::from_secs(5)), Some(0));
    backup_stood_down(&mut recv, &rlog, &dir);
    assert!(
        topo.wait_empty("prim", Duration::from_secs(5))
            && topo.wait_empty("back", Duration::from_secs(5)),
        "processes left after stop"
    );
    assert_eq!(
        remus(&["stop", "--run-dir", &prun.to_string_lossy()])
            .status
            .code(),
        Some(6)
    );

    // 2. The backup stalls (SIGSTOP) past the primary's patience: the primary gives up on it,
    // tells it its checkpoints are stale, and only then lets output go unchecked. When the
    // backup wakes up it must stand down, never restore a checkpoint older than what the world
    // has seen.
    let Pair {
        mut recv,
        rlog,
        mut prot,
        plog,
    } = protect_pair(&topo, &bcfg, &pcfg);
    let backup_cp = find(&topo, "back", "checkpointd");
    // SAFETY: kill(2) on a process of our own test namespace.
    unsafe { libc::kill(backup_cp, libc::SIGSTOP) };
    let p = wait_for(&plog, "PROTECTION LOST", Duration::from_secs(10), &mut prot);
    // Caught by its silence or by a write that made no progress, whichever comes first.
    assert!(
        p.contains("backup silent") || p.contains("stopped reading"),
        "{p}"
    );
    unsafe { libc::kill(backup_cp, libc::SIGCONT) };
    stalled_backup_did_not_take_over(&mut recv, &rlog, &dir);
    let o = remus(&["status", "--dir", &prun.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("NOT PROTECTED"),
        "{o:?}"
    );
    assert_eq!(
        remus(&["stop", "--run-dir", &prun.to_string_lossy()])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(exits_within(&mut prot, Duration::from_secs(5)), Some(0));

    // 3. Protect again; netbuf dies. remus protect reports it, stops this copy of the VM
    // without telling the backup to stand down, and the backup takes over.
    let Pair {
        mut recv,
        rlog,
        mut prot,
        plog,
    } = protect_pair(&topo, &bcfg, &pcfg);
    let netbuf = find(&topo, "prim", "netbuf");
    // SAFETY: kill(2) on netbuf, a process of our own test namespace.
    unsafe { libc::kill(netbuf, libc::SIGKILL) };
    assert_eq!(exits_within(&mut prot, Duration::from_secs(15)), Some(1));
    let p = std::fs::read_to_string(&plog).unwrap();
    assert!(
        p.contains("netbuf exited (killed by signal 9)") && p.contains("backup takes over"),
        "{p}"
    );
    wait_for(&rlog, "FAILOVER", Duration::from_secs(15), &mut recv);
    assert!(
        topo.wait_empty("prim", Duration::from_secs(5)),
        "the primary's copy of the VM must be gone"
    );
    let _ = recv.kill();
    let _ = recv.wait();
    topo.crash("back"); // the restored guest and its daemons
    assert!(topo.wait_empty("back", Duration::from_secs(10)));
    let _ = std::fs::remove_file(dir.join("backup-console.log"));

    // 4. Planned switch-over from the backup (`remus failover`) while the primary runs: the
    // backup announces its takeover and the primary's copy stops at once; two running copies
    // would answer the same clients differently.
    let Pair {
        mut recv,
        rlog,
        mut prot,
        plog,
    } = protect_pair(&topo, &bcfg, &pcfg);
    // Past the firmware: a checkpoint taken while SeaBIOS and option ROMs run is not resumable
    // (they run from RAM blocks outside the shared guest RAM; see checkpointd/README.md).
    wait_for(
        &dir.join("primary-console.log"),
        "SERVICE up",
        Duration::from_secs(120),
        &mut prot,
    );
    // The console is not output-committed: the backup must also hold checkpoints taken after
    // that line (a booting guest's checkpoints are big and slow).
    let committed = || -> u64 {
        let o = remus(&["status", "--json", "--dir", &brun.to_string_lossy()]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .and_then(|v| v["committed_through"].as_u64())
            .unwrap_or(0)
    };
    let (c0, t) = (committed(), Instant::now());
    while committed() < c0 + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the backup stopped committing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = remus(&["failover", "--dir", &brun.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    wait_for(&rlog, "FAILOVER", Duration::from_secs(15), &mut recv);
    let o = remus(&["status", "--dir", &brun.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(8), "{o:?}\n{}", neighbour_logs(&rlog));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("the VM runs here without a backup"),
        "{o:?}"
    );
    // Fenced (9): the backup won the generation and announced its takeover.
    assert_eq!(exits_within(&mut prot, Duration::from_secs(15)), Some(9));
    let p = std::fs::read_to_string(&plog).unwrap();
    assert!(
        p.contains("FENCED") && p.contains("the backup took over from checkpoint"),
        "{p}"
    );
    let o = remus(&["status", "--json", "--dir", &brun.to_string_lossy()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["owner"]
            .as_str()
            .is_some_and(|o| o.starts_with("backup@"))
            && v["witness_reachable"] == true
            && v["generation"].is_u64(),
        "the backup's status names the generation it won: {v}"
    );
    // The disk's new lineage records that generation (diskrep's `activate generation=N`).
    let d = diskrep_status(&brun.join("diskrep.sock"));
    assert_eq!(
        d["serving"]["lineage"]["current"]["fence"], v["generation"],
        "the activated disk's lineage: {d}"
    );
    assert!(
        topo.wait_empty("prim", Duration::from_secs(5)),
        "the primary's copy must be stopped after a switch-over"
    );
    let _ = recv.kill();
    let _ = recv.wait();
}

/// `diskrep ctl status --json` on a control socket.
fn diskrep_status(control: &Path) -> serde_json::Value {
    let o = Command::new(bin("diskrep"))
        .args(["ctl", "--json", "--control"])
        .arg(control)
        .arg("status")
        .output()
        .unwrap();
    assert!(o.status.success(), "diskrep ctl: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The pid of the process on `host` whose program is `name`.
fn find(topo: &Topology, host: &str, name: &str) -> i32 {
    topo.pids(host)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                    String::from_utf8_lossy(argv0).ends_with(name)
                })
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("{name} does not run on {host}"))
}

/// Removes files and directories when the test ends, passed or not.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}
