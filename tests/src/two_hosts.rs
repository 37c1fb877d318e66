//! The demo's two hosts for a test of the CLI: the namespaces (`Topology`), the etcd witness
//! and both hosts' config files (8 MiB disk, a checkpoint every 100 ms, 300 ms detection,
//! fenced through the witness). One place for what remus_cli, remus_attach, remus_ops and
//! ocf_agent all set up the same way.

use remus::demo::topology::Topology;
use remus::demo::witness::Etcd;
use remus::demo::HostSetup;
use std::path::{Path, PathBuf};

pub struct TwoHosts {
    // Field order is drop order: the witness goes before the namespaces it runs in.
    pub etcd: Etcd,
    pub topo: Topology,
    /// `remus receive --config` of the backup host.
    pub bcfg: PathBuf,
    /// `remus protect --config` of the primary host.
    pub pcfg: PathBuf,
}

impl TwoHosts {
    /// Creates the namespaces, starts etcd in the witness namespace and writes both configs
    /// into `dir` (created), for a guest booted from `image`.
    pub fn create(prefix: &str, dir: &Path, image: &Path) -> Result<TwoHosts, String> {
        let topo = Topology::create(prefix)?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let etcd = Etcd::start(&topo, "wit", dir)?;
        let setup = |host| HostSetup {
            dir,
            host,
            prefix,
            image,
            disk_mib: 8,
            interval_ms: 100,
            peer_timeout_ms: 300,
            witness: true,
        };
        let bcfg = setup("backup").write()?;
        let pcfg = setup("primary").write()?;
        Ok(TwoHosts {
            etcd,
            topo,
            bcfg,
            pcfg,
        })
    }
}
