//! A serving node: the disk image, the export it is published as, and the replicator every
//! completed write is reported to.

use crate::nbd::handshake::Export;
use crate::repl::primary::Replicator;
use crate::store::Disk;
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

    /// A write is on the local disk (and durable if the client asked): replicate it.
    pub async fn written(&self, offset: u64, data: &[u8]) {
        self.repl.on_write(offset, data).await;
    }

    pub async fn zeroed(&self, offset: u64, len: u64) {
        self.repl.on_zero(offset, len).await;
    }
}
