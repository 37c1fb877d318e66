//! diskrep as an NBD server, driven by real clients: qemu-io, qemu-img, nbdinfo, nbdcopy; and
//! by a byte-level client for malformed input.

use remus_tests::diskrep_rig::Rig;
use remus_tests::nbd_client::{NbdClient, CMD_READ, CMD_WRITE};
use std::io::{Read, Write};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?} failed: {text}");
    text
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = run(&mut c);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    out
}

fn random_file(path: &std::path::Path, size: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = vec![0u8; size];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        // Leave some all-zero stretches so sparse handling is exercised too.
        if (i / 8192) % 5 == 3 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(path, v).unwrap();
}

#[test]
fn qemu_io_patterns_fua_flush_trim_zero() {
    let rig = Rig::new(64 << 20).unwrap();
    let _p = rig.primary(&[], false).unwrap();
    let uri = rig.nbd_uri();
    qemu_io(
        &uri,
        &[
            "write -P 0xa5 0 1M",
            "write -f -P 0x5a 1M 64k", // FUA
            "aio_write -P 0x11 2M 4k",
            "aio_write -P 0x22 3M 4k",
            "aio_flush",
            "flush",
            "write -z 4M 128k",
            "discard 5M 256k",
        ],
    );
    // Read back on a fresh connection.
    qemu_io(
        &uri,
        &[
            "read -P 0xa5 0 1M",
            "read -P 0x5a 1M 64k",
            "read -P 0x11 2M 4k",
            "read -P 0x22 3M 4k",
            "read -P 0 4M 128k",
            "read -P 0 5M 256k",
        ],
    );
    let info = run(Command::new("nbdinfo").arg(&uri));
    assert!(info.contains("export-size: 67108864"), "{info}");
    assert!(info.contains("can_fua: true") && info.contains("can_multi_conn: true"));
    let list = run(Command::new("nbdinfo").args(["--list", &uri]));
    assert!(list.contains("export=\"disk\""), "{list}");
}

#[test]
fn qemu_img_and_nbdcopy_round_trip_with_several_connections() {
    let rig = Rig::new(48 << 20).unwrap();
    let _p = rig.primary(&[], false).unwrap();
    let uri = rig.nbd_uri();
    let reference = rig.dir.join("ref.raw");
    random_file(&reference, 48 << 20, 42);
    run(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        &reference.to_string_lossy(),
        &uri,
    ]));
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &reference.to_string_lossy(),
        &uri,
    ]));
    // Four connections writing at once (CAN_MULTI_CONN), then read back through another client.
    let other = rig.dir.join("other.raw");
    random_file(&other, 48 << 20, 7);
    run(Command::new("nbdcopy").args([
        "--connections=4",
        "--requests=16",
        &other.to_string_lossy(),
        &uri,
    ]));
    let back = rig.dir.join("back.raw");
    run(Command::new("nbdcopy").args([uri.as_str(), &back.to_string_lossy()]));
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&other).unwrap(),
        "nbdcopy round trip differs"
    );
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &other.to_string_lossy(),
        &rig.primary_img.to_string_lossy(),
    ]));
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let rig = Rig::new(1 << 20).unwrap();
    let _p = rig.primary(&[], false).unwrap();
    let addr = format!("127.0.0.1:{}", rig.nbd_port);
    let mut c = NbdClient::connect(&addr, "disk").unwrap();
    c.write(0, &[7u8; 4096]).unwrap();
    // Past the end: read → EINVAL, write → ENOSPC (payload drained).
    c.send(0, CMD_READ, (1 << 20) - 100, 4096, &[]).unwrap();
    assert_eq!(c.reply(0).unwrap().0, 22);
    c.send(0, CMD_WRITE, 1 << 20, 512, &[1u8; 512]).unwrap();
    assert_eq!(c.reply(0).unwrap().0, 28);
    // Over the maximum: EOVERFLOW.
    c.send(0, CMD_READ, 0, (32 << 20) + 1, &[]).unwrap();
    assert_eq!(c.reply(0).unwrap().0, 75);
    // Unknown command and unknown flag: EINVAL.
    c.send(0, 42, 0, 0, &[]).unwrap();
    assert_eq!(c.reply(0).unwrap().0, 22);
    c.send(0x8000, CMD_READ, 0, 1, &[]).unwrap();
    assert_eq!(c.reply(0).unwrap().0, 22);
    // Still usable, data intact.
    assert_eq!(c.read(0, 4096).unwrap(), vec![7u8; 4096]);
    // Pipelined requests are all answered.
    let cookies: Vec<u64> = (0..32)
        .map(|i| {
            c.send(0, CMD_WRITE, i * 4096, 4096, &[i as u8; 4096])
                .unwrap()
        })
        .collect();
    let mut got: Vec<u64> = (0..32).map(|_| c.reply(0).unwrap().1).collect();
    got.sort();
    assert_eq!(got, cookies);
    // A bad request magic closes this connection only.
    c.s.write_all(&[0u8; 28]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(c.s.read(&mut b).unwrap_or(0), 0, "connection closed");

    // Garbage in the handshake: closed, server keeps serving others.
    let mut g = std::net::TcpStream::connect(&addr).unwrap();
    let mut greet = [0u8; 18];
    g.read_exact(&mut greet).unwrap();
    g.write_all(b"\x00\x00\x00\x03GARBAGEGARBAGEGARBAGE")
        .unwrap();
    let mut rest = Vec::new();
    let _ = g.read_to_end(&mut rest);
    // A truncated request then EOF.
    let mut t = NbdClient::connect(&addr, "disk").unwrap();
    t.s.write_all(&[0x25, 0x60, 0x95]).unwrap();
    drop(t);
    // Unknown export with GO: error reply, no crash.
    assert!(NbdClient::connect(&addr, "nope").is_err());
    let mut ok = NbdClient::connect(&addr, "").unwrap();
    assert_eq!(ok.read(31 * 4096, 4096).unwrap(), vec![31u8; 4096]);
    ok.disconnect().unwrap();
    qemu_io(&rig.nbd_uri(), &["read -P 0x1f 124k 4k"]);
}

#[test]
fn startup_errors_have_exit_codes() {
    let rig = Rig::new(1 << 20).unwrap();
    let d = remus_tests::netns::bin("diskrep");
    let o = Command::new(&d)
        .args([
            "primary",
            "--image",
            "/nonexistent/x.img",
            "--listen",
            "127.0.0.1:1",
            "--control",
            "/tmp/x.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _p = rig.primary(&[], false).unwrap();
    let o = Command::new(&d)
        .args([
            "primary",
            "--image",
            &rig.primary_img.to_string_lossy(),
            "--listen",
            &format!("127.0.0.1:{}", rig.nbd_port),
            "--control",
            &rig.dir.join("other.sock").to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "port in use: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(&d)
        .args(["ctl", "--control", "/nonexistent.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    let o = Command::new(&d)
        .args([
            "ctl",
            "--control",
            &rig.dir.join("primary.sock").to_string_lossy(),
            "commit",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "commit is a backup command");
}
