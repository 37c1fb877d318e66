//! The `checkpointd` binary: `primary` checkpoints a running QEMU guest to a backup;
//! `backup` receives the checkpoints and restores the guest when the primary goes silent.

use checkpointd::core::primary::Config;
use checkpointd::engine::backup::{self, BackupOpts};
use checkpointd::engine::primary::{self, PrimaryOpts};
use checkpointd::hv::qemu::{Qemu, QemuOpts};
use checkpointd::hv::qemu_backup::{QemuBackup, QemuBackupOpts};
use checkpointd::witness::WitnessConfig;
use clap::{Parser, Subcommand};
use remus_proto::auth::flags::AuthArgs;
use remus_proto::exit;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "checkpointd",
    version,
    about = "Remus epoch driver: checkpoints a QEMU guest to a backup many times a second",
    long_about = "checkpointd primary pauses the guest every --interval-ms (measured pause to \
pause), marks the epoch boundary in netbuf and diskrep, captures the changed RAM pages (guest \
RAM must be a shared memory-backend-file) and the device state (QMP xen-save-devices-state), \
resumes the guest, and only then ships the checkpoint. When the backup acknowledges epoch N \
(memory staged and diskrep committed), netbuf releases epoch N's output.\n\n\
checkpointd backup stages each checkpoint, commits diskrep's epoch, then makes it the restore \
point and acknowledges it. When the primary is silent for --peer-timeout-ms it activates diskrep \
and restores the guest in a new QEMU from the last committed checkpoint.\n\n\
SIGINT/SIGTERM to the primary is a planned stop: it tells the backup, which then exits (0) \
without failing over. Anything else that silences the primary (a crash, a dead host, a cut \
link) is a failure.\n\n\
Fencing (--witness): neither side acts alone without first winning the VM's generation at the \
witness (etcd compare-and-swap on PREFIX/VM/generation). The backup claims it before it \
restores anything (after a grace, so that the primary wins when only the replication link is \
cut); the primary claims it before it releases held output to run unprotected. The loser \
stands down; while the witness does not answer nobody acts. --witness none opts out: a \
network partition then yields two running copies.\n\n\
Exit codes: 0 ok (backup: the restored guest's QEMU exit status once it ends), 1 failure, 2 usage \
(also a malformed address), 5 missing privileges, 6 not found (QMP socket, RAM file, a daemon's \
control socket), 7 busy (the --control path or --listen port is in use, or --control names a \
file that is not a socket), 9 fenced (the other side holds the generation or took over: this \
side stopped its guest, or restored nothing).\n\n\
The checkpoint stream is authenticated: both sides hold the same key file (`remus keygen PATH`, \
mode 0600; --key-file), prove it to each other with fresh nonces, then authenticate every \
frame (HMAC-SHA256 with a sequence number; --encrypt: ChaCha20-Poly1305). The backup takes the \
first primary that authenticates; silent connections, garbage and wrong keys are refused on \
their own threads and counted in `status` (auth_refused). --insecure-no-auth opts out (warned \
about; both sides).",
    after_help = "Example (primary's QEMU started with\n  \
-object memory-backend-file,id=remus-ram,size=128M,mem-path=/dev/shm/vm1,share=on \
-machine memory-backend=remus-ram -qmp unix:/run/vm1.qmp,server=on,wait=off):\n  \
checkpointd backup --listen 0.0.0.0:7791 --key-file /etc/remus/vm1.key --ram-image /dev/shm/vm1-backup --state-dir /var/lib/remus/vm1 -- qemu-system-x86_64 <same devices>\n  \
checkpointd primary --qmp /run/vm1.qmp --ram /dev/shm/vm1 --backup backup-host:7791 --key-file /etc/remus/vm1.key --netbuf-control /run/netbuf-vm1.sock"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the witness is.
#[derive(clap::Args)]
struct WitnessArgs {
    /// The witness that decides who may run the VM alone: etcd endpoints, comma-separated
    /// (http://HOST:2379,...), or "none" (no fencing: a network partition yields two running
    /// copies). Both sides must name the same witness.
    #[arg(long, value_name = "ENDPOINTS|none")]
    witness: String,
    /// Key prefix of the generation records (PREFIX/VM/generation).
    #[arg(long, default_value = "/remus")]
    witness_prefix: String,
    /// A witness call without an answer after this long is an unknown outcome (nobody acts;
    /// it is retried).
    #[arg(long, default_value_t = 500)]
    witness_timeout_ms: u64,
}

