//! One function per parser that reads bytes from outside, taking arbitrary bytes: what both the
//! property-based fuzz tests (tests/tests/fuzz_parsers.rs, in `make test`) and the
//! coverage-guided libFuzzer targets (fuzz/, `make fuzz`) run. Each must return (not panic,
//! not hang, not allocate without bound) on any input, and checks what must hold of what it
//! accepts.

use remus_proto::auth::handshake::{Connector, Listener, OPENING_LEN, REPLY_LEN};
use remus_proto::auth::record::{Opener, Protection};
use remus_proto::auth::{Key, Security, StreamKind};
use remus_proto::wire::{self, Frame};
use remus_proto::Epoch;

/// A parser's entry: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every parser, by name (the libFuzzer target names).
pub const TARGETS: &[(&str, Target)] = &[
    ("nbd", nbd),
    ("wire", wire_frames),
    ("auth", auth),
    ("diskrep_msg", diskrep_msg),
    ("checkpointd_msg", checkpointd_msg),
    ("control", control),
    ("config", config),
];

/// The NBD server's handshake options and request headers (with its checks against an
/// export), as diskrep reads them from a client.
pub fn nbd(data: &[u8]) {
    use diskrep::nbd::handshake::{handle_option, Export};
    use diskrep::nbd::request::{check, parse_header, REQUEST_LEN};
    let export = Export {
        name: "disk".into(),
        size: 1 << 30,
        read_only: data.first().is_some_and(|b| b & 1 == 1),
    };
    if let Some(opt) = data.get(1..5) {
        let opt = u32::from_be_bytes([opt[0], opt[1], opt[2], opt[3]]);
        let _ = handle_option(opt, &data[5..], &export, data[0] & 2 == 2);
    }
    for chunk in data.chunks_exact(REQUEST_LEN) {
        let mut b = [0u8; REQUEST_LEN];
        b.copy_from_slice(chunk);
        if let Ok(h) = parse_header(&b) {
            let _ = check(&h, export.size, export.read_only);
        }
    }
}

/// remus-proto framing: whatever decodes re-encodes to the same bytes.
pub fn wire_frames(data: &[u8]) {
    let mut at = 0;
    while let Ok(Some((f, used))) = wire::decode(&data[at..], 1 << 20) {
        assert_eq!(
            wire::encode(f.kind, f.flags, f.epoch, &f.payload),
            &data[at..at + used]
        );
        at += used;
    }
    let mut r = data;
    while let Ok(Some(_)) = wire::read_frame(&mut r, 1 << 20) {}
}

fn test_security(encrypt: bool) -> Security {
    Security::Keyed {
        key: Key::from_bytes([7; 32]),
        encrypt,
    }
}

/// The authentication handshake's messages and the records after it: nothing from a party
/// without the key is ever accepted.
pub fn auth(data: &[u8]) {
    let encrypt = data.first().is_some_and(|b| b & 1 == 1);
    let sec = test_security(encrypt);
    if let Some(o) = data.get(..OPENING_LEN) {
        let mut opening = [0u8; OPENING_LEN];
        opening.copy_from_slice(o);
        if let Ok((_, remus_proto::auth::handshake::Next::ReadProof(l))) =
            Listener::reply(&sec, StreamKind::Disk, &opening)
        {
            let mut proof = [0u8; 32];
            if let Some(p) = data.get(OPENING_LEN..OPENING_LEN + 32) {
                proof.copy_from_slice(p);
            }
            assert!(l.finish(&proof).is_err(), "a forged proof passed");
        }
    }
    if let Some(r) = data.get(..REPLY_LEN) {
        let mut reply = [0u8; REPLY_LEN];
        reply.copy_from_slice(r);
        if let Ok(c) = Connector::start(&sec, StreamKind::Checkpoint) {
            assert!(c.finish(&reply).is_err(), "a forged reply passed");
        }
    }
    let key = [9u8; 32];
    let p = if encrypt {
        Protection::aead(&key)
    } else {
        Protection::mac(&key)
    };
    if let Ok((plain, _)) = Opener::new(p).open_buffer(data.get(1..).unwrap_or_default()) {
        assert!(plain.is_empty(), "a forged record passed");
    }
}

/// A frame from the first bytes (kind, epoch), the rest its payload: the message parsers run
/// on any payload (a checksum no longer stands in the way).
fn frame(data: &[u8]) -> Option<Frame> {
    let kind = *data.first()?;
    let epoch = data
        .get(1..9)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    Some(Frame {
        kind,
        flags: 0,
        epoch: Epoch(epoch % 64),
        payload: data.get(9..).unwrap_or_default().to_vec(),
    })
}

/// diskrep's replication messages.
pub fn diskrep_msg(data: &[u8]) {
    use diskrep::repl::msg::Msg;
    if let Some(f) = frame(data) {
        if let Ok(m) = Msg::decode(f) {
            // What parses, encodes and parses back the same.
            let again = wire::decode(&m.encode(), usize::MAX).ok().flatten();
            assert_eq!(again.and_then(|(f, _)| Msg::decode(f).ok()), Some(m));
        }
    }
}

/// checkpointd's stream messages, and the decoders of compressed pages and device state that
/// run on what they carry.
pub fn checkpointd_msg(data: &[u8]) {
    use checkpointd::compress::{decode, decode_device};
    use checkpointd::wire::Msg;
    let Some(f) = frame(data) else { return };
    match Msg::decode(f) {
        Ok(Msg::PagesZ { pages, .. }) => {
            let base = vec![0u8; checkpointd::ram::PAGE];
            for (_, e) in &pages {
                let _ = decode(e, &base);
            }
        }
        Ok(Msg::DeviceZ { z, .. }) => {
            let _ = decode_device(&z, &[1, 2, 3]);
        }
        _ => {}
    }
}

/// The control sockets' line protocol (requests and replies).
pub fn control(data: &[u8]) {
    use remus_proto::control::{Reply, Request};
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Ok(r) = Request::parse(line) {
            let _ = r.epoch_arg();
            let _ = r.wants_json();
            assert_eq!(Request::parse(&r.to_line()).ok(), Some(r));
        }
        if let Ok(r) = Reply::parse(line) {
            // Always exactly one line (a CR or LF inside the text becomes a space), and what
            // it says parses back to itself.
            let out = r.to_line();
            assert!(out.ends_with('\n') && !out[..out.len() - 1].contains(['\n', '\r']));
            let again = Reply::parse(&out).map(|r| r.to_line()).ok();
            assert_eq!(again.as_deref(), Some(out.as_str()));
        }
    }
}

/// The TOML configuration, its validation, and the command lines made from it: a value that
/// validates never smuggles a second argument into QEMU's or a daemon's command line.
pub fn config(data: &[u8]) {
    use remus::config::{Config, Role};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse(text) else { return };
    for role in [Role::Primary, Role::Backup] {
        if c.validate(role).is_ok() {
            for arg in c
                .qemu_primary()
                .iter()
                .chain(&c.diskrep_primary())
                .chain(&c.checkpointd_backup())
            {
                assert!(!arg.contains('\0'), "{arg:?}");
            }
        }
    }
}
