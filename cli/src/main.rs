//! `remus`: the front end ops scripts use to protect a VM, watch it and fail it over.

use clap::{Parser, Subcommand};
use remus::config::Config;
use remus::status::Sockets;
use remus_proto::exit;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The exit codes, as a literal (`concat!` needs one).
macro_rules! exit_codes {
    () => {
        "Exit codes (stable; scripts may branch on them):\n  \
0  ok (status: the VM is protected; protect/receive: stopped cleanly)\n  \
1  failure (a daemon died, the guest could not start, stop timed out)\n  \
2  usage: bad arguments or configuration (a key whose value has the wrong form is named)\n  \
3  a daemon refused the request\n  \
4  a daemon's control socket is unreachable\n  \
5  missing privileges (run as root)\n  \
6  not found: a program (with the Debian package to install), an interface, the disk image, the backup's host name, a running remus\n  \
7  busy: a port in use, or another remus already runs for this VM\n  \
8  status: every daemon answered but the VM is NOT protected\n  \
9  fenced: the other host runs the VM (it took over, or won the generation at the witness); \
this host stopped its copy (protect) or restored nothing (receive); status: this side is fenced"
    };
}

const EXIT_CODES: &str = exit_codes!();

#[derive(Parser)]
#[command(
    name = "remus",
    version,
    about = "Keep a VM running through the failure of its host (Remus-style checkpointing)",
    long_about = "remus runs one VM under Remus protection across two hosts.\n\n\
On the primary, `remus protect` starts diskrep (the guest's disk over NBD, every write mirrored \
to the backup), netbuf (the guest's network output held until the checkpoint that produced it \
is safe), the guest's QEMU and checkpointd (a checkpoint of the running guest every few tens \
of milliseconds). On the backup, `remus receive` starts diskrep and checkpointd, which apply \
each checkpoint only once memory and disk of it are complete, and restore the guest there when \
the primary goes silent.\n\n\
Both read one TOML file (--config; cli/README.md lists every key) whose defaults match \
`remus demo`'s topology; flags override it.\n\n\
Both replication links are authenticated with a per-VM key ([replication] key_file, made by \
`remus keygen`): each side proves the key to the other, every frame is authenticated, and \
`encrypt = true` also encrypts. `key_file = \"none\"` runs without (warned about).",
    after_help = concat!(
        "Examples:\n  \
remus keygen /etc/remus/vm1.key           # once; copy it to both hosts, name it in key_file\n  \
remus receive --config vm1.toml            # on the backup host, first\n  \
remus protect --config vm1.toml            # on the primary host\n  \
remus status --dir /run/remus/vm1          # either host; --json for scripts\n  \
remus failover --dir /run/remus/vm1        # on the backup: planned switch-over\n  \
remus stop --run-dir /run/remus/vm1        # either host: end protection (no failover)\n  \
remus demo                                 # the whole story on one machine, in namespaces\n\n",
        "Exit codes: 0 ok, 1 failure, 2 usage, 3 refused, 4 unreachable, 5 privileges, \
6 not found, 7 busy, 8 not protected, 9 fenced (details: remus help protect)"
    )
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The set-up of one VM: a config file, overridden by flags.
#[derive(clap::Args)]
struct Setup {
    /// TOML file describing the VM (every key in cli/README.md); without it, the built-in
    /// defaults (the demo topology).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The VM's name (default run directory /run/remus/NAME).
    #[arg(long)]
    name: Option<String>,
    /// Control sockets, logs and the pid file.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The raw disk image on this host.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The guest's TAP device on this host.
    #[arg(long)]
    guest_if: Option<String>,
    /// Primary: the interface to the LAN.
    #[arg(long)]
    uplink_if: Option<String>,
    /// The backup host's replication address.
    #[arg(long)]
    backup: Option<String>,
    /// diskrep's NBD address on this host (the guest's QEMU connects to it).
    #[arg(long)]
    nbd: Option<SocketAddr>,
    /// The guest RAM file on this host.
    #[arg(long)]
    ram_file: Option<PathBuf>,
    /// Milliseconds between checkpoints (pause to pause); output waits about this long.
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Silence of the primary after which the backup takes over.
    #[arg(long)]
    peer_timeout_ms: Option<u64>,
    /// The witness that fences a partition: etcd endpoints, comma-separated
    /// (http://HOST:2379,...), or "none" (no fencing: a partition yields two running copies).
    #[arg(long, value_name = "ENDPOINTS|none")]
    witness: Option<String>,
    /// Serve Prometheus metrics of this host's daemons on http://ADDR/metrics (e.g.
    /// 0.0.0.0:9779); replaces [metrics] listen.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How checkpointd finds the pages the guest changed: auto (the first that works of the
    /// next three), uffd (Linux >= 6.7), soft-dirty (kernels with CONFIG_MEM_SOFT_DIRTY) or
    /// compare (every page, O(RAM)). `remus status` shows the choice and why.
    #[arg(long, value_parser = remus::config::DIRTY_TRACKERS)]
    dirty_tracker: Option<String>,
    /// The replication key file both hosts hold (made by `remus keygen PATH`), or "none" to
    /// run WITHOUT authentication (warned about); replaces [replication] key_file.
    #[arg(long, value_name = "PATH|none")]
    key_file: Option<String>,
    /// The guest's QEMU program and its own arguments (kernel, serial, ...); replaces
    /// [guest] qemu. remus adds RAM, QMP, disk and NIC.
    #[arg(last = true)]
    qemu: Vec<String>,
}

