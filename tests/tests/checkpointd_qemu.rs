//! checkpointd end to end with a real TCG guest: protected at more than 10 checkpoints per
//! second for 30 s, then the primary's QEMU and checkpointd are killed with SIGKILL; the backup
//! must restore the guest, whose in-memory counter continues from the last committed
//! checkpoint.

use remus_tests::guest::{build_image, repo_root, Scratch};
use remus_tests::netns::{bin, ChildGuard, GroupGuard};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn counts(log: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COUNT ")?.parse().ok())
        .collect()
}

#[test]
fn guest_counter_continues_on_the_backup_after_sigkill() {
    let scratch = Scratch::new("ckpt").unwrap();
    let (dir, ram, bram) = (
        scratch.dir.clone(),
        scratch.ram.clone(),
        scratch.backup_ram.clone(),
    );
    let image = build_image("counter", &[], &repo_root().join("tests/guest/counter.sh")).unwrap();
    let kernel = image.join("vmlinuz").to_string_lossy().into_owned();
    let initrd = image
        .join("initramfs.cpio.gz")
        .to_string_lossy()
        .into_owned();
    let common = |serial: &std::path::Path| -> Vec<String> {
        [
            "-accel",
            "tcg",
            "-m",
            "128M",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            "console=ttyS0 quiet",
            "-machine",
            "pc",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-serial".to_string(), format!("file:{}", serial.display())])
        .collect()
    };
    let plog = dir.join("primary-serial.log");
    let blog = dir.join("backup-serial.log");
    let qmp = dir.join("qmp.sock");
    let mut qemu = ChildGuard(Some(
        Command::new("qemu-system-x86_64")
            .args(common(&plog))
            .args([
                "-object",
                &format!("memory-backend-file,id=remus-ram,size=128M,mem-path={ram},share=on"),
                "-machine",
                "memory-backend=remus-ram",
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let port = remus_tests::diskrep_rig::free_port();
    let mut backup_args = vec![
        "backup".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--ram-image".into(),
        bram.clone(),
        "--state-dir".into(),
        dir.join("backup").to_string_lossy().into(),
        "--peer-timeout-ms".into(),
        "300".into(),
        // A SIGKILLed primary and no partition: this test is about restoring; fencing has its
        // own (tests/tests/remus_fence.rs).
        "--witness".into(),
        "none".into(),
        "--control".into(),
        dir.join("backup.sock").to_string_lossy().into(),
        "--key-file".into(),
        remus_tests::replication_key(&dir).display().to_string(),
        "--".into(),
        "qemu-system-x86_64".into(),
    ];
    backup_args.extend(common(&blog));
    // Its own process group: the QEMU it starts on failover dies with it when the test ends.
    let _backup = GroupGuard::spawn(Command::new(bin("checkpointd")).args(&backup_args)).unwrap();
    // Let the guest boot far enough to print, and the backup listen.
    let t = Instant::now();
    while counts(&plog).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "guest never printed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = dir.join("stats.jsonl");
    let mut primary = ChildGuard(Some(
        Command::new(bin("checkpointd"))
            .args(["primary", "--qmp", &qmp.to_string_lossy(), "--ram", &ram])
            .args(remus_tests::key_args(&dir))
            .args([
                "--backup",
                &format!("127.0.0.1:{port}"),
                "--interval-ms",
                "80",
            ])
            .args(["--state-dir", &dir.join("primary").to_string_lossy()])
            .args(["--stats-log", &stats.to_string_lossy()])
            .args(["--control", &dir.join("primary.sock").to_string_lossy()])
            .args(["--witness", "none"])
            // Compressed (XOR + LZ4): the restored guest proves the backup decoded every page.
            .arg("--compress")
            .spawn()
            .unwrap(),
    ));
    let protected_for = Duration::from_secs(30);
    std::thread::sleep(protected_for);
    assert!(
        primary.child().try_wait().unwrap().is_none(),
        "checkpointd primary died"
    );
    let all = std::fs::read_to_string(&stats).unwrap();
    // One line per checkpoint (with "pause_us") and one per acknowledgement.
    let lines: String = all
        .lines()
        .filter(|l| l.contains("pause_us"))
        .map(|l| format!("{l}\n"))
        .collect();
    let n = lines.lines().count();
    let rate = n as f64 / protected_for.as_secs_f64();
    let mut pauses: Vec<u64> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["pause_us"].as_u64())
        .collect();
    pauses.sort();
    let (raw, wire) = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .skip(1)
        .fold((0u64, 0u64), |(r, w), v| {
            (
                r + v["raw_bytes"].as_u64().unwrap_or(0),
                w + v["bytes"].as_u64().unwrap_or(0),
            )
        });
    eprintln!(
        "{n} checkpoints in {protected_for:?} ({rate:.1}/s); pause p50 {} us, p99 {} us; \
         compressed {raw} bytes to {wire} ({:.1}x)",
        pauses[pauses.len() / 2],
        pauses[pauses.len() * 99 / 100],
        raw as f64 / wire.max(1) as f64
    );
    assert!(rate >= 10.0, "checkpoint rate {rate:.1}/s");
    // Both daemons report over their control sockets.
    let status = |sock: &str| -> serde_json::Value {
        let mut c = remus_proto::ctl_socket::ControlClient::connect(&dir.join(sock)).unwrap();
        match c.request("status json").unwrap() {
            remus_proto::control::Reply::Ok(j) => serde_json::from_str(&j).unwrap(),
            r => panic!("{r:?}"),
        }
    };
    let ps = status("primary.sock");
    assert_eq!(ps["phase"], "protected", "{ps}");
    assert!(ps["rate"].as_f64().unwrap() >= 10.0, "{ps}");
    assert!(ps["pause_p50_us"].as_u64().unwrap() > 0, "{ps}");
    let bs = status("backup.sock");
    assert_eq!(bs["phase"], "receiving", "{bs}");
    assert!(
        bs["committed_through"].as_u64().unwrap() + 5 >= ps["committed_through"].as_u64().unwrap()
    );

    // Pull the plug on the primary.
    primary.0.as_mut().map(|c| c.kill());
    qemu.0.as_mut().map(|c| c.kill());
    let _ = primary.0.as_mut().map(|c| c.wait());
    let _ = qemu.0.as_mut().map(|c| c.wait());
    let before = counts(&plog);
    let last = *before.last().unwrap();
    let killed = Instant::now();
    let after = loop {
        let c = counts(&blog);
        if c.len() >= 3 {
            break c;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the backup never resumed the guest"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let resumed = after[0];
    eprintln!(
        "primary printed up to {last}; the backup's guest resumed at {resumed} ({} ms after the kill)",
        killed.elapsed().as_millis()
    );
    assert!(
        before.contains(&(resumed - 1)),
        "resumed at {resumed}: a state the primary never had"
    );
    assert!(resumed <= last + 1, "resumed ahead of the primary");
    assert!(
        last + 1 - resumed <= 8,
        "resumed from too old a state: {resumed} vs {last}"
    );
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "counter continues in order: {after:?}"
    );
    let _ = std::fs::remove_dir_all(&image);
}
