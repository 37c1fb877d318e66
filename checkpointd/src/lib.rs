//! checkpointd: the epoch driver of remus.
//!
//! * [`core`]: the pure state machines. [`core::primary`] decides when to checkpoint, which
//!   epoch numbers to use, when output may be released and when to give up on the backup;
//!   [`core::backup`] decides when a checkpoint is staged, committed, acknowledged, and what to
//!   restore on failover. Time comes in with every input; they are property-tested.
//! * [`dirty`]: which guest pages changed (uffd, soft-dirty or comparison); [`inject`] runs a
//!   syscall inside QEMU with ptrace (to create a uffd there).
//! * I/O shells: [`qmp`] (QEMU's monitor), [`ram`] (guest RAM and dirty pages), [`wire`] (the
//!   checkpoint stream), [`peers`] (netbuf and diskrep control sockets), [`witness`] (the
//!   generation in etcd, on its own thread: fencing).
//! * [`engine`]: the two daemons' loops (primary, backup), one per role for every hypervisor:
//!   the single place where an epoch turns over. [`hv`]: the single place per hypervisor that
//!   knows QEMU ([`hv::qemu`], [`hv::qemu_backup`]) or Xen (`hv::xen`).

pub mod compress;
pub mod core;
pub mod device_state;
pub mod dirty;
pub mod engine;
pub mod heartbeat;
pub mod hv;
pub mod inject;
pub mod link;
pub mod peers;
pub mod qmp;
pub mod ram;
pub mod status;
pub mod wire;
pub mod witness;
