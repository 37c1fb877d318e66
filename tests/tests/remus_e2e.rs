//! All three daemons and a real guest: the output-commit promise end to end.
//!
//! ```text
//!  [P] QEMU guest ─tapP─ netbuf ─ up_p ─┐                ┌─ up_b ─ brB ─ tapB ─ (restored QEMU)
//!      checkpointd primary ── rp ═══════╪═ replication ══╪═ rb ── checkpointd backup      [B]
//!                                       └──── [lan] br0 ─┘
//!                                               │
//!                                      [C] client 10.88.0.2
//! ```
//! The client holds one TCP connection to the guest's counter service (every reply is the
//! previous one plus one, from the guest's memory) and sends a request every 50 ms. The
//! primary's QEMU, checkpointd and netbuf are killed with SIGKILL; the backup restores the
//! guest on its own TAP. The connection must survive, and every reply the client ever gets must
//! continue the sequence: output of an epoch that never committed was never seen.

use remus_tests::guest::{build_image, repo_root, Scratch};
use remus_tests::netns::{bin, require_root, veth, GroupGuard, Netns};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:12:34:56";

fn in_ns(ns: &Netns, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, prog]);
    c
}

fn connect_from(ns: &str, addr: &str) -> std::net::TcpStream {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    remus_tests::netns::run_in(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot connect to the guest: {e}"),
            }
        }
    })
    .unwrap()
}

