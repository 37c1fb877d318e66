//! checkpointd: the epoch driver of remus.
//!
//! This crate currently holds the pure core: [`core::primary`] decides when to checkpoint, which
//! epoch numbers to use, when output may be released and when to give up on the backup;
//! [`core::backup`] decides when a checkpoint is staged, committed, acknowledged, and what to
//! restore from on failover. Both are driven by inputs with explicit timestamps and return the
//! actions an I/O shell must perform, so they are tested exhaustively without I/O, clocks or
//! VMs. The QEMU and Xen drivers and the network shell are not written yet (see the README).

pub mod core;
