//! checkpointd's control socket: `hello`, `status [json]`, and `failover` on the backup.
//! Same line protocol as netbuf and diskrep (remus-proto).

use remus_proto::control::{ControlError, ErrorCode, Reply, Request};
use remus_proto::ctl_socket::{ControlServer, Handler};
use remus_proto::Epoch;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `status` reports. Updated by the daemon's loop.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub role: &'static str,
    /// primary: protected / unprotected; backup: receiving / failing-over / failed-over.
    pub phase: String,
    pub reason: String,
    pub open_epoch: Option<Epoch>,
    /// primary: released through; backup: the restore point.
    pub committed_through: Option<Epoch>,
    pub checkpoints: u64,
    /// Checkpoints per second over the last 100.
    pub rate: f64,
    pub pause_p50_us: u64,
    pub pause_p99_us: u64,
    pub last_dirty_pages: u64,
    pub last_bytes: u64,
    pub unacked: usize,
    /// Primary: how dirty pages are found (uffd, soft-dirty, compare) and why that one.
    pub dirty_tracker: String,
    pub dirty_tracker_reason: String,
    /// Primary with --validate-dirty: checkpoints whose dirty set a full comparison confirmed.
    pub validated_checkpoints: u64,
    /// Backup: when the failover was decided and when the restored guest was running
    /// (milliseconds since the Unix epoch), for measuring detection and activation.
    pub failover_decided_unix_ms: Option<u64>,
    pub restored_unix_ms: Option<u64>,
    /// The witness: where, whether it answers, the generation and its owner, claims made.
    pub witness: Option<crate::witness::WitnessStatus>,
    /// Backup: the silence that makes the primary suspect now (adaptive), and the longest gap
    /// between its recent heartbeats.
    pub detection_timeout_ms: Option<u64>,
    pub max_heartbeat_gap_ms: Option<u64>,
    /// How the checkpoint stream is protected (none (insecure), hmac-sha256,
    /// chacha20-poly1305).
    pub auth: String,
    /// Backup: connections the authentication handshake refused (wrong key, garbage, silence),
    /// and the last one's reason.
    pub auth_refused: u64,
    pub last_auth_error: String,
    #[serde(skip)]
    recent: VecDeque<(Instant, Duration)>,
}

impl Status {
    pub fn new(role: &'static str) -> Self {
        Status {
            role,
            ..Default::default()
        }
    }

    /// Records one checkpoint's pause and size.
    pub fn checkpoint(&mut self, pause: Duration, dirty_pages: u64, bytes: u64) {
        self.checkpoints += 1;
        self.last_dirty_pages = dirty_pages;
        self.last_bytes = bytes;
        self.recent.push_back((Instant::now(), pause));
        if self.recent.len() > 100 {
            self.recent.pop_front();
        }
        let mut p: Vec<u64> = self
            .recent
            .iter()
            .map(|(_, d)| d.as_micros() as u64)
            .collect();
        p.sort_unstable();
        self.pause_p50_us = p[p.len() / 2];
        self.pause_p99_us = p[(p.len() * 99 / 100).min(p.len() - 1)];
        if let (Some(a), Some(b)) = (self.recent.front(), self.recent.back()) {
            let span = b.0.duration_since(a.0).as_secs_f64();
            if span > 0.0 {
                self.rate = (self.recent.len() - 1) as f64 / span;
            }
        }
    }
}

pub type SharedStatus = Arc<Mutex<Status>>;

pub fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the control socket. `failover`, when given, is how a `failover` request reaches the
/// backup's loop.
pub fn serve(
    path: &Path,
    status: SharedStatus,
    failover: Option<Mutex<Sender<()>>>,
) -> std::io::Result<ControlServer> {
    let handler: Handler = Arc::new(move |req: &Request| {
        let r: Result<String, ControlError> = match req.verb.as_str() {
            "hello" => req
                .expect_args(0)
                .map(|_| format!("checkpointd protocol=1 role={}", lock(&status).role)),
            "status" => req.wants_json().map(|json| {
                let s = lock(&status).clone();
                if json {
                    serde_json::to_string(&s).unwrap_or_default()
                } else {
                    format!(
                        "role={} phase={} open_epoch={} committed_through={} checkpoints={} \
                         rate={:.1} pause_p50_us={} pause_p99_us={} unacked={} generation={} \
                         owner={} witness_reachable={}{}",
                        s.role,
                        s.phase,
                        s.open_epoch.map_or("none".into(), |e| e.to_string()),
                        s.committed_through.map_or("none".into(), |e| e.to_string()),
                        s.checkpoints,
                        s.rate,
                        s.pause_p50_us,
                        s.pause_p99_us,
                        s.unacked,
                        opt(s.witness.as_ref().and_then(|w| w.generation)),
                        opt(s.witness.as_ref().and_then(|w| w.owner.clone())),
                        opt(s.witness.as_ref().and_then(|w| w.reachable)),
                        if s.dirty_tracker.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " dirty_tracker={} dirty_tracker_reason={:?}",
                                s.dirty_tracker, s.dirty_tracker_reason
                            )
                        }
                    )
                }
            }),
            "failover" => match (&failover, req.expect_args(0)) {
                (_, Err(e)) => Err(e),
                (None, _) => Err(ControlError::new(
                    ErrorCode::State,
                    "failover is a backup command",
                )),
                (Some(tx), Ok(())) => tx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(())
                    .map(|_| "failover requested".to_string())
                    .map_err(|_| ControlError::new(ErrorCode::State, "already failed over")),
            },
            _ => Err(req.unknown(&["hello", "status", "failover"])),
        };
        Reply::from(r)
    });
    ControlServer::start(path, handler)
}

/// Milliseconds since the Unix epoch, for timestamps other processes compare against.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("none".into(), |v| v.to_string())
}
