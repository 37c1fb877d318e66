//! netbuf: the epoch-gated egress buffer of remus.
//!
//! Every frame a protected guest sends is held in the epoch it was sent in and released only
//! when that epoch's checkpoint is safe on the backup. Inbound traffic is never held.
//!
//! * [`ledger`] and [`queue`]: the pure core (epoch bookkeeping and the held frames).
//! * [`backend`]: the I/O shells: `user` (AF_PACKET, runs everywhere) and `plug` (the kernel's
//!   `sch_plug` qdisc driven over rtnetlink).
//! * [`control`]: the control-socket commands mapped onto a backend.

pub mod backend;
pub mod control;
pub mod ledger;
pub mod queue;
pub mod stats;

pub use ledger::EpochLedger;
pub use queue::{Counters, EpochHeld, EpochQueue, Limits, Push, WireLen};
