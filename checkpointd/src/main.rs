//! The `checkpointd` binary: `primary` checkpoints a running QEMU guest to a backup;
//! `backup` receives the checkpoints and restores the guest when the primary goes silent.

mod cli;

use checkpointd::engine::{backup, primary};
use checkpointd::hv::qemu::{Qemu, QemuOpts};
use checkpointd::hv::qemu_backup::{QemuBackup, QemuBackupOpts};
use clap::{Parser, Subcommand};
use cli::{BackupArgs, PrimaryArgs};
use remus_proto::exit;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
xen-primary and xen-backup (built with the `xen` feature, run in dom0) do the same for a Xen \
domain through libxenguest, under the same engine: same options, heartbeats, fencing, control \
socket and switch-over.\n\n\
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
        #[command(flatten)]
        common: PrimaryArgs,
        #[arg(long, default_value = "/run/remus")]
        state_dir: PathBuf,
        /// Compress checkpoints: XOR each dirty page with its previous copy, then LZ4.
        #[arg(long)]
        compress: bool,
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
        #[command(flatten)]
        common: BackupArgs,
        /// The committed RAM image (created at the guest's RAM size).
        #[arg(long)]
        ram_image: PathBuf,
        #[arg(long)]
        state_dir: PathBuf,
        /// The QEMU command line (program and device arguments) used to restore the guest.
        #[arg(last = true, required = true)]
        qemu: Vec<String>,
    },
    /// Xen (dom0): checkpoint domain --domid with libxenguest's Remus stream, under the same
    /// engine as `primary` (heartbeats, fencing, control socket, planned stop).
    #[cfg(feature = "xen")]
    XenPrimary {
        /// The running domain to protect.
        #[arg(long)]
        domid: u32,
        #[command(flatten)]
        common: PrimaryArgs,
    },
    /// Xen (dom0): receive checkpoints into domain --domid (created paused by the toolstack);
    /// on failover resume it from the last committed checkpoint.
    #[cfg(feature = "xen")]
    XenBackup {
        /// The domain the checkpoints are restored into (created paused by the toolstack).
        #[arg(long)]
        domid: u32,
        #[command(flatten)]
        common: BackupArgs,
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
            common,
            state_dir,
            compress,
            dirty_tracker,
            no_uffd_inject,
            validate_dirty,
            ram_blocks,
        } => {
            let opts = common.opts("vm").unwrap_or_else(|e| usage(&e));
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
            primary_exit(Qemu::open(&qemu).and_then(|hv| primary::run(hv, opts, stop_flag())))
        }
        Cmd::Backup {
            common,
            ram_image,
            state_dir,
            qemu,
        } => {
            let opts = common
                .opts(Some(state_dir.clone()))
                .unwrap_or_else(|e| usage(&e));
            let hv = QemuBackupOpts {
                ram_image,
                state_dir,
                qemu,
            };
            match backup_exit(backup::run(opts, |hello| QemuBackup::open(hv, hello))) {
                // The restored guest runs under us; its exit is ours.
                Ok(mut restored) => match restored.vm.wait() {
                    Ok(st) => st.code().unwrap_or(exit::FAILURE),
                    Err(_) => exit::FAILURE,
                },
                Err(code) => code,
            }
        }
        #[cfg(feature = "xen")]
        Cmd::XenPrimary { domid, common } => {
            let opts = common
                .opts(&format!("xen-domain-{domid}"))
                .unwrap_or_else(|e| usage(&e));
            primary_exit(
                checkpointd::hv::xen::primary::Xen::start(domid)
                    .and_then(|hv| primary::run(hv, opts, stop_flag())),
            )
        }
        #[cfg(feature = "xen")]
        Cmd::XenBackup { domid, common } => {
            let opts = common.opts(None).unwrap_or_else(|e| usage(&e));
            match backup_exit(backup::run(opts, |hello| {
                checkpointd::hv::xen::backup::XenBackup::open(domid, hello)
            })) {
                // The domain runs on its own; say from which checkpoint.
                Ok(restored) => {
                    println!("resumed_from={}", restored.vm);
                    exit::OK
                }
                Err(code) => code,
            }
        }
    };
    std::process::exit(code);
}

/// SIGINT/SIGTERM end protection on purpose.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

fn primary_exit(r: anyhow::Result<primary::Ended>) -> i32 {
    match r {
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

/// The running VM after a failover (with the control socket, which must keep answering
/// `status` while it runs), or the exit code of a run that restored nothing.
fn backup_exit<R>(r: anyhow::Result<backup::Outcome<R>>) -> Result<backup::Restored<R>, i32> {
    match r {
        Ok(backup::Outcome::StoodDown) => {
            eprintln!("checkpointd: the primary ended protection; no failover");
            Err(exit::OK)
        }
        Ok(backup::Outcome::Fenced(why)) => {
            eprintln!("checkpointd: fenced: {why}; the primary runs the VM, nothing was restored");
            Err(exit::FENCED)
        }
        Ok(backup::Outcome::Restored(restored)) => Ok(restored),
        Err(e) => {
            eprintln!("checkpointd: {e:#}");
            Err(exit_code(&e))
        }
    }
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
