//! The activity log (DRBD's al-extents): the set of regions recorded durably, before a write to
//! them is issued, as possibly differing from the image's claimed state. Pure; the I/O shell
//! writes the set to the metadata file between [`ActivityLog::prepare`] and
//! [`ActivityLog::recorded`].
//!
//! A write whose regions are all in the recorded set goes ahead at once (the common case: the
//! guest keeps writing the same places). A write touching a region outside it waits for one
//! metadata write that adds the region. The set is kept in least-recently-used order and holds
//! up to `capacity` regions: when a region is added beyond that, the least recently used
//! regions that are *cold* (no write in flight, and the caller says their data is safe, i.e.
//! committed on a backup of the current lineage) are dropped in the same metadata write. So
//! clearing is lazy and metadata writes are rare; the capacity is a soft bound: regions that
//! are not cold are never dropped, however many there are (an activated backup with no backup
//! of its own keeps every region it writes).
//!
//! Invariants (property-tested): a region with a write in flight, or one whose data the caller
//! does not call safe, is in the set last written durably; each metadata write holds at most
//! `capacity` regions or only regions that are not cold.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

#[derive(Debug, Clone)]
pub struct ActivityLog {
    capacity: usize,
    /// Region → its last-use stamp; the regions in the durable set (or leaving it).
    recorded: HashMap<u64, u64>,
    /// Stamp → region, for least-recently-used order.
    by_use: BTreeMap<u64, u64>,
    next_stamp: u64,
    /// Region → writes in flight (issued, not yet reported to the dirty map).
    inflight: HashMap<u64, u32>,
    metadata_writes: u64,
}

/// What a write must do before it is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Every region it touches is recorded: issue it.
    Recorded,
    /// These regions must be recorded first ([`ActivityLog::prepare`], write, `recorded`).
    Missing(Vec<u64>),
}

impl ActivityLog {
    /// `initial`: the regions the metadata file holds (all kept: nothing is known about them).
    pub fn new(capacity: usize, initial: impl IntoIterator<Item = u64>) -> ActivityLog {
        let mut al = ActivityLog {
            capacity: capacity.max(1),
            recorded: HashMap::new(),
            by_use: BTreeMap::new(),
            next_stamp: 0,
            inflight: HashMap::new(),
            metadata_writes: 0,
        };
        for r in initial {
            al.touch(r);
        }
        al
    }

    fn touch(&mut self, r: u64) {
        let s = self.next_stamp;
        self.next_stamp += 1;
        if let Some(old) = self.recorded.insert(r, s) {
            self.by_use.remove(&old);
        }
        self.by_use.insert(s, r);
    }

    fn drop_region(&mut self, r: u64) {
        if let Some(s) = self.recorded.remove(&r) {
            self.by_use.remove(&s);
        }
    }

    /// A write to `regions` is about to be issued: counted in flight until [`Self::end`].
    pub fn begin(&mut self, regions: Range<u64>) -> Begin {
        let mut missing = Vec::new();
        for r in regions {
            *self.inflight.entry(r).or_insert(0) += 1;
            if self.recorded.contains_key(&r) {
                self.touch(r);
            } else {
                missing.push(r);
            }
        }
        if missing.is_empty() {
            Begin::Recorded
        } else {
            Begin::Missing(missing)
        }
    }

    /// The write is finished and reported to the dirty map (or failed and marked there).
    pub fn end(&mut self, regions: Range<u64>) {
        for r in regions {
            if let Some(n) = self.inflight.get_mut(&r) {
                *n -= 1;
                if *n == 0 {
                    self.inflight.remove(&r);
                }
            }
        }
    }

    /// Plans the metadata write that adds `add`: drops cold regions beyond the capacity (least
    /// recently used first; at once, which is safe: the durable set still has them until the
    /// write, and a write to them now waits for that write) and returns the set to write, or
    /// `None` if `add` is recorded by now (another write did it).
    pub fn prepare(&mut self, add: &[u64], cold: impl Fn(u64) -> bool) -> Option<Vec<u64>> {
        let add: Vec<u64> = add
            .iter()
            .copied()
            .filter(|r| !self.recorded.contains_key(r))
            .collect();
        if add.is_empty() {
            return None;
        }
        let mut excess = (self.recorded.len() + add.len()).saturating_sub(self.capacity);
        let mut evict = Vec::new();
        for (_, &r) in self.by_use.iter() {
            if excess == 0 {
                break;
            }
            if !self.inflight.contains_key(&r) && cold(r) {
                evict.push(r);
                excess -= 1;
            }
        }
        for r in evict {
            self.drop_region(r);
        }
        let mut set: Vec<u64> = self.recorded.keys().copied().chain(add).collect();
        set.sort_unstable();
        set.dedup();
        Some(set)
    }

