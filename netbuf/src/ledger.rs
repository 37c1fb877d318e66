//! `EpochLedger`: which epoch is open, which are closed but not yet released, and whether a
//! control request is legal. Pure bookkeeping shared by every backend: the userspace backend
//! wraps it with the frames themselves ([`crate::EpochQueue`]); the kernel `plug` backend keeps
//! only this, because the frames live in the qdisc.

use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::Epoch;
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochLedger {
    /// The epoch new frames belong to; `None` while unprotected (frames pass straight through).
    open: Option<Epoch>,
    /// Highest epoch ever opened: barriers must go strictly beyond it, even across release-all.
    last_barrier: Option<Epoch>,
    /// Closed (checkpointed) epochs whose frames are still held, oldest first.
    closed: VecDeque<Epoch>,
    /// Highest epoch released so far (by release N; release-all does not count).
    released_through: Option<Epoch>,
    /// How many closed epochs the backend can hold at once; `None` is unlimited.
    max_depth: Option<usize>,
}

impl EpochLedger {
    pub fn new(max_depth: Option<usize>) -> Self {
        EpochLedger {
            open: None,
            last_barrier: None,
            closed: VecDeque::new(),
            released_through: None,
            max_depth,
        }
    }

    pub fn open(&self) -> Option<Epoch> {
        self.open
    }

    pub fn is_protected(&self) -> bool {
        self.open.is_some()
    }

    pub fn closed(&self) -> impl Iterator<Item = Epoch> + '_ {
        self.closed.iter().copied()
    }

    pub fn released_through(&self) -> Option<Epoch> {
        self.released_through
    }

    pub fn max_depth(&self) -> Option<usize> {
        self.max_depth
    }

    pub fn last_barrier(&self) -> Option<Epoch> {
        self.last_barrier
    }

    /// Checks a barrier without changing anything.
    pub fn check_barrier(&self, e: Epoch) -> Result<(), ControlError> {
        if let Some(last) = self.last_barrier {
            if e <= last {
                return Err(ControlError::new(
                    ErrorCode::Order,
                    format!("barrier {e} does not advance past epoch {last}"),
                ));
            }
        }
        if let (Some(open), Some(depth)) = (self.open, self.max_depth) {
            if self.closed.len() >= depth {
                return Err(ControlError::new(
                    ErrorCode::Depth,
                    format!(
                        "barrier {e} would close epoch {open} while {} closed epoch(s) are \
                         unreleased; this backend holds at most {depth}",
                        self.closed.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Opens epoch `e`: frames from now on belong to it. Closes the previously open epoch, or
    /// starts protection if there was none. Returns the epoch it closed.
    pub fn barrier(&mut self, e: Epoch) -> Result<Option<Epoch>, ControlError> {
        self.check_barrier(e)?;
        let closed = self.open.replace(e);
        if let Some(c) = closed {
            self.closed.push_back(c);
        }
        self.last_barrier = Some(e);
        Ok(closed)
    }

    /// Checks a release without changing anything; returns how many closed epochs it frees.
    pub fn check_release(&self, e: Epoch) -> Result<usize, ControlError> {
        match self.open {
            Some(open) if e >= open => Err(ControlError::new(
                ErrorCode::Order,
                format!("release {e}: epoch {open} is still open (barrier a later epoch first)"),
            )),
            None if self.last_barrier.is_none_or(|l| e > l) => Err(ControlError::new(
                ErrorCode::Order,
                format!("release {e}: epoch {e} was never barriered"),
            )),
            _ => Ok(self.closed.iter().take_while(|&&c| c <= e).count()),
        }
    }

    /// Releases every closed epoch ≤ `e`. Releasing an already released epoch is a no-op
    /// (acks may be duplicated); releasing the open epoch or one never seen is an error.
    /// Returns the epochs released, oldest first.
    pub fn release_through(&mut self, e: Epoch) -> Result<Vec<Epoch>, ControlError> {
        let n = self.check_release(e)?;
        let released: Vec<Epoch> = self.closed.drain(..n).collect();
        if self.open.is_some() && self.released_through.is_none_or(|r| e > r) {
            self.released_through = Some(e);
        }
        Ok(released)
    }

    /// Ends protection: every held epoch is released and frames pass straight through.
    pub fn release_all(&mut self) -> Vec<Epoch> {
        let mut all: Vec<Epoch> = self.closed.drain(..).collect();
        all.extend(self.open.take());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(r: Result<T, ControlError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn lifecycle() {
        let mut l = EpochLedger::new(None);
        assert!(!l.is_protected());
        assert_eq!(l.barrier(Epoch(1)), Ok(None));
        assert_eq!(l.barrier(Epoch(2)), Ok(Some(Epoch(1))));
        assert_eq!(l.barrier(Epoch(5)), Ok(Some(Epoch(2))));
        assert_eq!(code(l.release_through(Epoch(5))), ErrorCode::Order);
        assert_eq!(l.release_through(Epoch(1)), Ok(vec![Epoch(1)]));
        assert_eq!(l.release_through(Epoch(1)), Ok(vec![]), "duplicate ack");
        assert_eq!(l.release_through(Epoch(4)), Ok(vec![Epoch(2)]));
        assert_eq!(l.released_through(), Some(Epoch(4)));
        assert_eq!(code(l.barrier(Epoch(5))), ErrorCode::Order);
        assert_eq!(code(l.barrier(Epoch(3))), ErrorCode::Order);
        assert_eq!(l.release_all(), vec![Epoch(5)]);
        assert!(!l.is_protected());
        assert_eq!(
            l.release_through(Epoch(5)),
            Ok(vec![]),
            "late ack after release-all"
        );
        assert_eq!(code(l.release_through(Epoch(6))), ErrorCode::Order);
        assert_eq!(
            code(l.barrier(Epoch(5))),
            ErrorCode::Order,
            "numbers never reused"
        );
        assert_eq!(l.barrier(Epoch(6)), Ok(None));
    }

    #[test]
    fn unprotected_release_is_an_error() {
        let mut l = EpochLedger::new(None);
        assert_eq!(code(l.release_through(Epoch(0))), ErrorCode::Order);
    }

    #[test]
    fn depth_one_like_sch_plug() {
        let mut l = EpochLedger::new(Some(1));
        l.barrier(Epoch(1)).unwrap();
        l.barrier(Epoch(2)).unwrap(); // closes 1: one closed epoch, the limit
        assert_eq!(code(l.barrier(Epoch(3))), ErrorCode::Depth);
        assert_eq!(
            l.open(),
            Some(Epoch(2)),
            "a refused barrier changes nothing"
        );
        l.release_through(Epoch(1)).unwrap();
        l.barrier(Epoch(3)).unwrap();
    }
}
