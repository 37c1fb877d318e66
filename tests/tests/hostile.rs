//! Hostile and faulty input against the real binaries: each defect of issue 10 (part A),
//! replayed as it was found, and what must happen instead.
//!
//! - A full backup disk: a failed commit is never later answered `ok`, the backup says it is
//!   inconsistent, the primary shows the backup's own error and resyncs; checkpointd never
//!   acknowledges the epoch, drops protection and the backup never fails over onto that disk.
//! - Control sockets: no descriptor leak under a low `ulimit -n`, an over-long line is
//!   answered and the connection closed, a regular file at `--control` is never deleted, a
//!   busy control path is exit code 7.
//! - `activate` with the NBD address busy changes nothing and can be retried.
//! - Zero-length NBD requests succeed; zeroes on tmpfs neither fail nor loop.
//! - Config values that would reach QEMU's command line are refused (exit 2); an unresolvable
//!   backup host is exit 6.
//!
//! Needs root (tmpfs mounts, namespaces). Run under the shared heavy-test lock.

use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use remus_tests::diskrep_rig::{free_port, spawn_daemon, Rig};
use remus_tests::guest::Scratch;
use remus_tests::hostile::*;
use remus_tests::nbd_client::{NbdClient, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES};
use remus_tests::netns::{bin, require_root, ChildGuard, GroupGuard, Netns};
use remus_tests::tmpfs::Tmpfs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first defect, on the diskrep path: backup disk full, `commit 2` failed, and the
/// same `commit 2` then answered `ok committed=2 bytes=0` with the data gone, the backup
/// claiming `consistent=true` and the primary `dirty_regions=0`.
#[test]
fn a_failed_commit_is_sticky_reported_and_repaired_by_a_resync() {
    require_root();
    let scratch = Scratch::new("hostile-commit").unwrap();
    let fs = Tmpfs::mount(&scratch.dir.join("backup-fs"), 4).unwrap();
    let backup_img = fs.dir.join("backup.img");
    let size = 32 * MIB;
    let (primary, backup, nbd) = diskrep_pair(&scratch.dir, &backup_img, size);
    // The initial sync sends 32 MiB of zeroes to a 4 MiB tmpfs, which has no ZERO_RANGE: they
    // must become holes (writing them used to fail with ENOSPC, again and again).
    primary
        .wait_status(Duration::from_secs(30), "the initial sync", |s| {
            s["link"] == "protected"
        })
        .unwrap();
    primary.ok("barrier 1").unwrap();
    backup.ok("commit 0").unwrap();
    let st = backup.status().unwrap();
    assert_eq!(st["consistent"], true, "{st}");
    assert!(
        fs.used().unwrap() < MIB,
        "zeroes took space: {}",
        fs.used().unwrap()
    );

    // Epoch 1: 6 MiB of data, more than the backup's file system holds.
    let mut c = NbdClient::connect(&format!("127.0.0.1:{nbd}"), "disk").unwrap();
    for i in 0..6u64 {
        c.write(i * MIB, &vec![0xab; MIB as usize]).unwrap();
    }
    primary.ok("barrier 2").unwrap();
    let (code, msg) = err_reply(&backup, "commit 1");
    assert_eq!(code, "BACKEND");
    assert!(msg.contains("No space left on device"), "{msg}");
    // Never `ok` afterwards, for that epoch or a later one.
    let (code, msg) = err_reply(&backup, "commit 1");
    assert_eq!(code, "STATE", "{msg}");
    assert!(msg.contains("the commit of epoch 1 failed"), "{msg}");
    primary.ok("barrier 3").unwrap();
    let (_, msg) = err_reply(&backup, "commit 2");
    assert!(msg.contains("refused"), "{msg}");
    let st = backup.status().unwrap();
    assert_eq!(st["consistent"], false, "{st}");
    assert_eq!(st["failed_commit"], 1, "{st}");
    assert_eq!(st["committed_through"], 0, "{st}");
    assert!(s(&st, "last_error").contains("No space left"), "{st}");
    // It refuses to serve that image after a failover.
    let (code, msg) = err_reply(&backup, "activate");
    assert_eq!(code, "STATE");
    assert!(msg.contains("the commit of epoch 1 failed"), "{msg}");
    assert_eq!(backup.status().unwrap()["activated"], false);
    // The primary learnt it from the backup (not a broken pipe), keeps the regions dirty and
    // does not count epoch 1 as committed.
    let ps = primary
        .wait_status(
            Duration::from_secs(20),
            "the backup's error on the primary",
            |s| {
                s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("No space left on device"))
            },
        )
        .unwrap();
    assert_eq!(ps["committed_through"], 0, "{ps}");
    assert!(ps["dirty_regions"].as_u64().unwrap() >= 6, "{ps}");
    // The guest keeps its disk meanwhile.
    c.write(7 * MIB, &[0xcd; 4096]).unwrap();

    // Room again: the primary's next attempt resyncs, commits go on, the image is consistent
    // and equals the primary's.
    fs.resize(64).unwrap();
    primary
        .wait_status(
            Duration::from_secs(90),
            "the resync after the failure",
            |s| s["link"] == "protected",
        )
        .unwrap();
    // The primary calls the link protected once it has sent its SYNC_DONE; the backup
    // lifts the refusal when it reads it.
    backup
        .wait_status(
            Duration::from_secs(10),
            "the backup reading SYNC_DONE",
            |s| s["failed_commit"].is_null(),
        )
        .unwrap();
    primary.ok("barrier 4").unwrap();
    backup.ok("commit 3").unwrap();
    let st = backup.status().unwrap();
    assert_eq!(st["consistent"], true, "{st}");
    assert_eq!(st["failed_commit"], serde_json::Value::Null, "{st}");
    assert_eq!(st["commit_failures"], 1, "{st}");
    let ps = primary
        .wait_status(Duration::from_secs(10), "the commit acknowledged", |s| {
            s["committed_through"] == 3
        })
        .unwrap();
    assert_eq!(ps["dirty_regions"], 0, "{ps}");
    assert!(
        std::fs::read(scratch.dir.join("primary.img")).unwrap()
            == std::fs::read(&backup_img).unwrap(),
        "the backup image differs from the primary's"
    );
}

