use super::*;
use crate::auth::record::{Opener, Sealer};
use proptest::prelude::*;

fn keyed(encrypt: bool) -> Security {
    Security::Keyed {
        key: Key::generate().unwrap(),
        encrypt,
    }
}

fn with_key(s: &Security, key: Key) -> Security {
    match s {
        Security::Keyed { encrypt, .. } => Security::Keyed {
            key,
            encrypt: *encrypt,
        },
        Security::Insecure => Security::Insecure,
    }
}

/// A full exchange; returns (connector's session, listener's session).
fn run(
    c: &Security,
    l: &Security,
    stream: StreamKind,
) -> Result<(Option<Session>, Option<Session>), HandshakeError> {
    let con = Connector::start(c, stream)?;
    let (reply, next) = Listener::reply(l, stream, con.opening()).map_err(|(e, _)| e)?;
    let (proof, cs) = con.finish(&reply)?;
    match next {
        Next::Insecure => Ok((cs, None)),
        Next::ReadProof(lis) => {
            let ls = lis.finish(&proof.expect("keyed connector proves"))?;
            Ok((cs, Some(ls)))
        }
    }
}

fn talk(a: &mut Sealer, b: &mut Opener, msg: &[u8]) {
    let rec = a.seal_all(msg);
    let (plain, used) = b.open_buffer(&rec).unwrap();
    assert_eq!(used, rec.len());
    assert_eq!(plain, msg);
}

#[test]
fn same_key_both_ways_and_both_modes() {
    for encrypt in [false, true] {
        let s = keyed(encrypt);
        let (c, l) = run(&s, &s, StreamKind::Disk).unwrap();
        let (mut c, mut l) = (c.unwrap(), l.unwrap());
        talk(&mut c.send, &mut l.recv, b"hello from the primary");
        talk(&mut l.send, &mut c.recv, b"ack");
        talk(&mut c.send, &mut l.recv, &vec![7u8; 3 << 20]);
        let rec = c.send.seal_all(b"secret-bytes");
        let visible = rec.windows(12).any(|w| w == b"secret-bytes");
        assert_eq!(visible, !encrypt, "encrypt={encrypt}");
    }
}

#[test]
fn wrong_key_is_refused_on_both_sides() {
    let a = keyed(false);
    let b = with_key(&a, Key::generate().unwrap());
    // The connector checks the listener's proof first.
    assert_eq!(
        run(&a, &b, StreamKind::Disk).err(),
        Some(HandshakeError::BadProof)
    );
    // A connector that does not check (a forger) still cannot produce the listener's proof.
    let con = Connector::start(&b, StreamKind::Disk).unwrap();
    let (_, next) = Listener::reply(&a, StreamKind::Disk, con.opening())
        .map_err(|(e, _)| e)
        .unwrap();
    let Next::ReadProof(lis) = next else { panic!() };
    let forged = proof(
        &Key::generate().unwrap(),
        "connector",
        con.opening(),
        &[0; 40],
    );
    assert_eq!(lis.finish(&forged).err(), Some(HandshakeError::BadProof));
}

#[test]
fn a_recorded_handshake_replayed_is_refused() {
    let s = keyed(false);
    let con = Connector::start(&s, StreamKind::Checkpoint).unwrap();
    let opening = *con.opening();
    let (reply, _) = Listener::reply(&s, StreamKind::Checkpoint, &opening)
        .map_err(|(e, _)| e)
        .unwrap();
    let (recorded_proof, _) = con.finish(&reply).unwrap();
    // The same opening and proof against a new listener: its fresh nonce defeats it.
    let (_, next) = Listener::reply(&s, StreamKind::Checkpoint, &opening)
        .map_err(|(e, _)| e)
        .unwrap();
    let Next::ReadProof(lis) = next else { panic!() };
    assert_eq!(
        lis.finish(&recorded_proof.unwrap()).err(),
        Some(HandshakeError::BadProof)
    );
}

