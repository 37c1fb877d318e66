//! A failover from a checkpoint taken while the guest's firmware runs: the restored guest must
//! resume, not reset. The primary's QEMU starts paused at the reset vector (-S); checkpointd's
//! first checkpoint is taken there (its `cont` then starts the guest), the next one only 3 s
//! later. As soon as the backup has committed the first, the primary is killed, so the backup
//! restores the guest at its very first instruction, in SeaBIOS. QEMU started with -incoming
//! leaves its ROM blocks (pc.bios, option ROMs, ACPI tables) empty, so unless the checkpoint
//! carries them the restored guest executes zeroes and resets (-no-reboot: QEMU exits).

use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use remus_tests::guest::{build_image, repo_root, Scratch};
use remus_tests::netns::{bin, ChildGuard, GroupGuard};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn counts(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim().starts_with("COUNT "))
        .count()
}

#[test]
fn failover_during_the_firmware_phase_resumes_the_guest() {
    let s = Scratch::new("ckpt-fw").unwrap();
    let image = build_image("fw", &[], &repo_root().join("tests/guest/counter.sh")).unwrap();
    let common = |serial: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "-accel",
            "tcg",
            "-m",
            "128M",
            "-nodefaults",
            "-display",
            "none",
        ]
        .iter()
        .chain(&[
            "-no-reboot",
            "-machine",
            "pc",
            "-append",
            "console=ttyS0 quiet",
        ])
        .map(|a| a.to_string())
        .collect();
        v.extend([
            "-kernel".into(),
            image.join("vmlinuz").display().to_string(),
        ]);
        v.extend([
            "-initrd".into(),
            image.join("initramfs.cpio.gz").display().to_string(),
        ]);
        v.extend(["-serial".into(), format!("file:{}", serial.display())]);
        v
    };
    let (plog, blog) = (s.dir.join("primary.serial"), s.dir.join("backup.serial"));
    let qmp = s.dir.join("qmp.sock");
    let mut qemu = ChildGuard(Some(
        Command::new("qemu-system-x86_64")
            .args(common(&plog))
            .args(["-S", "-object"])
            .arg(format!(
                "memory-backend-file,id=remus-ram,size=128M,mem-path={},share=on",
                s.ram
            ))
            .args(["-machine", "memory-backend=remus-ram", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let port = remus_tests::diskrep_rig::free_port();
    let bctl = s.dir.join("backup.sock");
    let mut backup = GroupGuard::spawn(
        Command::new(bin("checkpointd"))
            .args(["backup", "--listen", &format!("127.0.0.1:{port}")])
            .args(remus_tests::key_args(&s.dir))
            // Restoring and dirty tracking are under test here; fencing has its own tests.
            .args(["--witness", "none"])
            .args(["--ram-image", &s.backup_ram, "--peer-timeout-ms", "300"])
            .arg("--state-dir")
            .arg(s.dir.join("backup"))
            .arg("--control")
            .arg(&bctl)
            .args(["--", "qemu-system-x86_64"])
            .args(common(&blog)),
    )
    .unwrap();
    let t = Instant::now();
    while !qmp.exists() || ControlClient::connect(&bctl).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "QEMU or the backup never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut primary = ChildGuard(Some(
        Command::new(bin("checkpointd"))
            .args(["primary", "--qmp", &qmp.to_string_lossy(), "--ram", &s.ram])
            .args(remus_tests::key_args(&s.dir))
            .args(["--witness", "none"])
            .args([
                "--backup",
                &format!("127.0.0.1:{port}"),
                "--interval-ms",
                "3000",
            ])
            .arg("--state-dir")
            .arg(s.dir.join("primary"))
            .spawn()
            .unwrap(),
    ));
    // The first checkpoint (the guest at its reset vector) committed: pull the plug.
    let t = Instant::now();
    loop {
        let committed = ControlClient::connect(&bctl)
            .and_then(|mut c| c.request("status json"))
            .ok()
            .and_then(|r| match r {
                Reply::Ok(j) => serde_json::from_str::<serde_json::Value>(&j).ok(),
                _ => None,
            })
            .is_some_and(|v| v["committed_through"].is_u64());
        if committed {
            break;
        }
        assert!(
            primary.child().try_wait().unwrap().is_none(),
            "checkpointd primary died"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the first checkpoint never committed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = primary.child().kill();
    let _ = qemu.child().kill();
    let _ = primary.child().wait();
    let _ = qemu.child().wait();
    assert_eq!(
        counts(&plog),
        0,
        "the primary's guest got past its firmware before the kill"
    );
    let killed = Instant::now();
    while counts(&blog) < 3 {
        if let Some(st) = backup.0.try_wait().unwrap() {
            panic!("the restored guest did not resume: its QEMU exited ({st}), the guest reset");
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "the restored guest never reached its counter"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "restored from the reset vector; counter running {} ms after the kill",
        killed.elapsed().as_millis()
    );
    let _ = std::fs::remove_dir_all(&image);
}
