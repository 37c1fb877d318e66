//! diskrep: serves a protected guest's disk over NBD, writes locally, and mirrors every write
//! asynchronously to a backup that buffers each epoch and applies it only on commit.
//!
//! Pure cores: [`extent_map`] and [`epoch_buffer`] (the backup's per-epoch buffers),
//! [`dirty`] (resync tracking), [`nbd::handshake`] and [`nbd::request`] (protocol checks),
//! [`repl::msg`] (the replication messages). I/O shells: [`nbd::server`], [`store`],
//! [`repl::primary`], [`repl::backup`], [`control`].

pub mod control;
pub mod dirty;
pub mod epoch_buffer;
pub mod extent_map;
pub mod lineage;
pub mod listen;
pub mod nbd;
pub mod node;
pub mod repl;
pub mod store;
