//! The `diskrep` binary: `primary` (serve NBD, replicate), `backup` (receive, commit,
//! activate) and `ctl` (control client).

use clap::{Parser, Subcommand};
use diskrep::control::{self, Role};
use diskrep::lineage::{self, keeper::Keeper, meta::MetaRole, LineageId};
use diskrep::listen::Listener;
use diskrep::node::Node;
use diskrep::repl::backup::{Backup, BackupConfig};
use diskrep::repl::primary::{ReplConfig, Replicator};
use diskrep::store::{Disk, EngineChoice};
use remus_proto::auth::flags::AuthArgs;
use remus_proto::auth::Security;
use remus_proto::ctl_socket::{ControlServer, Handler};
use remus_proto::exit;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The replication backlog cap and stall bound of a primary, and of an activated backup once
/// `replicate` gives it a backup of its own.
const MAX_BACKLOG: usize = 256 << 20;
const STALL_TIMEOUT_MS: u64 = 1000;

#[derive(Parser)]
#[command(
    name = "diskrep",
    version,
    about = "NBD disk server with asynchronous per-epoch replication to a backup",
    long_about = "diskrep serves a protected guest's disk over NBD (fixed newstyle; READ, WRITE, \
FLUSH, TRIM, WRITE_ZEROES, FUA), writes locally, and streams every completed write, tagged with \
its epoch, to a backup. The backup buffers each epoch in memory and applies it to its image only \
on `commit N`, answering once it is durable. On failover, `activate` drops uncommitted epochs \
and serves the backup image over NBD.\n\n\
Control protocol (Unix socket, one line per request): hello | barrier N (primary, activated \
backup) | commit N (backup) | activate [force] [generation=N] (backup) | replicate HOST:PORT \
(primary without --backup, activated backup: start protecting) | status [json].\nReplies `ok ...` \
or `err CODE text`.\n\n\
Lineage: beside the image (IMAGE.lineage) diskrep records what state the image holds and an \
activity log of the regions that may hold writes not yet committed elsewhere. When a backup \
connects, the two records decide the resync: only the regions either side may hold \
differently, or (lineage unknown or not matching) the whole disk, said in the log and in \
`status`.\n\n\
Exit codes: 0 ok, 1 failure, 2 usage, 3 command rejected, 4 daemon unreachable, 5 missing \
privileges, 6 no such file, 7 busy (address or socket in use, or --control names a file that is \
not a socket: it is never replaced).\n\n\
Replication is authenticated: primary and backup hold the same key file (`remus keygen PATH`, \
mode 0600) and pass it with --key-file; each proves the key to the other (challenge-response \
with fresh nonces), then every frame carries a sequence-numbered HMAC-SHA256 (or, with \
--encrypt, ChaCha20-Poly1305). A connection that fails to authenticate is refused without \
disturbing the live link. --insecure-no-auth runs without, and is warned about: anyone \
reaching the port could then overwrite the backup image.",
    after_help = "Examples:\n  \
remus keygen /etc/remus/vm1.key   # once; copy the file to the other host (mode 0600)\n  \
diskrep primary --image vm.img --listen 127.0.0.1:10809 --backup 10.0.0.2:7790 --key-file /etc/remus/vm1.key --control /run/diskrep.sock\n  \
diskrep backup --image vm-copy.img --repl-listen 0.0.0.0:7790 --listen 0.0.0.0:10809 --key-file /etc/remus/vm1.key --control /run/diskrep.sock\n  \
diskrep ctl --control /run/diskrep.sock barrier 5\n  \
qemu-io -f raw nbd://127.0.0.1:10809 -c 'write -P 0xab 0 64k'"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The disk image (a raw file of the export's size; create it with qemu-img or truncate).
    #[arg(long)]
    image: PathBuf,
    /// Control socket path.
    #[arg(long)]
    control: PathBuf,
    /// NBD export name (the empty name also selects it).
    #[arg(long, default_value = "disk")]
    export: String,
    /// Local I/O engine.
    #[arg(long, value_enum, default_value = "auto")]
    io: EngineChoice,
    /// Silence after which the peer is considered gone, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    peer_timeout_ms: u64,
    /// The image's lineage metadata (what state it holds, its activity log, its generations);
    /// default: the image's path with `.lineage` appended. Written crash-safely; a missing or
    /// damaged file means the next sync with a peer is a full one.
    #[arg(long)]
    lineage: Option<PathBuf>,
    /// Activity-log size in regions (DRBD's al-extents): the regions kept "hot" in the
    /// metadata so that writes to them need no metadata write; at most this many (plus any not
    /// yet committed on a backup) are copied back after a crash.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    al_regions: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the image over NBD; with --backup, replicate every write to it.
    Primary {
        #[command(flatten)]
        common: Common,
        /// NBD listen address: HOST:PORT or unix:PATH.
        #[arg(long)]
        listen: String,
        /// The backup's replication address (HOST:PORT). Without it: a plain NBD server that
        /// tracks every write for a later resync.
        #[arg(long)]
        backup: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
        /// Resync granularity in bytes (power of two).
        #[arg(long, default_value_t = 1 << 20)]
        region_size: u64,
        /// Most bytes queued for the backup; beyond it writes wait (see --stall-timeout-ms).
        #[arg(long, default_value_t = MAX_BACKLOG)]
        max_backlog: usize,
        /// How long a write may wait for backlog room before protection is dropped (the
        /// backup is then resynced from the dirty map when it catches up).
        #[arg(long, default_value_t = STALL_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        stall_timeout_ms: u64,
        /// The witness' generation number this primary runs under, recorded in the lineage.
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Receive a primary's stream; apply epochs on `commit N`; serve NBD after `activate`.
    Backup {
        #[command(flatten)]
        common: Common,
        /// Where the primary connects (HOST:PORT).
        #[arg(long)]
        repl_listen: String,
        #[command(flatten)]
        auth: AuthArgs,
        /// NBD listen address used after `activate`: HOST:PORT or unix:PATH.
        #[arg(long)]
        listen: String,
        /// Most bytes of uncommitted epochs held in memory; beyond it the stream is dropped
        /// and the primary resyncs later.
        #[arg(long, default_value_t = 1 << 30)]
        max_buffer: usize,
        /// How long `commit N` waits for epoch N to arrive whole, in milliseconds.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        commit_timeout_ms: u64,
        /// Resync granularity in bytes (power of two) once activated: the regions its activity
        /// log records and a later `replicate` copies.
        #[arg(long, default_value_t = 1 << 20)]
        region_size: u64,
    },
    /// Send control commands to a running diskrep and print the replies.
    Ctl {
        #[arg(long)]
        control: PathBuf,
        /// For `status`: print JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments, e.g. `commit 5`; `-` reads one command per line from
        /// standard input.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISKREP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Ctl {
            control,
            json,
            command,
        } => remus_proto::ctl_socket::run_client("diskrep", &control, json, &command),
        cmd => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(daemon(cmd)),
            Err(e) => {
                eprintln!("diskrep: cannot start the runtime: {e}");
                exit::FAILURE
            }
        },
    };
    std::process::exit(code);
}

