//! `EpochBuffer`: the backup's per-epoch write buffers. Writes arrive tagged with their epoch,
//! in stream order; `barrier(N)` in the stream says every write of epochs < N has been sent.
//! `take_through(N)` hands out the complete epochs ≤ N, oldest first, for the caller to apply
//! and make durable; nothing of a later (or incomplete) epoch is ever handed out. Pure.

use crate::extent_map::{Data, ExtentMap};
use remus_proto::Epoch;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    #[error("write for epoch {got} after the stream moved on to epoch {open}")]
    EpochWentBack { got: Epoch, open: Epoch },
    #[error("barrier {got} does not advance past epoch {open}")]
    BarrierWentBack { got: Epoch, open: Epoch },
    #[error("epoch {want} is not complete yet (stream complete through {complete:?})")]
    Incomplete {
        want: Epoch,
        complete: Option<Epoch>,
    },
    #[error("epoch {want} is already committed (through {committed})")]
    AlreadyCommitted { want: Epoch, committed: Epoch },
}

#[derive(Debug, Default)]
pub struct EpochBuffer {
    epochs: BTreeMap<Epoch, ExtentMap>,
    /// The epoch the stream is currently sending.
    open: Epoch,
    /// Highest epoch whose every write has arrived.
    complete_through: Option<Epoch>,
    committed_through: Option<Epoch>,
    mem: usize,
}

