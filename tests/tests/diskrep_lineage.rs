//! Disk lineage with real diskrep processes and real NBD clients (qemu-io, qemu-img): a primary
//! killed (SIGKILL) after writes of an epoch that never committed; the backup activated and
//! written to; the old primary's image, as the crash left it, rejoining as the new primary's
//! backup. The resync must copy only the regions either side may hold differently (the new
//! primary's writes since activation and the old primary's activity log), roll back the
//! uncommitted writes, keep every write of the new primary, and leave identical images; then
//! the same again the other way (the disk returns to the first host). A backup whose metadata
//! is damaged gets a full sync, and says so. And the measurement for BENCHMARKS.md.

use remus_tests::diskrep_rig::{free_port, images_identical, Daemon, Rig};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn qemu_io(uri: &str, cmds: &[String]) {
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw", uri]);
    for c in cmds {
        q.args(["-c", c]);
    }
    let o = q.output().unwrap();
    assert!(
        o.status.success(),
        "qemu-io {cmds:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes 1 MiB of `pattern` at each region.
fn write_regions(uri: &str, regions: &[u64], pattern: u8) {
    let cmds: Vec<String> = regions
        .iter()
        .map(|r| format!("write -P {pattern} {} 1M", r * MIB))
        .collect();
    qemu_io(uri, &cmds);
}

fn region_of(path: &Path, r: u64) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    all[(r * MIB) as usize..((r + 1) * MIB) as usize].to_vec()
}

/// The image at `image` rejoins `primary` (an activated backup) as its backup: `diskrep
/// backup` on it (NBD on `nbd_port` once activated), `replicate` on the primary, until the
/// primary says protected. Returns the rejoined daemon, the primary's serving status and the
/// replication port.
fn rejoin(
    rig: &Rig,
    primary: &Daemon,
    image: &Path,
    name: &str,
    nbd_port: u16,
) -> (Daemon, serde_json::Value, u16) {
    let port = free_port();
    let d = rig.backup_on(image, name, port, nbd_port).unwrap();
    primary.ok(&format!("replicate 127.0.0.1:{port}")).unwrap();
    let s = primary
        .wait_status(Duration::from_secs(60), "re-protected", |s| {
            s["serving"]["link"] == "protected"
        })
        .unwrap();
    (d, s["serving"].clone(), port)
}

#[test]
fn two_crashes_each_rejoin_resyncs_only_the_diverged_regions() {
    const SIZE: u64 = 256 * MIB;
    let rig = Rig::new(SIZE).unwrap();
    let b = rig.backup(&[]).unwrap();
    // A small activity log (2 regions) so that the test knows exactly which regions are in it
    // at the crash: cold regions leave it when a new region enters.
    let mut a = rig.primary(&["--al-regions", "2"], true).unwrap();
    a.wait_status(Duration::from_secs(30), "protected", |s| {
        s["link"] == "protected"
    })
    .unwrap();
    let uri_a = rig.nbd_uri();
    let acked = |n: u64| {
        a.wait_status(Duration::from_secs(10), "acknowledged", |s| {
            s["committed_through"] == n
                && s["lineage"]["claim"]
                    .as_str()
                    .is_some_and(|c| c.contains(&format!("from {n}")))
        })
        .unwrap();
    };
    // Epoch 0: regions 0 and 1. Committed.
    write_regions(&uri_a, &[0, 1], 1);
    a.ok("barrier 1").unwrap();
    b.ok("commit 0").unwrap();
    acked(0);
    // Epoch 1: regions 10 and 11 (0 and 1 leave the log: they are committed). Committed.
    write_regions(&uri_a, &[10, 11], 2);
    a.ok("barrier 2").unwrap();
    b.ok("commit 1").unwrap();
    acked(1);
    // Epoch 2, never committed: region 20 (10, committed, leaves the log) and an overwrite of
    // region 1 (11, committed, leaves it). The log at the crash: 1 and 20.
    write_regions(&uri_a, &[20], 3);
    write_regions(&uri_a, &[1], 4);
    let st = a.status().unwrap();
    assert_eq!(st["lineage"]["activity_log_regions"], 2, "{st}");
    a.kill9();

    // Failover: the backup holds exactly epoch 1, and writes on as the new primary.
    let r = b.ok("activate generation=2").unwrap();
    assert!(r.contains("lineage="), "{r}");
    let s = b.status().unwrap();
    let claim = s["serving"]["lineage"]["claim"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(claim.contains("exactly at 1"), "{s}");
    assert_eq!(s["serving"]["lineage"]["current"]["fence"], 2, "{s}");
    let uri_b = rig.backup_nbd_uri();
    write_regions(&uri_b, &[11, 100, 101, 102], 5);

    // The old primary comes back with its image as the crash left it (region 20 and region 1
    // hold writes of epoch 2) and becomes the backup.
    assert_eq!(region_of(&rig.primary_img, 20), vec![3u8; MIB as usize]);
    let a2_nbd = free_port();
    let (a2, serving, _) = rejoin(&rig, &b, &rig.primary_img, "rejoined", a2_nbd);
    let plan = serving["lineage"]["plan"].as_str().unwrap();
    assert!(plan.starts_with("partial resync"), "{plan}");
    // New primary's writes: 11, 100, 101, 102. Old primary's activity log: 1, 20.
    assert_eq!(serving["resync"]["regions_total"], 6, "{plan}");
    let sent = serving["resync"]["bytes_sent"].as_u64().unwrap();
    eprintln!(
        "{plan}\nresync: {sent} bytes sent for a {SIZE}-byte disk ({:.2}%)",
        sent as f64 * 100.0 / SIZE as f64
    );
    assert!(sent <= 6 * MIB + 4096, "sent {sent}");
    // The resync is consistent once its SYNC_DONE epoch (0 on the new primary) commits.
    b.ok("barrier 1").unwrap();
    a2.ok("commit 0").unwrap();
    assert_eq!(a2.status().unwrap()["consistent"], true);
    images_identical(&rig.primary_img, &rig.backup_img);
    // Nothing of epoch 2 survived; everything the new primary wrote is there.
    assert_eq!(region_of(&rig.primary_img, 20), vec![0u8; MIB as usize]);
    assert_eq!(region_of(&rig.primary_img, 1), vec![1u8; MIB as usize]);
    assert_eq!(region_of(&rig.primary_img, 101), vec![5u8; MIB as usize]);
    assert_eq!(region_of(&rig.primary_img, 10), vec![2u8; MIB as usize]);
    // The rejoined image follows the new primary's lineage.
    let s = a2.status().unwrap();
    assert!(
        s["lineage"]["claim"]
            .as_str()
            .unwrap()
            .contains("at some epoch from 0"),
        "{s}"
    );

    // Second cycle: the new primary crashes in turn, after a committed epoch (30, 31) and an
    // uncommitted one (40); the first host takes over and writes (50, 51); the second host's
    // image rejoins it as the backup. The VM's disk is back on the first host.
    let mut b = b;
    write_regions(&uri_b, &[30, 31], 6);
    b.ok("barrier 2").unwrap();
    a2.ok("commit 1").unwrap();
    b.wait_status(Duration::from_secs(10), "epoch 1 acknowledged", |s| {
        s["serving"]["committed_through"] == 1
    })
    .unwrap();
    write_regions(&uri_b, &[40], 7);
    b.kill9();
    let r = a2.ok("activate generation=3").unwrap();
    assert!(r.contains("serving="), "{r}");
    let uri_a2 = format!("nbd://127.0.0.1:{a2_nbd}/disk");
    write_regions(&uri_a2, &[50, 51], 8);
    let (b2, s, _) = rejoin(&rig, &a2, &rig.backup_img, "rejoined-b", free_port());
    let plan = s["lineage"]["plan"].as_str().unwrap();
    assert!(plan.starts_with("partial resync"), "{plan}");
    assert!(plan.contains("exactly at 1"), "{plan}");
    // Written on the first host since: 50, 51. The second host's activity log: at most its
    // capacity, here every region it wrote (11, 100-102, 30, 31, 40: nothing had to leave).
    assert_eq!(s["resync"]["regions_total"], 9, "{plan}");
    a2.ok("barrier 1").unwrap();
    b2.ok("commit 0").unwrap();
    images_identical(&rig.primary_img, &rig.backup_img);
    assert_eq!(region_of(&rig.backup_img, 40), vec![0u8; MIB as usize]);
    assert_eq!(region_of(&rig.backup_img, 30), vec![6u8; MIB as usize]);
    assert_eq!(region_of(&rig.backup_img, 51), vec![8u8; MIB as usize]);
    assert_eq!(region_of(&rig.backup_img, 101), vec![5u8; MIB as usize]);
}

#[test]
fn damaged_metadata_means_a_full_sync_said_plainly() {
    const SIZE: u64 = 32 * MIB;
    let rig = Rig::new(SIZE).unwrap();
    let mut lineage = rig.backup_img.as_os_str().to_owned();
    lineage.push(".lineage");
    std::fs::write(
        &lineage,
        b"remus-diskrep-lineage 1 crc32c=00000000\n{\"size\": 1}",
    )
    .unwrap();
    let _b = rig.backup(&[]).unwrap();
    let a = rig.primary(&[], true).unwrap();
    let s = a
        .wait_status(Duration::from_secs(30), "protected", |s| {
            s["link"] == "protected"
        })
        .unwrap();
    let plan = s["lineage"]["plan"].as_str().unwrap();
    assert!(
        plan.starts_with("full sync: neither image's lineage is known")
            && plan.contains("checksum"),
        "{plan}"
    );
    assert_eq!(s["resync"]["regions_total"], 32);
}

/// The measurement behind BENCHMARKS.md ("Resync after a failover"): a 1 GiB disk full of
/// data; the primary is killed with writes of an uncommitted epoch; the activated backup
/// changes 1 % of the disk; the old primary rejoins. The partial resync is compared, in the
/// same run, with the full sync the same rejoin costs when the lineage is unknown (its
/// metadata deleted). Bar: at most 2 % of the disk plus the activity log's regions.
#[test]
fn resync_after_a_failover_with_1_percent_of_1_gib_changed() {
    const SIZE: u64 = 1 << 30;
    let rig = Rig::new(SIZE).unwrap();
    // A disk full of data, the same on both hosts (a full sync cannot skip zero regions).
    let fill: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    for img in [&rig.primary_img, &rig.backup_img] {
        let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        for _ in 0..SIZE / MIB {
            std::io::Write::write_all(&mut f, &fill).unwrap();
        }
    }
    let b = rig.backup(&[]).unwrap();
    let mut a = rig.primary(&[], true).unwrap();
    a.wait_status(Duration::from_secs(120), "protected", |s| {
        s["link"] == "protected"
    })
    .unwrap();
    let uri_a = rig.nbd_uri();
    write_regions(&uri_a, &[3, 4], 1);
    a.ok("barrier 1").unwrap();
    b.ok("commit 0").unwrap();
    a.wait_status(Duration::from_secs(10), "acknowledged", |s| {
        s["committed_through"] == 0
    })
    .unwrap();
    // Epoch 1 never commits.
    write_regions(&uri_a, &[500, 501, 900], 2);
    let al = a.status().unwrap()["lineage"]["activity_log_regions"]
        .as_u64()
        .unwrap();
    a.kill9();
    b.ok("activate").unwrap();
    // 1 % of the disk changes on the new primary: ten 1 MiB writes and one of 256 KiB.
    let mut cmds: Vec<String> = (0..10u64)
        .map(|i| format!("write -P {} {} 1M", i + 10, (i * 97 + 13) * MIB))
        .collect();
    cmds.push(format!("write -P 99 {} 256k", 700 * MIB));
    qemu_io(&rig.backup_nbd_uri(), &cmds);
    let changed = 10 * MIB + (256 << 10);

    let (mut a2, s, port) = rejoin(&rig, &b, &rig.primary_img, "rejoined", free_port());
    let partial = s["resync"]["bytes_sent"].as_u64().unwrap();
    let plan = s["lineage"]["plan"].as_str().unwrap().to_string();
    b.ok("barrier 1").unwrap();
    a2.ok("commit 0").unwrap();
    images_identical(&rig.primary_img, &rig.backup_img);

    // The same rejoin with the lineage unknown: a full sync.
    a2.kill9();
    let mut meta = rig.primary_img.as_os_str().to_owned();
    meta.push(".lineage");
    std::fs::remove_file(&meta).unwrap();
    let _a3 = rig
        .backup_on(&rig.primary_img, "rejoined", port, free_port())
        .unwrap();
    let s = b
        .wait_status(Duration::from_secs(120), "full sync", |s| {
            s["serving"]["link"] == "protected" && s["serving"]["resync"]["runs"] == 2
        })
        .unwrap();
    let full = s["serving"]["resync"]["bytes_sent"].as_u64().unwrap();
    let full_plan = s["serving"]["lineage"]["plan"].as_str().unwrap();
    assert!(full_plan.starts_with("full sync"), "{full_plan}");
    let pct = |b: u64| b as f64 * 100.0 / SIZE as f64;
    eprintln!(
        "resync after a failover, 1 GiB disk, {changed} bytes ({:.2}%) changed on the new primary, \
         old primary's activity log {al} regions:\n  partial: {partial} bytes ({:.2}% of the disk)\n  \
         full:    {full} bytes ({:.2}%)\n  full/partial: {:.0}x\n  {plan}",
        pct(changed),
        pct(partial),
        pct(full),
        full as f64 / partial as f64
    );
    assert!(
        partial <= SIZE / 50 + al * MIB,
        "partial resync {partial} bytes is over 2 % of the disk plus {al} activity-log regions"
    );
    assert!(full >= SIZE, "a full sync copies the whole disk: {full}");
}
