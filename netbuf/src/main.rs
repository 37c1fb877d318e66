//! The `netbuf` binary: `netbuf run` (the daemon) and `netbuf ctl` (its control client).

use clap::{Parser, Subcommand, ValueEnum};
use netbuf::backend::{plug::PlugBackend, user::UserBackend, Backend};
use netbuf::Limits;
use remus_proto::ctl_socket::ControlServer;
use remus_proto::exit;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "netbuf",
    version,
    about = "Epoch-gated egress buffer for a protected VM",
    long_about = "netbuf holds every frame a protected guest sends until the checkpoint of the \
epoch it was sent in is safe on the backup (Remus output commit). Inbound frames are never held.\n\n\
It starts UNPROTECTED (frames pass straight through). The first `barrier N` starts protection; \
`release N` sends everything from epochs <= N; `release-all` ends protection.\n\n\
Control protocol (one line per request, on the --control Unix socket, mode 0600):\n  \
hello | barrier N | release N | release-all | discard | stats [json]\n\
Replies: `ok ...` or `err CODE text` (CODE: PARSE UNKNOWN ORDER DEPTH STATE BACKEND).\n\n\
Exit codes: 0 ok, 1 failure, 2 usage, 3 command rejected (err reply), 4 daemon unreachable, \
5 missing privileges, 6 no such interface/file, 7 busy (socket held by a running daemon, or \
--control names a file that is not a socket: it is never replaced).",
    after_help = "Examples:\n  netbuf run --guest-if vif1 --uplink-if eth1 --control /run/netbuf-vm1.sock\n  \
netbuf ctl --control /run/netbuf-vm1.sock barrier 1\n  \
netbuf ctl --control /run/netbuf-vm1.sock stats --json\n  \
printf 'barrier 2\\nrelease 1\\n' | netbuf ctl --control /run/netbuf-vm1.sock -"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    /// AF_PACKET between --guest-if and --uplink-if; any depth; runs on any Linux.
    User,
    /// Kernel IFB + sch_plug on --guest-if's ingress; depth 1; needs CONFIG_NET_SCH_PLUG.
    Plug,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the buffer daemon until SIGINT/SIGTERM. Held frames are discarded on exit (their
    /// epochs never committed).
    Run {
        /// The guest-facing interface (TAP, Xen vif, veth). Frames the guest sends arrive here.
        #[arg(long)]
        guest_if: String,
        /// Where released frames go (user backend only). Inbound frames from here are
        /// forwarded to the guest at once.
        #[arg(long)]
        uplink_if: Option<String>,
        #[arg(long, value_enum, default_value = "user")]
        backend: BackendKind,
        /// Path of the control socket to create.
        #[arg(long)]
        control: PathBuf,
        /// Most frames held at once (user backend); newer frames are dropped (tail drop).
        #[arg(long, default_value_t = Limits::default().max_frames)]
        max_frames: usize,
        /// Most bytes held at once; newer frames are dropped (tail drop). For plug, the qdisc limit.
        #[arg(long, default_value_t = Limits::default().max_bytes)]
        max_bytes: usize,
        /// Name of the IFB device to create (plug backend).
        #[arg(long)]
        ifb: Option<String>,
    },
    /// Send control commands to a running daemon and print the replies.
    Ctl {
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
        /// For `stats`: print JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments, e.g. `barrier 5`; `-` reads one command per line
        /// from standard input.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NETBUF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Run {
            guest_if,
            uplink_if,
            backend,
            control,
            max_frames,
            max_bytes,
            ifb,
        } => run(
            &guest_if,
            uplink_if.as_deref(),
            backend,
            &control,
            Limits {
                max_frames,
                max_bytes,
            },
            ifb,
        ),
        Cmd::Ctl {
            control,
            json,
            command,
        } => remus_proto::ctl_socket::run_client("netbuf", &control, json, &command),
    };
    std::process::exit(code);
}

fn run(
    guest_if: &str,
    uplink_if: Option<&str>,
    kind: BackendKind,
    control: &std::path::Path,
    limits: Limits,
    ifb: Option<String>,
) -> i32 {
    if limits.max_frames == 0 || limits.max_bytes == 0 {
        eprintln!("netbuf: --max-frames and --max-bytes must be at least 1");
        return exit::USAGE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("netbuf: cannot install signal handler: {e}");
            return exit::FAILURE;
        }
    }
    let mut user: Option<Arc<UserBackend>> = None;
    let backend: Arc<dyn Backend> = match kind {
        BackendKind::User => {
            let Some(up) = uplink_if else {
                eprintln!("netbuf: the user backend needs --uplink-if");
                return exit::USAGE;
            };
            match UserBackend::new(guest_if, up, limits) {
                Ok(b) => {
                    user = Some(b.clone());
                    b
                }
                Err(e) => {
                    eprintln!("netbuf: cannot open {guest_if}/{up}: {e}");
                    return exit::for_io_error(&e);
                }
            }
        }
        BackendKind::Plug => {
            if uplink_if.is_some() {
                eprintln!(
                    "netbuf: the plug backend has no uplink: frames continue to whatever \
                     --guest-if is attached to (e.g. a bridge); drop --uplink-if"
                );
                return exit::USAGE;
            }
            let ifb = ifb.unwrap_or_else(|| {
                let mut n = format!("nb-{guest_if}");
                n.truncate(15);
                n
            });
            match PlugBackend::new(guest_if, &ifb, limits) {
                Ok(b) => Arc::new(b),
                Err(e) => {
                    eprintln!("netbuf: cannot set up the plug backend on {guest_if}: {e}");
                    return exit::for_io_error(&e);
                }
            }
        }
    };
    let threads = match &user {
        Some(u) => match u.spawn() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("netbuf: cannot start forwarding threads: {e}");
                return exit::FAILURE;
            }
        },
        None => Vec::new(),
    };
    let server = match ControlServer::start(control, netbuf::control::handler(backend.clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netbuf: control socket {}: {e}", control.display());
            if let Some(u) = &user {
                u.stop();
            }
            return exit::for_io_error(&e);
        }
    };
    tracing::info!(
        backend = backend.name(),
        guest_if,
        uplink_if = uplink_if.unwrap_or("-"),
        control = %control.display(),
        "netbuf ready (unprotected until the first barrier)"
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    let held = backend.stats().held_frames;
    if let Some(u) = &user {
        u.stop();
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!(
        discarded_frames = held,
        "netbuf stopping; frames of uncommitted epochs are discarded"
    );
    drop(user);
    drop(backend);
    exit::OK
}
