//! Replication: the message format, the primary's sender and the backup's receiver.

pub mod backup;
pub mod backup_lineage;
pub mod msg;
pub mod primary;
pub mod primary_lineage;
