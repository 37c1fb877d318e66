//! Prometheus metrics for one VM: `remus protect --metrics ADDR` (or `remus receive`) serves
//! `GET /metrics` gathered from all of this host's daemons at each scrape.
//!
//! One endpoint in the CLI rather than `--metrics` on each daemon, because:
//! - an operator scrapes one target per VM and host, and the series that matter most combine
//!   daemons (`remus_protected` is the same rule as `remus status`, over all three);
//! - the daemons already publish everything in their `status json` / `stats json`, so they stay
//!   small, carry no HTTP server, and are left alone while other work restructures them;
//! - the histogram of checkpoint pauses needs every checkpoint, which checkpointd's status
//!   (p50/p99 of the last 100) cannot give; its per-checkpoint log (`checkpoints.jsonl`) can,
//!   and the CLI, which names that file, follows it (see [`checkpoint_log`]).
//!
//! After a failover the receive's endpoint follows the VM: a `remus protect --attach` beside
//! it runs its own checkpointd primary, and while that answers the host is reported as its
//! primary (the same rule as `remus status`), so re-protection shows without a second endpoint.
//!
//! The cost: a scrape makes one control request per daemon, and the metrics exist only while
//! `remus protect` / `remus receive` runs (which is when the daemons run).
//!
//! The HTTP server is `tiny_http`: synchronous (the CLI has no async runtime and one GET to
//! answer), small, and it takes an already-bound listener, so a busy port is reported with
//! remus' exit code 7 before any daemon starts. Metric names: see [`exposition`].

pub mod checkpoint_log;
pub mod exposition;

use crate::config::{Config, Role};
use crate::preflight::Problem;
use crate::status::ask_json;
use checkpoint_log::CheckpointLog;
use exposition::{Daemon, Format, Observed};
use remus_proto::exit;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Where one host's metrics come from.
pub struct Exporter {
    role: &'static str,
    netbuf: PathBuf,
    diskrep: PathBuf,
    checkpointd: PathBuf,
    /// On the backup: where a `remus protect --attach` beside this `remus receive` (the
    /// guest a failover restored, protected again) runs its checkpointd primary. While it
    /// answers, it speaks for the VM and this host is its primary, as in `remus status`.
    attached: Option<PathBuf>,
    ram_mib: u64,
    /// The primary's checkpoint log (on the backup, an attached primary's).
    log: Mutex<CheckpointLog>,
}

impl Exporter {
    pub fn new(cfg: &Config, role: Role) -> Exporter {
        let primary = role == Role::Primary;
        Exporter {
            role: if primary { "primary" } else { "backup" },
            netbuf: cfg.socket("netbuf"),
            diskrep: cfg.socket("diskrep"),
            checkpointd: cfg.socket("checkpointd"),
            attached: (!primary).then(|| cfg.socket("checkpointd-primary")),
            ram_mib: cfg.guest.ram_mib,
            log: Mutex::new(CheckpointLog::new(cfg.run_dir().join("checkpoints.jsonl"))),
        }
    }

    fn ask(path: &Path, line: &str) -> Daemon {
        match ask_json(path, line) {
            Ok(v) => Daemon::Up(v),
            Err(_) => Daemon::Down,
        }
    }

    /// Asks every daemon now.
    pub fn observe(&self) -> Observed {
        let attached = self
            .attached
            .as_ref()
            .map(|p| Self::ask(p, "status json"))
            .filter(|c| matches!(c, Daemon::Up(_)));
        let (role, checkpointd) = match attached {
            Some(c) => ("primary", c),
            None => (self.role, Self::ask(&self.checkpointd, "status json")),
        };
        Observed {
            role,
            // A backup's netbuf passes everything until a primary drives it.
            netbuf: if role == "primary" {
                Self::ask(&self.netbuf, "stats json")
            } else {
                Daemon::NotRun
            },
            diskrep: Self::ask(&self.diskrep, "status json"),
            checkpointd,
            ram_mib: self.ram_mib,
        }
    }

    /// One scrape's answer.
    pub fn scrape(&self, format: Format) -> String {
        let observed = self.observe();
        if observed.role != "primary" {
            return exposition::encode(&exposition::registry(&observed, None), format);
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.refresh();
        exposition::encode(&exposition::registry(&observed, Some(&log)), format)
    }
}

/// The running endpoint; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` (a busy port is exit 7, like every other port remus checks) and answers
/// `GET /metrics` on a thread of its own.
pub fn serve(addr: SocketAddr, exporter: Exporter) -> Result<MetricsServer, Problem> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => Problem::new(
            exit::BUSY,
            format!(
                "port busy: {addr} (the metrics endpoint) is in use by another program (ss -ltnp 'sport = :{}')",
                addr.port()
            ),
        ),
        ErrorKind::AddrNotAvailable => Problem::new(
            exit::NOT_FOUND,
            format!("metrics address {} is not on this host (ip addr show)", addr.ip()),
        ),
        _ => Problem::new(exit::for_io_error(&e), format!("metrics endpoint {addr}: {e}")),
    })?;
    let addr = listener.local_addr().unwrap_or(addr);
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| Problem::new(exit::FAILURE, format!("metrics endpoint {addr}: {e}")))?;
    let server = Arc::new(server);
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in s.incoming_requests() {
                answer(req, &exporter);
            }
        })
        .map_err(|e| Problem::new(exit::FAILURE, format!("metrics thread: {e}")))?;
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr,
    })
}