impl WitnessArgs {
    fn config(&self) -> Result<WitnessConfig, String> {
        if self.witness == "none" {
            return Ok(WitnessConfig::None);
        }
        let endpoints: Vec<String> = self
            .witness
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty()
            || self.witness_timeout_ms == 0
            || !self.witness_prefix.starts_with('/')
        {
            return Err("--witness needs etcd endpoints (http://HOST:2379) or \"none\", --witness-timeout-ms at least 1, --witness-prefix starting with /".into());
        }
        Ok(WitnessConfig::Etcd {
            endpoints,
            prefix: self.witness_prefix.clone(),
            timeout: Duration::from_millis(self.witness_timeout_ms),
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a running guest to the backup until SIGINT/SIGTERM.
    Primary {
        /// QEMU's QMP socket.
        #[arg(long)]
        qmp: PathBuf,
        /// The guest RAM file (the memory-backend-file's mem-path).
        #[arg(long)]
        ram: PathBuf,
        /// The backup checkpointd (HOST:PORT).
        #[arg(long)]
        backup: String,
        #[command(flatten)]
        auth: AuthArgs,
        #[arg(long, default_value = "vm")]
        vm: String,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        interval_ms: u64,
        /// Checkpoints shipped but not acknowledged at once (capped by netbuf's max depth).
        #[arg(long, default_value_t = 1)]
        depth: usize,
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        peer_timeout_ms: u64,
        /// How long an acknowledgement may take once a checkpoint is shipped, while the backup
        /// is heard from. A dead backup is caught by --peer-timeout-ms; this catches a live one
        /// that stopped committing. Generous: giving up protection releases all held output
        /// and ends the backup's role (the first checkpoints of a booting guest, tens of MiB,
        /// took 1.7 s to apply on a loaded 2-core machine).
        #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        ack_timeout_ms: u64,
        /// netbuf's control socket (output commit); without it output is not held.
        #[arg(long)]
        netbuf_control: Option<PathBuf>,
        /// diskrep primary's control socket.
        #[arg(long)]
        diskrep_control: Option<PathBuf>,
        #[arg(long, default_value = "/run/remus")]
        state_dir: PathBuf,
        /// Write one JSON line per checkpoint here.
        #[arg(long)]
        stats_log: Option<PathBuf>,
        /// Compress checkpoints: XOR each dirty page with its previous copy, then LZ4.
        #[arg(long)]
        compress: bool,
        /// Control socket: `hello`, `status [json]`.
        #[arg(long)]
        control: Option<PathBuf>,
        #[command(flatten)]
        witness: WitnessArgs,
        /// How to find the pages the guest changed. uffd: a userfaultfd in QEMU, write-protect
        /// and PAGEMAP_SCAN (Linux >= 6.7; QEMU started with libremus_uffd_shim.so in
        /// LD_PRELOAD, or else a uffd injected into QEMU with ptrace); soft-dirty: clear_refs and pagemap (kernels with
        /// CONFIG_MEM_SOFT_DIRTY); compare: every page against the previous copy (O(RAM)).
        /// auto takes the first that works, in that order; `status` shows the choice and why.
        #[arg(long, value_enum, default_value_t = checkpointd::dirty::Kind::Auto)]
        dirty_tracker: checkpointd::dirty::Kind,
        /// Never ptrace QEMU to create a uffd in it (then uffd needs the preload shim).
        #[arg(long)]
        no_uffd_inject: bool,
        /// Also compare all of RAM at every checkpoint and fail if the tracker missed a changed
        /// page (testing; the pause includes the comparison).
        #[arg(long)]
        validate_dirty: bool,
        /// QEMU RAM blocks a checkpoint carries. all: besides guest RAM, the firmware, option
        /// ROMs, ACPI tables and video memory, in QEMU's migration stream (x-ignore-shared); a
        /// QEMU restored with -incoming has them empty otherwise, so a failover during boot, or
        /// a reboot after a failover, would fail. main: guest RAM only, devices through
        /// xen-save-devices-state (a shorter pause).
        #[arg(long, value_enum, default_value_t = checkpointd::device_state::RamBlocks::All)]
        ram_blocks: checkpointd::device_state::RamBlocks,
    },
    /// Receive checkpoints; fail over when the primary goes silent.
    Backup {
        #[arg(long)]
        listen: String,
        #[command(flatten)]
        auth: AuthArgs,
        /// The committed RAM image (created at the guest's RAM size).
        #[arg(long)]
        ram_image: PathBuf,
        #[arg(long)]
        state_dir: PathBuf,
        /// The shortest silence of the primary's heartbeats that makes it suspect. The actual
        /// timeout adapts to how jittery its heartbeats have been (phi-accrual), up to
        /// --peer-timeout-max-ms.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        peer_timeout_ms: u64,
        /// The longest silence before a suspicion, however jittery the heartbeats
        /// (default: twice --peer-timeout-ms).
        #[arg(long)]
        peer_timeout_max_ms: Option<u64>,
        /// After suspicion, wait this long (any word from the primary cancels) before claiming
        /// the generation, so that the primary wins when only the replication link is cut
        /// (default: half of --peer-timeout-ms; 0 with --witness none).
        #[arg(long)]
        grace_ms: Option<u64>,
        #[command(flatten)]
        witness: WitnessArgs,
        /// diskrep backup's control socket.
        #[arg(long)]
        diskrep_control: Option<PathBuf>,
        /// Control socket: `hello`, `status [json]`, `failover` (planned switch-over).
        #[arg(long)]
        control: Option<PathBuf>,
        /// The QEMU command line (program and device arguments) used to restore the guest.
        #[arg(last = true, required = true)]
        qemu: Vec<String>,
    },
    /// Xen (dom0): checkpoint domain --domid with libxenguest's Remus stream.
    #[cfg(feature = "xen")]
    XenPrimary {
        #[arg(long)]
        domid: u32,
        /// The backup's `xen-backup` (HOST:PORT).
        #[arg(long)]
        backup: String,
        #[command(flatten)]
        auth: AuthArgs,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        interval_ms: u64,
        /// As for `checkpointd primary` (see its --help).
        #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        ack_timeout_ms: u64,
        #[arg(long)]
        netbuf_control: Option<PathBuf>,
        #[arg(long)]
        diskrep_control: Option<PathBuf>,
    },
    /// Xen (dom0): receive a Remus stream into domain --domid; resume it when the stream ends.
    #[cfg(feature = "xen")]
    XenBackup {
        #[arg(long)]
        domid: u32,
        #[arg(long)]
        listen: String,
        #[command(flatten)]
        auth: AuthArgs,
        #[arg(long)]
        diskrep_control: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHECKPOINTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match Cli::parse().cmd {
        Cmd::Primary {
            qmp,
            ram,
            backup,
            auth,
            vm,
            interval_ms,
            depth,
            peer_timeout_ms,
            ack_timeout_ms,
            netbuf_control,
            diskrep_control,
            state_dir,
            stats_log,
            compress,
            control,
            witness,
            dirty_tracker,
            no_uffd_inject,
            validate_dirty,
            ram_blocks,
        } => {
            if depth == 0 || interval_ms == 0 {
                eprintln!("checkpointd: --depth and --interval-ms must be at least 1");
                std::process::exit(exit::USAGE);
            }
            let witness = witness.config().unwrap_or_else(|e| usage(&e));
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let _ = signal_hook::flag::register(sig, stop.clone());
            }
            let qemu = QemuOpts {
                qmp,
                ram,
                state_dir,
                compress,
                dirty_tracker,
                uffd_inject: !no_uffd_inject,
                validate_dirty,
                ram_blocks,
            };
            let opts = PrimaryOpts {
                backup,
                vm,
                core: Config {
                    interval: Duration::from_millis(interval_ms),
                    depth,
                    peer_timeout: Duration::from_millis(peer_timeout_ms),
                    ack_timeout: Duration::from_millis(ack_timeout_ms),
                    heartbeat: Duration::from_millis((peer_timeout_ms / 4).max(10)),
                    claim_retry: Duration::from_millis(200),
                },
                netbuf: netbuf_control,
                diskrep: diskrep_control,
                stats_log,
                control,
                witness,
                security: auth
                    .security("checkpointd")
                    .unwrap_or_else(|code| std::process::exit(code)),
            };
            let run = Qemu::open(&qemu).and_then(|hv| primary::run(hv, opts, stop));
            match run {
                Ok(primary::Ended::Stopped) => exit::OK,
                Ok(primary::Ended::Fenced(why)) => {
                    eprintln!("checkpointd: fenced: {why}");
                    exit::FENCED
                }
                Err(e) => {
                    eprintln!("checkpointd: {e:#}");
                    exit_code(&e)
                }
            }
        }
        Cmd::Backup {
            listen,
            auth,
            ram_image,
            state_dir,
            peer_timeout_ms,
            peer_timeout_max_ms,
            grace_ms,
            witness,
            diskrep_control,
            control,
            qemu,
        } => {
            let witness = witness.config().unwrap_or_else(|e| usage(&e));
            if peer_timeout_ms == 0 {
                usage("--peer-timeout-ms must be at least 1");
            }
            let mut core =
                checkpointd::core::backup::Config::new(Duration::from_millis(peer_timeout_ms));
            if let Some(m) = peer_timeout_max_ms {
                core.detect_ceiling = Duration::from_millis(m).max(core.peer_timeout);
            }
            // Without a witness there is nothing for the primary to win first, so no grace
            // (the failover is as fast as before fencing existed).
            if witness.is_none() {
                core.grace = Duration::ZERO;
            }
            if let Some(g) = grace_ms {
                core.grace = Duration::from_millis(g);
            }
            let hv = QemuBackupOpts {
                ram_image,
                state_dir: state_dir.clone(),
                qemu,
            };
            let opts = BackupOpts {
                listen,
                state_dir,
                core,
                witness,
                diskrep: diskrep_control,
                control,
                security: auth
                    .security("checkpointd")
                    .unwrap_or_else(|code| std::process::exit(code)),
            };
            match backup::run(opts, |hello| QemuBackup::open(hv, hello)) {
                Ok(backup::Outcome::StoodDown) => {
                    eprintln!("checkpointd: the primary ended protection; no failover");
                    exit::OK
                }
                Ok(backup::Outcome::Fenced(why)) => {
                    eprintln!(
                        "checkpointd: fenced: {why}; the primary runs the VM, nothing was restored"
                    );
                    exit::FENCED
                }
                Ok(backup::Outcome::Restored(mut restored)) => {
                    // The restored guest runs under us; its exit is ours.
                    match restored.vm.wait() {
                        Ok(st) => st.code().unwrap_or(exit::FAILURE),
                        Err(_) => exit::FAILURE,
                    }
                }
                Err(e) => {
                    eprintln!("checkpointd: {e:#}");
                    exit_code(&e)
                }
            }
        }
        #[cfg(feature = "xen")]
        Cmd::XenPrimary {
            domid,
            backup,
            auth,
            interval_ms,
            ack_timeout_ms,
            netbuf_control,
            diskrep_control,
        } => match checkpointd::xen::save::run(checkpointd::xen::save::SaveOpts {
            domid,
            backup,
            interval: Duration::from_millis(interval_ms),
            ack_timeout: Duration::from_millis(ack_timeout_ms),
            netbuf: netbuf_control,
            diskrep: diskrep_control,
            security: auth
                .security("checkpointd")
                .unwrap_or_else(|code| std::process::exit(code)),
        }) {
            Ok(n) => {
                println!("checkpoints={n}");
                exit::OK
            }
            Err(e) => {
                eprintln!("checkpointd: {e:#}");
                exit_code(&e)
            }
        },
        #[cfg(feature = "xen")]
        Cmd::XenBackup {
            domid,
            listen,
            auth,
            diskrep_control,
        } => match checkpointd::xen::restore::run(checkpointd::xen::restore::RestoreOpts {
            domid,
            listen,
            diskrep: diskrep_control,
            security: auth
                .security("checkpointd")
                .unwrap_or_else(|code| std::process::exit(code)),
        }) {
            Ok(e) => {
                println!(
                    "resumed_from={}",
                    e.map_or("none".into(), |e| e.to_string())
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("checkpointd: {e:#}");
                exit_code(&e)
            }
        },
    };
    std::process::exit(code);
}

/// The documented exit code for a failed run: the first I/O error behind it decides (a busy
/// control path or port is 7, a missing socket or file 6, ...), anything else is 1.
fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map_or(exit::FAILURE, exit::for_io_error)
}

fn usage(e: &str) -> ! {
    eprintln!("checkpointd: {e}");
    std::process::exit(exit::USAGE)
}
