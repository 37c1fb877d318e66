//! `remus protect --attach` protects a guest remus did not start: on the primary host the
//! test starts diskrep (no backup yet), netbuf and the guest's QEMU by hand, with the very
//! arguments cli/README.md ("protect --attach") gives, lets the guest run its service and
//! talk to a client, and only then attaches protection against a `remus receive` on the other
//! host. The attach must reach PROTECTED without stopping the guest (the client's counter
//! never restarts), `remus status` must call it protected, and a crash of the primary host
//! must hand the running guest, with its memory, its disk and the client's connection, to the
//! backup.

use remus::config::Config;
use remus::demo::client::{Client, Ended};
use remus::demo::topology::{Topology, GUEST_ADDR};
use remus_tests::guest::{build_image, repo_root};
use remus_tests::netns::{bin, require_root, unique_prefix, GroupGuard};
use remus_tests::two_hosts::TwoHosts;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// `PROGRAM ARGS` on `host`, its output in `log`, in a process group of its own (dropped:
/// killed with everything it started).
fn spawn(topo: &Topology, host: &str, program: &str, args: &[String], log: &Path) -> GroupGuard {
    let out = std::fs::File::create(log).unwrap();
    GroupGuard::spawn(
        topo.command(host, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out),
    )
    .unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool, logs: &[&Path]) {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > timeout {
            let tails: String = logs
                .iter()
                .map(|l| {
                    let s = std::fs::read_to_string(l).unwrap_or_default();
                    let tail: Vec<&str> = s.lines().rev().take(10).collect();
                    format!(
                        "--- {}\n{}\n",
                        l.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("{what}: not after {timeout:?}\n{tails}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `remus protect --attach` on the primary host, until it says PROTECTED.
fn attach_until_protected(
    topo: &Topology,
    pcfg: &Path,
    alog: &Path,
    logs: &[PathBuf],
) -> GroupGuard {
    let g = spawn(
        topo,
        "prim",
        &bin("remus"),
        &[
            "protect".into(),
            "--attach".into(),
            "--config".into(),
            pcfg.display().to_string(),
        ],
        alog,
    );
    let logs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    wait_for(
        "remus protect --attach",
        Duration::from_secs(120),
        || contains(alog, "PROTECTED"),
        &logs,
    );
    g
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn contains(p: &Path, text: &str) -> bool {
    std::fs::read_to_string(p).is_ok_and(|s| s.contains(text))
}

#[test]
fn a_guest_started_by_hand_is_attached_protected_and_fails_over() {
    require_root();
    let prefix = unique_prefix();
    let dir = std::env::temp_dir().join(format!("remus-attach-{prefix}"));
    let image = build_image(&prefix, &[], &repo_root().join("cli/guest/service.sh")).unwrap();
    let ram = PathBuf::from(format!("/dev/shm/{prefix}-primary-ram"));
    let _cleanup = Cleanup(TwoHosts::leftovers(&prefix, &dir, &image));
    let TwoHosts {
        topo,
        etcd: _etcd,
        bcfg,
        pcfg,
    } = TwoHosts::create(&prefix, &dir, &image).unwrap();
    let cfg = Config::parse(&std::fs::read_to_string(&pcfg).unwrap()).unwrap();
    let run = dir.join("primary");
    std::fs::create_dir_all(&run).unwrap();
    let rlog = dir.join("receive.log");
    let mut recv = spawn(
        &topo,
        "back",
        &bin("remus"),
        &[
            "receive".into(),
            "--config".into(),
            bcfg.display().to_string(),
        ],
        &rlog,
    );
    wait_for(
        "remus receive",
        Duration::from_secs(30),
        || contains(&rlog, "waiting for the primary"),
        &[&rlog],
    );

    // The primary host, by hand, as cli/README.md says: diskrep without a backup, netbuf,
    // then the guest's QEMU with its RAM in a shared file, a QMP socket, its disk on diskrep
    // and its TAP behind netbuf.
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|a| a.to_string()).collect() };
    let sock = |n: &str| run.join(format!("{n}.sock")).display().to_string();
    let key = dir.join("replication.key").display().to_string();
    let img = dir.join("primary.img").display().to_string();
    let dlog = dir.join("diskrep-by-hand.log");
    let _diskrep = spawn(
        &topo,
        "prim",
        &bin("diskrep"),
        &s(&[
            "primary",
            "--image",
            &img,
            "--export",
            "disk",
            "--listen",
            "127.0.0.1:10809",
            "--control",
            &sock("diskrep"),
            "--key-file",
            &key,
        ]),
        &dlog,
    );
    let nlog = dir.join("netbuf-by-hand.log");
    let _netbuf = spawn(
        &topo,
        "prim",
        &bin("netbuf"),
        &s(&[
            "run",
            "--guest-if",
            "tap0",
            "--uplink-if",
            "uplink",
            "--backend",
            "user",
            "--control",
            &sock("netbuf"),
        ]),
        &nlog,
    );
    wait_for(
        "diskrep and netbuf",
        Duration::from_secs(20),
        || run.join("diskrep.sock").exists() && run.join("netbuf.sock").exists(),
        &[&dlog, &nlog],
    );
    let qmp = run.join("qmp.sock");
    let mut qemu = cfg.guest.qemu.clone();
    let program = qemu.remove(0);
    qemu.extend(s(&[
        "-m",
        "128M",
        "-object",
        &format!(
            "memory-backend-file,id=remus-ram,size=128M,mem-path={},share=on",
            ram.display()
        ),
        "-machine",
        "memory-backend=remus-ram",
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
        "-drive",
        "file=nbd://127.0.0.1:10809/disk,format=raw,if=virtio,cache=none",
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={}", cfg.guest.mac),
    ]));
    let qlog = dir.join("qemu-by-hand.log");
    let _qemu = spawn(&topo, "prim", &program, &qemu, &qlog);
    let console = dir.join("primary-console.log");
    wait_for(
        "the guest's service, unprotected",
        Duration::from_secs(120),
        || contains(&console, "SERVICE up"),
        &[&qlog, &console],
    );
    let cl = Client::start(
        &topo.ns("cli"),
        GUEST_ADDR.parse().unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    wait_for(
        "replies before protection",
        Duration::from_secs(30),
        || cl.snapshot().len() >= 20,
        &[&console],
    );

    // Attach: only checkpointd starts; the guest keeps running.
    let alog = dir.join("attach.log");
    let t = Instant::now();
    let attach_logs = |alog: &Path, rlog: &Path| -> Vec<PathBuf> {
        vec![
            alog.to_path_buf(),
            rlog.to_path_buf(),
            run.join("checkpointd-primary.log"),
            dlog.clone(),
            dir.join("backup/diskrep.log"),
            dir.join("backup/checkpointd.log"),
        ]
    };
    let mut attach = attach_until_protected(&topo, &pcfg, &alog, &attach_logs(&alog, &rlog));
    eprintln!("attached and PROTECTED in {} ms", t.elapsed().as_millis());
    let a = std::fs::read_to_string(&alog).unwrap();
    assert!(a.contains("attaching to the running guest"), "{a}");
    let o = Command::new(bin("remus"))
        .args(["status", "--json", "--dir", &run.display().to_string()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert_eq!(
        (v["role"].as_str(), v["protected"].as_bool()),
        (Some("primary"), Some(true)),
        "{v}"
    );

    // A planned stop ends protection and leaves the guest running; the backup stands down.
    // Then the backup receives again and the same guest is attached again: diskrep still
    // replicates to that address (its link reconnects by itself), so `replicate` is answered
    // as done and the lineage resyncs what changed meanwhile.
    let o = Command::new(bin("remus"))
        .args(["stop", "--run-dir", &run.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "remus stop: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(attach.0.wait().unwrap().code(), Some(0), "{}", read(&alog));
    assert_eq!(recv.0.wait().unwrap().code(), Some(0), "{}", read(&rlog));
    assert!(read(&rlog).contains("the primary ended protection"));
    let running = cl.snapshot().len() + 10;
    wait_for(
        "replies after the planned stop (the guest runs on)",
        Duration::from_secs(30),
        || cl.snapshot().len() >= running,
        &[&console],
    );
    let rlog = dir.join("receive-again.log");
    let _recv = spawn(
        &topo,
        "back",
        &bin("remus"),
        &s(&["receive", "--config", &bcfg.display().to_string()]),
        &rlog,
    );
    wait_for(
        "remus receive, again",
        Duration::from_secs(30),
        || contains(&rlog, "waiting for the primary"),
        &[&rlog],
    );
    let alog = dir.join("attach-again.log");
    let _attach = attach_until_protected(&topo, &pcfg, &alog, &attach_logs(&alog, &rlog));

    // Some protected replies, then the primary host dies; the backup runs the guest on.
    let before = cl.snapshot().len() + 20;
    wait_for(
        "replies under protection",
        Duration::from_secs(30),
        || cl.snapshot().len() >= before,
        &[&alog],
    );
    let crash = remus::demo::client::unix_ms();
    topo.crash("prim");
    let at_crash = cl.snapshot().len();
    wait_for(
        "the failover",
        Duration::from_secs(30),
        || contains(&rlog, "FAILOVER"),
        &[&rlog],
    );
    wait_for(
        "replies from the backup",
        Duration::from_secs(30),
        || cl.snapshot().len() >= at_crash + 20,
        &[&rlog],
    );
    let (replies, end) = cl.finish();
    assert!(!matches!(end, Ended::Broken(_)), "{end:?}");
    // One connection from before protection to after the failover: the guest's counter,
    // which lives in its memory, went on without a gap or a repeat.
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.n, i as u64 + 1, "reply {i}: {r:?}");
    }
    assert!(replies.iter().any(|r| r.at_unix_ms > crash + 100));
}
