//! Backends: where the frames actually are.

pub mod netlink;
pub mod packet;
pub mod plug;
pub mod user;

use crate::stats::Stats;
use remus_proto::control::ControlError;
use remus_proto::Epoch;

/// The operations every backend offers, with the semantics of [`crate::EpochLedger`].
/// Counts returned are frames where the backend knows them (0 otherwise).
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Closed epochs the backend can hold at once (`None`: unlimited).
    fn max_depth(&self) -> Option<usize>;
    fn barrier(&self, e: Epoch) -> Result<(), ControlError>;
    fn release_through(&self, e: Epoch) -> Result<u64, ControlError>;
    fn release_all(&self) -> Result<u64, ControlError>;
    fn discard(&self) -> Result<u64, ControlError>;
    fn stats(&self) -> Stats;
}
