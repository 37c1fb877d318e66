//! The pure state machines (no I/O, no clock: time comes in with every input).
//!
//! [`primary`] and [`backup`] are the two roles' epoch loops; [`claim`] is the step either
//! must win at the witness before it acts alone (fencing); [`detector`] is the backup's
//! adaptive (phi-accrual) failure detector.

pub mod backup;
pub mod claim;
pub mod detector;
pub mod primary;
