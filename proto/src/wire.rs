//! Framing for every primary↔backup stream (disk replication, checkpoints, heartbeats).
//!
//! ```text
//! offset size field
//!      0    4 magic    "RMUS"
//!      4    1 version  WIRE_VERSION
//!      5    1 kind     message type, defined by the stream's owner
//!      6    2 flags    per-kind flags
//!      8    8 epoch    the epoch the message belongs to
//!     16    4 length   payload bytes that follow the header
//!     20    4 crc32c   over header bytes 0..20 followed by the payload
//!     24    … payload
//! ```
//! All integers little-endian. A frame is accepted only whole: magic, version, a length within
//! the receiver's bound, and a matching checksum. Anything else is an error, never a guess.

use crate::epoch::Epoch;
use std::io::{self, Read, Write};

pub const MAGIC: [u8; 4] = *b"RMUS";
pub const WIRE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u16,
    pub epoch: Epoch,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:02x?}: not a remus stream")]
    BadMagic([u8; 4]),
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    BadVersion(u8),
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("frame checksum mismatch (got {got:08x}, computed {want:08x}): corrupt stream")]
    BadChecksum { got: u32, want: u32 },
}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn header(kind: u8, flags: u16, epoch: Epoch, len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = WIRE_VERSION;
    h[5] = kind;
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&epoch.0.to_le_bytes());
    h[16..20].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// Appends one frame to `out`. Panics only if the payload exceeds u32::MAX bytes, which no
/// caller can produce (every caller bounds its payloads far below that).
pub fn encode_into(out: &mut Vec<u8>, kind: u8, flags: u16, epoch: Epoch, payload: &[u8]) {
    assert!(payload.len() <= u32::MAX as usize, "payload too large");
    let h = header(kind, flags, epoch, payload.len());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h), payload);
    out.extend_from_slice(&h);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes a frame whose payload is the concatenation of `parts`, copying each byte once.
pub fn encode_parts(kind: u8, flags: u16, epoch: Epoch, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(len <= u32::MAX as usize, "payload too large");
    let h = header(kind, flags, epoch, len);
    let crc = parts
        .iter()
        .fold(crc32c::crc32c(&h), |c, p| crc32c::crc32c_append(c, p));
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&h);
    out.extend_from_slice(&crc.to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

pub fn encode(kind: u8, flags: u16, epoch: Epoch, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(&mut v, kind, flags, epoch, payload);
    v
}

/// The fixed header, parsed and bounds-checked but without the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u16,
    pub epoch: Epoch,
    pub len: usize,
    pub crc: u32,
    raw: [u8; 20],
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN], max_len: usize) -> Result<Header, WireError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&b[0..4]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[4] != WIRE_VERSION {
            return Err(WireError::BadVersion(b[4]));
        }
        let len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]) as usize;
        if len > max_len {
            return Err(WireError::TooLong { len, max: max_len });
        }
        let mut raw = [0u8; 20];
        raw.copy_from_slice(&b[0..20]);
        Ok(Header {
            kind: b[5],
            flags: u16::from_le_bytes([b[6], b[7]]),
            epoch: Epoch(u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]))),
            len,
            crc: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
            raw,
        })
    }

    /// Checks the payload against the header's checksum and builds the frame.
    pub fn finish(self, payload: Vec<u8>) -> Result<Frame, WireError> {
        let want = crc32c::crc32c_append(crc32c::crc32c(&self.raw), &payload);
        if want != self.crc {
            return Err(WireError::BadChecksum {
                got: self.crc,
                want,
            });
        }
        Ok(Frame {
            kind: self.kind,
            flags: self.flags,
            epoch: self.epoch,
            payload,
        })
    }
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: not enough bytes yet.
/// On success returns the frame and how many bytes it used.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(hb) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut hdr = [0u8; HEADER_LEN];
    hdr.copy_from_slice(hb);
    let h = Header::parse(&hdr, max_len)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + h.len) else {
        return Ok(None);
    };
    let f = h.finish(payload.to_vec())?;
    Ok(Some((f, HEADER_LEN + h.len)))
}

/// Reads exactly one frame from a blocking reader. `Ok(None)` on a clean end of stream before
/// any header byte; a stream that ends inside a frame is `UnexpectedEof`.
pub fn read_frame<R: Read>(r: &mut R, max_len: usize) -> io::Result<Option<Frame>> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let h = Header::parse(&hdr, max_len)?;
    let mut payload = vec![0u8; h.len];
    r.read_exact(&mut payload)?;
    Ok(Some(h.finish(payload)?))
}

pub fn write_frame<W: Write>(
    w: &mut W,
    kind: u8,
    flags: u16,
    epoch: Epoch,
    payload: &[u8],
) -> io::Result<()> {
    w.write_all(&encode(kind, flags, epoch, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_partial() {
        let f = encode(7, 3, Epoch(99), b"hello");
        assert_eq!(f.len(), HEADER_LEN + 5);
        for cut in 0..f.len() {
            assert_eq!(decode(&f[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let (frame, used) = decode(&f, 1024).unwrap().unwrap();
        assert_eq!(used, f.len());
        assert_eq!(
            frame,
            Frame {
                kind: 7,
                flags: 3,
                epoch: Epoch(99),
                payload: b"hello".to_vec()
            }
        );
        let mut r = &f[..];
        assert_eq!(read_frame(&mut r, 1024).unwrap(), Some(frame));
        assert_eq!(read_frame(&mut r, 1024).unwrap(), None);
        let mut short = &f[..f.len() - 1];
        assert!(read_frame(&mut short, 1024).is_err());
    }

    #[test]
    fn parts_encode_like_one_payload() {
        assert_eq!(
            encode_parts(3, 1, Epoch(5), &[b"ab", b"", b"cde"]),
            encode(3, 1, Epoch(5), b"abcde")
        );
    }

    #[test]
    fn rejects_oversize_magic_version() {
        let f = encode(1, 0, Epoch(1), &[0u8; 100]);
        assert!(matches!(decode(&f, 99), Err(WireError::TooLong { .. })));
        let mut g = f.clone();
        g[0] = b'X';
        assert!(matches!(decode(&g, 1000), Err(WireError::BadMagic(_))));
        let mut g = f.clone();
        g[4] = 2;
        assert!(matches!(decode(&g, 1000), Err(WireError::BadVersion(2))));
    }

    proptest! {
        /// Any single bit flip anywhere in a frame is detected (crc32c catches all 1-bit errors;
        /// a flip in magic/version/length is caught by those checks or by the checksum).
        #[test]
        fn every_bit_flip_is_caught(payload in proptest::collection::vec(any::<u8>(), 0..300),
                                    epoch: u64, kind: u8, flags: u16, bit in 0usize..10_000) {
            let f = encode(kind, flags, Epoch(epoch), &payload);
            let bit = bit % (f.len() * 8);
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            if let Ok(Some((frame, _))) = decode(&g, 1 << 20) {
                prop_assert!(false, "flip accepted: {:?}", frame);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 64);
        }
    }
}