fn answer(req: tiny_http::Request, exporter: &Exporter) {
    use tiny_http::{Header, Method, Response};
    let path = req.url().split('?').next().unwrap_or("");
    let text_header = |ct: &str| Header::from_bytes("Content-Type", ct).ok();
    let response = match (req.method(), path) {
        (Method::Get | Method::Head, "/metrics") => {
            let accept = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str().to_string());
            let format = Format::from_accept(accept.as_deref());
            let body = exporter.scrape(format);
            let mut r = Response::from_string(body);
            if let Some(h) = text_header(format.content_type()) {
                r = r.with_header(h);
            }
            r
        }
        (Method::Get | Method::Head, "/") => {
            Response::from_string("remus metrics: GET /metrics\n").with_status_code(200)
        }
        (Method::Get | Method::Head, _) => {
            Response::from_string("not found: GET /metrics\n").with_status_code(404)
        }
        _ => Response::from_string("only GET\n").with_status_code(405),
    };
    // A scraper that hung up early is its own problem.
    let _ = req.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;
    use remus_proto::control::Reply;
    use remus_proto::ctl_socket::ControlServer;
    use serde_json::json;
    use std::sync::Arc;

    /// A control socket answering `status json` / `stats json` with `v`.
    fn daemon(path: &Path, v: serde_json::Value) -> ControlServer {
        let text = v.to_string();
        ControlServer::start(path, Arc::new(move |_| Reply::ok(text.clone()))).unwrap()
    }

    fn config(dir: &Path) -> Config {
        Config {
            run_dir: Some(dir.to_path_buf()),
            ..Config::default()
        }
    }

    #[test]
    fn a_backup_that_took_over_reports_an_attached_primary_while_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let e = Exporter::new(&cfg, Role::Backup);
        let _checkpointd = daemon(
            &cfg.socket("checkpointd"),
            json!({"role": "backup", "phase": "failedover", "committed_through": 40}),
        );
        let _diskrep = daemon(&cfg.socket("diskrep"), json!({"role": "primary"}));
        let _netbuf = daemon(&cfg.socket("netbuf"), json!({"held_frames": 0}));
        let o = e.observe();
        assert_eq!(o.role, "backup");
        assert_eq!(o.netbuf, Daemon::NotRun);
        assert_eq!(o.checkpointd.json().unwrap()["phase"], "failedover");

        // `remus protect --attach` protects the restored guest again.
        let attached = daemon(
            &cfg.socket("checkpointd-primary"),
            json!({"role": "primary", "phase": "protected", "committed_through": 7}),
        );
        std::fs::write(
            cfg.run_dir().join("checkpoints.jsonl"),
            "{\"epoch\":1,\"pause_us\":4000}\n",
        )
        .unwrap();
        let o = e.observe();
        assert_eq!(o.role, "primary");
        assert_eq!(o.checkpointd.json().unwrap()["phase"], "protected");
        assert_eq!(o.netbuf.json().unwrap()["held_frames"], 0);
        let text = e.scrape(Format::Prometheus);
        assert!(text.contains("remus_role{role=\"primary\"} 1"), "{text}");
        assert!(text.contains("remus_committed_epoch 7"), "{text}");
        assert!(
            text.contains("remus_checkpoint_pause_seconds_count 1"),
            "{text}"
        );

        // Once it ends (fenced, stopped), the receive's own view is back.
        drop(attached);
        let text = e.scrape(Format::Prometheus);
        assert!(text.contains("remus_role{role=\"backup\"} 1"), "{text}");
        assert!(!text.contains("remus_checkpoint_pause_seconds"), "{text}");
    }

    #[test]
    fn only_an_attached_primary_that_answers_status_speaks_for_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let e = Exporter::new(&cfg, Role::Backup);
        let _checkpointd = daemon(
            &cfg.socket("checkpointd"),
            json!({"role": "backup", "phase": "receiving"}),
        );
        let attached = cfg.socket("checkpointd-primary");
        // Something else on the socket, answering what is not a status.
        let stranger = ControlServer::start(
            &attached,
            Arc::new(|_| Reply::ok("no json here".to_string())),
        )
        .unwrap();
        assert_eq!(e.observe().role, "backup");
        // A socket file nobody listens on (an attached run that was SIGKILLed).
        drop(stranger);
        let l = std::os::unix::net::UnixListener::bind(&attached).unwrap();
        drop(l);
        assert!(attached.exists());
        let o = e.observe();
        assert_eq!(o.role, "backup");
        assert_eq!(o.checkpointd.json().unwrap()["phase"], "receiving");
    }
}
