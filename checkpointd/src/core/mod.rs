//! The pure state machines (no I/O, no clock: time comes in with every input).

pub mod backup;
pub mod primary;
