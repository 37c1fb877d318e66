//! The backup checkpointd against a hand-driven primary: incomplete, corrupt and out-of-range
//! checkpoints are never acknowledged or applied; a whole one is, after it is on disk.

use checkpointd::ram::PAGE;
use checkpointd::wire::{Hello, Msg, VERSION};
use remus_proto::Epoch;
use remus_tests::diskrep_rig::free_port;
use remus_tests::netns::{bin, GroupGuard};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

fn checkpoint(s: &mut impl Write, e: u64, pages: Vec<(u64, Box<[u8]>)>, end_pages: u64) {
    let e = Epoch(e);
    Msg::Begin(e).write_to(s).unwrap();
    Msg::Pages(e, pages).write_to(s).unwrap();
    Msg::Device(e, vec![1, 2, 3]).write_to(s).unwrap();
    Msg::End {
        epoch: e,
        pages: end_pages,
        device_bytes: 3,
    }
    .write_to(s)
    .unwrap();
    s.flush().unwrap();
}

fn next_ack(s: &mut impl Read) -> Option<Epoch> {
    loop {
        match Msg::read_from(s) {
            Ok(Some(Msg::Ack(e))) => return Some(e),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[test]
fn only_whole_checkpoints_are_acknowledged_and_applied() {
    let dir =
        std::env::temp_dir().join(format!("ckstream-{}", remus_tests::netns::unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("ram.img");
    let port = free_port();
    let mut backup = GroupGuard::spawn(
        Command::new(bin("checkpointd"))
            .args(["backup", "--listen", &format!("127.0.0.1:{port}")])
            .args(remus_tests::key_args(&dir))
            .args(["--ram-image", &image.to_string_lossy()])
            .args(["--state-dir", &dir.join("state").to_string_lossy()])
            .args(["--peer-timeout-ms", "5000", "--witness", "none"])
            .args(["--control", &dir.join("backup.sock").to_string_lossy()])
            .args(["--", "true"])
            .stderr(std::process::Stdio::piped()),
    )
    .unwrap();
    // A hand-driven primary that holds the key (the backup refuses any other: see
    // tests/tests/hostile_auth.rs).
    let security = remus_proto::auth::Security::Keyed {
        key: remus_proto::auth::Key::load(&remus_tests::replication_key(&dir)).unwrap(),
        encrypt: false,
    };
    let link = loop {
        if let Ok(l) = checkpointd::link::connect(
            &format!("127.0.0.1:{port}"),
            &security,
            Duration::from_secs(10),
        ) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    link.sock
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (mut s, mut acks) = (link.writer, link.reader);
    let ram = 16 * PAGE as u64;
    Msg::Hello(Hello {
        version: VERSION,
        ram_size: ram,
        page_size: PAGE as u32,
        vm: "t".into(),
        first_epoch: 0,
        driver: "qemu".into(),
        generation: None,
    })
    .write_to(&mut s)
    .unwrap();
    let page = |b: u8| -> Box<[u8]> { vec![b; PAGE].into() };
    // Epoch 0: a page beyond the RAM: refused.
    checkpoint(&mut s, 0, vec![(16, page(9))], 1);
    // Epoch 1: END claims more pages than were sent: refused.
    checkpoint(&mut s, 1, vec![(1, page(7))], 2);
    assert_eq!(next_ack(&mut acks), None, "nothing acknowledged");
    // Epoch 2: whole.
    checkpoint(&mut s, 2, vec![(3, page(5))], 1);
    assert_eq!(next_ack(&mut acks), Some(Epoch(2)));
    let img = std::fs::read(&image).unwrap();
    assert_eq!(
        img.len() as u64,
        ram,
        "the image never grew past the guest's RAM"
    );
    assert!(
        img[PAGE..2 * PAGE].iter().all(|&b| b == 0),
        "epoch 1's page never applied"
    );
    assert!(img[3 * PAGE..4 * PAGE].iter().all(|&b| b == 5));
    let dev = std::fs::read(dir.join("state/device-state.committed")).unwrap();
    assert_eq!(dev, vec![1, 2, 3]);

    // Compressed device state: a delta against a checkpoint that is not the restore point is
    // refused; against the restore point (2) it decodes and is applied.
    let device_z = |s: &mut std::io::BufWriter<
        remus_proto::auth::blocking::SealedWriter<std::net::TcpStream>,
    >,
                    e: u64,
                    base: u64,
                    new: &[u8]| {
        let z = checkpointd::compress::encode_device(new, &[1, 2, 3]);
        Msg::Begin(Epoch(e)).write_to(s).unwrap();
        Msg::DeviceZ {
            epoch: Epoch(e),
            base: Epoch(base),
            z,
        }
        .write_to(s)
        .unwrap();
        Msg::End {
            epoch: Epoch(e),
            pages: 0,
            device_bytes: new.len() as u64,
        }
        .write_to(s)
        .unwrap();
        s.flush().unwrap();
    };
    device_z(&mut s, 3, 1, &[1, 2, 4, 9]);
    assert_eq!(next_ack(&mut acks), None, "delta against the wrong base");
    device_z(&mut s, 4, 2, &[1, 2, 4, 9]);
    assert_eq!(next_ack(&mut acks), Some(Epoch(4)));
    let dev = std::fs::read(dir.join("state/device-state.committed")).unwrap();
    assert_eq!(dev, vec![1, 2, 4, 9]);

    // A planned switch-over from the control socket restores from the restore point (here the
    // "QEMU" is `true`, which exits at once, so the restore itself fails, loudly).
    let mut c = remus_proto::ctl_socket::ControlClient::connect(&dir.join("backup.sock")).unwrap();
    let st = c.request("status json").unwrap();
    assert!(
        matches!(&st, remus_proto::control::Reply::Ok(j) if j.contains("\"committed_through\":4")),
        "{st:?}"
    );
    drop(c);
    let o = Command::new(bin("remus"))
        .args([
            "failover",
            "--checkpointd",
            &dir.join("backup.sock").to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "remus failover: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let code = backup.0.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    backup
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("failover requested"), "{err}");
    assert!(err.contains("restoring the VM from checkpoint 4"), "{err}");
    assert!(!code.success(), "a restore whose QEMU exits is a failure");
    let _ = std::fs::remove_dir_all(&dir);
}
