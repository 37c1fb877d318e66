//! The resync decision when a backup connects: which regions must be copied from the sender
//! (the primary, whose data wins) to the receiver (the backup). Pure.
//!
//! Partial only when both sides sent a claim and the claims meet ([`Claim::meets`]): the two
//! images then differ at most in the union of the suspect sets: the regions the sender wrote
//! since the common point (its activity log; for a backup activated by a failover, every
//! region it wrote since) and the receiver's (an old primary's activity log at its crash: the
//! writes of epochs that never committed, which the copy rolls back). Anything else is a full
//! sync, with the reason in words.

use super::claim::Claim;
use std::collections::BTreeSet;

/// One side's lineage as exchanged in the replication handshake.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineageView {
    /// None: the image holds no state anyone can name (never synchronised, mid-resync, or its
    /// metadata is missing or damaged).
    pub claim: Option<Claim>,
    /// Byte ranges (offset, length) that may differ from the claimed state.
    pub suspect: Vec<(u64, u64)>,
    /// Why there is no claim, for the full-sync message.
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Copy these regions (indices at the sender's region size).
    Partial {
        regions: BTreeSet<u64>,
        /// How many of them came from each side's suspect set (they may overlap).
        ours: u64,
        theirs: u64,
        claim: Claim,
    },
    Full {
        reason: String,
    },
}

impl Plan {
    /// One line for logs and status.
    pub fn describe(&self, region_size: u64, total_regions: u64) -> String {
        match self {
            Plan::Partial {
                regions,
                ours,
                theirs,
                claim,
            } => format!(
                "partial resync: {} of {total_regions} regions ({} bytes; {ours} written here \
                 since the common point, {theirs} suspect on the backup), common point: {claim}",
                regions.len(),
                regions.len() as u64 * region_size
            ),
            Plan::Full { reason } => format!("full sync: {reason}"),
        }
    }
}

/// Regions (of `region_size`, in a disk of `size` bytes) touched by byte ranges; ranges past
/// the end are cut at the end.
pub fn regions_of(ranges: &[(u64, u64)], region_size: u64, size: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let last = size.div_ceil(region_size);
    for &(off, len) in ranges {
        if len == 0 || off >= size {
            continue;
        }
        let end = off.saturating_add(len).min(size);
        let first = off / region_size;
        let past = end.div_ceil(region_size).min(last);
        out.extend(first..past);
    }
    out
}

/// The decision. `sender_regions` is the sender's suspect set at its own region size.
pub fn decide(
    sender: &LineageView,
    receiver: Option<&LineageView>,
    region_size: u64,
    size: u64,
) -> Plan {
    let Some(receiver) = receiver else {
        return Plan::Full {
            reason: "the backup sent no lineage (an older diskrep)".into(),
        };
    };
    let (s, r) = match (&sender.claim, &receiver.claim) {
        (None, None) => {
            return Plan::Full {
                reason: format!(
                    "neither image's lineage is known (this one: {}; the backup's: {})",
                    or_unknown(&sender.note),
                    or_unknown(&receiver.note)
                ),
            }
        }
        (None, _) => {
            return Plan::Full {
                reason: format!(
                    "this image's lineage is unknown ({})",
                    or_unknown(&sender.note)
                ),
            }
        }
        (_, None) => {
            return Plan::Full {
                reason: format!(
                    "the backup's lineage is unknown ({})",
                    or_unknown(&receiver.note)
                ),
            }
        }
        (Some(s), Some(r)) => (s, r),
    };
    if !s.meets(r) {
        let why = if s.lineage.id != r.lineage.id {
            "different lineages"
        } else {
            "no common epoch"
        };
        return Plan::Full {
            reason: format!("lineages do not meet ({why}): this image holds {s}, the backup {r}"),
        };
    }
    let ours = regions_of(&sender.suspect, region_size, size);
    let theirs = regions_of(&receiver.suspect, region_size, size);
    let (o, t) = (ours.len() as u64, theirs.len() as u64);
    let mut regions = ours;
    regions.extend(theirs);
    Plan::Partial {
        regions,
        ours: o,
        theirs: t,
        claim: *s,
    }
}