    /// The metadata write holding `add` is durable.
    pub fn recorded(&mut self, add: &[u64]) {
        self.metadata_writes += 1;
        for &r in add {
            self.touch(r);
        }
    }

    /// The regions recorded (sorted).
    pub fn regions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.recorded.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn metadata_writes(&self) -> u64 {
        self.metadata_writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    #[derive(Debug, Clone)]
    enum Op {
        /// A write to regions [r, r+len) begins (recorded first if needed) and completes.
        Write(u64, u64),
        /// A write begins and stays in flight.
        Start(u64),
        /// The oldest write in flight completes.
        Finish,
        /// Every completed write so far becomes safe (its epoch commits).
        Commit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..40, 1u64..3).prop_map(|(r, l)| Op::Write(r, l)),
            1 => (0u64..40).prop_map(Op::Start),
            1 => Just(Op::Finish),
            2 => Just(Op::Commit),
        ]
    }

    proptest! {
        /// Whatever happens, a crash at any point finds every region that has a write in
        /// flight or not yet committed in the durable set; and the set never holds more than
        /// the capacity plus the regions that are not cold.
        #[test]
        fn durable_set_covers_everything_uncommitted(
            ops in prop::collection::vec(op(), 1..120), cap in 1usize..12
        ) {
            let mut al = ActivityLog::new(cap, []);
            let mut durable: BTreeSet<u64> = BTreeSet::new();
            let mut unsafe_regions: HashSet<u64> = HashSet::new();
            let mut flying: Vec<Range<u64>> = Vec::new();
            // Issues a write to `rs` the way the shell does; checks the bound at each metadata
            // write (clearing is lazy: between writes cold regions stay).
            let issue = |al: &mut ActivityLog, durable: &mut BTreeSet<u64>,
                         unsafe_regions: &HashSet<u64>, flying: &[Range<u64>], rs: Range<u64>| {
                if let Begin::Missing(m) = al.begin(rs.clone()) {
                    if let Some(set) = al.prepare(&m, |r| !unsafe_regions.contains(&r)) {
                        *durable = set.into_iter().collect();
                        al.recorded(&m);
                        let not_cold: HashSet<u64> = unsafe_regions.iter().copied()
                            .chain(flying.iter().flat_map(|f| f.clone()))
                            .chain(rs.clone()).collect();
                        assert!(durable.len() <= cap.max(not_cold.len()),
                            "{} regions written, capacity {cap}, {} not cold", durable.len(),
                            not_cold.len());
                    }
                }
                // The write is issued now: everything it touches must be durable.
                for r in rs {
                    assert!(durable.contains(&r), "region {r} issued unrecorded");
                }
            };
            for o in ops {
                match o {
                    Op::Write(r, l) => {
                        issue(&mut al, &mut durable, &unsafe_regions, &flying, r..r + l);
                        unsafe_regions.extend(r..r + l);
                        al.end(r..r + l);
                    }
                    Op::Start(r) => {
                        issue(&mut al, &mut durable, &unsafe_regions, &flying, r..r + 1);
                        flying.push(r..r + 1);
                    }
                    Op::Finish => {
                        if !flying.is_empty() {
                            let rs = flying.remove(0);
                            unsafe_regions.extend(rs.clone());
                            al.end(rs);
                        }
                    }
                    Op::Commit => unsafe_regions.clear(),
                }
                let in_flight: Vec<u64> = flying.iter().flat_map(|f| f.clone()).collect();
                for r in unsafe_regions.iter().chain(in_flight.iter()) {
                    prop_assert!(durable.contains(r), "crash now would miss region {}", r);
                }
            }
        }
    }

    #[test]
    fn a_working_set_within_capacity_costs_no_metadata_writes_once_warm() {
        let mut al = ActivityLog::new(8, []);
        let mut writes = 0;
        for round in 0..100u64 {
            for r in [1u64, 3, 5, 7] {
                if let Begin::Missing(m) = al.begin(r..r + 1) {
                    assert!(al.prepare(&m, |_| true).is_some());
                    al.recorded(&m);
                    writes += 1;
                }
                al.end(r..r + 1);
            }
            assert!(round > 0 || writes == 4);
        }
        assert_eq!(writes, 4);
        assert_eq!(al.metadata_writes(), 4);
        // A ninth region evicts the least recently used cold one, in the same write.
        let Begin::Missing(m) = al.begin(20..21) else {
            panic!("20 is new")
        };
        let set = al.prepare(&m, |_| true).unwrap();
        assert!(set.len() <= 8 && set.contains(&20));
    }

    #[test]
    fn nothing_is_dropped_while_not_cold() {
        let mut al = ActivityLog::new(2, [0, 1]);
        let Begin::Missing(m) = al.begin(5..8) else {
            panic!()
        };
        let set = al.prepare(&m, |_| false).unwrap();
        assert_eq!(set, vec![0, 1, 5, 6, 7]);
    }
}
