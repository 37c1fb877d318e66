//! One host's half of the demo VM's set-up: its disk image and the TOML file that
//! `remus protect` or `remus receive` reads.

use super::topology;
use std::path::{Path, PathBuf};

type Step<T = ()> = Result<T, String>;

/// One host's side of the demo VM: its disk image, console log, RAM file and run directory
/// under `dir`, and the TOML file `remus protect`/`remus receive` read.
pub struct HostSetup<'a> {
    pub dir: &'a Path,
    /// "primary" or "backup".
    pub host: &'a str,
    /// Makes the RAM file's name unique (it lives in /dev/shm, shared by all namespaces).
    pub prefix: &'a str,
    /// The guest image directory (vmlinuz, initramfs.cpio.gz).
    pub image: &'a Path,
    pub disk_mib: u64,
    pub interval_ms: u64,
    pub peer_timeout_ms: u64,
    /// Fence through the witness in the topology's witness namespace (else `witness = "none"`).
    pub witness: bool,
}

impl HostSetup<'_> {
    /// The replication key both hosts' daemons use: DIR/replication.key, made by the first
    /// host's set-up (mode 0600), as `remus keygen` would.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("replication.key")
    }

    /// The guest RAM file in /dev/shm (shared by every namespace, so named per prefix).
    pub fn ram_file(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/{}-{}-ram", self.prefix, self.host))
    }

    /// This host's disk image, DIR/HOST.img.
    pub fn image_file(&self) -> PathBuf {
        self.dir.join(format!("{}.img", self.host))
    }

    /// Creates DIR/HOST.img (zeros) and writes DIR/HOST.toml, in which the backup is the
    /// demo's backup host; returns the TOML's path. The run directory is DIR/HOST, the guest
    /// console DIR/HOST-console.log.
    pub fn write(&self) -> Step<PathBuf> {
        let dir = self.dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        match remus_proto::auth::Key::generate_file(&self.key_file()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", self.key_file().display())),
        }
        let img = self.image_file();
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(self.disk_mib << 20))
            .map_err(|e| format!("{}: {e}", img.display()))?;
        self.write_config(self.host, topology::BACKUP_REPL)
    }

    /// Writes DIR/STEM.toml for this host (its image, run directory and RAM file) with
    /// `backup` as the replication address of the host that receives: after a failover the
    /// roles turn, and the old primary's host receives on its own address.
    pub fn write_config(&self, stem: &str, backup: &str) -> Step<PathBuf> {
        let (dir, host) = (self.dir, self.host);
        let img = self.image_file();
        let qemu = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            &self.image.join("vmlinuz").display().to_string(),
            "-initrd",
            &self.image.join("initramfs.cpio.gz").display().to_string(),
            "-append",
            "console=ttyS0 quiet",
            "-serial",
            &format!("file:{}", dir.join(format!("{host}-console.log")).display()),
        ];
        let text = format!(
            "name = \"demo\"\nrun_dir = {:?}\n{}\n[guest]\nqemu = {:?}\nram_mib = 128\nram_file = {:?}\n\n\
             [disk]\nimage = {:?}\n\n[replication]\nbackup = {:?}\ninterval_ms = {}\npeer_timeout_ms = {}\nkey_file = {:?}\n{}",
            dir.join(host).display().to_string(),
            if self.witness {
                ""
            } else {
                "# No fencing: a network partition yields two running copies.\nwitness = \"none\"\n"
            },
            qemu,
            self.ram_file().display().to_string(),
            img.display().to_string(),
            backup,
            self.interval_ms,
            self.peer_timeout_ms,
            self.key_file().display().to_string(),
            if self.witness {
                format!("\n[witness]\nendpoints = [{:?}]\n", super::witness::endpoint())
            } else {
                String::new()
            },
        );
        let path = dir.join(format!("{stem}.toml"));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Role};

    #[test]
    fn both_demo_configs_parse_with_and_without_a_witness() {
        let dir = std::env::temp_dir().join(format!("remus-host-{}", std::process::id()));
        for witness in [true, false] {
            let h = HostSetup {
                dir: &dir,
                host: "backup",
                prefix: "t",
                image: Path::new("/nonexistent"),
                disk_mib: 1,
                interval_ms: 100,
                peer_timeout_ms: 300,
                witness,
            };
            let text = std::fs::read_to_string(h.write().unwrap()).unwrap();
            let c = Config::parse(&text).unwrap();
            assert!(c.validate(Role::Backup).is_ok());
            assert_eq!(c.unfenced(), !witness, "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