fn or_unknown(note: &str) -> &str {
    if note.is_empty() {
        "no metadata"
    } else {
        note
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::claim::{ClaimKind, LineageId};
    use proptest::prelude::*;

    const R: u64 = 4096;

    fn view(claim: Option<Claim>, suspect: &[u64]) -> LineageView {
        LineageView {
            claim,
            suspect: suspect.iter().map(|&i| (i * R, R)).collect(),
            note: String::new(),
        }
    }

    fn claim(id: u64, kind: ClaimKind, epoch: u64) -> Claim {
        Claim {
            lineage: LineageId { id, fence: None },
            kind,
            epoch,
        }
    }

    /// A model of two hosts: a primary writes regions in epochs, its backup commits a prefix of
    /// them, the primary crashes with later epochs uncommitted, the backup is activated and
    /// writes more. The partial plan must make the old primary's image equal to the new
    /// primary's when exactly the planned regions are copied.
    #[derive(Debug, Clone)]
    struct Story {
        /// Per epoch, the regions the first primary writes (values are (epoch, region) tags).
        epochs: Vec<Vec<u64>>,
        /// How many epochs the backup committed before the crash.
        committed: usize,
        /// How many of those the primary had heard acknowledged (and cleared lazily).
        acked: usize,
        /// Regions the activated backup writes.
        after: Vec<u64>,
    }

    fn story() -> impl Strategy<Value = Story> {
        (
            prop::collection::vec(prop::collection::vec(0u64..32, 0..5), 1..8),
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            prop::collection::vec(0u64..32, 0..6),
        )
            .prop_map(|(epochs, c, a, after)| {
                let committed = c.index(epochs.len() + 1);
                let acked = a.index(committed + 1);
                Story {
                    epochs,
                    committed,
                    acked,
                    after,
                }
            })
    }

    proptest! {
        #[test]
        fn partial_plan_converges_and_loses_nothing(s in story()) {
            let n = 32usize;
            let lineage = 7;
            // Images as arrays of "who wrote it last": 0 = the common start.
            let mut old_primary = vec![0u64; n];
            let mut backup = vec![0u64; n];
            let mut suspect_old = std::collections::BTreeSet::new();
            for (e, regions) in s.epochs.iter().enumerate() {
                for &r in regions {
                    old_primary[r as usize] = 1000 + e as u64;
                    // Recorded in the activity log before the write is issued; cleared only
                    // for regions whose newest write was acknowledged (lazily: here, never
                    // cleared unless acknowledged).
                    suspect_old.insert(r);
                }
                if e < s.committed {
                    for &r in regions {
                        backup[r as usize] = 1000 + e as u64;
                    }
                }
            }
            // Lazy clearing: a region whose newest write is in an acknowledged epoch may have
            // been dropped from the log.
            for r in 0..n as u64 {
                let newest = s.epochs.iter().rposition(|rs| rs.contains(&r));
                if newest.is_some_and(|e| e < s.acked) {
                    suspect_old.remove(&r);
                }
            }
            let old = view(
                Some(claim(lineage, ClaimKind::From, s.acked as u64)),
                &suspect_old.iter().copied().collect::<Vec<_>>(),
            );
            // The backup is activated at its committed epoch and writes more.
            let mut suspect_new = std::collections::BTreeSet::new();
            for &r in &s.after {
                backup[r as usize] = 9999;
                suspect_new.insert(r);
            }
            let new = view(
                Some(claim(lineage, ClaimKind::Exact, s.committed as u64)),
                &suspect_new.iter().copied().collect::<Vec<_>>(),
            );
            let plan = decide(&new, Some(&old), R, n as u64 * R);
            let Plan::Partial { regions, .. } = plan else {
                return Err(TestCaseError::fail(format!("expected partial, got {plan:?}")));
            };
            let mut rejoined = old_primary.clone();
            for r in &regions {
                rejoined[*r as usize] = backup[*r as usize];
            }
            // Identical: nothing the new primary has is lost, nothing uncommitted survives.
            prop_assert_eq!(&rejoined, &backup);
            // And no bigger than the two suspect sets.
            prop_assert!(regions.len() <= suspect_old.len() + suspect_new.len());
        }

        #[test]
        fn regions_of_covers_every_byte(off in 0u64..100_000, len in 0u64..50_000) {
            let size = 80_000;
            let set = regions_of(&[(off, len)], R, size);
            for b in (off..off.saturating_add(len).min(size)).step_by(97) {
                prop_assert!(set.contains(&(b / R)));
            }
            prop_assert!(set.iter().all(|&i| i < size.div_ceil(R)));
        }
    }

    #[test]
    fn unknown_or_mismatched_lineage_is_a_full_sync() {
        let a = view(Some(claim(1, ClaimKind::Exact, 5)), &[1]);
        let none = LineageView {
            claim: None,
            suspect: vec![],
            note: "mid-resync".into(),
        };
        let other = view(Some(claim(2, ClaimKind::From, 5)), &[]);
        let later = view(Some(claim(1, ClaimKind::From, 6)), &[]);
        for (r, want) in [
            (Some(&none), "the backup's lineage is unknown (mid-resync)"),
            (None, "no lineage"),
            (Some(&other), "different lineages"),
            (Some(&later), "no common epoch"),
        ] {
            match decide(&a, r, R, 10 * R) {
                Plan::Full { reason } => assert!(reason.contains(want), "{reason}"),
                p => panic!("expected a full sync, got {p:?}"),
            }
        }
        match decide(&none, Some(&a), R, 10 * R) {
            Plan::Full { reason } => assert!(reason.contains("this image's lineage is unknown")),
            p => panic!("{p:?}"),
        }
    }
}
