//! The command-line options every primary and every backup take, whatever the hypervisor.

use checkpointd::core::primary::Config;
use checkpointd::engine::{backup::BackupOpts, primary::PrimaryOpts};
use checkpointd::witness::WitnessConfig;
use remus_proto::auth::flags::AuthArgs;
use std::path::PathBuf;
use std::time::Duration;

/// Where the witness is.
#[derive(clap::Args)]
pub struct WitnessArgs {
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

/// The primary's options (QEMU and Xen alike).
#[derive(clap::Args)]
pub struct PrimaryArgs {
    /// The backup checkpointd (HOST:PORT).
    #[arg(long)]
    backup: String,
    #[command(flatten)]
    auth: AuthArgs,
    /// The VM's name: the witness keys its generation by it (default: vm; Xen: xen-domain-DOMID).
    #[arg(long)]
    vm: Option<String>,
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
    /// Write one JSON line per checkpoint here.
    #[arg(long)]
    stats_log: Option<PathBuf>,
    /// Control socket: `hello`, `status [json]`.
    #[arg(long)]
    control: Option<PathBuf>,
    #[command(flatten)]
    witness: WitnessArgs,
}

impl PrimaryArgs {
    /// The engine's options; a usage error says what is wrong.
    pub fn opts(self, default_vm: &str) -> Result<PrimaryOpts, String> {
        if self.depth == 0 {
            return Err("--depth and --interval-ms must be at least 1".into());
        }
        let witness = self.witness.config()?;
        let security = self
            .auth
            .security("checkpointd")
            .unwrap_or_else(|code| std::process::exit(code));
        Ok(PrimaryOpts {
            backup: self.backup,
            vm: self.vm.unwrap_or_else(|| default_vm.to_string()),
            core: Config {
                interval: Duration::from_millis(self.interval_ms),
                depth: self.depth,
                peer_timeout: Duration::from_millis(self.peer_timeout_ms),
                ack_timeout: Duration::from_millis(self.ack_timeout_ms),
                heartbeat: Duration::from_millis((self.peer_timeout_ms / 4).max(10)),
                claim_retry: Duration::from_millis(200),
            },
            netbuf: self.netbuf_control,
            diskrep: self.diskrep_control,
            stats_log: self.stats_log,
            control: self.control,
            witness,
            security,
        })
    }
}

/// The backup's options (QEMU and Xen alike).
#[derive(clap::Args)]
pub struct BackupArgs {
    #[arg(long)]
    listen: String,
    #[command(flatten)]
    auth: AuthArgs,
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
}

impl BackupArgs {
    /// The engine's options; a usage error says what is wrong.
    pub fn opts(self, state_dir: Option<PathBuf>) -> Result<BackupOpts, String> {
        let witness = self.witness.config()?;
        let mut core =
            checkpointd::core::backup::Config::new(Duration::from_millis(self.peer_timeout_ms));
        if let Some(m) = self.peer_timeout_max_ms {
            core.detect_ceiling = Duration::from_millis(m).max(core.peer_timeout);
        }
        // Without a witness there is nothing for the primary to win first, so no grace
        // (the failover is as fast as before fencing existed).
        if witness.is_none() {
            core.grace = Duration::ZERO;
        }
        if let Some(g) = self.grace_ms {
            core.grace = Duration::from_millis(g);
        }
        let security = self
            .auth
            .security("checkpointd")
            .unwrap_or_else(|code| std::process::exit(code));
        Ok(BackupOpts {
            listen: self.listen,
            state_dir,
            core,
            witness,
            diskrep: self.diskrep_control,
            control: self.control,
            security,
        })
    }
}