#[test]
fn tcp_connection_and_output_commit_survive_a_primary_crash() {
    require_root();
    let p = remus_tests::netns::unique_prefix();
    let scratch = Scratch::new("e2e").unwrap();
    let (dir, ram, bram) = (
        scratch.dir.clone(),
        scratch.ram.clone(),
        scratch.backup_ram.clone(),
    );

    // Hosts and wires.
    let lan = Netns::new(&format!("{p}-lan")).unwrap();
    let hp = Netns::new(&format!("{p}-prim")).unwrap();
    let hb = Netns::new(&format!("{p}-back")).unwrap();
    let hc = Netns::new(&format!("{p}-cli")).unwrap();
    for ns in [&lan, &hp, &hb, &hc] {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            .unwrap();
    }
    lan.exec(&["ip", "link", "add", "br0", "type", "bridge"])
        .unwrap();
    lan.exec(&["ip", "link", "set", "dev", "br0", "up"])
        .unwrap();
    veth(&hp, "up_p", &lan, "lp").unwrap();
    veth(&hb, "up_b", &lan, "lb").unwrap();
    veth(&hc, "c0", &lan, "lc").unwrap();
    for port in ["lp", "lb", "lc"] {
        lan.exec(&["ip", "link", "set", "dev", port, "master", "br0"])
            .unwrap();
    }
    hc.exec(&["ip", "addr", "add", "10.88.0.2/24", "dev", "c0"])
        .unwrap();
    veth(&hp, "rp", &hb, "rb").unwrap();
    hp.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", "rp"])
        .unwrap();
    hb.exec(&["ip", "addr", "add", "10.99.0.2/24", "dev", "rb"])
        .unwrap();
    hp.exec(&["ip", "tuntap", "add", "tapP", "mode", "tap"])
        .unwrap();
    hp.exec(&["ip", "link", "set", "dev", "tapP", "up"])
        .unwrap();
    hb.exec(&["ip", "tuntap", "add", "tapB", "mode", "tap"])
        .unwrap();
    hb.exec(&["ip", "link", "add", "brB", "type", "bridge"])
        .unwrap();
    for i in ["tapB", "up_b"] {
        hb.exec(&["ip", "link", "set", "dev", i, "master", "brB"])
            .unwrap();
        hb.exec(&["ip", "link", "set", "dev", i, "up"]).unwrap();
    }
    hb.exec(&["ip", "link", "set", "dev", "brB", "up"]).unwrap();

    let image = build_image(
        "e2e",
        &[],
        &repo_root().join("tests/guest/counter-service.sh"),
    )
    .unwrap();
    let common = |tap: &str, serial: &std::path::Path| -> Vec<String> {
        vec![
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            "128M".into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-machine".into(),
            "pc".into(),
            "-kernel".into(),
            image.join("vmlinuz").to_string_lossy().into(),
            "-initrd".into(),
            image.join("initramfs.cpio.gz").to_string_lossy().into(),
            "-append".into(),
            "console=ttyS0 quiet".into(),
            "-serial".into(),
            format!("file:{}", serial.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        ]
    };

    // Backup host: checkpointd backup, which restores the guest on tapB.
    let mut bargs: Vec<String> = vec![
        "backup".into(),
        "--listen".into(),
        "10.99.0.2:7791".into(),
        "--ram-image".into(),
        bram.clone(),
        "--state-dir".into(),
        dir.join("b").to_string_lossy().into(),
        "--peer-timeout-ms".into(),
        "300".into(),
        "--control".into(),
        dir.join("backup.sock").to_string_lossy().into(),
        "--".into(),
        "qemu-system-x86_64".into(),
    ];
    bargs.extend(common("tapB", &dir.join("backup-serial.log")));
    let backup = GroupGuard::spawn(in_ns(&hb, &bin("checkpointd")).args(&bargs)).unwrap();

    // Primary host: netbuf between tapP and the LAN, the guest, checkpointd primary.
    let nbsock = dir.join("netbuf.sock");
    let netbuf = GroupGuard::spawn(in_ns(&hp, &bin("netbuf")).args([
        "run",
        "--guest-if",
        "tapP",
        "--uplink-if",
        "up_p",
        "--control",
        &nbsock.to_string_lossy(),
    ]))
    .unwrap();
    let pserial = dir.join("primary-serial.log");
    let qmp = dir.join("qmp.sock");
    let qemu = GroupGuard::spawn(
        in_ns(&hp, "qemu-system-x86_64")
            .args(common("tapP", &pserial))
            .args([
                "-object",
                &format!("memory-backend-file,id=remus-ram,size=128M,mem-path={ram},share=on"),
                "-machine",
                "memory-backend=remus-ram",
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .stdout(Stdio::null()),
    )
    .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(&pserial)
        .unwrap_or_default()
        .contains("SERVICE up")
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "guest service never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not protected yet: `remus status` says so, with exit code 8.
    let remus = |args: &[&str]| Command::new(bin("remus")).args(args).output().unwrap();
    let nb = nbsock.to_string_lossy().into_owned();
    let o = remus(&["status", "--netbuf", &nb]);
    assert_eq!(
        o.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("NOT PROTECTED"));
    let o = remus(&["status", "--netbuf", "/nonexistent.sock"]);
    assert_eq!(o.status.code(), Some(4));
    let stats = dir.join("stats.jsonl");
    let psock = dir.join("primary.sock").to_string_lossy().into_owned();
    let primary = GroupGuard::spawn(in_ns(&hp, &bin("checkpointd")).args([
        "primary",
        "--qmp",
        &qmp.to_string_lossy(),
        "--ram",
        &ram,
        "--backup",
        "10.99.0.2:7791",
        "--interval-ms",
        "100",
        "--netbuf-control",
        &nbsock.to_string_lossy(),
        "--state-dir",
        &dir.join("p").to_string_lossy(),
        "--stats-log",
        &stats.to_string_lossy(),
        "--control",
        &psock,
    ]))
    .unwrap();
    while std::fs::read_to_string(&stats)
        .unwrap_or_default()
        .matches("acked")
        .count()
        < 3
    {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "protection never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The client: one connection for the whole run, a request every 50 ms.
    let s = connect_from(&hc.name, "10.88.0.10:7000");
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut replies: Vec<(u64, Instant)> = Vec::new();
    let mut line = String::new();
    let mut next_send = Instant::now();
    let mut killed: Option<(Instant, usize)> = None;
    let mut guards = Some((primary, qemu, netbuf));
    let mut checked = false;
    let mut kill_unix_ms = 0u64;
    let start = Instant::now();
    loop {
        if Instant::now() >= next_send {
            w.write_all(b"x\n").expect("the connection must survive");
            next_send += Duration::from_millis(50);
        }
        match r.read_line(&mut line) {
            Ok(0) => panic!(
                "the guest closed the connection (reset or FIN) after {} replies",
                replies.len()
            ),
            Ok(_) => {
                let n: u64 = line
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad reply {line:?}"));
                let expect = replies.last().map_or(1, |(v, _)| v + 1);
                assert_eq!(n, expect, "reply out of sequence: output of an uncommitted epoch was seen, or a reply was lost");
                replies.push((n, Instant::now()));
                line.clear();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection error: {e}"),
        }
        if !checked && start.elapsed() > Duration::from_secs(4) {
            // While protected, `remus status` sees it (the client loop pauses meanwhile).
            checked = true;
            let o = remus(&["status", "--json", "--netbuf", &nb, "--checkpointd", &psock]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(o.status.code(), Some(0), "{v}");
            assert_eq!(v["protected"], true, "{v}");
            assert!(v["checkpoint_rate"].as_f64().unwrap() > 5.0, "{v}");
            assert!(
                v["frames_held"].is_u64() && v["pause_p50_us"].as_u64().unwrap() > 0,
                "{v}"
            );
        }
        if killed.is_none() && start.elapsed() > Duration::from_secs(8) {
            assert!(
                replies.len() > 20,
                "too few replies while protected: {}",
                replies.len()
            );
            drop(guards.take()); // SIGKILL checkpointd, QEMU and netbuf on the primary
            killed = Some((Instant::now(), replies.len()));
            kill_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
        }
        if let Some((at, n)) = killed {
            if replies.len() >= n + 20 {
                break;
            }
            assert!(
                at.elapsed() < Duration::from_secs(30),
                "no replies after failover ({} before)",
                n
            );
        }
    }
    let (at, n) = killed.unwrap();
    let gap = replies
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap();
    let resumed = replies[n].1.duration_since(at);
    eprintln!(
        "{} replies, all in sequence; {} before the kill; first reply after the kill {} ms later; longest gap {} ms",
        replies.len(), n, resumed.as_millis(), gap.as_millis()
    );
    let o = remus(&[
        "status",
        "--json",
        "--checkpointd",
        &dir.join("backup.sock").to_string_lossy(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["role"], "backup", "{v}");
    assert_eq!(v["checkpointd"]["phase"], "failedover", "{v}");
    // Failover as the client saw it, split at the backup's decision.
    let decided = v["checkpointd"]["failover_decided_unix_ms"]
        .as_u64()
        .unwrap();
    let restored = v["checkpointd"]["restored_unix_ms"].as_u64().unwrap();
    let outage = replies[n].1.duration_since(at).as_millis() as u64;
    eprintln!(
        "failover: detection {} ms (kill -> decision, timeout 300 ms), restore {} ms, \
         activation {} ms (decision -> first reply), outage {} ms",
        decided.saturating_sub(kill_unix_ms),
        restored.saturating_sub(decided),
        (kill_unix_ms + outage).saturating_sub(decided),
        outage
    );
    drop(backup);
}
