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
        let bcfg = setup(dir, "backup", prefix, image).write()?;
        let pcfg = setup(dir, "primary", prefix, image).write()?;
        Ok(TwoHosts {
            etcd,
            topo,
            bcfg,
            pcfg,
        })
    }

    /// What a test of two hosts leaves behind outside the namespaces: its directory, the guest
    /// image and both hosts' RAM files (in /dev/shm).
    pub fn leftovers(prefix: &str, dir: &Path, image: &Path) -> Vec<PathBuf> {
        let mut v = vec![dir.to_path_buf(), image.to_path_buf()];
        v.extend(["primary", "backup"].map(|h| setup(dir, h, prefix, image).ram_file()));
        v
    }

    /// The configs after a failover turned the roles: (`remus receive` on the old primary's
    /// host, `remus protect --attach` on the host that runs the VM now), both naming the old
    /// primary's address as the backup's. Each host keeps its image and run directory.
    pub fn turned_configs(
        prefix: &str,
        dir: &Path,
        image: &Path,
    ) -> Result<(PathBuf, PathBuf), String> {
        let backup = remus::demo::topology::PRIMARY_REPL;
        let rx = setup(dir, "primary", prefix, image).write_config("primary-turned", backup)?;
        let at = setup(dir, "backup", prefix, image).write_config("backup-turned", backup)?;
        Ok((rx, at))
    }
}

/// One host's half of the set-up: 8 MiB disk, a checkpoint every 100 ms, 300 ms detection,
/// fenced through the witness.
fn setup<'a>(dir: &'a Path, host: &'a str, prefix: &'a str, image: &'a Path) -> HostSetup<'a> {
    HostSetup {
        dir,
        host,
        prefix,
        image,
        disk_mib: 8,
        interval_ms: 100,
        peer_timeout_ms: 300,
        witness: true,
    }
}
