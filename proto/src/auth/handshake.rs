//! The handshake, as pure functions over fixed-size messages (the I/O shells are
//! [`super::blocking`] and [`super::nonblocking`]).
//!
//! ```text
//! connector (primary)                              listener (backup)
//!   OPENING  magic "RMAU", version, mode, stream, nonce_c       (40 bytes) →
//!         ← REPLY    magic, version, mode, stream, nonce_s, proof_s   (72 bytes)
//!   PROOF    proof_c                                            (32 bytes) →
//!
//! proof_s = HMAC-SHA256(key, "remus-auth 1 listener" ‖ OPENING ‖ REPLY[..40])
//! proof_c = HMAC-SHA256(key, "remus-auth 1 connector" ‖ OPENING ‖ REPLY[..40])
//! keys    = HKDF-SHA256(ikm = key, salt = nonce_c ‖ nonce_s,
//!                       info = "remus-auth 1 session" ‖ OPENING ‖ REPLY[..40])
//!           → 32 bytes connector→listener, 32 bytes listener→connector
//! ```
//! Each proof covers the other side's fresh nonce, so a recorded handshake proves nothing to a
//! later one; the role label differs, so a listener's proof is never a connector's; mode and
//! stream are inside, so neither can be altered in flight. Insecure mode: both nonces and the
//! proof are zero and no PROOF follows. A listener that disagrees on the mode still sends its
//! REPLY (with its own mode and no proof) so that the connector can say what to fix.

use super::key::Key;
use super::record::{Opener, Protection, Sealer};
use super::{Security, Session};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

pub const MAGIC: [u8; 4] = *b"RMAU";
pub const VERSION: u8 = 1;
pub const OPENING_LEN: usize = 40;
pub const REPLY_LEN: usize = 72;
pub const PROOF_LEN: usize = 32;
const NONCE_LEN: usize = 32;

/// Which replication stream a connection carries (part of every proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Disk = 1,
    Checkpoint = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Insecure = 0,
    Mac = 1,
    Encrypt = 2,
}

impl Mode {
    fn of(s: &Security) -> Mode {
        match s {
            Security::Insecure => Mode::Insecure,
            Security::Keyed { encrypt: false, .. } => Mode::Mac,
            Security::Keyed { encrypt: true, .. } => Mode::Encrypt,
        }
    }

    fn parse(b: u8) -> Option<Mode> {
        [Mode::Insecure, Mode::Mac, Mode::Encrypt]
            .into_iter()
            .find(|m| *m as u8 == b)
    }

    fn says(self) -> &'static str {
        match self {
            Mode::Insecure => "runs without authentication (--insecure-no-auth)",
            Mode::Mac => "authenticates without encryption",
            Mode::Encrypt => "authenticates and encrypts (encrypt = true)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a remus authentication handshake (got {0:02x?}): the peer is not a remus daemon of this version, or not one that authenticates")]
    NotAHandshake([u8; 4]),
    #[error("handshake version {0} (this build speaks {VERSION})")]
    Version(u8),
    #[error("the peer speaks the {0} stream on this port, not this one")]
    WrongStream(u16),
    #[error("the peer {peer} but this side {ours}: configure both sides alike")]
    ModeMismatch {
        peer: &'static str,
        ours: &'static str,
    },
    #[error("the peer's proof of the key is wrong: it holds a different key (or is not the peer it claims to be)")]
    BadProof,
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

impl From<HandshakeError> for std::io::Error {
    fn from(e: HandshakeError) -> std::io::Error {
        let kind = match e {
            HandshakeError::Random(_) => std::io::ErrorKind::Other,
            _ => std::io::ErrorKind::PermissionDenied,
        };
        std::io::Error::new(kind, e)
    }
}

struct Opening {
    mode: Mode,
    stream: u16,
}

fn encode_head(mode: Mode, stream: StreamKind, nonce: &[u8; NONCE_LEN]) -> [u8; OPENING_LEN] {
    let mut b = [0u8; OPENING_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = mode as u8;
    b[6..8].copy_from_slice(&(stream as u16).to_le_bytes());
    b[8..40].copy_from_slice(nonce);
    b
}

fn parse_head(b: &[u8]) -> Result<Opening, HandshakeError> {
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&b[0..4]);
    if magic != MAGIC {
        return Err(HandshakeError::NotAHandshake(magic));
    }
    if b[4] != VERSION {
        return Err(HandshakeError::Version(b[4]));
    }
    let mode = Mode::parse(b[5]).ok_or(HandshakeError::Version(b[4]))?;
    Ok(Opening {
        mode,
        stream: u16::from_le_bytes([b[6], b[7]]),
    })
}

fn check_stream(o: &Opening, stream: StreamKind) -> Result<(), HandshakeError> {
    if o.stream != stream as u16 {
        return Err(HandshakeError::WrongStream(o.stream));
    }
    Ok(())
}

fn fresh_nonce(mode: Mode) -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut n = [0u8; NONCE_LEN];
    if mode != Mode::Insecure {
        getrandom::fill(&mut n).map_err(|e| HandshakeError::Random(e.to_string()))?;
    }
    Ok(n)
}

fn proof(key: &Key, role: &str, opening: &[u8], reply_head: &[u8]) -> [u8; PROOF_LEN] {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
        .expect("HMAC takes a key of any length");
    m.update(b"remus-auth 1 ");
    m.update(role.as_bytes());
    m.update(opening);
    m.update(reply_head);
    m.finalize().into_bytes().into()
}

