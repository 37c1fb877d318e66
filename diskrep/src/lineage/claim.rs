//! Lineage identifiers and claims. Pure.
//!
//! A lineage is one run of epoch numbers on one primary: it begins when a primary starts with
//! a new identity (`diskrep primary`) or when a backup is activated. Its identifier is random
//! (two hosts never make the same one, even without a witness) and records the witness'
//! generation number when remus passed it (`--generation`, `activate generation=N`), which is
//! how the disk lineage is tied to the fencing generation in etcd.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageId {
    /// Random; the only part compared.
    pub id: u64,
    /// The witness' generation number this lineage ran under, when known.
    #[serde(default)]
    pub fence: Option<u64>,
}

impl LineageId {
    /// A fresh identifier. The randomness comes from std's `RandomState`, whose keys are drawn
    /// from the operating system's random source once per process and then incremented: mixed
    /// with the time and the process id that is unique enough for an identifier (not a secret),
    /// without adding a dependency.
    pub fn fresh(fence: Option<u64>) -> LineageId {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(d.as_nanos());
        }
        LineageId {
            id: h.finish(),
            fence,
        }
    }
}

impl std::fmt::Display for LineageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.id)?;
        if let Some(n) = self.fence {
            write!(f, " (generation {n})")?;
        }
        Ok(())
    }
}

/// Which epochs of the lineage the image (outside its suspect set) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// Exactly the state at `epoch`: an activated backup (its commits stopped there).
    Exact,
    /// The state at every epoch from `epoch` on: a primary, whose writes of later epochs are
    /// all in its suspect set (`epoch` is the newest the backup acknowledged).
    From,
    /// The state at one epoch, unknown, not before `epoch`: a backup, which commits without
    /// rewriting its metadata each time.
    Unknown,
}

/// "Outside my suspect set I hold lineage `lineage` at `epoch` (in the sense of `kind`)."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub lineage: LineageId,
    pub kind: ClaimKind,
    pub epoch: u64,
}

impl Claim {
    /// Whether some epoch M is certainly held by both images (each outside its suspect set).
    /// If so, they differ at most in the union of their suspect sets. Symmetric.
    pub fn meets(&self, other: &Claim) -> bool {
        use ClaimKind::*;
        if self.lineage.id != other.lineage.id {
            return false;
        }
        let (a, b) = (self, other);
        match (a.kind, b.kind) {
            (Exact, Exact) => a.epoch == b.epoch,
            (Exact, From) => a.epoch >= b.epoch,
            (From, Exact) => b.epoch >= a.epoch,
            (From, From) => true,
            // One unknown epoch ≥ e is certainly inside [f, ∞) iff e ≥ f.
            (Unknown, From) => a.epoch >= b.epoch,
            (From, Unknown) => b.epoch >= a.epoch,
            // An unknown epoch cannot be shown equal to an exact one or another unknown one.
            (Unknown, _) | (_, Unknown) => false,
        }
    }
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            ClaimKind::Exact => "exactly at",
            ClaimKind::From => "at every epoch from",
            ClaimKind::Unknown => "at some epoch from",
        };
        write!(f, "lineage {} {k} {}", self.lineage, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = ClaimKind> {
        prop_oneof![
            Just(ClaimKind::Exact),
            Just(ClaimKind::From),
            Just(ClaimKind::Unknown)
        ]
    }

    /// The epochs a claim certainly holds, within 0..=N: `None` for "one unknown point".
    fn certain(c: &Claim, n: u64) -> Option<Vec<u64>> {
        match c.kind {
            ClaimKind::Exact => Some(vec![c.epoch]),
            ClaimKind::From => Some((c.epoch..=n).collect()),
            ClaimKind::Unknown => None,
        }
    }

    /// The possible epochs of a claim, within 0..=N.
    fn possible(c: &Claim, n: u64) -> Vec<u64> {
        match c.kind {
            ClaimKind::Exact => vec![c.epoch],
            ClaimKind::From | ClaimKind::Unknown => (c.epoch..=n).collect(),
        }
    }

    proptest! {
        /// `meets` is true exactly when, whatever the unknown epochs are, both images hold a
        /// common epoch (checked by enumeration over a bounded range).
        #[test]
        fn meets_means_a_common_epoch_for_every_unknown(
            ka in kind(), kb in kind(), ea in 0u64..8, eb in 0u64..8, same in any::<bool>()
        ) {
            let n = 20;
            let la = LineageId { id: 1, fence: None };
            let lb = LineageId { id: if same { 1 } else { 2 }, fence: Some(3) };
            let a = Claim { lineage: la, kind: ka, epoch: ea };
            let b = Claim { lineage: lb, kind: kb, epoch: eb };
            let sound = same && match (certain(&a, n), certain(&b, n)) {
                (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
                // Every possible value of the unknown must be held by the other.
                (None, Some(y)) => possible(&a, n).iter().all(|m| y.contains(m)),
                (Some(x), None) => possible(&b, n).iter().all(|m| x.contains(m)),
                (None, None) => false,
            };
            // The bounded range cuts "From" short: a From whose epoch is past an Unknown's
            // range end is decided by the formula; keep the bound well above the epochs.
            prop_assert_eq!(a.meets(&b), sound);
            prop_assert_eq!(a.meets(&b), b.meets(&a));
        }
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(LineageId::fresh(None).id, LineageId::fresh(None).id);
    }
}