fn control_handler(role: Arc<Role>) -> Handler {
    let rt = tokio::runtime::Handle::current();
    Arc::new(move |req| rt.block_on(control::handle(&role, req)))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
}

async fn daemon(cmd: Cmd) -> i32 {
    let (common, ms) = match &cmd {
        Cmd::Primary { common, .. } | Cmd::Backup { common, .. } => (
            common.clone(),
            Duration::from_millis(common.peer_timeout_ms),
        ),
        Cmd::Ctl { .. } => return exit::USAGE,
    };
    let disk = match Disk::open(&common.image, common.io) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("diskrep: {e}");
            return exit::for_io_error(&e);
        }
    };
    let lineage_path = common
        .lineage
        .clone()
        .unwrap_or_else(|| lineage::store::default_path(&common.image));
    let (region_size, role) = match &cmd {
        Cmd::Primary { region_size, .. } => (*region_size, MetaRole::Primary),
        Cmd::Backup { region_size, .. } => (*region_size, MetaRole::Backup),
        Cmd::Ctl { .. } => return exit::USAGE,
    };
    if !region_size.is_power_of_two() || region_size < 4096 {
        eprintln!("diskrep: --region-size must be a power of two >= 4096");
        return exit::USAGE;
    }
    let keeper = match Keeper::open(
        &lineage_path,
        disk.size(),
        region_size,
        common.al_regions as usize,
        role,
    ) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            eprintln!("diskrep: lineage metadata {}: {e}", lineage_path.display());
            return exit::for_io_error(&e);
        }
    };
    let heartbeat = (ms / 4).max(Duration::from_millis(50));
    let _server; // keeps the control socket alive until exit
    match cmd {
        Cmd::Primary {
            listen,
            backup,
            auth,
            region_size,
            max_backlog,
            stall_timeout_ms,
            generation,
            ..
        } => {
            // Without a backup there is no link to protect yet, and no key is needed; but a key
            // given is the one `replicate` (e.g. from `remus protect --attach`) uses later.
            let keyed = auth.key_file.is_some() || auth.insecure_no_auth;
            let security = if backup.is_some() || keyed {
                match auth.security("diskrep") {
                    Ok(s) => s,
                    Err(code) => return code,
                }
            } else {
                Security::Insecure
            };
            let lineage = LineageId::fresh(generation);
            if let Err(e) = keeper
                .enter(lineage, MetaRole::Primary, None, "never synchronised")
                .await
            {
                eprintln!(
                    "diskrep: cannot write the lineage metadata {}: {e}",
                    lineage_path.display()
                );
                return exit::for_io_error(&e);
            }
            let repl = Replicator::new(
                ReplConfig {
                    backup,
                    max_backlog,
                    stall_timeout: Duration::from_millis(stall_timeout_ms),
                    peer_timeout: ms,
                    heartbeat,
                    region_size,
                    export: common.export.clone(),
                    security,
                },
                disk.clone(),
                keeper.clone(),
                lineage,
            );
            let listener = match Listener::bind(&listen) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("diskrep: {e}");
                    return exit::for_io_error(&e);
                }
            };
            let role = Arc::new(Role::Primary(repl.clone()));
            _server = match ControlServer::start(&common.control, control_handler(role)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("diskrep: control socket {}: {e}", common.control.display());
                    return exit::for_io_error(&e);
                }
            };
            repl.spawn();
            let node = Node::new(disk, common.export.clone(), repl);
            tokio::spawn(listener.serve(node));
            tracing::info!(%listen, "diskrep primary serving NBD");
        }
        Cmd::Backup {
            repl_listen,
            auth,
            listen,
            max_buffer,
            commit_timeout_ms,
            region_size,
            ..
        } => {
            let security = match auth.security("diskrep") {
                Ok(s) => s,
                Err(code) => return code,
            };
            // Re-protection from the activated backup authenticates with the same key.
            let replicate_security = security.clone();
            let backup = Backup::new(
                BackupConfig {
                    peer_timeout: ms,
                    heartbeat,
                    commit_timeout: Duration::from_millis(commit_timeout_ms),
                    max_buffer,
                    security,
                },
                disk.clone(),
                keeper.clone(),
            );
            let rl = match tokio::net::TcpListener::bind(&repl_listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("diskrep: replication listen on {repl_listen}: {e}");
                    return exit::for_io_error(&e);
                }
            };
            let export = common.export.clone();
            let nbd = listen.clone();
            let bind = Box::new(move || Listener::bind(&nbd));
            let serve = Box::new(move |l: Listener, lineage: LineageId| {
                // The activated backup is a standalone server that tracks every write for a
                // later re-protection.
                let repl = Replicator::new(
                    ReplConfig {
                        backup: None,
                        max_backlog: MAX_BACKLOG,
                        stall_timeout: Duration::from_millis(STALL_TIMEOUT_MS),
                        peer_timeout: ms,
                        heartbeat,
                        region_size,
                        export: export.clone(),
                        security: replicate_security.clone(),
                    },
                    disk.clone(),
                    keeper.clone(),
                    lineage,
                );
                tokio::spawn(l.serve(Node::new(disk.clone(), export.clone(), repl.clone())));
                tracing::info!(%listen, "activated: serving the backup image over NBD");
                (format!("serving={listen}"), repl)
            });
            tokio::spawn(backup.clone().listen(rl));
            let role = Arc::new(Role::Backup {
                backup,
                bind,
                serve,
                activated: std::sync::OnceLock::new(),
            });
            _server = match ControlServer::start(&common.control, control_handler(role)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("diskrep: control socket {}: {e}", common.control.display());
                    return exit::for_io_error(&e);
                }
            };
            tracing::info!(%repl_listen, "diskrep backup waiting for a primary");
        }
        Cmd::Ctl { .. } => return exit::USAGE,
    }
    wait_for_signal().await;
    tracing::info!("diskrep stopping");
    exit::OK
}