impl Setup {
    fn load(self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                Config::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = self.name {
            c.name = v;
        }
        c.run_dir = self.run_dir.or(c.run_dir);
        c.disk.image = self.image.or(c.disk.image);
        c.guest.ram_file = self.ram_file.or(c.guest.ram_file);
        if let Some(v) = self.guest_if {
            c.net.guest_if = v;
        }
        if let Some(v) = self.uplink_if {
            c.net.uplink_if = v;
        }
        if let Some(v) = self.backup {
            c.replication.backup = v;
        }
        if let Some(v) = self.nbd {
            c.disk.nbd = v;
        }
        if let Some(v) = self.interval_ms {
            c.replication.interval_ms = v;
        }
        if let Some(v) = self.peer_timeout_ms {
            c.replication.peer_timeout_ms = v;
        }
        c.metrics.listen = self.metrics.or(c.metrics.listen);
        if let Some(v) = self.key_file {
            c.replication.key_file = Some(v);
        }
        if let Some(v) = self.dirty_tracker {
            c.replication.dirty_tracker = v;
        }
        if !self.qemu.is_empty() {
            c.guest.qemu = self.qemu;
        }
        match self.witness.as_deref() {
            None => {}
            Some("none") => c.witness = remus::config::Witness::Named("none".into()),
            Some(list) => {
                let mut e = match c.witness {
                    remus::config::Witness::Etcd(e) => e,
                    remus::config::Witness::Named(_) => remus::config::Etcd::default(),
                };
                e.endpoints = list.split(',').map(|u| u.trim().to_string()).collect();
                c.witness = remus::config::Witness::Etcd(e);
            }
        }
        Ok(c)
    }
}

