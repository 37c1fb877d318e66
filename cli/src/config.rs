//! One VM's protection set-up: a TOML file, overridden by flags, defaulting to the demo
//! topology. Pure: parsing, validation and the command lines of every daemon and of QEMU are
//! derived here and unit-tested; nothing is started.
//!
//! The same file serves both hosts. `remus protect` reads `[net] guest_if/uplink_if` and
//! connects to `[replication] backup`; `remus receive` listens on that address and restores the
//! guest on its own `guest_if` (a TAP the operator bridged to the LAN).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

mod auth;
mod commands;
mod witness;
pub use commands::GuestHandles;
pub use witness::{Etcd, Witness, DEMO_WITNESS};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The VM's name: checkpointd's `--vm`, and the default run directory.
    pub name: String,
    /// Control sockets, logs, the pid file and checkpointd's state. Default /run/remus/NAME.
    pub run_dir: Option<PathBuf>,
    pub guest: Guest,
    pub disk: Disk,
    pub net: Net,
    pub replication: Replication,
    /// Who decides, when the hosts lose each other, which one may run the VM alone.
    pub witness: Witness,
    pub metrics: Metrics,
}

/// The Prometheus endpoint `remus protect` / `remus receive` serve (cli/src/metrics).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `GET http://LISTEN/metrics`; none by default.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Guest {
    /// The guest's QEMU command line: program and the VM's own arguments (kernel, CPU, serial,
    /// ...). remus adds the RAM backend, QMP, the disk (over NBD from diskrep) and the NIC.
    pub qemu: Vec<String>,
    pub ram_mib: u64,
    /// The guest RAM file (shared with checkpointd). Default /dev/shm/remus-NAME-ram on the
    /// primary, /dev/shm/remus-NAME-backup-ram on the backup.
    pub ram_file: Option<PathBuf>,
    pub mac: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Disk {
    /// The raw disk image on this host (the same size on both).
    pub image: Option<PathBuf>,
    /// diskrep's NBD address on this host; the guest's QEMU connects to it.
    pub nbd: SocketAddr,
    pub export: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Net {
    /// The guest's TAP device on this host (created beforehand, e.g. `ip tuntap add`).
    pub guest_if: String,
    /// Primary: the interface towards the LAN that netbuf forwards the guest's frames to.
    pub uplink_if: String,
    /// netbuf's backend: `user` (AF_PACKET) or `plug` (sch_plug).
    pub backend: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// The backup host's replication address (IP or name, no port).
    pub backup: String,
    pub checkpoint_port: u16,
    pub disk_port: u16,
    pub interval_ms: u64,
    /// The shortest silence that makes either side give up on the other (the backup's
    /// detector adapts it to the heartbeats' jitter, up to peer_timeout_max_ms).
    pub peer_timeout_ms: u64,
    /// The longest silence before the backup suspects the primary. Default: twice
    /// peer_timeout_ms.
    pub peer_timeout_max_ms: Option<u64>,
    pub compress: bool,
    /// How checkpointd finds the pages the guest changed: auto, uffd, soft-dirty or compare.
    pub dirty_tracker: String,
    /// The replication key both hosts hold (`remus keygen PATH`), or "none": no
    /// authentication (explicit, warned about). Required.
    pub key_file: Option<String>,
    /// Also encrypt both replication streams (ChaCha20-Poly1305).
    pub encrypt: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "vm".into(),
            run_dir: None,
            guest: Guest::default(),
            disk: Disk::default(),
            net: Net::default(),
            replication: Replication::default(),
            witness: Witness::default(),
            metrics: Metrics::default(),
        }
    }
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            qemu: Vec::new(),
            ram_mib: 128,
            ram_file: None,
            mac: "52:54:00:12:34:56".into(),
        }
    }
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            image: None,
            nbd: SocketAddr::from(([127, 0, 0, 1], 10809)),
            export: "disk".into(),
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Net {
            guest_if: "tap0".into(),
            uplink_if: "uplink".into(),
            backend: "user".into(),
        }
    }
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            backup: "10.99.0.2".into(),
            checkpoint_port: 7791,
            disk_port: 7792,
            interval_ms: 100,
            peer_timeout_ms: 300,
            peer_timeout_max_ms: None,
            compress: true,
            dirty_tracker: "auto".into(),
            key_file: None,
            encrypt: false,
        }
    }
}