#[test]
fn the_listeners_own_proof_reflected_is_refused() {
    let s = keyed(false);
    let con = Connector::start(&s, StreamKind::Disk).unwrap();
    let (reply, next) = Listener::reply(&s, StreamKind::Disk, con.opening())
        .map_err(|(e, _)| e)
        .unwrap();
    let Next::ReadProof(lis) = next else { panic!() };
    let mut reflected = [0u8; PROOF_LEN];
    reflected.copy_from_slice(&reply[OPENING_LEN..]);
    assert_eq!(lis.finish(&reflected).err(), Some(HandshakeError::BadProof));
}

#[test]
fn mismatches_are_explained() {
    let k = keyed(false);
    let e = keyed(true);
    let e = with_key(
        &e,
        match &k {
            Security::Keyed { key, .. } => key.clone(),
            _ => unreachable!(),
        },
    );
    for (c, l) in [
        (&k, &Security::Insecure),
        (&Security::Insecure, &k),
        (&k, &e),
        (&e, &k),
    ] {
        assert!(matches!(
            run(c, l, StreamKind::Disk),
            Err(HandshakeError::ModeMismatch { .. })
        ));
    }
    assert!(matches!(
        run(&k, &k, StreamKind::Disk).map(|_| ()).and_then(|_| {
            let con = Connector::start(&k, StreamKind::Disk)?;
            Listener::reply(&k, StreamKind::Checkpoint, con.opening())
                .map(|_| ())
                .map_err(|(e, _)| e)
        }),
        Err(HandshakeError::WrongStream(1))
    ));
    let (c, l) = run(&Security::Insecure, &Security::Insecure, StreamKind::Disk).unwrap();
    assert!(c.is_none() && l.is_none());
    // A peer that does not speak the handshake at all (an old primary's frame header).
    let mut old = [0u8; OPENING_LEN];
    old[..4].copy_from_slice(b"RMUS");
    assert!(matches!(
        Listener::reply(&k, StreamKind::Disk, &old),
        Err((HandshakeError::NotAHandshake(_), None))
    ));
}

proptest! {
    /// Any record tampered with, replayed, reordered, dropped or sent back the other way is
    /// refused; untouched ones pass.
    #[test]
    fn records_cannot_be_forged_replayed_or_reordered(
        encrypt: bool,
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 2..5),
        bit in 0usize..100_000,
        which in 0usize..4,
    ) {
        let s = keyed(encrypt);
        let (c, l) = run(&s, &s, StreamKind::Disk).unwrap();
        let (mut c, mut l) = (c.unwrap(), l.unwrap());
        let recs: Vec<Vec<u8>> = msgs.iter().map(|m| {
            let mut out = Vec::new();
            c.send.seal_into(m, &mut out);
            out
        }).collect();
        match which {
            0 => {
                // One bit flipped in the second record.
                let mut r = recs[1].clone();
                let b = bit % (r.len() * 8);
                r[b / 8] ^= 1 << (b % 8);
                prop_assert!(l.recv.open_buffer(&recs[0]).is_ok());
                // Refused, or (a longer length) still waiting for bytes: never accepted.
                let accepted = matches!(l.recv.open_buffer(&r), Ok((_, used)) if used > 0);
                prop_assert!(!accepted);
            }
            1 => {
                // Replay the first record in place of the second.
                prop_assert!(l.recv.open_buffer(&recs[0]).is_ok());
                prop_assert!(l.recv.open_buffer(&recs[0]).is_err());
            }
            2 => {
                // The second record dropped (or the two swapped).
                prop_assert!(l.recv.open_buffer(&recs[1]).is_err());
            }
            _ => {
                // A record of this direction reflected to its sender.
                prop_assert!(c.recv.open_buffer(&recs[0]).is_err());
            }
        }
    }

    #[test]
    fn opening_and_reply_parsing_never_panic(bytes in proptest::collection::vec(any::<u8>(), OPENING_LEN..=REPLY_LEN)) {
        let s = keyed(false);
        let mut o = [0u8; OPENING_LEN];
        o.copy_from_slice(&bytes[..OPENING_LEN]);
        let _ = Listener::reply(&s, StreamKind::Disk, &o);
        let mut r = [0u8; REPLY_LEN];
        r[..bytes.len()].copy_from_slice(&bytes);
        let con = Connector::start(&s, StreamKind::Disk).unwrap();
        prop_assert!(con.finish(&r).is_err());
    }
}