/// The same defect on checkpointd's path: a backup that failed to commit epoch N went on to
/// commit (and acknowledge) N+1.
#[test]
fn checkpointd_never_acknowledges_an_epoch_whose_disk_commit_failed() {
    require_root();
    let scratch = Scratch::new("hostile-ckpt").unwrap();
    let dir = scratch.dir.clone();
    let fs = Tmpfs::mount(&dir.join("backup-fs"), 8).unwrap();
    let (dprimary, dbackup, nbd) = diskrep_pair(&dir, &fs.dir.join("backup.img"), 64 * MIB);
    dprimary
        .wait_status(Duration::from_secs(30), "the initial disk sync", |s| {
            s["link"] == "protected"
        })
        .unwrap();
    let qmp = dir.join("qmp.sock");
    let _qemu = ChildGuard(Some(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-machine",
                "pc",
                "-m",
                "32M",
                "-nodefaults",
            ])
            .args(["-display", "none", "-object"])
            .arg(format!(
                "memory-backend-file,id=remus-ram,size=32M,mem-path={},share=on",
                scratch.ram
            ))
            .args(["-machine", "memory-backend=remus-ram", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_for(Duration::from_secs(30), "QEMU's QMP socket", || {
        qmp.exists()
    });
    let port = free_port();
    let backup_log = dir.join("backup.log");
    let mut ckbackup = GroupGuard::spawn(
        Command::new(bin("checkpointd"))
            .args(["backup", "--listen", &format!("127.0.0.1:{port}")])
            .args(remus_tests::key_args(&dir))
            .args(["--witness", "none"])
            .args(["--ram-image", &scratch.backup_ram])
            .args(["--state-dir", &dir.join("bstate").to_string_lossy()])
            .args(["--peer-timeout-ms", "2000"])
            .args(["--diskrep-control", &dbackup.control.to_string_lossy()])
            .args(["--control", &dir.join("ckb.sock").to_string_lossy()])
            .args(["--", "true"])
            .stderr(std::fs::File::create(&backup_log).unwrap()),
    )
    .unwrap();
    let ckb = dir.join("ckb.sock");
    wait_for(
        Duration::from_secs(10),
        "the backup's control socket",
        || ControlClient::connect(&ckb).is_ok(),
    );
    let stats = dir.join("stats.jsonl");
    let ckp = dir.join("ckp.sock");
    let _ckprimary = ChildGuard(Some(
        Command::new(bin("checkpointd"))
            .args([
                "primary",
                "--qmp",
                &qmp.to_string_lossy(),
                "--ram",
                &scratch.ram,
            ])
            .args(["--backup", &format!("127.0.0.1:{port}")])
            .args(remus_tests::key_args(&dir))
            .args(["--witness", "none"])
            .args(["--interval-ms", "100", "--peer-timeout-ms", "2000"])
            .args(["--diskrep-control", &dprimary.control.to_string_lossy()])
            .args(["--state-dir", &dir.join("pstate").to_string_lossy()])
            .args(["--stats-log", &stats.to_string_lossy()])
            .args(["--control", &ckp.to_string_lossy()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let ask = |sock: &Path| -> Option<serde_json::Value> {
        let mut c = ControlClient::connect(sock).ok()?;
        match c.request("status json").ok()? {
            Reply::Ok(j) => serde_json::from_str(&j).ok(),
            Reply::Err(_) => None,
        }
    };
    wait_for(Duration::from_secs(60), "checkpoints committed", || {
        ask(&ckb).is_some_and(|s| s["committed_through"].as_u64().is_some())
    });
    // 16 MiB of data into the next epoch: the backup's 8 MiB file system cannot take it.
    let mut c = NbdClient::connect(&format!("127.0.0.1:{nbd}"), "disk").unwrap();
    for i in 0..16u64 {
        c.write(i * MIB, &vec![0x5a; MIB as usize]).unwrap();
    }
    let mut ps = serde_json::Value::Null;
    wait_for(Duration::from_secs(60), "protection dropped", || {
        ps = ask(&ckp).unwrap_or_default();
        ps["phase"] == "unprotected"
    });
    let reason = s(&ps, "reason");
    assert!(reason.contains("No space left on device"), "{ps}");
    let failed: u64 = reason
        .split("could not commit epoch ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failed epoch in {reason:?}"));
    // Nothing at or after the failed epoch was acknowledged, hence released.
    assert!(
        ps["committed_through"].as_u64().is_none_or(|c| c < failed),
        "{ps}"
    );
    let acked: Vec<u64> = std::fs::read_to_string(&stats)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["acked"].as_u64())
        .collect();
    assert!(!acked.is_empty(), "nothing acknowledged before the failure");
    assert!(
        acked.iter().all(|a| *a < failed),
        "acked {acked:?}, failed {failed}"
    );
    // The backup stood down when the primary dropped protection: no failover onto the disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = ckbackup.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "the backup did not stand down");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&backup_log).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("the disk commit of checkpoint"), "{log}");
    assert!(!log.contains("restoring the VM"), "{log}");
    // diskrep agrees, and refuses that epoch for good.
    let st = dbackup.status().unwrap();
    assert_eq!(st["consistent"], false, "{st}");
    assert_eq!(st["failed_commit"], failed, "{st}");
    assert!(st["committed_through"].as_u64().unwrap() < failed, "{st}");
    let (_, msg) = err_reply(&dbackup, &format!("commit {failed}"));
    assert!(msg.contains("failed"), "{msg}");
}

#[test]
fn control_sockets_keep_no_descriptor_and_never_replace_a_file() {
    require_root();
    let scratch = Scratch::new("hostile-ctl").unwrap();
    let dir = scratch.dir.clone();
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let img = dir.join("d.img");
    image(&img, 8 * MIB);

    // diskrep
    let ctl = dir.join("d.sock");
    let mut d = ChildGuard(Some(
        low_fd_limit(
            Command::new(bin("diskrep"))
                .args(["primary", "--image", &img.to_string_lossy()])
                .args(["--listen", &format!("127.0.0.1:{}", free_port())])
                .args(["--control", &ctl.to_string_lossy()]),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    ));
    wait_for(Duration::from_secs(10), "diskrep's control socket", || {
        ControlClient::connect(&ctl).is_ok()
    });
    hammer_control("diskrep", d.child().id(), &ctl);

    // An over-long line: an answer, then the connection is closed (as the README says).
    let mut raw = std::os::unix::net::UnixStream::connect(&ctl).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = b"status ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 70_000));
    line.push(b'\n');
    let _ = raw.write_all(&line);
    let mut r = BufReader::new(raw);
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    assert!(
        answer.starts_with("err PARSE") && answer.contains("too long"),
        "{answer}"
    );
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "connection left open");

    // A regular file, a directory, or a live socket at --control: refused with exit 7, and
    // the file survives. The same for diskrep's Unix NBD listener.
    for control in [&precious, &dir, &ctl] {
        let (code, err) = status_code(
            Command::new(bin("diskrep"))
                .args(["primary", "--image", &img.to_string_lossy()])
                .args(["--listen", &format!("127.0.0.1:{}", free_port())])
                .args(["--control", &control.to_string_lossy()]),
        );
        assert_eq!(code, Some(7), "{}: {err}", control.display());
    }
    let (code, err) = status_code(
        Command::new(bin("diskrep"))
            .args(["primary", "--image", &img.to_string_lossy()])
            .args(["--listen", &format!("unix:{}", precious.display())])
            .args(["--control", &dir.join("d2.sock").to_string_lossy()]),
    );
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    // The first daemon still answers on its socket.
    assert!(matches!(
        ControlClient::connect(&ctl).unwrap().request("hello"),
        Ok(Reply::Ok(_))
    ));
    drop(d);

    // checkpointd (backup, waiting for a primary)
    let ck = |control: &Path| {
        let mut c = Command::new(bin("checkpointd"));
        c.args(["backup", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(remus_tests::key_args(&dir))
            .args(["--witness", "none"])
            .args(["--ram-image", &scratch.backup_ram])
            .args(["--state-dir", &dir.join("ckstate").to_string_lossy()])
            .args(["--control", &control.to_string_lossy()])
            .args(["--", "true"])
            .stderr(Stdio::piped());
        c
    };
    let ck_ctl = dir.join("ck.sock");
    let mut cd = ChildGuard(Some(low_fd_limit(&mut ck(&ck_ctl)).spawn().unwrap()));
    wait_for(
        Duration::from_secs(10),
        "checkpointd's control socket",
        || ControlClient::connect(&ck_ctl).is_ok(),
    );
    hammer_control("checkpointd", cd.child().id(), &ck_ctl);
    let (code, err) = status_code(&mut ck(&ck_ctl));
    assert_eq!(code, Some(7), "a busy control path: {err}");
    let (code, err) = status_code(&mut ck(&precious));
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    drop(cd);

    // netbuf (user backend between a veth pair in a namespace of its own)
    let ns = Netns::new(&format!("{}-nb", remus_tests::netns::unique_prefix())).unwrap();
    ns.exec(&[
        "ip", "link", "add", "nbg", "type", "veth", "peer", "name", "nbu",
    ])
    .unwrap();
    ns.exec(&["ip", "link", "set", "nbg", "up"]).unwrap();
    ns.exec(&["ip", "link", "set", "nbu", "up"]).unwrap();
    let nb = |control: &Path| {
        let mut c = ns.command(&bin("netbuf"));
        c.args(["run", "--guest-if", "nbg", "--uplink-if", "nbu"])
            .args(["--control", &control.to_string_lossy()])
            .stderr(Stdio::piped());
        c
    };
    let (code, err) = status_code(&mut nb(&precious));
    assert_eq!(code, Some(7), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    let nb_ctl = dir.join("nb.sock");
    // `ip netns exec` execs netbuf in place: the child's pid is netbuf's.
    let mut n = ChildGuard(Some(low_fd_limit(&mut nb(&nb_ctl)).spawn().unwrap()));
    wait_for(Duration::from_secs(10), "netbuf's control socket", || {
        ControlClient::connect(&nb_ctl).is_ok()
    });
    hammer_control("netbuf", n.child().id(), &nb_ctl);
    drop(n);
}

/// `activate` with the NBD address busy used to mark the backup activated, and it never
/// served afterwards.
#[test]
fn activate_with_a_busy_nbd_address_changes_nothing() {
    require_root();
    let rig = Rig::new(8 * MIB).unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", rig.backup_nbd_port)).unwrap();
    let backup = rig.backup(&[]).unwrap();
    let (code, msg) = err_reply(&backup, "activate force");
    assert_eq!(code, "BACKEND");
    assert!(
        msg.contains("not activated") && msg.contains("in use"),
        "{msg}"
    );
    assert_eq!(backup.status().unwrap()["activated"], false);
    // Still a backup: a primary connects and syncs, an epoch commits.
    let primary = rig.primary(&[], true).unwrap();
    primary
        .wait_status(Duration::from_secs(30), "sync", |s| {
            s["link"] == "protected"
        })
        .unwrap();
    let mut c = NbdClient::connect(&format!("127.0.0.1:{}", rig.nbd_port), "disk").unwrap();
    c.write(4096, &[0x42; 4096]).unwrap();
    primary.ok("barrier 1").unwrap();
    backup.ok("commit 0").unwrap();
    // Retried once the address is free: it serves the committed image.
    drop(squatter);
    let ok = backup.ok("activate").unwrap();
    assert!(
        ok.contains(&format!("serving=127.0.0.1:{}", rig.backup_nbd_port)),
        "{ok}"
    );
    let mut b = NbdClient::connect(&format!("127.0.0.1:{}", rig.backup_nbd_port), "disk").unwrap();
    assert_eq!(b.read(4096, 4096).unwrap(), vec![0x42; 4096]);
}

/// Zero-length READ, WRITE, TRIM and WRITE_ZEROES used to fail with EIO ("read past the
/// end"). The NBD spec leaves them to the server but says not to disconnect: they succeed and
/// touch nothing. And WRITE_ZEROES on a tmpfs (no ZERO_RANGE) far larger than its free space
/// succeeds: the range becomes a hole.
#[test]
fn zero_length_requests_and_zeroes_on_tmpfs_succeed() {
    require_root();
    let scratch = Scratch::new("hostile-nbd").unwrap();
    let fs = Tmpfs::mount(&scratch.dir.join("fs"), 8).unwrap();
    let img = fs.dir.join("d.img");
    image(&img, 64 * MIB);
    let nbd = free_port();
    let ctl = scratch.dir.join("d.sock");
    let _d = spawn_daemon(
        &[
            "primary".into(),
            "--image".into(),
            img.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{nbd}"),
            "--control".into(),
            ctl.display().to_string(),
        ],
        ctl.clone(),
    )
    .unwrap();
    let mut c = NbdClient::connect(&format!("127.0.0.1:{nbd}"), "disk").unwrap();
    c.write(0, &[7; 4096]).unwrap();
    for ty in [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
        for offset in [0, 4096, 64 * MIB] {
            let cookie = c.send(0, ty, offset, 0, &[]).unwrap();
            let (errno, got, data) = c.reply(0).unwrap();
            assert_eq!((errno, got), (0, cookie), "type {ty} at {offset}");
            assert!(data.is_empty());
        }
    }
    // Past the end is still an error, and the connection stays usable.
    let cookie = c.send(0, CMD_READ, 64 * MIB + 1, 0, &[]).unwrap();
    assert_eq!(c.reply(0).unwrap().0, 22, "EINVAL for cookie {cookie}");
    assert_eq!(
        c.read(0, 4096).unwrap(),
        vec![7; 4096],
        "nothing was touched"
    );
    // 6 MiB of data, then 48 MiB of zeroes asked to stay allocated (NO_HOLE) on the 8 MiB
    // tmpfs: written as zeroes this would run out of space.
    for i in 0..6u64 {
        c.write(i * MIB, &vec![1; MIB as usize]).unwrap();
    }
    let no_hole = 2;
    let cookie = c.send(no_hole, CMD_WRITE_ZEROES, 0, 48 << 20, &[]).unwrap();
    assert_eq!(c.reply(0).unwrap(), (0, cookie, vec![]));
    assert_eq!(c.read(5 * MIB, 4096).unwrap(), vec![0; 4096]);
    assert!(fs.used().unwrap() <= 8 * MIB);
}

fn config_file(dir: &Path, extra: &str, image: &Path) -> PathBuf {
    let p = dir.join(format!("{}.toml", remus_tests::netns::unique_prefix()));
    let text = format!(
        // Dotted keys throughout, so that `extra` can add any key without a second table.
        "name = \"hostile\"\nrun_dir = {:?}\nguest.qemu = [\"true\"]\ndisk.image = {:?}\n\
         disk.nbd = \"127.0.0.1:{}\"\nnet.guest_if = \"lo\"\nnet.uplink_if = \"lo\"\n\
         replication.key_file = {:?}\n{extra}",
        dir.join("run").display().to_string(),
        image.display().to_string(),
        free_port(),
        remus_tests::replication_key(dir).display().to_string()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// `ram_mib = 18446744073709551615` was accepted, and `mac = "a:b:c:d:e:f,romfile=/x"` was
/// passed into QEMU's -device argument. An unresolvable backup host exited 2, not 6.
#[test]
fn config_values_that_reach_a_command_line_are_refused() {
    require_root();
    let scratch = Scratch::new("hostile-cfg").unwrap();
    let img = scratch.dir.join("d.img");
    image(&img, MIB);
    let remus = |cmd: &str, cfg: &Path| {
        status_code(Command::new(bin("remus")).args([cmd, "--config", &cfg.to_string_lossy()]))
    };
    for (extra, key) in [
        ("guest.ram_mib = 18446744073709551615\n", "ram_mib"),
        ("guest.mac = \"a:b:c:d:e:f,romfile=/x\"\n", "[guest] mac"),
        (
            "guest.mac = \"52:54:00:12:34:56,romfile=/x\"\n",
            "[guest] mac",
        ),
        ("guest.ram_file = \"/dev/shm/x,share=off\"\n", "ram_file"),
        ("disk.export = \"disk,format=qcow2\"\n", "export"),
        (
            "replication.interval_ms = 18446744073709551615\n",
            "interval_ms",
        ),
    ] {
        for cmd in ["protect", "receive"] {
            let (code, err) = remus(cmd, &config_file(&scratch.dir, extra, &img));
            assert_eq!(code, Some(2), "{cmd} {extra}: {err}");
            assert!(err.contains(key), "{cmd} {extra}: {err}");
        }
    }
    // Well formed, but the name does not resolve: not found (6), naming the host.
    let cfg = config_file(
        &scratch.dir,
        "replication.backup = \"no-such-host.invalid\"\n",
        &img,
    );
    for cmd in ["protect", "receive"] {
        let (code, err) = remus(cmd, &cfg);
        assert_eq!(code, Some(6), "{cmd}: {err}");
        assert!(err.contains("no-such-host.invalid"), "{cmd}: {err}");
    }
    // The daemons bound their own timing flags.
    let (code, err) = status_code(Command::new(bin("checkpointd")).args([
        "primary",
        "--qmp",
        "x",
        "--ram",
        "y",
        "--backup",
        "z:1",
        "--interval-ms",
        "18446744073709551615",
    ]));
    assert_eq!(code, Some(2), "{err}");
}
