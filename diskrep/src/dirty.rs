//! `DirtyMap`: the primary's record of what the backup does not have (DRBD-style resync
//! tracking). The disk is split into fixed regions; each remembers the newest epoch that wrote
//! it and that the backup has not acknowledged, or `UNPROTECTED` if it was written while no
//! backup was attached. An acknowledgement of epoch N clears every region whose newest write is
//! ≤ N; an unprotected write is only cleared by resynchronising that region.
//!
//! It also remembers, per region, the newest epoch that ever wrote it in this process (kept
//! after acknowledgement), so that a backup holding some epoch E of this lineage is brought up
//! to date from exactly the regions written after E. Pure.

use remus_proto::Epoch;

/// Marks a region written while unprotected: no acknowledgement can clear it.
pub const UNPROTECTED: u64 = u64::MAX;
const CLEAN: u64 = u64::MAX - 1;

#[derive(Debug, Clone)]
pub struct DirtyMap {
    region: u64,
    size: u64,
    /// Per region: CLEAN, UNPROTECTED, or the newest unacknowledged epoch that wrote it.
    epochs: Vec<u64>,
    dirty: usize,
    /// Per region: 0 if never written in this process, else the newest epoch that wrote it + 1.
    last_written: Vec<u64>,
}

impl DirtyMap {
    pub fn new(size: u64, region: u64) -> Self {
        assert!(
            region.is_power_of_two(),
            "region size must be a power of two"
        );
        let n = size.div_ceil(region) as usize;
        DirtyMap {
            region,
            size,
            epochs: vec![CLEAN; n],
            dirty: 0,
            last_written: vec![0; n],
        }
    }

    pub fn region_size(&self) -> u64 {
        self.region
    }

    pub fn regions(&self) -> usize {
        self.epochs.len()
    }

    pub fn dirty_regions(&self) -> usize {
        self.dirty
    }

    /// Bytes covered by dirty regions (the last region may be short).
    pub fn dirty_bytes(&self) -> u64 {
        self.iter_dirty().map(|(_, len)| len).sum()
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        if len == 0 {
            return 0..0;
        }
        let first = (offset / self.region) as usize;
        let last = ((offset + len - 1) / self.region) as usize;
        first..(last + 1).min(self.epochs.len())
    }

    fn set(&mut self, i: usize, v: u64) {
        let was = self.epochs[i] != CLEAN;
        let is = v != CLEAN;
        self.epochs[i] = v;
        match (was, is) {
            (false, true) => self.dirty += 1,
            (true, false) => self.dirty -= 1,
            _ => {}
        }
    }

    /// A write in `epoch` (`None`: unprotected) touched [offset, offset+len).
    pub fn mark(&mut self, offset: u64, len: u64, epoch: Option<Epoch>) {
        let v = epoch.map_or(UNPROTECTED, |e| e.0.min(CLEAN - 1));
        for i in self.range(offset, len) {
            let cur = self.epochs[i];
            // Unprotected sticks; otherwise the newest epoch wins.
            let new = if cur == UNPROTECTED || v == UNPROTECTED {
                UNPROTECTED
            } else if cur == CLEAN {
                v
            } else {
                cur.max(v)
            };
            self.set(i, new);
        }
    }

    /// A write of `epoch` (the epoch open when it completed, protected or not) touched
    /// [offset, offset+len): remembered for [`Self::written_after`].
    pub fn note_written(&mut self, offset: u64, len: u64, epoch: Epoch) {
        let v = epoch.0.saturating_add(1);
        for i in self.range(offset, len) {
            self.last_written[i] = self.last_written[i].max(v);
        }
    }

