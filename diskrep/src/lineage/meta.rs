//! The metadata kept beside an image, and its text form: one header line
//! `remus-diskrep-lineage 1 crc32c=XXXXXXXX` then JSON. The checksum covers the JSON, so a torn
//! or damaged file is recognised as such (and means "lineage unknown": a full sync), never
//! taken for a valid record. Pure.

use super::claim::{Claim, LineageId};
use serde::{Deserialize, Serialize};

const MAGIC: &str = "remus-diskrep-lineage 1";
/// Generations kept in the history (oldest dropped first).
pub const HISTORY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaRole {
    /// Serving and (when a backup is attached) replicating: its own lineage.
    Primary,
    /// Receiving a primary's stream.
    Backup,
    /// A backup activated by a failover: serving, a new lineage.
    Activated,
}

/// One generation this image lived through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub lineage: LineageId,
    pub role: MetaRole,
    /// The claim the image held when it entered this generation.
    pub from: Option<Claim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMeta {
    pub size: u64,
    pub region_size: u64,
    pub role: MetaRole,
    /// The lineage the image is written in (primary, activated) or follows (backup).
    pub current: Option<LineageId>,
    /// What the image holds outside `suspect`; `None` with the reason in `note`.
    pub claim: Option<Claim>,
    #[serde(default)]
    pub note: String,
    /// Runs (first region, count) of the activity log: regions that may differ from the claim.
    pub suspect: Vec<(u64, u64)>,
    /// Newest last, at most [`HISTORY`].
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("not a lineage file (no '{MAGIC}' header)")]
    Header,
    #[error("checksum mismatch (torn or damaged file)")]
    Checksum,
    #[error("malformed record: {0}")]
    Json(String),
    #[error("region runs out of range or unsorted")]
    Runs,
}

impl DiskMeta {
    pub fn new(size: u64, region_size: u64, role: MetaRole) -> DiskMeta {
        DiskMeta {
            size,
            region_size,
            role,
            current: None,
            claim: None,
            note: "never synchronised".into(),
            suspect: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Enters a new generation (appended to the history, the oldest dropped beyond
    /// [`HISTORY`]).
    pub fn enter(&mut self, lineage: LineageId, role: MetaRole) {
        self.current = Some(lineage);
        self.role = role;
        self.history.push(HistoryEntry {
            lineage,
            role,
            from: self.claim,
        });
        if self.history.len() > HISTORY {
            let cut = self.history.len() - HISTORY;
            self.history.drain(..cut);
        }
    }

    /// The claim is lost (a resync is about to write the image): `note` says why.
    pub fn forget(&mut self, note: impl Into<String>) {
        self.claim = None;
        self.note = note.into();
        self.suspect.clear();
    }

    pub fn set_suspect(&mut self, regions: &[u64]) {
        self.suspect = to_runs(regions);
    }

    /// The activity log's regions, checked against the disk's size.
    pub fn suspect_regions(&self) -> Result<Vec<u64>, MetaError> {
        from_runs(&self.suspect, self.size.div_ceil(self.region_size.max(1)))
    }

    /// The activity log as byte ranges.
    pub fn suspect_bytes(&self) -> Vec<(u64, u64)> {
        self.suspect
            .iter()
            .map(|&(first, n)| {
                let off = first.saturating_mul(self.region_size);
                (off, n.saturating_mul(self.region_size))
            })
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data (numbers, strings, enums) always serialises.
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let mut out = format!("{MAGIC} crc32c={:08x}\n", crc32c::crc32c(&body)).into_bytes();
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DiskMeta, MetaError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(MetaError::Header)?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| MetaError::Header)?;
        let body = &bytes[nl + 1..];
        // The header must be exactly the one `encode` writes (lower-case hex: an upper-case
        // digit would parse to the same number, hiding a flipped bit).
        let crc = header
            .strip_prefix(MAGIC)
            .and_then(|r| r.strip_prefix(" crc32c="))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(MetaError::Header)?;
        if header != format!("{MAGIC} crc32c={crc:08x}") {
            return Err(MetaError::Header);
        }
        if crc32c::crc32c(body) != crc {
            return Err(MetaError::Checksum);
        }
        let m: DiskMeta =
            serde_json::from_slice(body).map_err(|e| MetaError::Json(e.to_string()))?;
        if m.region_size == 0 || !m.region_size.is_power_of_two() {
            return Err(MetaError::Json(format!("region size {}", m.region_size)));
        }
        m.suspect_regions()?;
        Ok(m)
    }
}

/// Sorted, deduplicated regions → runs (first, count).
pub fn to_runs(regions: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &r in regions {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == r => *n += 1,
            Some((first, n)) if r < *first + *n => {}
            _ => runs.push((r, 1)),
        }
    }
    runs
}

/// Runs → regions; every run must lie below `limit` and follow the previous one.
pub fn from_runs(runs: &[(u64, u64)], limit: u64) -> Result<Vec<u64>, MetaError> {
    let mut out = Vec::new();
    let mut next = 0u64;
    for &(first, n) in runs {
        let end = first.checked_add(n).ok_or(MetaError::Runs)?;
        if n == 0 || first < next || end > limit {
            return Err(MetaError::Runs);
        }
        out.extend(first..end);
        next = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::claim::ClaimKind;
    use proptest::prelude::*;

    fn sample() -> DiskMeta {
        let mut m = DiskMeta::new(1 << 30, 1 << 20, MetaRole::Primary);
        let l = LineageId {
            id: 0xfeed,
            fence: Some(4),
        };
        m.enter(l, MetaRole::Primary);
        m.claim = Some(Claim {
            lineage: l,
            kind: ClaimKind::From,
            epoch: 17,
        });
        m.set_suspect(&[1, 2, 3, 9, 1000]);
        m
    }

    #[test]
    fn round_trip_and_runs() {
        let m = sample();
        assert_eq!(m.suspect, vec![(1, 3), (9, 1), (1000, 1)]);
        assert_eq!(DiskMeta::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.suspect_regions().unwrap(), vec![1, 2, 3, 9, 1000]);
    }

    #[test]
    fn history_is_bounded() {
        let mut m = sample();
        for i in 0..100 {
            m.enter(LineageId { id: i, fence: None }, MetaRole::Backup);
        }
        assert_eq!(m.history.len(), HISTORY);
        assert_eq!(m.history.last().unwrap().lineage.id, 99);
    }

    #[test]
    fn runs_out_of_range_are_refused() {
        let mut m = sample();
        m.suspect = vec![(1023, 2)];
        assert_eq!(DiskMeta::decode(&m.encode()), Err(MetaError::Runs));
        m.suspect = vec![(5, 1), (2, 1)];
        assert_eq!(DiskMeta::decode(&m.encode()), Err(MetaError::Runs));
        m.suspect = vec![(u64::MAX, 2)];
        assert_eq!(DiskMeta::decode(&m.encode()), Err(MetaError::Runs));
    }

    proptest! {
        /// Any damage to the file (a flipped byte, a cut) is detected, never read as a record.
        #[test]
        fn damage_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<bool>()) {
            let bytes = sample().encode();
            let mut bad = bytes.clone();
            let i = pos.index(bytes.len());
            if cut {
                bad.truncate(i);
            } else {
                bad[i] ^= 1 << bit;
            }
            prop_assert!(DiskMeta::decode(&bad).is_err());
        }

        #[test]
        fn runs_round_trip(mut v in prop::collection::vec(0u64..500, 0..100)) {
            v.sort_unstable();
            v.dedup();
            prop_assert_eq!(from_runs(&to_runs(&v), 500).unwrap(), v);
        }
    }
}
