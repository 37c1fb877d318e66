//! Replication: the message format, the primary's sender and the backup's receiver.

pub mod backup;
pub mod msg;
pub mod primary;
