//! Issue 10, part B, against the real binaries: nobody without the VM's key can feed, read,
//! stop or displace a replication link.
//!
//! - diskrep: a forged stream (no handshake) and one with the wrong key get no HELLO_ACK (the
//!   image size is never told), write nothing, advance no epoch; a captured session replayed is
//!   refused; silent connections (a flood of them) and garbage leave the live link as it was;
//!   with `--encrypt` the captured bytes do not show the data.
//! - checkpointd: a forged stream is not acknowledged and replaces no RAM image; a silent
//!   connection does not keep the real primary out; a forged STOP does not stand the backup
//!   down; a captured session replayed to a backup is refused.
//!
//! Not root-only (loopback, no namespaces); run under the shared heavy-test lock.

use checkpointd::ram::PAGE;
use checkpointd::wire::{Hello as CkHello, Msg as CkMsg, VERSION};
use diskrep::repl::msg::{Hello, Msg, PROTOCOL_VERSION};
use remus_proto::auth::{Key, Security, StreamKind};
use remus_proto::ctl_socket::ControlClient;
use remus_proto::Epoch;
use remus_tests::diskrep_rig::{free_port, spawn_daemon, Daemon, Rig};
use remus_tests::forge::{send_and_listen, squat, wrong_key, Recorder};
use remus_tests::hostile::{wait_for, MIB};
use remus_tests::nbd_client::NbdClient;
use remus_tests::netns::{bin, GroupGuard};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn forged_disk_stream(size: u64) -> Vec<u8> {
    let mut v = Msg::Hello(Hello {
        version: PROTOCOL_VERSION,
        size,
        export: "forged".into(),
        lineage: None,
    })
    .encode();
    v.extend(Msg::encode_write(Epoch(5), MIB, &[0xEE; 4096], false));
    v.extend(Msg::Barrier(Epoch(6)).encode());
    v.extend(Msg::encode_write(Epoch(0), 2 * MIB, &[0xEE; 4096], true));
    v.extend(Msg::SyncDone(Epoch(5)).encode());
    v
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

#[test]
fn diskrep_backup_takes_nothing_from_forgers_replays_or_squatters() {
    let rig = Rig::new(4 * MIB).unwrap();
    let backup = rig.backup(&["--encrypt"]).unwrap();
    let repl = format!("127.0.0.1:{}", rig.repl_port);
    // The real primary reaches the backup through a recording proxy (an eavesdropper).
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let via = proxy.local_addr().unwrap().to_string();
    let rec = Recorder::start(proxy, repl.clone());
    let pctl = rig.dir.join("p.sock");
    let mut args: Vec<String> = [
        "primary",
        "--image",
        &rig.primary_img.to_string_lossy(),
        "--listen",
        &format!("127.0.0.1:{}", rig.nbd_port),
        "--control",
        &pctl.to_string_lossy(),
        "--backup",
        &via,
        "--encrypt",
    ]
    .map(String::from)
    .to_vec();
    args.extend(remus_tests::key_args(&rig.dir));
    let primary = spawn_daemon(&args, pctl).unwrap();
    let protected = |d: &Daemon| {
        d.wait_status(Duration::from_secs(30), "protected", |s| {
            s["link"] == "protected"
        })
        .unwrap()
    };
    protected(&primary);
    let mut nbd = NbdClient::connect(&format!("127.0.0.1:{}", rig.nbd_port), "disk").unwrap();
    nbd.write(0, &[0xC3; 65536]).unwrap();
    primary.ok("barrier 1").unwrap();
    backup.ok("commit 0").unwrap();

    // The attacks, with the link live.
    let squatters: Vec<_> = (0..24).map(|_| squat(&repl)).collect();
    let forged = forged_disk_stream(rig.size);
    let told = send_and_listen(&repl, &forged, Duration::from_secs(5));
    assert!(
        told.is_empty(),
        "a peer without a handshake was answered: {told:?}"
    );
    wrong_key(&repl, StreamKind::Disk, &forged);
    backup
        .wait_status(Duration::from_secs(10), "two refusals", |s| {
            u(s, "auth_failures") >= 2
        })
        .unwrap();

    // The live link never noticed: same connection, no resync, no drop.
    let p = primary.status().unwrap();
    assert_eq!(p["link"], "protected", "{p}");
    assert_eq!(p["resync"]["runs"], 1, "the primary reconnected: {p}");
    assert_eq!(u(&p, "protection_drops"), 0, "{p}");
    let b = backup.status().unwrap();
    assert_eq!(b["connected"], true, "{b}");
    assert_eq!(b["auth"], "chacha20-poly1305", "{b}");
    assert!(
        u(&b, "complete_through") < 5,
        "a forged barrier counted: {b}"
    );
    // The real primary's next epoch commits for real (the forged one did not make it
    // `already=true`).
    nbd.write(65536, &[0xD4; 65536]).unwrap();
    primary.ok("barrier 2").unwrap();
    let r = backup.ok("commit 1").unwrap();
    assert!(!r.contains("already"), "{r}");
    assert!(r.contains("bytes=65536"), "{r}");

    // The real primary's captured session, replayed: refused at the proof.
    let captured = rec.captured();
    assert!(
        captured.len() > 128 << 10,
        "captured {} bytes",
        captured.len()
    );
    let before = u(&backup.status().unwrap(), "auth_failures");
    let told = send_and_listen(&repl, &captured, Duration::from_secs(5));
    assert!(
        told.len() <= 72,
        "a replay got past the handshake: {} bytes",
        told.len()
    );
    backup
        .wait_status(Duration::from_secs(10), "the replay refused", |s| {
            u(s, "auth_failures") > before
        })
        .unwrap();
    // Encrypted: the eavesdropper saw no run of the data.
    assert!(
        !captured
            .windows(64)
            .any(|w| w.iter().all(|&b| b == 0xC3 || b == 0xD4)),
        "plain data on the wire despite --encrypt"
    );
    drop(squatters);
    let p = primary.status().unwrap();
    assert_eq!(
        (p["link"].as_str(), u(&p, "protection_drops")),
        (Some("protected"), 0),
        "{p}"
    );
    let img = std::fs::read(&rig.backup_img).unwrap();
    assert!(img[..65536].iter().all(|&b| b == 0xC3));
    assert!(img[65536..131072].iter().all(|&b| b == 0xD4));
    assert!(
        !img.windows(4096).any(|w| w.iter().all(|&b| b == 0xEE)),
        "a forged write landed"
    );
}

fn ck_backup(dir: &Path, port: u16, tag: &str) -> GroupGuard {
    GroupGuard::spawn(
        Command::new(bin("checkpointd"))
            .args(["backup", "--listen", &format!("127.0.0.1:{port}")])
            .args(remus_tests::key_args(dir))
            .args([
                "--ram-image",
                &dir.join(format!("{tag}.ram")).to_string_lossy(),
            ])
            .args([
                "--state-dir",
                &dir.join(format!("{tag}-state")).to_string_lossy(),
            ])
            .args(["--peer-timeout-ms", "5000", "--witness", "none"])
            .args([
                "--control",
                &dir.join(format!("{tag}.sock")).to_string_lossy(),
            ])
            .args(["--", "true"])
            .stderr(std::fs::File::create(dir.join(format!("{tag}.log"))).unwrap()),
    )
    .unwrap()
}

fn ck_status(dir: &Path, tag: &str) -> serde_json::Value {
    let mut c = ControlClient::connect(&dir.join(format!("{tag}.sock"))).unwrap();
    match c.request("status json").unwrap() {
        remus_proto::control::Reply::Ok(j) => serde_json::from_str(&j).unwrap(),
        e => panic!("{e:?}"),
    }
}

fn forged_checkpoint(pages: u64, fill: u8) -> Vec<u8> {
    let mut v = Vec::new();
    CkMsg::Hello(CkHello {
        version: VERSION,
        ram_size: pages * PAGE as u64,
        page_size: PAGE as u32,
        vm: "t".into(),
        first_epoch: 0,
        driver: "qemu".into(),
        generation: None,
    })
    .write_to(&mut v)
    .unwrap();
    CkMsg::Begin(Epoch(0)).write_to(&mut v).unwrap();
    CkMsg::Pages(Epoch(0), vec![(1, vec![fill; PAGE].into())])
        .write_to(&mut v)
        .unwrap();
    CkMsg::Device(Epoch(0), vec![1, 2, 3])
        .write_to(&mut v)
        .unwrap();
    CkMsg::End {
        epoch: Epoch(0),
        pages: 1,
        device_bytes: 3,
    }
    .write_to(&mut v)
    .unwrap();
    v
}

#[test]
fn checkpointd_backup_takes_nothing_from_forgers_replays_or_squatters() {
    let dir = std::env::temp_dir().join(format!("ckauth-{}", remus_tests::netns::unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut b1 = ck_backup(&dir, port, "b1");
    wait_for(
        Duration::from_secs(10),
        "the backup's control socket",
        || ControlClient::connect(&dir.join("b1.sock")).is_ok(),
    );
    // A silent connection first (it used to hold the real primary out), then a forged stream
    // with a STOP, and the same with a wrong key.
    let squatter = squat(&addr);
    let mut forged = forged_checkpoint(16, 0xEE);
    CkMsg::Stop.write_to(&mut forged).unwrap();
    let told = send_and_listen(&addr, &forged, Duration::from_secs(3));
    assert!(
        told.is_empty(),
        "a peer without a handshake was answered: {told:?}"
    );
    wrong_key(&addr, StreamKind::Checkpoint, &forged);
    wait_for(Duration::from_secs(10), "two refusals", || {
        ck_status(&dir, "b1")["auth_refused"].as_u64() >= Some(2)
    });
    let st = ck_status(&dir, "b1");
    assert_eq!(st["phase"], "waiting", "{st}");
    assert!(
        !dir.join("b1.ram").exists(),
        "a forged HELLO made the RAM image"
    );

    // The real primary (hand-driven, with the key), through a recording proxy, while the
    // squatter still holds its connection.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let via = proxy.local_addr().unwrap().to_string();
    let rec = Recorder::start(proxy, addr.clone());
    let security = Security::Keyed {
        key: Key::load(&remus_tests::replication_key(&dir)).unwrap(),
        encrypt: false,
    };
    let t = Instant::now();
    let link = checkpointd::link::connect(&via, &security, Duration::from_secs(10)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "held out for {:?}",
        t.elapsed()
    );
    link.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut w, mut r) = (link.writer, link.reader);
    w.write_all(&forged_checkpoint(16, 0xC3)).unwrap();
    w.flush().unwrap();
    let acked = loop {
        match CkMsg::read_from(&mut r) {
            Ok(Some(CkMsg::Ack(e))) => break e,
            Ok(Some(_)) => continue,
            other => panic!("no ack: {other:?}"),
        }
    };
    assert_eq!(acked, Epoch(0));

    // With the link live: a forged STOP on a new connection changes nothing.
    let mut stop = Vec::new();
    CkMsg::Stop.write_to(&mut stop).unwrap();
    let told = send_and_listen(&addr, &stop, Duration::from_secs(2));
    assert!(told.is_empty(), "{told:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        b1.0.try_wait().unwrap().is_none(),
        "a forged STOP ended the backup"
    );
    let st = ck_status(&dir, "b1");
    assert_eq!(st["committed_through"], 0, "{st}");
    let ram = std::fs::read(dir.join("b1.ram")).unwrap();
    assert!(
        ram[PAGE..2 * PAGE].iter().all(|&b| b == 0xC3),
        "the restore point is the real one"
    );

    // The captured session replayed to a fresh backup with the same key: refused, nothing made.
    let port2 = free_port();
    let _b2 = ck_backup(&dir, port2, "b2");
    wait_for(Duration::from_secs(10), "the second backup", || {
        ControlClient::connect(&dir.join("b2.sock")).is_ok()
    });
    let captured = rec.captured();
    let told = send_and_listen(
        &format!("127.0.0.1:{port2}"),
        &captured,
        Duration::from_secs(3),
    );
    assert!(
        told.len() <= 72,
        "a replay got past the handshake: {} bytes",
        told.len()
    );
    wait_for(Duration::from_secs(10), "the replay refused", || {
        ck_status(&dir, "b2")["auth_refused"].as_u64() >= Some(1)
    });
    assert_eq!(ck_status(&dir, "b2")["phase"], "waiting");
    assert!(
        !dir.join("b2.ram").exists(),
        "a replayed HELLO made the RAM image"
    );

    // The real primary ends protection: the backup stands down (exit 0), no failover.
    drop(squatter);
    CkMsg::Stop.write_to(&mut w).unwrap();
    w.flush().unwrap();
    let t = Instant::now();
    let code = loop {
        if let Some(st) = b1.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the backup did not stand down"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code}");
    let mut log = String::new();
    std::fs::File::open(dir.join("b1.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("refused a connection"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
