//! `remus protect`, `receive`, `status` and `stop` over their real interfaces: the errors a
//! stranger meets first (each with its documented exit code), a planned stop that must not
//! fail over, and a dying daemon that must be reported and hand the VM to the backup.

use remus::demo::topology::Topology;
use remus::demo::HostSetup;
use remus_tests::guest::{build_image, repo_root};
use remus_tests::netns::{bin, require_root, unique_prefix};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn remus(args: &[&str]) -> Output {
    Command::new(bin("remus")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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

    // A typo in the config file: usage (2), naming the key.
    let cfg = d.join("bad.toml");
    std::fs::write(&cfg, "[guest]\nram = 64\n").unwrap();
    let o = remus(&["protect", "--config", &cfg.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown field `ram`"), "{}", stderr(&o));
    // No guest at all.
    let o = remus(&["protect", "--image", &img]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no guest"), "{}", stderr(&o));
    // Not root: 5, before anything is touched.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin("remus"))
        .args([
            "protect",
            "--image",
            &img,
            "--run-dir",
            &run,
            "--",
            "qemu-system-x86_64",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
    // A missing package is named.
    let o = remus(&[
        "protect",
        "--image",
        &img,
        "--run-dir",
        &run,
        "--",
        "qemu-system-nonesuch",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("apt-get install qemu-system-x86"),
        "{}",
        stderr(&o)
    );
    // An unknown interface is named.
    let base = ["protect", "--image", &img, "--run-dir", &run];
    let o = remus(
        &[
            &base[..],
            &["--guest-if", "nosuchtap0", "--", "qemu-system-x86_64"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown interface nosuchtap0"),
        "{}",
        stderr(&o)
    );
    // A missing disk image.
    let o = remus(&[
        "protect",
        "--image",
        "/nonexistent.img",
        "--guest-if",
        "lo",
        "--uplink-if",
        "lo",
        "--",
        "qemu-system-x86_64",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    // A busy NBD port: 7, with the port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let o = remus(
        &[
            &base[..],
            &[
                "--guest-if",
                "lo",
                "--uplink-if",
                "lo",
                "--nbd",
                &port,
                "--",
                "qemu-system-x86_64",
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("port busy") && stderr(&o).contains(&port),
        "{}",
        stderr(&o)
    );
    drop(held);
    // The backup's replication address must be on this host.
    let o = remus(&[
        "receive",
        "--image",
        &img,
        "--run-dir",
        &run,
        "--guest-if",
        "lo",
        "--backup",
        "192.0.2.9",
        "--",
        "qemu-system-x86_64",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("192.0.2.9 is not on this host"),
        "{}",
        stderr(&o)
    );
    // A run directory owned by a live remus: 7 (this test process plays the live owner).
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(d.join("run/remus.pid"), std::process::id().to_string()).unwrap();
    let o = remus(
        &[
            &base[..],
            &[
                "--guest-if",
                "lo",
                "--uplink-if",
                "lo",
                "--nbd",
                "127.0.0.1:0",
                "--",
                "qemu-system-x86_64",
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("another remus"), "{}", stderr(&o));
    std::fs::remove_file(d.join("run/remus.pid")).unwrap();
    // Nothing to stop.
    let o = remus(&["stop", "--run-dir", &run]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    // Bad arguments.
    assert_eq!(remus(&["demo", "--rounds", "0"]).status.code(), Some(2));
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
            panic!("waiting for {text:?}: the process ended ({st}):\n{s}");
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
    let _cleanup = Cleanup(vec![
        dir.clone(),
        image.clone(),
        format!("/dev/shm/{prefix}-primary-ram").into(),
        format!("/dev/shm/{prefix}-backup-ram").into(),
    ]);
    let topo = Topology::create(&prefix).unwrap();
    let setup = |host| HostSetup {
        dir: &dir,
        host,
        prefix: &prefix,
        image: &image,
        disk_mib: 8,
        interval_ms: 100,
        peer_timeout_ms: 300,
    };
    let bcfg = setup("backup").write().unwrap();
    let pcfg = setup("primary").write().unwrap();
    let (prun, brun) = (dir.join("primary"), dir.join("backup"));

    // 1. Protect, look, stop on purpose: the backup must not take over.
    let (mut recv, rlog) = start(&topo, "back", "receive", &bcfg);
    wait_for(
        &rlog,
        "waiting for the primary",
        Duration::from_secs(30),
        &mut recv,
    );
    let (mut prot, plog) = start(&topo, "prim", "protect", &pcfg);
    let text = wait_for(&plog, "PROTECTED", Duration::from_secs(180), &mut prot);
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
    assert_eq!(
        exits_within(&mut recv, Duration::from_secs(10)),
        Some(0),
        "{}",
        std::fs::read_to_string(&rlog).unwrap()
    );
    let r = std::fs::read_to_string(&rlog).unwrap();
    assert!(
        r.contains("the primary ended protection") && !r.contains("FAILOVER"),
        "{r}"
    );
    assert!(
        !dir.join("backup-console.log").exists(),
        "a VM was started on the backup after a planned stop"
    );
    assert!(
        topo.pids("prim").is_empty() && topo.pids("back").is_empty(),
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
    let (mut recv, rlog) = start(&topo, "back", "receive", &bcfg);
    wait_for(
        &rlog,
        "waiting for the primary",
        Duration::from_secs(30),
        &mut recv,
    );
    let (mut prot, plog) = start(&topo, "prim", "protect", &pcfg);
    wait_for(&plog, "PROTECTED", Duration::from_secs(180), &mut prot);
    wait_for(&rlog, "RECEIVING", Duration::from_secs(30), &mut recv);
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
    assert_eq!(
        exits_within(&mut recv, Duration::from_secs(10)),
        Some(0),
        "{}",
        std::fs::read_to_string(&rlog).unwrap()
    );
    let r = std::fs::read_to_string(&rlog).unwrap();
    assert!(
        r.contains("the primary ended protection") && !r.contains("FAILOVER"),
        "{r}"
    );
    assert!(
        !dir.join("backup-console.log").exists(),
        "a stale checkpoint was restored"
    );
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
    let (mut recv, rlog) = start(&topo, "back", "receive", &bcfg);
    wait_for(
        &rlog,
        "waiting for the primary",
        Duration::from_secs(30),
        &mut recv,
    );
    let (mut prot, plog) = start(&topo, "prim", "protect", &pcfg);
    wait_for(&plog, "PROTECTED", Duration::from_secs(180), &mut prot);
    wait_for(&rlog, "RECEIVING", Duration::from_secs(30), &mut recv);
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
        topo.pids("prim").is_empty(),
        "the primary's copy of the VM must be gone"
    );
    let _ = recv.kill();
    let _ = recv.wait();
    topo.crash("back"); // the restored guest and its daemons
    let _ = std::fs::remove_file(dir.join("backup-console.log"));

    // 4. Planned switch-over from the backup (`remus failover`) while the primary runs: the
    // backup announces its takeover and the primary's copy stops at once; two running copies
    // would answer the same clients differently.
    let (mut recv, rlog) = start(&topo, "back", "receive", &bcfg);
    wait_for(
        &rlog,
        "waiting for the primary",
        Duration::from_secs(30),
        &mut recv,
    );
    let (mut prot, plog) = start(&topo, "prim", "protect", &pcfg);
    wait_for(&plog, "PROTECTED", Duration::from_secs(180), &mut prot);
    wait_for(&rlog, "RECEIVING", Duration::from_secs(30), &mut recv);
    let o = remus(&["failover", "--dir", &brun.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    wait_for(&rlog, "FAILOVER", Duration::from_secs(15), &mut recv);
    assert_eq!(exits_within(&mut prot, Duration::from_secs(15)), Some(1));
    let p = std::fs::read_to_string(&plog).unwrap();
    assert!(p.contains("the backup took over from checkpoint"), "{p}");
    assert!(
        topo.pids("prim").is_empty(),
        "the primary's copy must be stopped after a switch-over"
    );
    let _ = recv.kill();
    let _ = recv.wait();
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