fn verify(want: &[u8; PROOF_LEN], got: &[u8]) -> Result<(), HandshakeError> {
    // Constant time: the comparison must not tell a forger how much of its guess was right.
    let diff = want.iter().zip(got).fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff != 0 || got.len() != PROOF_LEN {
        return Err(HandshakeError::BadProof);
    }
    Ok(())
}

/// The two directions' record protection, from the key and the transcript.
fn session(
    key: &Key,
    encrypt: bool,
    opening: &[u8],
    reply_head: &[u8],
    connector: bool,
) -> Session {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(&opening[8..40]);
    salt[NONCE_LEN..].copy_from_slice(&reply_head[8..40]);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), &key.0);
    let mut info = Vec::with_capacity(20 + OPENING_LEN * 2);
    info.extend_from_slice(b"remus-auth 1 session");
    info.extend_from_slice(opening);
    info.extend_from_slice(reply_head);
    let mut okm = [0u8; 64];
    hk.expand(&info, &mut okm)
        .expect("64 bytes is a valid HKDF-SHA256 length");
    let mut c2l = [0u8; 32];
    let mut l2c = [0u8; 32];
    c2l.copy_from_slice(&okm[..32]);
    l2c.copy_from_slice(&okm[32..]);
    let (send, recv) = if connector { (c2l, l2c) } else { (l2c, c2l) };
    let p = |k: [u8; 32]| {
        if encrypt {
            Protection::aead(&k)
        } else {
            Protection::mac(&k)
        }
    };
    Session {
        send: Sealer::new(p(send)),
        recv: Opener::new(p(recv)),
    }
}

/// The connector's side: [`Connector::start`] gives the OPENING to send; [`Connector::finish`]
/// checks the REPLY and gives the PROOF to send (none when insecure) and the session.
pub struct Connector {
    security: Security,
    stream: StreamKind,
    opening: [u8; OPENING_LEN],
}

impl Connector {
    pub fn start(security: &Security, stream: StreamKind) -> Result<Connector, HandshakeError> {
        let mode = Mode::of(security);
        let opening = encode_head(mode, stream, &fresh_nonce(mode)?);
        Ok(Connector {
            security: security.clone(),
            stream,
            opening,
        })
    }

    pub fn opening(&self) -> &[u8; OPENING_LEN] {
        &self.opening
    }

    #[allow(clippy::type_complexity)]
    pub fn finish(
        self,
        reply: &[u8; REPLY_LEN],
    ) -> Result<(Option<[u8; PROOF_LEN]>, Option<Session>), HandshakeError> {
        let r = parse_head(&reply[..OPENING_LEN])?;
        check_stream(&r, self.stream)?;
        let ours = Mode::of(&self.security);
        if r.mode != ours {
            return Err(HandshakeError::ModeMismatch {
                peer: r.mode.says(),
                ours: ours.says(),
            });
        }
        let Security::Keyed { key, encrypt } = &self.security else {
            return Ok((None, None));
        };
        let head = &reply[..OPENING_LEN];
        verify(
            &proof(key, "listener", &self.opening, head),
            &reply[OPENING_LEN..],
        )?;
        let mine = proof(key, "connector", &self.opening, head);
        Ok((
            Some(mine),
            Some(session(key, *encrypt, &self.opening, head, true)),
        ))
    }
}

/// The listener's side: [`Listener::reply`] answers an OPENING; if the modes agree and a key
/// is used, [`Listener::finish`] checks the connector's PROOF.
pub struct Listener {
    key: Key,
    encrypt: bool,
    opening: [u8; OPENING_LEN],
    head: [u8; OPENING_LEN],
}

/// What the listener does after its REPLY.
pub enum Next {
    /// Keyed: read the PROOF and call [`Listener::finish`].
    ReadProof(Listener),
    /// Both insecure: the stream starts now, unprotected.
    Insecure,
}

impl Listener {
    /// The REPLY to send, and what comes next. An error comes with the REPLY to send anyway
    /// (when there is one) so that the connector learns why it is refused.
    #[allow(clippy::type_complexity)]
    pub fn reply(
        security: &Security,
        stream: StreamKind,
        opening: &[u8; OPENING_LEN],
    ) -> Result<([u8; REPLY_LEN], Next), (HandshakeError, Option<[u8; REPLY_LEN]>)> {
        let o = parse_head(opening).map_err(|e| (e, None))?;
        let ours = Mode::of(security);
        let nonce = fresh_nonce(ours).map_err(|e| (e, None))?;
        let head = encode_head(ours, stream, &nonce);
        let mut reply = [0u8; REPLY_LEN];
        reply[..OPENING_LEN].copy_from_slice(&head);
        check_stream(&o, stream).map_err(|e| (e, Some(reply)))?;
        if o.mode != ours {
            return Err((
                HandshakeError::ModeMismatch {
                    peer: o.mode.says(),
                    ours: ours.says(),
                },
                Some(reply),
            ));
        }
        let Security::Keyed { key, encrypt } = security else {
            return Ok((reply, Next::Insecure));
        };
        reply[OPENING_LEN..].copy_from_slice(&proof(key, "listener", opening, &head));
        Ok((
            reply,
            Next::ReadProof(Listener {
                key: key.clone(),
                encrypt: *encrypt,
                opening: *opening,
                head,
            }),
        ))
    }

    pub fn finish(self, proof_c: &[u8; PROOF_LEN]) -> Result<Session, HandshakeError> {
        let want = proof(&self.key, "connector", &self.opening, &self.head);
        verify(&want, proof_c)?;
        Ok(session(
            &self.key,
            self.encrypt,
            &self.opening,
            &self.head,
            false,
        ))
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
