//! `EpochQueue`: the frames a protected guest sent, each tagged with the epoch that was open
//! when it arrived, held until that epoch is released. Pure: no sockets, no clock.
//!
//! Overflow policy: **drop the newest frame** (tail drop). When holding a frame would exceed
//! `max_frames` or `max_bytes`, that frame is dropped and counted in `dropped_overflow_*`. This
//! is what a kernel qdisc (including `plug`) does, it keeps the frames already held in order,
//! and it is safe: a dropped frame is indistinguishable from loss on the wire, which TCP and
//! every other protocol already recover from. Releasing held frames early instead would break
//! the output-commit rule, so that is never done.

use crate::ledger::EpochLedger;
use remus_proto::control::ControlError;
use remus_proto::Epoch;
use serde::Serialize;
use std::collections::VecDeque;

/// Anything the queue can hold: it only needs the frame's length on the wire.
pub trait WireLen {
    fn wire_len(&self) -> usize;
}

impl WireLen for Vec<u8> {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 10k frames / 64 MiB: several epochs of a busy 10 Gbit/s guest at 40 checkpoints/s.
        Limits {
            max_frames: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub received_frames: u64,
    pub received_bytes: u64,
    /// Sent at once because the queue was unprotected.
    pub passed_frames: u64,
    pub passed_bytes: u64,
    /// Held and later released.
    pub released_frames: u64,
    pub released_bytes: u64,
    pub dropped_overflow_frames: u64,
    pub dropped_overflow_bytes: u64,
    /// Held and then thrown away by `discard`.
    pub discarded_frames: u64,
    pub discarded_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpochHeld {
    pub epoch: Epoch,
    pub frames: u64,
    pub bytes: u64,
}

/// What became of a frame handed to [`EpochQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Push<F> {
    /// Unprotected: send it now.
    Forward(F),
    /// Held in the open epoch.
    Held,
    /// Over a limit: dropped (counted).
    Dropped(F),
}

#[derive(Debug)]
pub struct EpochQueue<F> {
    ledger: EpochLedger,
    frames: VecDeque<(Epoch, F)>,
    /// Frames and bytes held per epoch, oldest first; one entry per barriered, unreleased epoch.
    held: VecDeque<EpochHeld>,
    held_frames: usize,
    held_bytes: usize,
    limits: Limits,
    counters: Counters,
}

impl<F: WireLen> EpochQueue<F> {
    /// A queue that starts unprotected (everything passes) with unlimited pipeline depth.
    pub fn new(limits: Limits) -> Self {
        EpochQueue {
            ledger: EpochLedger::new(None),
            frames: VecDeque::new(),
            held: VecDeque::new(),
            held_frames: 0,
            held_bytes: 0,
            limits,
            counters: Counters::default(),
        }
    }

    pub fn ledger(&self) -> &EpochLedger {
        &self.ledger
    }

    pub fn is_protected(&self) -> bool {
        self.ledger.is_protected()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn held_frames(&self) -> usize {
        self.held_frames
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    pub fn held_per_epoch(&self) -> impl Iterator<Item = &EpochHeld> {
        self.held.iter()
    }

    /// Accounts for a frame sent straight through while unprotected, without handing it to
    /// the queue (saves a copy on the pass-through path). Call only when `!is_protected()`.
    pub fn count_passthrough(&mut self, len: usize) {
        debug_assert!(!self.is_protected());
        self.counters.received_frames += 1;
        self.counters.received_bytes += len as u64;
        self.counters.passed_frames += 1;
        self.counters.passed_bytes += len as u64;
    }

    /// A frame arrived from the guest.
    pub fn push(&mut self, frame: F) -> Push<F> {
        let len = frame.wire_len();
        self.counters.received_frames += 1;
        self.counters.received_bytes += len as u64;
        let Some(open) = self.ledger.open() else {
            self.counters.passed_frames += 1;
            self.counters.passed_bytes += len as u64;
            return Push::Forward(frame);
        };
        if self.held_frames + 1 > self.limits.max_frames
            || self.held_bytes + len > self.limits.max_bytes
        {
            self.counters.dropped_overflow_frames += 1;
            self.counters.dropped_overflow_bytes += len as u64;
            return Push::Dropped(frame);
        }
        self.held_frames += 1;
        self.held_bytes += len;
        if let Some(h) = self.held.back_mut() {
            h.frames += 1;
            h.bytes += len as u64;
        }
        self.frames.push_back((open, frame));
        Push::Held
    }

    /// Opens epoch `e` (see [`EpochLedger::barrier`]).
    pub fn barrier(&mut self, e: Epoch) -> Result<(), ControlError> {
        self.ledger.barrier(e)?;
        self.held.push_back(EpochHeld {
            epoch: e,
            frames: 0,
            bytes: 0,
        });
        Ok(())
    }

    /// Releases every frame of every closed epoch ≤ `e`, in arrival order.
    pub fn release_through(
        &mut self,
        e: Epoch,
    ) -> Result<impl Iterator<Item = F> + '_, ControlError> {
        let epochs = self.ledger.release_through(e)?;
        let n = self.drop_held_entries(epochs.len());
        Ok(self.take_front(n, true))
    }

    /// Ends protection: releases everything held, and later frames pass straight through.
    pub fn release_all(&mut self) -> impl Iterator<Item = F> + '_ {
        let epochs = self.ledger.release_all();
        let n = self.drop_held_entries(epochs.len());
        debug_assert_eq!(n, self.frames.len());
        let n = self.frames.len();
        self.take_front(n, true)
    }

    /// Throws away every held frame (the epochs they belong to will never commit). Protection
    /// stays on: the open epoch remains open and later frames are held as before.
    pub fn discard(&mut self) -> u64 {
        let n = self.frames.len();
        let dropped = self.take_front(n, false).count() as u64;
        for h in self.held.iter_mut() {
            h.frames = 0;
            h.bytes = 0;
        }
        dropped
    }

    /// Removes the first `epochs` per-epoch entries; returns how many frames they covered.
    fn drop_held_entries(&mut self, epochs: usize) -> usize {
        self.held
            .drain(..epochs)
            .map(|h| h.frames as usize)
            .sum::<usize>()
    }

    /// Removes the `n` oldest frames, accounting for them up front so that the counters are
    /// right even if the caller stops iterating early.
    fn take_front(&mut self, n: usize, released: bool) -> impl Iterator<Item = F> + '_ {
        let bytes: usize = self.frames.iter().take(n).map(|(_, f)| f.wire_len()).sum();
        self.held_frames -= n;
        self.held_bytes -= bytes;
        let (frames, total) = if released {
            let c = &mut self.counters;
            (&mut c.released_frames, &mut c.released_bytes)
        } else {
            let c = &mut self.counters;
            (&mut c.discarded_frames, &mut c.discarded_bytes)
        };
        *frames += n as u64;
        *total += bytes as u64;
        self.frames.drain(..n).map(|(_, f)| f)
    }
}
