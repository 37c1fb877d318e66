//! Checkpoint page compression, as in the Remus paper: XOR a dirty page with its copy from the
//! previous checkpoint (most of a dirty page is usually unchanged, so the delta is mostly
//! zeroes), then LZ4 the delta. A page whose delta does not shrink is sent raw. Pure.
//!
//! The backup decodes against its restore image, which must hold exactly the previous
//! checkpoint: the base epoch travels with every compressed checkpoint and is checked, and the
//! primary only compresses at pipeline depth 1 (the previous checkpoint is acknowledged, hence
//! promoted on the backup, before the next one is taken).

use crate::ram::PAGE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// The page itself.
    Raw(Box<[u8]>),
    /// LZ4 (size-prepended block) of `new XOR base`.
    Xor(Vec<u8>),
}

impl Encoded {
    pub fn wire_len(&self) -> usize {
        match self {
            Encoded::Raw(p) => p.len(),
            Encoded::Xor(z) => z.len(),
        }
    }
}

pub fn encode(new: &[u8], base: &[u8]) -> Encoded {
    let mut delta = [0u8; PAGE];
    for ((d, a), b) in delta.iter_mut().zip(new).zip(base) {
        *d = a ^ b;
    }
    let z = lz4_flex::block::compress_prepend_size(&delta);
    if z.len() < PAGE * 3 / 4 {
        Encoded::Xor(z)
    } else {
        Encoded::Raw(Box::from(new))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt compressed page")]
pub struct Corrupt;

/// The largest device state a delta may decode to (the wire's frame limit).
pub const MAX_DEVICE: usize = 16 << 20;

/// The device state (which, carrying the firmware and ROM blocks, is mostly what it was at the
/// previous checkpoint) as LZ4 of `new XOR base`, `base` zero-extended or cut to `new`'s length.
pub fn encode_device(new: &[u8], base: &[u8]) -> Vec<u8> {
    let delta: Vec<u8> = new
        .iter()
        .enumerate()
        .map(|(i, a)| a ^ base.get(i).copied().unwrap_or(0))
        .collect();
    lz4_flex::block::compress_prepend_size(&delta)
}

pub fn decode_device(z: &[u8], base: &[u8]) -> Result<Vec<u8>, Corrupt> {
    let declared = z
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(Corrupt)?;
    if declared > MAX_DEVICE {
        return Err(Corrupt);
    }
    let delta = lz4_flex::block::decompress_size_prepended(z).map_err(|_| Corrupt)?;
    Ok(delta
        .iter()
        .enumerate()
        .map(|(i, d)| d ^ base.get(i).copied().unwrap_or(0))
        .collect())
}

/// Rebuilds the new page from its encoding and the base page.
pub fn decode(e: &Encoded, base: &[u8]) -> Result<Box<[u8]>, Corrupt> {
    match e {
        Encoded::Raw(p) if p.len() == PAGE => Ok(p.clone()),
        Encoded::Raw(_) => Err(Corrupt),
        Encoded::Xor(z) => {
            let delta = lz4_flex::block::decompress_size_prepended(z).map_err(|_| Corrupt)?;
            if delta.len() != PAGE || base.len() != PAGE {
                return Err(Corrupt);
            }
            Ok(delta.iter().zip(base).map(|(d, b)| d ^ b).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_state_deltas_round_trip_whatever_the_lengths() {
        let base: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut new = base.clone();
        new[1000] ^= 7;
        new.extend_from_slice(b"more");
        let z = encode_device(&new, &base);
        assert!(z.len() < 3000, "mostly unchanged: {} bytes", z.len());
        assert_eq!(decode_device(&z, &base).unwrap(), new);
        let shorter = &base[..1000];
        assert_eq!(
            decode_device(&encode_device(shorter, &base), &base).unwrap(),
            shorter
        );
        assert!(
            decode_device(&[0xff, 0xff, 0xff, 0x7f, 0], &base).is_err(),
            "too big"
        );
        assert!(decode_device(&[1, 2], &base).is_err());
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(base in proptest::collection::vec(any::<u8>(), PAGE..=PAGE),
                       edits in proptest::collection::vec((0usize..PAGE, any::<u8>()), 0..200)) {
            let mut new = base.clone();
            for (i, b) in edits { new[i] = b; }
            let e = encode(&new, &base);
            prop_assert_eq!(&decode(&e, &base).unwrap()[..], &new[..]);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(z in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Encoded::Xor(z), &[0u8; PAGE]);
        }
    }

    #[test]
    fn small_edits_compress_well() {
        let base = vec![7u8; PAGE];
        let mut new = base.clone();
        new[100] = 1;
        new[2000] = 2;
        let e = encode(&new, &base);
        assert!(matches!(e, Encoded::Xor(_)));
        assert!(e.wire_len() < 100, "{}", e.wire_len());
    }
}
