//! diskrep replication: crash consistency under kill -9 across many random seeds, corrupt
//! frames, resync after an outage, and the bounded backlog.

use diskrep::repl::msg::{Hello, Msg, PROTOCOL_VERSION};
use remus_tests::diskrep_rig::{free_port, images_identical, random_op, Daemon, Rig};
use remus_tests::nbd_client::NbdClient;
use remus_tests::rng::Rng;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

fn protected(d: &Daemon) {
    d.wait_status(Duration::from_secs(20), "link protected", |s| {
        s["link"] == "protected"
    })
    .unwrap();
}

fn read_image(uri: &str, out: &std::path::Path) -> Vec<u8> {
    let o = Command::new("nbdcopy")
        .args([uri, &out.to_string_lossy()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// One seed: random writes, zeroes and trims over several epochs, commits of random complete
/// epochs, kill -9 of the primary in the middle of an epoch, activation of the backup. The
/// backup's disk must equal, byte for byte, the image as of the last committed epoch, computed
/// here independently of diskrep. Then the old primary rejoins (see below); returns whether
/// its resync was a partial one.
fn crash_one(seed: u64) -> bool {
    const SIZE: u64 = 8 << 20;
    let mut rng = Rng::seeded(seed);
    let rig = Rig::new(SIZE).unwrap();
    let backup = rig.backup(&["--region-size", "65536"]).unwrap();
    let mut primary = rig.primary(&["--region-size", "65536"], true).unwrap();
    protected(&primary);
    let mut c = NbdClient::connect(&format!("127.0.0.1:{}", rig.nbd_port), "disk").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let mut snapshots: Vec<Vec<u8>> = Vec::new();
    let epochs = 3 + rng.below(5);
    let kill_epoch = 1 + rng.below(epochs - 1);
    let mut committed: Option<u64> = None;
    'run: for e in 0..epochs {
        let ops = 3 + rng.below(25);
        let kill_at = rng.below(ops);
        for i in 0..ops {
            if e == kill_epoch && i == kill_at {
                primary.kill9();
                break 'run;
            }
            random_op(&mut rng, &mut c, &mut model);
        }
        primary.ok(&format!("barrier {}", e + 1)).unwrap();
        snapshots.push(model.clone());
        if e == 0 || rng.below(3) > 0 {
            let lo = committed.map_or(0, |x| x + 1);
            let target = lo + rng.below(e + 1 - lo);
            backup.ok(&format!("commit {target}")).unwrap();
            committed = Some(target);
        }
    }
    // Complete epochs stay committable after the primary died.
    let complete = snapshots.len() as u64;
    if complete > 0 && rng.below(2) == 0 && committed.is_none_or(|x| x + 1 < complete) {
        backup.ok(&format!("commit {}", complete - 1)).unwrap();
        committed = Some(complete - 1);
    }
    let committed = committed.expect("epoch 0 always commits");
    let r = backup.ok("activate").unwrap();
    assert!(r.contains("serving="), "{r}");
    let got = read_image(&rig.backup_nbd_uri(), &rig.dir.join("got.raw"));
    let want = &snapshots[committed as usize];
    assert!(
        got == *want,
        "seed {seed}: backup differs from epoch {committed} at byte {:?} (epochs {epochs}, killed in {kill_epoch})",
        first_difference(&got, want)
    );

    // The old primary rejoins as the backup, its image as the crash left it (with the writes
    // of epochs that never committed), while the new primary writes before and during the
    // resync. Afterwards both images equal the new primary's, computed here.
    let mut model = want.clone();
    let mut c = NbdClient::connect(&format!("127.0.0.1:{}", rig.backup_nbd_port), "disk").unwrap();
    for _ in 0..rng.below(20) {
        random_op(&mut rng, &mut c, &mut model);
    }
    let port = free_port();
    let old = rig
        .backup_on(&rig.primary_img, "rejoined", port, free_port())
        .unwrap();
    backup.ok(&format!("replicate 127.0.0.1:{port}")).unwrap();
    for _ in 0..rng.below(10) {
        random_op(&mut rng, &mut c, &mut model);
    }
    let s = backup
        .wait_status(Duration::from_secs(20), "re-protected", |s| {
            s["serving"]["link"] == "protected"
        })
        .unwrap();
    backup.ok("barrier 1").unwrap();
    old.ok("commit 0").unwrap();
    for (name, img) in [
        ("old primary", &rig.primary_img),
        ("new primary", &rig.backup_img),
    ] {
        let got = std::fs::read(img).unwrap();
        assert!(
            got == model,
            "seed {seed}: the {name}'s image differs from the new primary's writes at byte {:?} after the rejoin ({})",
            first_difference(&got, &model),
            s["serving"]["lineage"]["plan"]
        );
    }
    let plan = s["serving"]["lineage"]["plan"].as_str().unwrap_or_default();
    eprintln!("seed {seed}: {plan}");
    plan.starts_with("partial")
}

/// Each seed also rejoins the old primary; most rejoins must be partial (a rejoin is a full
/// sync only if the old primary's metadata was last written before any acknowledgement).
#[test]
fn crash_consistency_across_seeds() {
    let partial = (1..=16).filter(|&seed| crash_one(seed)).count();
    eprintln!("{partial} of 16 rejoins were partial resyncs");
    assert!(
        partial >= 8,
        "only {partial} of 16 rejoins were partial resyncs"
    );
}

#[test]
fn corrupt_frames_are_never_applied() {
    let rig = Rig::new(1 << 20).unwrap();
    let backup = rig.backup(&[]).unwrap();
    // An authenticated primary whose frame is corrupt (forged ones are refused before any
    // frame is read: tests/tests/hostile_auth.rs).
    let mut s = rig.fake_primary().unwrap();
    s.write_all(
        &Msg::Hello(Hello {
            version: PROTOCOL_VERSION,
            size: 1 << 20,
            export: "fake".into(),
            lineage: None,
        })
        .encode(),
    )
    .unwrap();
    let w0 = Msg::Write {
        epoch: remus_proto::Epoch(0),
        offset: 0,
        data: vec![0xAA; 4096],
    };
    s.write_all(&w0.encode()).unwrap();
    s.write_all(&Msg::SyncDone(remus_proto::Epoch(0)).encode())
        .unwrap();
    s.write_all(&Msg::Barrier(remus_proto::Epoch(1)).encode())
        .unwrap();
    let mut bad = Msg::Write {
        epoch: remus_proto::Epoch(1),
        offset: 4096,
        data: vec![0xBB; 4096],
    }
    .encode();
    let n = bad.len();
    bad[n - 1] ^= 1; // one flipped bit in the payload
    s.write_all(&bad).unwrap();
    backup
        .wait_status(Duration::from_secs(5), "protocol error", |st| {
            st["protocol_errors"] == 1
        })
        .unwrap();
    assert_eq!(backup.status().unwrap()["connected"], false);
    assert!(
        backup.ok("commit 1").is_err(),
        "epoch 1 is incomplete and its primary is gone"
    );
    backup.ok("commit 0").unwrap();
    backup.ok("activate").unwrap();
    let got = read_image(&rig.backup_nbd_uri(), &rig.dir.join("got.raw"));
    assert_eq!(&got[..4096], &[0xAA; 4096][..]);
    assert_eq!(
        &got[4096..8192],
        &[0u8; 4096][..],
        "the corrupt write never landed"
    );
}

#[test]
fn activation_refuses_an_unsynchronised_image() {
    let rig = Rig::new(1 << 20).unwrap();
    let backup = rig.backup(&[]).unwrap();
    assert!(backup
        .ok("activate")
        .unwrap_err()
        .to_string()
        .contains("STATE"));
    assert!(backup.ok("activate force").is_ok());
    assert!(
        backup.ok("commit 1").is_err(),
        "no commits after activation"
    );
}

#[test]
fn resync_after_a_backup_outage_sends_only_what_changed() {
    const SIZE: u64 = 1 << 30;
    let rig = Rig::new(SIZE).unwrap();
    let mut backup = rig.backup(&[]).unwrap();
    let primary = rig.primary(&[], true).unwrap();
    let s = primary
        .wait_status(Duration::from_secs(30), "protected", |s| {
            s["link"] == "protected"
        })
        .unwrap();
    assert_eq!(
        s["resync"]["zero_regions"], 1024,
        "initial sync: every region, zero ones cheaply"
    );
    primary.ok("barrier 1").unwrap();
    backup.ok("commit 0").unwrap();
    // The primary learns of the commit asynchronously (COMMITTED on the stream); until it has,
    // every region is still unacknowledged and a resync would rightly copy them all.
    primary
        .wait_status(Duration::from_secs(10), "commit 0 acknowledged", |s| {
            s["committed_through"] == 0 && s["dirty_regions"] == 0
        })
        .unwrap();
    backup.kill9();
    // While the backup is down, change about 1% of the disk: ten 1 MiB chunks and a 256 KiB one.
    let uri = rig.nbd_uri();
    let mut cmds = Vec::new();
    for i in 0..10u64 {
        cmds.push(format!("write -P {} {} 1M", i + 1, (i * 97 + 13) << 20));
    }
    cmds.push(format!("write -P 99 {} 256k", 700u64 << 20));
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw", &uri]);
    for c in &cmds {
        q.args(["-c", c]);
    }
    assert!(q.output().unwrap().status.success());
    primary
        .wait_status(Duration::from_secs(20), "link down", |s| {
            s["link"] != "protected"
        })
        .unwrap();
    let _backup2 = rig.backup(&[]).unwrap();
    let s = primary
        .wait_status(Duration::from_secs(30), "re-protected", |s| {
            s["link"] == "protected" && s["resync"]["runs"] == 2
        })
        .unwrap();
    let sent = s["resync"]["bytes_sent"].as_u64().unwrap();
    let changed = 10 * (1u64 << 20) + (256 << 10);
    eprintln!(
        "resync after changing {changed} bytes ({:.2}% of 1 GiB): {sent} bytes sent ({:.2}% of the disk), {} regions",
        changed as f64 * 100.0 / SIZE as f64,
        sent as f64 * 100.0 / SIZE as f64,
        s["resync"]["regions_total"]
    );
    assert_eq!(s["resync"]["regions_total"], 11);
    assert!(sent >= changed && sent <= 12 << 20, "sent {sent}");
    primary.ok("barrier 2").unwrap();
    _backup2.ok("commit 1").unwrap();
    assert_eq!(_backup2.status().unwrap()["consistent"], true);
    images_identical(&rig.primary_img, &rig.backup_img);
}

#[test]
fn a_stalled_backup_costs_protection_not_the_guest() {
    let rig = Rig::new(64 << 20).unwrap();
    let backup = rig.backup(&[]).unwrap();
    let primary = rig
        .primary(
            &[
                "--max-backlog",
                "1048576",
                "--stall-timeout-ms",
                "300",
                "--peer-timeout-ms",
                "1500",
            ],
            true,
        )
        .unwrap();
    protected(&primary);
    backup.signal(libc::SIGSTOP);
    let t = std::time::Instant::now();
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw", &rig.nbd_uri()]);
    for i in 0..32 {
        q.args(["-c", &format!("write -P 0x42 {i}M 1M")]);
    }
    let o = q.output().unwrap();
    assert!(o.status.success(), "the guest's writes complete");
    let took = t.elapsed();
    let s = primary.status().unwrap();
    assert_eq!(s["protection_drops"], 1, "{s}");
    assert!(s["stalls"].as_u64().unwrap() >= 1);
    assert!(
        s["reason"].as_str().unwrap_or("").contains("backlog") || s["link"] != "protected",
        "{s}"
    );
    assert!(took < Duration::from_secs(10), "writes took {took:?}");
    backup.signal(libc::SIGCONT);
    let s = primary
        .wait_status(Duration::from_secs(30), "re-protected", |s| {
            s["link"] == "protected" && s["resync"]["runs"].as_u64() >= Some(2)
        })
        .unwrap();
    eprintln!("after the stall: {s}");
    primary.ok("barrier 1").unwrap();
    backup.ok("commit 0").unwrap();
    images_identical(&rig.primary_img, &rig.backup_img);
}
