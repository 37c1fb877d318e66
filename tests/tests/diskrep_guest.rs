//! A QEMU guest whose virtio-blk disk is an nbd:// drive served by a replicating diskrep
//! writes an ext4 file system while epochs are committed on the backup; the backup is then
//! activated and its image must be fsck-clean and hold exactly what the guest wrote.

use remus_tests::diskrep_rig::Rig;
use remus_tests::guest::{boot_with, build_image, repo_root, result};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn guest_filesystem_survives_replicate_and_activate() {
    let rig = Rig::new(64 << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&rig.primary_img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let backup = rig.backup(&[]).unwrap();
    let mut primary = rig.primary(&[], true).unwrap();
    primary
        .wait_status(Duration::from_secs(20), "protected", |s| {
            s["link"] == "protected"
        })
        .unwrap();

    // Epochs turn over every 50 ms while the guest runs, as checkpointd would drive them.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (pc, bc) = (primary.control.clone(), backup.control.clone());
    let epochs = std::thread::spawn(move || {
        let mut p = remus_proto::ctl_socket::ControlClient::connect(&pc).unwrap();
        let mut b = remus_proto::ctl_socket::ControlClient::connect(&bc).unwrap();
        let mut e = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            p.request(&format!("barrier {}", e + 1)).unwrap();
            let r = b.request(&format!("commit {e}")).unwrap();
            assert!(matches!(r, remus_proto::control::Reply::Ok(_)), "{r:?}");
            e += 1;
        }
        e
    });
    let image = build_image(
        "disk-writer",
        &[],
        &repo_root().join("tests/guest/disk-writer.sh"),
    )
    .unwrap();
    let drive = format!("file={},format=raw,if=virtio", rig.nbd_uri());
    let console = boot_with(&image, 256, Duration::from_secs(240), &["-drive", &drive]);
    let _ = std::fs::remove_dir_all(&image);
    stop.store(true, Ordering::SeqCst);
    let last = epochs.join().unwrap();
    let console = console.unwrap();
    assert_eq!(result(&console, "umount"), Some("0"), "{console}");
    assert_eq!(result(&console, "files"), Some("200"), "{console}");
    let md5 = result(&console, "big").unwrap().to_string();
    assert!(last > 5, "epochs committed while the guest ran: {last}");

    // Commit what remains, lose the primary, activate the backup.
    primary.ok(&format!("barrier {}", last + 1)).unwrap();
    backup.ok(&format!("commit {last}")).unwrap();
    primary.kill9();
    backup.ok("activate").unwrap();

    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&rig.backup_img)
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "fsck of the backup image: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let dumped = rig.dir.join("big");
    let o = Command::new("debugfs")
        .args(["-R", &format!("dump /big {}", dumped.display())])
        .arg(&rig.backup_img)
        .output()
        .unwrap();
    assert!(o.status.success());
    let sum = Command::new("md5sum").arg(&dumped).output().unwrap();
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(&md5),
        "blob differs on the backup"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&rig.primary_img)
        .arg(&rig.backup_img)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}