impl EpochBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) -> Epoch {
        self.open
    }

    pub fn complete_through(&self) -> Option<Epoch> {
        self.complete_through
    }

    pub fn committed_through(&self) -> Option<Epoch> {
        self.committed_through
    }

    /// Bytes of write data buffered.
    pub fn mem(&self) -> usize {
        self.mem
    }

    /// Epochs buffered and not yet committed.
    pub fn pending(&self) -> impl Iterator<Item = (Epoch, usize)> + '_ {
        self.epochs.iter().map(|(e, m)| (*e, m.mem()))
    }

    pub fn write(&mut self, epoch: Epoch, offset: u64, data: Data) -> Result<(), BufferError> {
        if epoch < self.open {
            return Err(BufferError::EpochWentBack {
                got: epoch,
                open: self.open,
            });
        }
        if epoch > self.open {
            // The primary may skip barriers it had nothing to say about; every earlier epoch
            // is then complete.
            self.complete_through = Some(Epoch(epoch.0 - 1));
            self.open = epoch;
        }
        let m = self.epochs.entry(epoch).or_default();
        let before = m.mem();
        m.insert(offset, data);
        self.mem = self.mem + m.mem() - before;
        Ok(())
    }

    /// The stream says epoch `next` starts: every epoch before it is complete.
    pub fn barrier(&mut self, next: Epoch) -> Result<(), BufferError> {
        if next <= self.open {
            return Err(BufferError::BarrierWentBack {
                got: next,
                open: self.open,
            });
        }
        self.open = next;
        self.complete_through = Some(Epoch(next.0 - 1));
        Ok(())
    }

    /// Removes and returns every buffered epoch ≤ `n`, oldest first. Fails unless `n` is
    /// complete. The caller applies them in order and then calls [`EpochBuffer::committed`].
    pub fn take_through(&mut self, n: Epoch) -> Result<Vec<(Epoch, ExtentMap)>, BufferError> {
        if let Some(c) = self.committed_through {
            if n <= c {
                return Err(BufferError::AlreadyCommitted {
                    want: n,
                    committed: c,
                });
            }
        }
        if self.complete_through.is_none_or(|c| c < n) {
            return Err(BufferError::Incomplete {
                want: n,
                complete: self.complete_through,
            });
        }
        let later = self.epochs.split_off(&n.next());
        let taken = std::mem::replace(&mut self.epochs, later);
        let freed: usize = taken.values().map(ExtentMap::mem).sum();
        self.mem -= freed;
        Ok(taken.into_iter().collect())
    }

    /// Records that everything through `n` is applied and durable.
    pub fn committed(&mut self, n: Epoch) {
        self.committed_through = Some(self.committed_through.map_or(n, |c| c.max(n)));
    }

    /// Failover: drops every buffered (uncommitted) epoch. Returns how many bytes were dropped.
    pub fn discard_uncommitted(&mut self) -> usize {
        let m = self.mem;
        self.epochs.clear();
        self.mem = 0;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: u8, n: usize) -> Data {
        Data::Bytes(vec![x; n])
    }

    #[test]
    fn only_complete_epochs_are_taken() {
        let mut eb = EpochBuffer::new();
        eb.write(Epoch(0), 0, b(1, 4)).unwrap();
        eb.barrier(Epoch(1)).unwrap();
        eb.write(Epoch(1), 0, b(2, 4)).unwrap();
        assert!(matches!(
            eb.take_through(Epoch(1)),
            Err(BufferError::Incomplete { .. })
        ));
        let t = eb.take_through(Epoch(0)).unwrap();
        assert_eq!(t.len(), 1);
        eb.committed(Epoch(0));
        assert!(matches!(
            eb.take_through(Epoch(0)),
            Err(BufferError::AlreadyCommitted { .. })
        ));
        assert_eq!(eb.mem(), 4);
        eb.barrier(Epoch(2)).unwrap();
        assert!(eb.barrier(Epoch(2)).is_err());
        assert!(eb.write(Epoch(1), 0, b(3, 1)).is_err(), "stream went back");
        assert_eq!(eb.take_through(Epoch(1)).unwrap().len(), 1);
        assert_eq!(eb.mem(), 0);
    }

    #[test]
    fn a_write_for_a_later_epoch_completes_earlier_ones() {
        let mut eb = EpochBuffer::new();
        eb.write(Epoch(3), 0, b(1, 1)).unwrap();
        assert_eq!(eb.complete_through(), Some(Epoch(2)));
        assert!(eb.take_through(Epoch(2)).unwrap().is_empty());
    }

    #[test]
    fn discard_drops_everything_buffered() {
        let mut eb = EpochBuffer::new();
        eb.write(Epoch(0), 0, b(1, 10)).unwrap();
        eb.barrier(Epoch(1)).unwrap();
        eb.write(Epoch(1), 0, b(2, 10)).unwrap();
        assert_eq!(eb.discard_uncommitted(), 20);
        assert_eq!(eb.pending().count(), 0);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, u64, u8),
        Barrier,
        Commit(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0u64..100, 1u64..30, any::<u8>()).prop_map(|(o, l, b)| Op::Write(o, l, b)),
            2 => Just(Op::Barrier),
            2 => (0u64..4).prop_map(Op::Commit),
        ]
    }

    proptest! {
        /// The image built from committed epochs always equals the model image as of the last
        /// committed epoch; nothing of a later epoch ever reaches it.
        #[test]
        fn committed_image_matches_model(ops in proptest::collection::vec(op(), 0..80)) {
            let mut eb = EpochBuffer::new();
            let mut open = 0u64;
            let mut model = vec![0u8; 130];
            let mut snapshots: Vec<Vec<u8>> = Vec::new(); // model at the end of each epoch
            let mut image = vec![0u8; 130];
            let mut committed: Option<u64> = None;
            for op in ops {
                match op {
                    Op::Write(o, l, b) => {
                        eb.write(Epoch(open), o, Data::Bytes(vec![b; l as usize])).unwrap();
                        model[o as usize..(o + l) as usize].fill(b);
                    }
                    Op::Barrier => {
                        snapshots.push(model.clone());
                        open += 1;
                        eb.barrier(Epoch(open)).unwrap();
                    }
                    Op::Commit(back) => {
                        let Some(last_complete) = open.checked_sub(1) else { continue };
                        let n = last_complete.saturating_sub(back);
                        match eb.take_through(Epoch(n)) {
                            Ok(epochs) => {
                                prop_assert!(committed.is_none_or(|c| n > c));
                                for (e, m) in epochs {
                                    prop_assert!(e.0 <= n);
                                    for (off, d) in m.iter() {
                                        if let Data::Bytes(b) = d {
                                            image[off as usize..off as usize + b.len()].copy_from_slice(b);
                                        }
                                    }
                                }
                                eb.committed(Epoch(n));
                                committed = Some(n);
                                prop_assert_eq!(&image, &snapshots[n as usize]);
                            }
                            Err(_) => prop_assert!(committed.is_some_and(|c| n <= c)),
                        }
                    }
                }
            }
        }
    }
}