/// Bounds of the timing keys (checkpointd refuses values outside them too).
pub const MAX_INTERVAL_MS: u64 = 60_000;
pub const MIN_PEER_TIMEOUT_MS: u64 = 10;
pub const MAX_PEER_TIMEOUT_MS: u64 = 3_600_000;

/// checkpointd's `--dirty-tracker` values.
pub const DIRTY_TRACKERS: [&str; 4] = ["auto", "uffd", "soft-dirty", "compare"];

/// The preload shim that creates a userfaultfd inside QEMU for checkpointd's uffd tracker
/// (built with the workspace, found next to the daemons).
pub const UFFD_SHIM: &str = "libremus_uffd_shim.so";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

/// Why a configuration cannot be used (exit code 2).
#[derive(Debug, PartialEq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/remus").join(&self.name))
    }

    pub fn socket(&self, daemon: &str) -> PathBuf {
        self.run_dir().join(format!("{daemon}.sock"))
    }

    pub fn ram_file(&self, role: Role) -> PathBuf {
        self.guest.ram_file.clone().unwrap_or_else(|| {
            PathBuf::from(match role {
                Role::Primary => format!("/dev/shm/remus-{}-ram", self.name),
                Role::Backup => format!("/dev/shm/remus-{}-backup-ram", self.name),
            })
        })
    }

    fn backup_addr(&self, port: u16) -> String {
        // An IPv6 literal needs brackets before the port.
        if self.replication.backup.contains(':') {
            format!("[{}]:{port}", self.replication.backup)
        } else {
            format!("{}:{port}", self.replication.backup)
        }
    }

    pub fn checkpoint_addr(&self) -> String {
        self.backup_addr(self.replication.checkpoint_port)
    }

    pub fn disk_addr(&self) -> String {
        self.backup_addr(self.replication.disk_port)
    }

    /// Everything that makes the set-up unusable whatever the host: checked before anything
    /// starts, so a typo never leaves half a set-up running. Every value that reaches a
    /// command line is held to its narrow form (see [`crate::validate`]): QEMU splits option
    /// strings at commas, so a loose value could add options to the guest's QEMU.
    pub fn validate(&self, role: Role) -> Result<(), ConfigError> {
        use crate::validate as v;
        let key = |k: &str, r: Result<(), String>| r.map_err(|e| ConfigError(format!("{k} {e}")));
        key("name", v::plain_name(&self.name, 64))?;
        key("run_dir", v::socket_path(&self.socket("checkpointd")))?;
        if self.guest.qemu.is_empty() || self.guest.qemu[0].is_empty() {
            return Err(ConfigError("no guest: give [guest] qemu = [\"qemu-system-x86_64\", ...] in the config, or the QEMU command after --".into()));
        }
        for a in &self.guest.qemu {
            key("[guest] qemu argument", v::plain_text(a))?;
        }
        if self.guest.ram_mib == 0 || self.guest.ram_mib > v::MAX_RAM_MIB {
            return Err(ConfigError(format!(
                "[guest] ram_mib = {}: between 1 and {} (1 TiB)",
                self.guest.ram_mib,
                v::MAX_RAM_MIB
            )));
        }
        key("[guest] ram_file", v::qemu_path(&self.ram_file(role)))?;
        key("[guest] mac", v::mac(&self.guest.mac))?;
        let Some(image) = &self.disk.image else {
            return Err(ConfigError(
                "no disk image: give [disk] image = \"/path/to/raw.img\" or --image".into(),
            ));
        };
        key("[disk] image", v::plain_text(&image.to_string_lossy()))?;
        if image.as_os_str().is_empty() {
            return Err(ConfigError("[disk] image is empty".into()));
        }
        key("[disk] export", v::plain_name(&self.disk.export, 64))?;
        key("[net] guest_if", v::interface(&self.net.guest_if))?;
        if role == Role::Primary {
            key("[net] uplink_if", v::interface(&self.net.uplink_if))?;
        }
        if !["user", "plug"].contains(&self.net.backend.as_str()) {
            return Err(ConfigError(format!(
                "[net] backend {:?}: user or plug",
                self.net.backend
            )));
        }
        key("[replication] backup", v::host(&self.replication.backup))?;
        let r = &self.replication;
        if r.checkpoint_port == 0 || r.disk_port == 0 || r.checkpoint_port == r.disk_port {
            return Err(ConfigError(
                "[replication] checkpoint_port and disk_port must be two different ports".into(),
            ));
        }
        if !(1..=MAX_INTERVAL_MS).contains(&r.interval_ms) {
            return Err(ConfigError(format!(
                "[replication] interval_ms = {}: between 1 and {MAX_INTERVAL_MS}",
                r.interval_ms
            )));
        }
        if !(MIN_PEER_TIMEOUT_MS..=MAX_PEER_TIMEOUT_MS).contains(&r.peer_timeout_ms) {
            return Err(ConfigError(format!(
                "[replication] peer_timeout_ms = {}: between {MIN_PEER_TIMEOUT_MS} and {MAX_PEER_TIMEOUT_MS}",
                r.peer_timeout_ms
            )));
        }
        if r.peer_timeout_max_ms.is_some_and(|m| m < r.peer_timeout_ms) {
            return Err(ConfigError(
                "[replication] peer_timeout_max_ms must be at least peer_timeout_ms".into(),
            ));
        }
        self.witness.validate().map_err(ConfigError)?;
        auth::validate(r.key_file.as_deref(), r.encrypt).map_err(ConfigError)?;
        if !DIRTY_TRACKERS.contains(&r.dirty_tracker.as_str()) {
            return Err(ConfigError(format!(
                "[replication] dirty_tracker {:?}: one of {}",
                r.dirty_tracker,
                DIRTY_TRACKERS.join(", ")
            )));
        }
        Ok(())
    }

    /// True when protection runs without fencing (`witness = "none"`).
    pub fn unfenced(&self) -> bool {
        self.witness.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable() -> Config {
        let mut c = Config::default();
        c.guest.qemu = vec!["qemu-system-x86_64".into(), "-accel".into(), "tcg".into()];
        c.disk.image = Some("/var/lib/vm.img".into());
        c.replication.key_file = Some("/etc/remus/vm.key".into());
        c
    }

    #[test]
    fn a_full_file_parses_and_unknown_keys_are_refused() {
        let c = Config::parse(
            r#"
            name = "web1"
            run_dir = "/tmp/r"
            [guest]
            qemu = ["qemu-system-x86_64", "-accel", "tcg"]
            ram_mib = 256
            [disk]
            image = "/img"
            nbd = "127.0.0.1:10900"
            [net]
            guest_if = "tapB"
            [replication]
            backup = "192.0.2.7"
            interval_ms = 25
            compress = false
            dirty_tracker = "compare"
            key_file = "/etc/remus/web1.key"
            encrypt = true
            [witness]
            endpoints = ["http://192.0.2.8:2379", "http://192.0.2.9:2379"]
            grace_ms = 120
            [metrics]
            listen = "0.0.0.0:9779"
            "#,
        )
        .unwrap();
        assert_eq!(c.name, "web1");
        assert_eq!(c.guest.ram_mib, 256);
        assert_eq!(c.net.uplink_if, "uplink", "unset keys keep their defaults");
        assert_eq!(c.replication.dirty_tracker, "compare");
        assert!(c
            .checkpointd_primary()
            .join(" ")
            .contains("--dirty-tracker compare"));
        assert_eq!(c.checkpoint_addr(), "192.0.2.7:7791");
        for daemon in [
            c.checkpointd_primary(),
            c.checkpointd_backup(),
            c.diskrep_primary(),
            c.diskrep_backup(),
        ] {
            assert!(
                daemon
                    .join(" ")
                    .contains("--key-file /etc/remus/web1.key --encrypt"),
                "{daemon:?}"
            );
        }
        assert_eq!(c.metrics.listen, Some("0.0.0.0:9779".parse().unwrap()));
        assert!(c.validate(Role::Primary).is_ok());
        let e = Config::parse("[guest]\nram = 3\n").unwrap_err();
        assert!(e.0.contains("unknown field"), "{e}");
        assert!(Config::parse("name = 3").is_err());
        let w = c.checkpointd_backup().join(" ");
        assert!(
            w.contains("--witness http://192.0.2.8:2379,http://192.0.2.9:2379")
                && w.contains("--grace-ms 120")
                && w.contains("--witness-timeout-ms 500"),
            "{w}"
        );
        let c = Config::parse("witness = \"none\"\n").unwrap();
        assert!(c.unfenced());
        assert!(c.checkpointd_primary().join(" ").contains("--witness none"));
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(Config::default()
            .validate(Role::Primary)
            .unwrap_err()
            .0
            .contains("no guest"));
        let mut c = usable();
        c.disk.image = None;
        assert!(c
            .validate(Role::Backup)
            .unwrap_err()
            .0
            .contains("no disk image"));
        let mut c = usable();
        c.replication.disk_port = c.replication.checkpoint_port;
        assert!(c
            .validate(Role::Primary)
            .unwrap_err()
            .0
            .contains("two different ports"));
        let mut c = usable();
        c.name = "a/b".into();
        assert!(c.validate(Role::Primary).is_err());
        let mut c = usable();
        c.net.backend = "xdp".into();
        assert!(c.validate(Role::Primary).is_err());
        let mut c = usable();
        c.witness = Witness::Named("nobody".into());
        assert!(c.validate(Role::Primary).unwrap_err().0.contains("witness"));
        c.witness = Witness::Named("none".into());
        assert!(c.validate(Role::Primary).is_ok() && c.unfenced());
        c.replication.dirty_tracker = "softdirty".into();
        assert!(c
            .validate(Role::Primary)
            .unwrap_err()
            .0
            .contains("auto, uffd, soft-dirty, compare"));
        let mut c = usable();
        c.net.uplink_if.clear();
        assert!(c.validate(Role::Primary).is_err());
        assert!(
            c.validate(Role::Backup).is_ok(),
            "the backup has no uplink to name"
        );
    }

    #[test]
    fn values_that_reach_a_command_line_are_held_to_their_form() {
        let refused = |text: &str, says: &str| {
            let mut c = Config::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            if c.guest.qemu.is_empty() {
                c.guest.qemu = usable().guest.qemu;
            }
            if c.disk.image.is_none() {
                c.disk.image = usable().disk.image;
            }
            if c.replication.key_file.is_none() {
                c.replication.key_file = usable().replication.key_file;
            }
            let e = c.validate(Role::Primary).unwrap_err();
            assert!(e.0.contains(says), "{text}: {e}");
        };
        refused("[guest]\nram_mib = 18446744073709551615\n", "ram_mib");
        refused("[guest]\nram_mib = 0\n", "ram_mib");
        refused("[guest]\nmac = \"a:b:c:d:e:f,romfile=/x\"\n", "[guest] mac");
        refused(
            "[guest]\nmac = \"52:54:00:12:34:56,romfile=/x\"\n",
            "[guest] mac",
        );
        refused("[guest]\nram_file = \"/dev/shm/x,share=off\"\n", "ram_file");
        refused("[net]\nguest_if = \"tap0,script=/tmp/evil\"\n", "guest_if");
        refused("[disk]\nexport = \"disk,format=qcow2\"\n", "export");
        refused("run_dir = \"/tmp/a,b\"\n", "run_dir");
        refused(
            &format!("run_dir = \"/tmp/{}\"\n", "d".repeat(100)),
            "run_dir",
        );
        refused("name = \"..\"\n", "name");
        refused("[replication]\nbackup = \"10.0.0.2:7791\"\n", "backup");
        refused(
            "[replication]\ninterval_ms = 18446744073709551615\n",
            "interval_ms",
        );
        refused("[replication]\npeer_timeout_ms = 0\n", "peer_timeout_ms");
        refused("[replication]\nkey_file = \"\"\n", "key_file");
        refused(
            "[replication]\nkey_file = \"k --insecure-no-auth\"\n",
            "key_file",
        );
        refused(
            "[guest]\nqemu = [\"qemu-system-x86_64\", \"-name\\u0000x\"]\n",
            "qemu",
        );
        // The defaults, and what the tests and the demo use, stay accepted.
        assert!(usable().validate(Role::Primary).is_ok());
    }

    #[test]
    fn primary_and_restore_qemu_share_the_vm_but_not_the_ram() {
        let c = usable();
        let p = c.qemu_primary();
        let r = c.qemu_restore();
        assert_eq!(&p[..3], &c.guest.qemu[..]);
        assert_eq!(
            &p[..r.len()],
            &r[..],
            "the restored VM has the same devices"
        );
        let joined = p.join(" ");
        assert!(joined.contains("mem-path=/dev/shm/remus-vm-ram,share=on"));
        assert!(joined.contains("file=nbd://127.0.0.1:10809/disk,format=raw"));
        assert!(joined.contains("ifname=tap0"));
        assert!(joined.contains("-qmp unix:/run/remus/vm/qmp.sock"));
        assert!(
            !r.join(" ").contains("memory-backend"),
            "checkpointd adds its own"
        );
    }

    #[test]
    fn the_uffd_shim_is_preloaded_only_where_the_uffd_tracker_may_be_used() {
        let mut c = usable();
        let shim = std::path::Path::new("/opt/remus/libremus_uffd_shim.so");
        assert_eq!(
            c.qemu_primary_env(Some(shim), None),
            vec![("LD_PRELOAD".to_string(), shim.display().to_string())]
        );
        assert_eq!(
            c.qemu_primary_env(Some(shim), Some("/lib/other.so"))[0].1,
            "/lib/other.so:/opt/remus/libremus_uffd_shim.so",
            "an inherited preload is kept"
        );
        assert!(c.qemu_primary_env(None, None).is_empty(), "no shim found");
        c.replication.dirty_tracker = "compare".into();
        assert!(c.qemu_primary_env(Some(shim), None).is_empty());
    }

    #[test]
    fn daemons_agree_on_sockets_and_addresses() {
        let c = usable();
        let cp = c.checkpointd_primary().join(" ");
        assert!(cp.contains("--netbuf-control /run/remus/vm/netbuf.sock"));
        assert!(cp.contains("--diskrep-control /run/remus/vm/diskrep.sock"));
        assert!(cp.contains("--backup 10.99.0.2:7791"));
        assert!(cp.contains("--compress --witness http://10.97.0.10:2379 --witness-prefix /remus"));
        assert!(cp.contains("--dirty-tracker auto"), "{cp}");
        assert!(c
            .diskrep_primary()
            .join(" ")
            .contains("--backup 10.99.0.2:7792"));
        assert!(c
            .diskrep_backup()
            .join(" ")
            .contains("--repl-listen 10.99.0.2:7792"));
        let cb = c.checkpointd_backup();
        let dash = cb.iter().position(|a| a == "--").unwrap();
        assert_eq!(&cb[dash + 1..], &c.qemu_restore()[..]);
        assert!(cb
            .join(" ")
            .contains("--ram-image /dev/shm/remus-vm-backup-ram"));
        assert!(cb.join(" ").contains("--witness http://10.97.0.10:2379"));
        let mut c6 = c.clone();
        c6.replication.backup = "fd00::2".into();
        assert_eq!(c6.disk_addr(), "[fd00::2]:7792");
    }
}
