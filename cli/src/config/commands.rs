//! The command lines a protection set-up derives from its config: each daemon's arguments and
//! the guest's QEMU on either host. Pure, like the rest of `config`: nothing is started here.

use super::{auth, Config, Role};
use std::path::{Path, PathBuf};

impl Config {
    /// The guest's disk and NIC, as QEMU arguments (both hosts).
    fn qemu_devices(&self) -> Vec<String> {
        let d = &self.disk;
        vec![
            "-m".into(),
            format!("{}M", self.guest.ram_mib),
            "-drive".into(),
            // Every write goes through diskrep; the host page cache would only hide it.
            format!(
                "file=nbd://{}/{},format=raw,if=virtio,cache=none",
                d.nbd, d.export
            ),
            "-netdev".into(),
            format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                self.net.guest_if
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", self.guest.mac),
        ]
    }

    /// The primary's QEMU: RAM in a shared file checkpointd maps, QMP for pause/resume.
    pub fn qemu_primary(&self) -> Vec<String> {
        let mut v = self.guest.qemu.clone();
        v.extend(self.qemu_devices());
        v.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=remus-ram,size={}M,mem-path={},share=on",
                self.guest.ram_mib,
                self.ram_file(Role::Primary).display()
            ),
            "-machine".into(),
            "memory-backend=remus-ram".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket().display()),
        ]);
        v
    }

    /// The environment of the primary's QEMU: the uffd shim preloaded (after any preload
    /// already set) when checkpointd may use the uffd tracker and the shim was found. Without
    /// it checkpointd injects the uffd with ptrace, or uses another tracker.
    pub fn qemu_primary_env(
        &self,
        shim: Option<&std::path::Path>,
        inherited_preload: Option<&str>,
    ) -> Vec<(String, String)> {
        let wants = ["auto", "uffd"].contains(&self.replication.dirty_tracker.as_str());
        match shim.filter(|_| wants) {
            Some(shim) => {
                let mut v = inherited_preload
                    .filter(|p| !p.is_empty())
                    .map(|p| format!("{p}:"))
                    .unwrap_or_default();
                v.push_str(&shim.display().to_string());
                vec![("LD_PRELOAD".into(), v)]
            }
            None => Vec::new(),
        }
    }

    /// The backup's QEMU for restoring (checkpointd adds the RAM image, QMP and -incoming).
    pub fn qemu_restore(&self) -> Vec<String> {
        let mut v = self.guest.qemu.clone();
        v.extend(self.qemu_devices());
        v
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir().join("qmp.sock")
    }

    fn image(&self) -> String {
        self.disk
            .image
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// diskrep's arguments on either host: `role`, then what both share (image, export,
    /// control socket, NBD address), then `extra`.
    fn diskrep(&self, role: &str, extra: [&str; 2]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            role.into(),
            "--image".into(),
            self.image(),
            "--export".into(),
            self.disk.export.clone(),
            "--control".into(),
            self.socket("diskrep").display().to_string(),
            "--listen".into(),
            self.disk.nbd.to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(self.auth_args());
        v
    }

    /// diskrep's and checkpointd's flags for the replication key.
    fn auth_args(&self) -> Vec<String> {
        let r = &self.replication;
        auth::daemon_args(r.key_file.as_deref(), r.encrypt)
    }

    /// The replication key file, if one is used ("none" is not).
    pub fn key_file(&self) -> Option<&Path> {
        match self.replication.key_file.as_deref() {
            Some(auth::NO_KEY) | None => None,
            Some(p) => Some(Path::new(p)),
        }
    }

    /// Serves the disk here and mirrors every write to the backup's diskrep.
    pub fn diskrep_primary(&self) -> Vec<String> {
        self.diskrep("primary", ["--backup", &self.disk_addr()])
    }

    /// Receives the primary's writes; serves NBD on the same address after a failover.
    pub fn diskrep_backup(&self) -> Vec<String> {
        self.diskrep("backup", ["--repl-listen", &self.disk_addr()])
    }

    pub fn netbuf(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--guest-if".into(),
            self.net.guest_if.clone(),
            "--uplink-if".into(),
            self.net.uplink_if.clone(),
            "--backend".into(),
            self.net.backend.clone(),
            "--control".into(),
            self.socket("netbuf").display().to_string(),
        ]
    }

    pub fn checkpointd_primary(&self) -> Vec<String> {
        self.checkpointd_primary_on(&GuestHandles {
            qmp: self.qmp_socket(),
            ram: self.ram_file(Role::Primary),
            control: self.socket("checkpointd"),
            state_dir: self.run_dir().join("state"),
        })
    }

    /// checkpointd primary against a guest reached through `g` (one remus started, or one
    /// `remus protect --attach` found running).
    pub fn checkpointd_primary_on(&self, g: &GuestHandles) -> Vec<String> {
        let r = &self.replication;
        let mut v = vec![
            "primary".into(),
            "--qmp".into(),
            g.qmp.display().to_string(),
            "--ram".into(),
            g.ram.display().to_string(),
            "--backup".into(),
            self.checkpoint_addr(),
            "--vm".into(),
            self.name.clone(),
            "--interval-ms".into(),
            r.interval_ms.to_string(),
            "--peer-timeout-ms".into(),
            r.peer_timeout_ms.to_string(),
            "--netbuf-control".into(),
            self.socket("netbuf").display().to_string(),
            "--diskrep-control".into(),
            self.socket("diskrep").display().to_string(),
            "--state-dir".into(),
            g.state_dir.display().to_string(),
            "--stats-log".into(),
            self.run_dir()
                .join("checkpoints.jsonl")
                .display()
                .to_string(),
            "--control".into(),
            g.control.display().to_string(),
            "--dirty-tracker".into(),
            r.dirty_tracker.clone(),
        ];
        if r.compress {
            v.push("--compress".into());
        }
        v.extend(self.witness.checkpointd_args());
        v.extend(self.auth_args());
        v
    }

    pub fn checkpointd_backup(&self) -> Vec<String> {
        let mut v = vec![
            "backup".into(),
            "--listen".into(),
            self.checkpoint_addr(),
            "--ram-image".into(),
            self.ram_file(Role::Backup).display().to_string(),
            "--state-dir".into(),
            self.run_dir().join("state").display().to_string(),
            "--peer-timeout-ms".into(),
            self.replication.peer_timeout_ms.to_string(),
            "--diskrep-control".into(),
            self.socket("diskrep").display().to_string(),
            "--control".into(),
            self.socket("checkpointd").display().to_string(),
        ];
        v.extend(self.auth_args());
        v.extend(self.witness.checkpointd_args());
        if let Some(m) = self.replication.peer_timeout_max_ms {
            v.extend(["--peer-timeout-max-ms".into(), m.to_string()]);
        }
        if let Some(g) = self.witness.grace_ms() {
            v.extend(["--grace-ms".into(), g.to_string()]);
        }
        v.push("--".into());
        v.extend(self.qemu_restore());
        v
    }
}

/// Where checkpointd primary finds the guest and keeps its own state.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestHandles {
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The guest RAM file (a shared memory-backend-file).
    pub ram: PathBuf,
    /// checkpointd primary's control socket.
    pub control: PathBuf,
    /// checkpointd primary's state directory.
    pub state_dir: PathBuf,
}
