//! Records: every byte of an authenticated stream after the handshake.
//!
//! ```text
//! length u32 LE (of the body, at most MAX_RECORD) ‖ body ‖ tag
//! MAC mode:     body = plain bytes,  tag = HMAC-SHA256(k_dir, seq u64 LE ‖ length ‖ body) (32 bytes)
//! encrypt mode: body = ChaCha20 ciphertext, tag = Poly1305 (16 bytes);
//!               nonce = 0u32 ‖ seq u64 LE, associated data = length
//! ```
//! `seq` counts the records of one direction from 0 and is never sent: a record replayed,
//! reordered or dropped is checked against the wrong number and fails, as does one taken from
//! the other direction (its own key) or another connection (keys derived from its nonces).
//! Records split the byte stream anywhere; the frames inside (remus-proto wire) are parsed as
//! before from the bytes that passed.

use chacha20poly1305::aead::{AeadInOut, KeyInit as AeadKeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// Largest body of one record. A bigger write is split.
pub const MAX_RECORD: usize = 1 << 20;
pub const LEN_BYTES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds the limit of {MAX_RECORD}: forged or corrupt stream")]
    TooLong(usize),
    #[error("record {0} failed authentication: forged, replayed, reordered or corrupt (the connection is dropped)")]
    BadTag(u64),
}

impl From<RecordError> for std::io::Error {
    fn from(e: RecordError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// One direction's key, ready for use.
#[derive(Clone)]
pub enum Protection {
    Mac(hmac::Hmac<Sha256>),
    Aead(Box<ChaCha20Poly1305>),
}

impl Protection {
    pub fn mac(key: &[u8; 32]) -> Protection {
        Protection::Mac(
            <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC takes a key of any length"),
        )
    }

    pub fn aead(key: &[u8; 32]) -> Protection {
        Protection::Aead(Box::new(ChaCha20Poly1305::new(&(*key).into())))
    }

    pub fn tag_len(&self) -> usize {
        match self {
            Protection::Mac(_) => 32,
            Protection::Aead(_) => 16,
        }
    }
}

fn nonce(seq: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

fn mac_of(m: &hmac::Hmac<Sha256>, seq: u64, len: &[u8; 4], body: &[u8]) -> [u8; 32] {
    let mut m = m.clone();
    m.update(&seq.to_le_bytes());
    m.update(len);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// The sending direction.
pub struct Sealer {
    p: Protection,
    seq: u64,
}

impl Sealer {
    pub fn new(p: Protection) -> Sealer {
        Sealer { p, seq: 0 }
    }

    /// Appends one record holding `plain` to `out`. `plain` is at most [`MAX_RECORD`] bytes
    /// (callers split); returns the plain bytes taken.
    pub fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> usize {
        let plain = &plain[..plain.len().min(MAX_RECORD)];
        let len = (plain.len() as u32).to_le_bytes();
        out.reserve(LEN_BYTES + plain.len() + self.p.tag_len());
        out.extend_from_slice(&len);
        let body_at = out.len();
        out.extend_from_slice(plain);
        match &self.p {
            Protection::Mac(m) => {
                let tag = mac_of(m, self.seq, &len, plain);
                out.extend_from_slice(&tag);
            }
            Protection::Aead(c) => {
                let tag = c
                    .encrypt_inout_detached(&nonce(self.seq), &len, (&mut out[body_at..]).into())
                    .expect("a record is far below ChaCha20's limit");
                out.extend_from_slice(&tag);
            }
        }
        self.seq += 1;
        plain.len()
    }

    /// Every byte of `plain` in as many records as needed.
    pub fn seal_all(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut rest = plain;
        while !rest.is_empty() {
            let n = self.seal_into(rest, &mut out);
            rest = &rest[n..];
        }
        out
    }
}

/// The receiving direction.
pub struct Opener {
    p: Protection,
    seq: u64,
}

impl Opener {
    pub fn new(p: Protection) -> Opener {
        Opener { p, seq: 0 }
    }

    /// How many bytes follow a record's length word (body and tag), checked against the limit
    /// before anything is allocated.
    pub fn rest_len(&self, len: [u8; LEN_BYTES]) -> Result<usize, RecordError> {
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_RECORD {
            return Err(RecordError::TooLong(n));
        }
        Ok(n + self.p.tag_len())
    }

    /// Checks (and decrypts) one record: `rest` is what followed its length word. On success
    /// `rest` holds the plain bytes.
    pub fn open(&mut self, len: [u8; LEN_BYTES], rest: &mut Vec<u8>) -> Result<(), RecordError> {
        let n = self.rest_len(len)?;
        if rest.len() != n {
            return Err(RecordError::BadTag(self.seq));
        }
        let body_len = n - self.p.tag_len();
        let (body, tag) = rest.split_at_mut(body_len);
        let ok = match &self.p {
            Protection::Mac(m) => {
                let mut v = m.clone();
                v.update(&self.seq.to_le_bytes());
                v.update(&len);
                v.update(body);
                v.verify_slice(tag).is_ok()
            }
            Protection::Aead(c) => match chacha20poly1305::Tag::try_from(&*tag) {
                Ok(t) => c
                    .decrypt_inout_detached(&nonce(self.seq), &len, body.into(), &t)
                    .is_ok(),
                Err(_) => false,
            },
        };
        if !ok {
            return Err(RecordError::BadTag(self.seq));
        }
        rest.truncate(body_len);
        self.seq += 1;
        Ok(())
    }

    /// Decodes every whole record at the front of `buf` (the fuzzers' and tests' entry):
    /// returns the plain bytes and how many input bytes were used.
    pub fn open_buffer(&mut self, buf: &[u8]) -> Result<(Vec<u8>, usize), RecordError> {
        let mut plain = Vec::new();
        let mut at = 0;
        while let Some(lb) = buf.get(at..at + LEN_BYTES) {
            let len: [u8; LEN_BYTES] = [lb[0], lb[1], lb[2], lb[3]];
            let n = self.rest_len(len)?;
            let Some(rest) = buf.get(at + LEN_BYTES..at + LEN_BYTES + n) else {
                break;
            };
            let mut rest = rest.to_vec();
            self.open(len, &mut rest)?;
            plain.extend_from_slice(&rest);
            at += LEN_BYTES + n;
        }
        Ok((plain, at))
    }
}