    /// Regions written in this process in an epoch after `e`.
    pub fn written_after(&self, e: Epoch) -> impl Iterator<Item = usize> + '_ {
        (0..self.last_written.len()).filter(move |&i| self.last_written[i] > e.0.saturating_add(1))
    }

    /// Whether region `i` holds nothing the backup lacks.
    pub fn is_clean(&self, i: usize) -> bool {
        self.epochs.get(i).is_some_and(|&v| v == CLEAN)
    }

    /// Regions that are not clean (written unprotected, or in an unacknowledged epoch).
    pub fn not_clean(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.epochs.len()).filter(|&i| self.epochs[i] != CLEAN)
    }

    /// The resync plan is known: exactly the regions in `todo` are to be copied; every other
    /// region written unprotected (or unknown, since start) is known equal on the backup.
    pub fn resync_exactly(&mut self, todo: &std::collections::BTreeSet<u64>) {
        for i in 0..self.epochs.len() {
            if todo.contains(&(i as u64)) {
                self.set(i, UNPROTECTED);
            } else if self.epochs[i] == UNPROTECTED {
                self.set(i, CLEAN);
            }
        }
    }

    /// Marks every region dirty (initial full sync, or a backup whose contents are unknown).
    pub fn mark_all(&mut self) {
        for i in 0..self.epochs.len() {
            self.set(i, UNPROTECTED);
        }
    }

    /// The backup acknowledged (committed) every epoch ≤ `n`.
    pub fn acked_through(&mut self, n: Epoch) {
        for i in 0..self.epochs.len() {
            let v = self.epochs[i];
            if v != CLEAN && v != UNPROTECTED && v <= n.0 {
                self.set(i, CLEAN);
            }
        }
    }

    /// A region's current contents were sent to the backup as part of `epoch`: it is clean
    /// once that epoch is acknowledged (unless written again in a later one).
    pub fn resent(&mut self, region: usize, epoch: Epoch) {
        if let Some(&cur) = self.epochs.get(region) {
            if cur == UNPROTECTED || cur == CLEAN || cur < epoch.0 {
                self.set(region, epoch.0);
            }
        }
    }

    /// Every region written while unprotected becomes "unacknowledged since forever": used when
    /// a backup connection is lost, so that whatever it had not committed is resent.
    pub fn lose_backup(&mut self) {
        for i in 0..self.epochs.len() {
            if self.epochs[i] != CLEAN {
                self.set(i, UNPROTECTED);
            }
        }
    }

    /// Indices of regions that must be sent on a resync (written unprotected).
    pub fn needing_resync(&self) -> Vec<usize> {
        (0..self.epochs.len())
            .filter(|&i| self.epochs[i] == UNPROTECTED)
            .collect()
    }

    /// (offset, length) of a region.
    pub fn region_span(&self, i: usize) -> (u64, u64) {
        let off = i as u64 * self.region;
        (off, self.region.min(self.size - off))
    }

    pub fn iter_dirty(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.epochs.len())
            .filter(|&i| self.epochs[i] != CLEAN)
            .map(|i| self.region_span(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_clear_only_acked_epochs() {
        let mut d = DirtyMap::new(10 * 4096, 4096);
        d.mark(0, 1, Some(Epoch(1)));
        d.mark(4096, 8192, Some(Epoch(2))); // regions 1, 2
        d.mark(4095, 2, Some(Epoch(3))); // regions 0 and 1
        assert_eq!(d.dirty_regions(), 3);
        d.acked_through(Epoch(2));
        assert_eq!(d.dirty_regions(), 2, "regions 0 and 1 were rewritten in 3");
        d.acked_through(Epoch(3));
        assert_eq!(d.dirty_regions(), 0);
    }

    #[test]
    fn unprotected_writes_stick_until_resent() {
        let mut d = DirtyMap::new(3 * 4096 + 100, 4096);
        assert_eq!(d.regions(), 4);
        d.mark(3 * 4096, 50, None);
        d.mark(0, 10, Some(Epoch(5)));
        d.acked_through(Epoch(100));
        assert_eq!(d.needing_resync(), vec![3]);
        assert_eq!(d.region_span(3), (3 * 4096, 100));
        d.resent(3, Epoch(101));
        assert!(d.needing_resync().is_empty());
        assert_eq!(d.dirty_regions(), 1);
        d.acked_through(Epoch(101));
        assert_eq!(d.dirty_regions(), 0);
    }

    #[test]
    fn losing_the_backup_makes_unacked_regions_resync() {
        let mut d = DirtyMap::new(8 * 4096, 4096);
        d.mark(0, 4096, Some(Epoch(7)));
        d.lose_backup();
        d.acked_through(Epoch(7));
        assert_eq!(d.needing_resync(), vec![0]);
        d.mark_all();
        assert_eq!(d.needing_resync().len(), 8);
        assert_eq!(d.dirty_bytes(), 8 * 4096);
    }

    #[test]
    fn written_after_remembers_acknowledged_writes() {
        let mut d = DirtyMap::new(8 * 4096, 4096);
        d.note_written(0, 1, Epoch(0));
        d.note_written(4096, 1, Epoch(3));
        d.note_written(2 * 4096, 1, Epoch(5));
        d.acked_through(Epoch(9));
        assert_eq!(d.written_after(Epoch(2)).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.written_after(Epoch(3)).collect::<Vec<_>>(), vec![2]);
        assert_eq!(d.written_after(Epoch(0)).count(), 2);
        d.mark_all();
        d.resync_exactly(&[1u64, 6].into_iter().collect());
        assert_eq!(d.needing_resync(), vec![1, 6]);
        assert!(d.is_clean(0) && !d.is_clean(1));
        assert_eq!(d.not_clean().collect::<Vec<_>>(), vec![1, 6]);
    }
}
