//! A serving node: the disk image, the export it is published as, and the replicator every
//! completed write is reported to.

use crate::nbd::handshake::Export;
use crate::repl::primary::Replicator;
use crate::store::Disk;
use std::ops::Range;
use std::sync::Arc;

pub struct Node {
    disk: Disk,
    export_name: String,
    repl: Arc<Replicator>,
}

impl Node {
    pub fn new(disk: Disk, export_name: String, repl: Arc<Replicator>) -> Arc<Node> {
        Arc::new(Node {
            disk,
            export_name,
            repl,
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    pub fn repl(&self) -> &Arc<Replicator> {
        &self.repl
    }

    pub fn export(&self) -> Export {
        Export {
            name: self.export_name.clone(),
            size: self.disk.size(),
            read_only: false,
        }
    }

    /// Before a write or zeroing of [offset, offset+len) is issued: its regions are in the
    /// activity log on disk. An error: the metadata cannot be written, do not issue the write.
    pub async fn begin_write(&self, offset: u64, len: u64) -> std::io::Result<Range<u64>> {
        self.repl.begin_write(offset, len).await
    }

    /// After the write was reported ([`Self::written`], [`Self::zeroed`]) or failed
    /// ([`Self::write_failed`]).
    pub fn end_write(&self, regions: Range<u64>) {
        self.repl.end_write(regions)
    }

    pub async fn write_failed(&self, offset: u64, len: u64) {
        self.repl.write_failed(offset, len).await
    }

    /// A write is on the local disk (and durable if the client asked): replicate it.
    pub async fn written(&self, offset: u64, data: &[u8]) {
        self.repl.on_write(offset, data).await;
    }

    pub async fn zeroed(&self, offset: u64, len: u64) {
        self.repl.on_zero(offset, len).await;
    }
}
