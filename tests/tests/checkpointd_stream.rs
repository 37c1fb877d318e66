//! The backup checkpointd against a hand-driven primary: a whole checkpoint is acknowledged and
//! applied after it is on disk; a void one (incomplete, corrupt, out of range) stops the backup
//! from following, since every later checkpoint would sit on its hole.

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

/// The backup's next answer: an ack, or its report that it cannot follow (None: nothing
/// within the read timeout).
fn next_answer(s: &mut impl Read) -> Option<Msg> {
    loop {
        match Msg::read_from(s) {
            Ok(Some(m @ (Msg::Ack(_) | Msg::DiskFailed(..)))) => return Some(m),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

fn next_ack(s: &mut impl Read) -> Option<Epoch> {
    match next_answer(s) {
        Some(Msg::Ack(e)) => Some(e),
        _ => None,
    }
}

type Writer = std::io::BufWriter<remus_proto::auth::blocking::SealedWriter<std::net::TcpStream>>;
type Reader = remus_proto::auth::blocking::OpenedReader<std::net::TcpStream>;

/// A real `checkpointd backup` (restoring with `true`) and a hand-driven primary that holds
/// the key (the backup refuses any other: see tests/tests/hostile_auth.rs), past HELLO.
struct Session {
    backup: GroupGuard,
    dir: std::path::PathBuf,
    image: std::path::PathBuf,
    s: Writer,
    acks: Reader,
}

const RAM: u64 = 16 * PAGE as u64;

fn session() -> Session {
    let dir =
        std::env::temp_dir().join(format!("ckstream-{}", remus_tests::netns::unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("ram.img");
    let port = free_port();
    let backup = GroupGuard::spawn(
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
    let (mut s, acks) = (link.writer, link.reader);
    Msg::Hello(Hello {
        version: VERSION,
        ram_size: RAM,
        page_size: PAGE as u32,
        vm: "t".into(),
        first_epoch: 0,
        driver: "qemu".into(),
        generation: None,
    })
    .write_to(&mut s)
    .unwrap();
    Session {
        backup,
        dir,
        image,
        s,
        acks,
    }
}

fn page(b: u8) -> Box<[u8]> {
    vec![b; PAGE].into()
}

/// The backup's exit status and stderr, after `remus failover` asked it to restore.
fn failover(x: &mut Session) -> (std::process::ExitStatus, String) {
    let o = Command::new(bin("remus"))
        .args([
            "failover",
            "--checkpointd",
            &x.dir.join("backup.sock").to_string_lossy(),
        ])
        .output()
        .unwrap();
    let code = x.backup.0.wait().unwrap();
    let mut err = String::new();
    x.backup
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        o.status.success() || !code.success(),
        "remus failover: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (code, err)
}

/// A checkpoint that is not whole (a page beyond the RAM, an END that counts more pages than
/// came) can be neither applied nor skipped: each checkpoint carries only its own epoch's
/// pages, so every later one would be applied on top of a hole. The backup acknowledges
/// nothing more, tells the primary (which then goes on unprotected), and never restores.
#[test]
fn a_void_checkpoint_stops_the_backup_from_following() {
    for (what, pages, end_pages) in [
        ("a page beyond the RAM", vec![(16, page(9))], 1),
        ("an END that counts more pages", vec![(1, page(7))], 2),
    ] {
        let mut x = session();
        checkpoint(&mut x.s, 0, vec![(3, page(5))], 1);
        assert_eq!(next_ack(&mut x.acks), Some(Epoch(0)), "{what}");
        checkpoint(&mut x.s, 1, pages, end_pages);
        match next_answer(&mut x.acks) {
            Some(Msg::DiskFailed(e, why)) => assert_eq!(e, Epoch(1), "{what}: {why}"),
            other => {
                let _ = x.backup.0.kill();
                let _ = x.backup.0.wait();
                let mut err = String::new();
                if let Some(mut e) = x.backup.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{what}: {other:?} instead of the backup's report; the backup said:\n{err}")
            }
        }
        // A whole checkpoint after the void one is neither acknowledged nor applied.
        checkpoint(&mut x.s, 2, vec![(4, page(6))], 1);
        assert_eq!(next_answer(&mut x.acks), None, "{what}");
        let img = std::fs::read(&x.image).unwrap();
        assert_eq!(
            img.len() as u64,
            RAM,
            "{what}: the image never grew past the RAM"
        );
        assert!(img[3 * PAGE..4 * PAGE].iter().all(|&b| b == 5), "{what}");
        assert!(
            img[PAGE..2 * PAGE].iter().all(|&b| b == 0)
                && img[4 * PAGE..5 * PAGE].iter().all(|&b| b == 0),
            "{what}: nothing of the void checkpoint or after it applied"
        );
        let (code, err) = failover(&mut x);
        assert!(!code.success(), "{what}: {err}");
        assert!(err.contains("arrived void"), "{what}: {err}");
        assert!(!err.contains("restoring the VM"), "{what}: {err}");
        let _ = std::fs::remove_dir_all(&x.dir);
    }
}

#[test]
fn only_whole_checkpoints_are_acknowledged_and_applied() {
    let mut x = session();
    // Epoch 0: whole.
    checkpoint(&mut x.s, 0, vec![(3, page(5))], 1);
    assert_eq!(next_ack(&mut x.acks), Some(Epoch(0)));
    let img = std::fs::read(&x.image).unwrap();
    assert_eq!(img.len() as u64, RAM);
    assert!(img[3 * PAGE..4 * PAGE].iter().all(|&b| b == 5));
    let dev = std::fs::read(x.dir.join("state/device-state.committed")).unwrap();
    assert_eq!(dev, vec![1, 2, 3]);
    // Compressed device state against the restore point (0) decodes and is applied.
    let device_z = |s: &mut Writer, e: u64, base: u64, new: &[u8]| {
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
    device_z(&mut x.s, 1, 0, &[1, 2, 4, 9]);
    assert_eq!(next_ack(&mut x.acks), Some(Epoch(1)));
    let dev = std::fs::read(x.dir.join("state/device-state.committed")).unwrap();
    assert_eq!(dev, vec![1, 2, 4, 9]);
    checkpoint(&mut x.s, 2, vec![(5, page(8))], 1);
    assert_eq!(next_ack(&mut x.acks), Some(Epoch(2)));

    // A planned switch-over from the control socket restores from the restore point (here the
    // "QEMU" is `true`, which exits at once, so the restore itself fails, loudly).
    let mut c =
        remus_proto::ctl_socket::ControlClient::connect(&x.dir.join("backup.sock")).unwrap();
    let st = c.request("status json").unwrap();
    assert!(
        matches!(&st, remus_proto::control::Reply::Ok(j) if j.contains("\"committed_through\":2")),
        "{st:?}"
    );
    drop(c);
    let (code, err) = failover(&mut x);
    assert!(err.contains("failover requested"), "{err}");
    assert!(err.contains("restoring the VM from checkpoint 2"), "{err}");
    assert!(!code.success(), "a restore whose QEMU exits is a failure");
    let _ = std::fs::remove_dir_all(&x.dir);
}
