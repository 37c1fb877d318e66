//! `remus`: the front end ops scripts use. This first cut composes the daemons' control
//! sockets: `remus status` (one view of a protected VM) and `remus failover` (planned
//! switch-over on the backup). Starting and supervising the daemons (`protect`, `receive`)
//! is not written yet.

use clap::{Parser, Subcommand};
use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use remus_proto::exit;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "remus",
    version,
    about = "Front end for a remus-protected VM",
    long_about = "remus reads the control sockets of a VM's netbuf, diskrep and checkpointd and \
reports one status, or asks the backup's checkpointd to fail over.\n\n\
Sockets are given one by one, or with --dir DIR as DIR/netbuf.sock, DIR/diskrep.sock and \
DIR/checkpointd.sock (missing ones are skipped).\n\n\
Exit codes: 0 ok (status: the VM is protected), 1 failure, 2 usage, 3 a daemon refused, \
4 a daemon unreachable, 8 status: the VM is NOT protected.",
    after_help = "Examples:\n  remus status --dir /run/remus/vm1\n  remus status --json --checkpointd /run/remus/vm1/checkpointd.sock\n  remus failover --checkpointd /run/remus/vm1-backup/checkpointd.sock"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Sockets {
    /// Directory holding netbuf.sock, diskrep.sock and checkpointd.sock.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    netbuf: Option<PathBuf>,
    #[arg(long)]
    diskrep: Option<PathBuf>,
    #[arg(long)]
    checkpointd: Option<PathBuf>,
}

impl Sockets {
    fn resolve(&self, name: &str, explicit: &Option<PathBuf>) -> Option<PathBuf> {
        explicit.clone().or_else(|| {
            self.dir
                .as_ref()
                .map(|d| d.join(format!("{name}.sock")))
                .filter(|p| p.exists())
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// One status for the VM: role, epoch, checkpoint rate, pause p50/p99, bytes per epoch,
    /// frames held, epochs not yet acknowledged, protected or not and why not.
    Status {
        #[command(flatten)]
        sockets: Sockets,
        #[arg(long)]
        json: bool,
    },
    /// Planned switch-over: the backup restores the VM from its last committed checkpoint now.
    Failover {
        #[command(flatten)]
        sockets: Sockets,
    },
}

enum Error {
    Unreachable(String),
    Refused(String),
}

fn ask(path: &Path, line: &str) -> Result<String, Error> {
    let mut c = ControlClient::connect(path)
        .map_err(|e| Error::Unreachable(format!("{}: {e}", path.display())))?;
    let _ = c.set_timeout(Some(Duration::from_secs(10)));
    match c.request(line) {
        Ok(Reply::Ok(t)) => Ok(t),
        Ok(Reply::Err(e)) => Err(Error::Refused(format!(
            "{}: {} {}",
            path.display(),
            e.code,
            e.message
        ))),
        Err(e) => Err(Error::Unreachable(format!("{}: {e}", path.display()))),
    }
}

fn ask_json(path: &Path, line: &str) -> Result<Value, Error> {
    let t = ask(path, line)?;
    serde_json::from_str(&t)
        .map_err(|e| Error::Refused(format!("{}: bad JSON: {e}", path.display())))
}

fn fail(e: Error) -> i32 {
    match e {
        Error::Unreachable(m) => {
            eprintln!("remus: unreachable: {m}");
            exit::UNREACHABLE
        }
        Error::Refused(m) => {
            eprintln!("remus: refused: {m}");
            exit::REJECTED
        }
    }
}

fn status(s: &Sockets, as_json: bool) -> i32 {
    let (nb, dr, cp) = (
        s.resolve("netbuf", &s.netbuf),
        s.resolve("diskrep", &s.diskrep),
        s.resolve("checkpointd", &s.checkpointd),
    );
    if nb.is_none() && dr.is_none() && cp.is_none() {
        eprintln!(
            "remus: no control socket given or found (--dir, --netbuf, --diskrep, --checkpointd)"
        );
        return exit::USAGE;
    }
    let get = |p: &Option<PathBuf>, line: &str| -> Result<Option<Value>, Error> {
        p.as_ref().map(|p| ask_json(p, line)).transpose()
    };
    let (n, d, c) = match (
        get(&nb, "stats json"),
        get(&dr, "status json"),
        get(&cp, "status json"),
    ) {
        (Ok(n), Ok(d), Ok(c)) => (n, d, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(e),
    };
    let mut why_not: Vec<String> = Vec::new();
    if let Some(c) = &c {
        let phase = c["phase"].as_str().unwrap_or("");
        if c["role"] == "primary" && phase != "protected" {
            why_not.push(format!(
                "checkpointd: {phase} ({})",
                c["reason"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(n) = &n {
        if n["protected"] == false {
            why_not.push("netbuf: output passes unbuffered".into());
        }
    }
    if let Some(d) = &d {
        if d["role"] == "primary" && d["link"] != "protected" {
            why_not.push(format!(
                "diskrep: backup link {} {}",
                d["link"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("")
            ));
        }
    }
    let role = c
        .as_ref()
        .map(|c| c["role"].clone())
        .or_else(|| d.as_ref().map(|d| d["role"].clone()))
        .unwrap_or(Value::Null);
    let protected = why_not.is_empty();
    let summary = json!({
        "role": role,
        "protected": protected,
        "why_not": why_not,
        "epoch": c.as_ref().and_then(|c| c.get("open_epoch").cloned())
            .or_else(|| d.as_ref().and_then(|d| d.get("epoch").cloned())),
        "committed_through": c.as_ref().and_then(|c| c.get("committed_through").cloned()),
        "checkpoint_rate": c.as_ref().and_then(|c| c.get("rate").cloned()),
        "pause_p50_us": c.as_ref().and_then(|c| c.get("pause_p50_us").cloned()),
        "pause_p99_us": c.as_ref().and_then(|c| c.get("pause_p99_us").cloned()),
        "bytes_last_epoch": c.as_ref().and_then(|c| c.get("last_bytes").cloned()),
        "epochs_unacked": c.as_ref().and_then(|c| c.get("unacked").cloned()),
        "frames_held": n.as_ref().and_then(|n| n.get("held_frames").cloned()),
        "netbuf": n, "diskrep": d, "checkpointd": c,
    });
    if as_json {
        println!("{summary}");
    } else {
        let g = |k: &str| match &summary[k] {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        println!(
            "role {}  {}  epoch {}  committed {}  {} checkpoints/s  pause p50 {} us p99 {} us  \
             last epoch {} bytes  unacked {}  frames held {}",
            g("role"),
            if protected {
                "PROTECTED"
            } else {
                "NOT PROTECTED"
            },
            g("epoch"),
            g("committed_through"),
            g("checkpoint_rate"),
            g("pause_p50_us"),
            g("pause_p99_us"),
            g("bytes_last_epoch"),
            g("epochs_unacked"),
            g("frames_held"),
        );
        for w in &why_not {
            println!("  not protected: {w}");
        }
    }
    if protected {
        exit::OK
    } else {
        exit::NOT_PROTECTED
    }
}

fn main() {
    let code = match Cli::parse().cmd {
        Cmd::Status { sockets, json } => status(&sockets, json),
        Cmd::Failover { sockets } => match sockets.resolve("checkpointd", &sockets.checkpointd) {
            None => {
                eprintln!("remus: failover needs the backup's checkpointd socket (--checkpointd or --dir)");
                exit::USAGE
            }
            Some(p) => match ask(&p, "failover") {
                Ok(t) => {
                    println!("{t}");
                    exit::OK
                }
                Err(e) => fail(e),
            },
        },
    };
    std::process::exit(code);
}