#[derive(clap::Args)]
struct ProtectArgs {
    #[command(flatten)]
    setup: Setup,
    /// Protect a guest that already runs instead of starting QEMU: after a failover, the guest
    /// restored on this host (re-protection: found through this run directory's `remus
    /// receive`), or a guest started with its RAM in a shared memory-backend-file, a QMP
    /// socket, its disk on a running diskrep and its TAP behind a running netbuf (cli/README.md,
    /// "attach"). Starts only checkpointd; the disk resync covers what diverged.
    #[arg(long)]
    attach: bool,
    /// With --attach: the guest's QMP socket (default: RUN_DIR/qmp.sock; after a failover, the
    /// restored guest's).
    #[arg(long, requires = "attach", value_name = "PATH")]
    qmp: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Primary host: start diskrep, netbuf, the guest's QEMU and checkpointd; show the initial
    /// sync; supervise until SIGINT/SIGTERM (a planned stop: the backup does not take over) or
    /// until a daemon dies (reported; this copy of the VM is stopped and the backup takes over).
    ///
    /// With --attach: protect a guest that already runs instead of starting one (the guest a
    /// failover restored on this host, or one started as cli/README.md "attach" describes);
    /// only checkpointd is started, and a planned stop leaves the guest running.
    #[command(after_help = concat!(
        "Re-protection after a failover (the VM never stops):\n  \
old primary host# remus receive --config vm1.toml --backup OLD_PRIMARY_ADDR   # its image as the crash left it\n  \
new primary host# remus protect --attach --config vm1.toml --backup OLD_PRIMARY_ADDR\n  \
   (only what diverged is resynced: the disk lineage decides; memory starts with a full checkpoint)\n  \
old primary host# remus failover --dir /run/remus/vm1                          # later: fail back, planned\n\n",
        exit_codes!()
    ))]
    Protect(ProtectArgs),
    /// Backup host: start diskrep and checkpointd backup; take over when the primary goes
    /// silent and keep the restored guest running.
    #[command(after_help = EXIT_CODES)]
    Receive(Setup),
    /// One status for the VM: role, epoch, checkpoint rate, pause p50/p99, bytes per epoch,
    /// frames held, epochs not yet acknowledged, the generation and its owner at the witness and
    /// whether the witness answers, protected or not and why not (exit 9: this side is fenced).
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        sockets: Sockets,
        #[arg(long)]
        json: bool,
    },
    /// Planned switch-over: the backup restores the VM from its last committed checkpoint now.
    #[command(after_help = EXIT_CODES)]
    Failover {
        #[command(flatten)]
        sockets: Sockets,
    },
    /// End a `remus protect` or `remus receive` run (protection ends without a failover).
    #[command(after_help = EXIT_CODES)]
    Stop {
        /// The run directory of the run to stop.
        #[arg(long, default_value = "/run/remus/vm")]
        run_dir: PathBuf,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
    /// The Pacemaker resource agent ocf:remus:vm (promotable clone): ACTION is start, stop,
    /// monitor, promote, demote, notify, meta-data or validate-all; parameters come from
    /// OCF_RESKEY_* variables. Installed as /usr/lib/ocf/resource.d/remus/vm (dist/ocf/vm);
    /// exits with OCF's codes (0, 1-7, 8 running promoted, 9 failed promoted), not remus' own.
    Ocf {
        /// The OCF action.
        action: String,
    },
    /// Write a new replication key to PATH (32 random bytes as hex, mode 0600). Never replaces
    /// an existing file (exit 7). Copy it to the other host (mode 0600 there too) and name it
    /// in both hosts' [replication] key_file.
    #[command(after_help = EXIT_CODES)]
    Keygen {
        /// Where to write the key, e.g. /etc/remus/vm1.key.
        path: PathBuf,
    },
    /// The whole story on this machine: two hosts in network namespaces, a guest under QEMU
    /// with a TCP service and a disk writer, protection, a primary crash, failover.
    #[command(after_help = EXIT_CODES)]
    Demo(remus::demo::DemoArgs),
}

fn main() {
    let code = match Cli::parse().cmd {
        Cmd::Protect(p) => match p.setup.load() {
            Ok(c) if p.attach => remus::attach::run(&c, p.qmp),
            Ok(c) => remus::protect::run(&c),
            Err(e) => usage(&e),
        },
        Cmd::Receive(s) => match s.load() {
            Ok(c) => remus::receive::run(&c),
            Err(e) => usage(&e),
        },
        Cmd::Status { sockets, json } => remus::status::status(&sockets, json),
        Cmd::Failover { sockets } => remus::status::failover(&sockets),
        Cmd::Stop { run_dir, timeout_s } => {
            remus::stop::run(&run_dir, Duration::from_secs(timeout_s))
        }
        Cmd::Ocf { action } => remus::ocf::run(&action),
        Cmd::Keygen { path } => keygen(&path),
        Cmd::Demo(a) => remus::demo::run(a),
    };
    std::process::exit(code);
}

fn keygen(path: &std::path::Path) -> i32 {
    match remus_proto::auth::Key::generate_file(path) {
        Ok(_) => {
            println!(
                "wrote {} (mode 0600); copy it to the other host (mode 0600) and set \
                 [replication] key_file = {:?} on both",
                path.display(),
                path.display().to_string()
            );
            exit::OK
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "remus: {} exists: a key is never overwritten (the peers holding it would be cut off); remove it first to replace it",
                path.display()
            );
            exit::BUSY
        }
        Err(e) => {
            eprintln!("remus: {}: {e}", path.display());
            exit::for_io_error(&e)
        }
    }
}

fn usage(e: &str) -> i32 {
    eprintln!("remus: {e}");
    exit::USAGE
}
