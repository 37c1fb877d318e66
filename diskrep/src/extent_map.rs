//! `ExtentMap`: the writes of one epoch, keyed by offset, where a later write wins over any
//! earlier bytes it overlaps. Pure; property-tested against a flat byte array.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Bytes(Vec<u8>),
    /// A run of zeroes (WRITE_ZEROES or TRIM) of this many bytes.
    Zero(u64),
}

impl Data {
    pub fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory this piece holds.
    fn mem(&self) -> usize {
        match self {
            Data::Bytes(b) => b.len(),
            Data::Zero(_) => 0,
        }
    }

    /// The part [from, to) of this piece (offsets relative to its start).
    fn slice(&self, from: u64, to: u64) -> Data {
        match self {
            Data::Bytes(b) => Data::Bytes(b[from as usize..to as usize].to_vec()),
            Data::Zero(_) => Data::Zero(to - from),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    map: BTreeMap<u64, Data>,
    mem: usize,
}

impl ExtentMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of write data held (zero runs cost nothing).
    pub fn mem(&self) -> usize {
        self.mem
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Data)> {
        self.map.iter().map(|(o, d)| (*o, d))
    }

    /// Records `data` at `offset`, replacing whatever it overlaps.
    pub fn insert(&mut self, offset: u64, data: Data) {
        let end = offset + data.len();
        if data.is_empty() {
            return;
        }
        // Overlapping extents: the one starting before `offset` (if it reaches past it) and
        // every one starting inside [offset, end).
        let mut hit: Vec<u64> = Vec::new();
        if let Some((&s, d)) = self.map.range(..offset).next_back() {
            if s + d.len() > offset {
                hit.push(s);
            }
        }
        hit.extend(self.map.range(offset..end).map(|(&s, _)| s));
        for s in hit {
            let Some(old) = self.map.remove(&s) else {
                continue;
            };
            self.mem -= old.mem();
            let e = s + old.len();
            if s < offset {
                let left = old.slice(0, offset - s);
                self.mem += left.mem();
                self.map.insert(s, left);
            }
            if e > end {
                let right = old.slice(end - s, e - s);
                self.mem += right.mem();
                self.map.insert(end, right);
            }
        }
        self.mem += data.mem();
        self.map.insert(offset, data);
    }

    /// Consumes the map, yielding (offset, data) in offset order.
    pub fn into_extents(self) -> impl Iterator<Item = (u64, Data)> {
        self.map.into_iter()
    }

    /// Overlays `later` on top of this map (for merging consecutive epochs).
    pub fn merge(&mut self, later: ExtentMap) {
        for (o, d) in later.map {
            self.insert(o, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(img: &mut [u8], m: &ExtentMap) {
        for (o, d) in m.iter() {
            let o = o as usize;
            match d {
                Data::Bytes(b) => img[o..o + b.len()].copy_from_slice(b),
                Data::Zero(n) => img[o..o + *n as usize].fill(0),
            }
        }
    }

    proptest! {
        /// Applying the map equals applying every write in order; extents never overlap; the
        /// memory count is exact.
        #[test]
        fn later_writes_win(ops in proptest::collection::vec(
            (0u64..200, 1u64..60, any::<u8>(), any::<bool>()), 0..60)) {
            let mut model = vec![0xAAu8; 300];
            let mut m = ExtentMap::new();
            for (off, len, byte, zero) in ops {
                let d = if zero { Data::Zero(len) } else { Data::Bytes(vec![byte; len as usize]) };
                let (o, l) = (off as usize, len as usize);
                if zero { model[o..o + l].fill(0) } else { model[o..o + l].fill(byte) }
                m.insert(off, d);
            }
            let mut img = vec![0xAAu8; 300];
            apply(&mut img, &m);
            prop_assert_eq!(&img, &model);
            let mut last_end = 0;
            let mut mem = 0;
            for (o, d) in m.iter() {
                prop_assert!(o >= last_end, "overlap at {}", o);
                last_end = o + d.len();
                mem += d.mem();
            }
            prop_assert_eq!(mem, m.mem());
        }
    }
}
