//! What the daemons said, as Prometheus metrics. Pure: from each daemon's `status json` /
//! `stats json` (or its absence) to a `prometheus-client` registry; nothing here does I/O.
//!
//! Names follow the Prometheus conventions: the `remus_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters (added by the library), one `remus_build_info`.
//! A value a daemon does not report (a daemon that is down, a field of the other role) is left
//! out rather than reported as 0: an absent series is honest, a 0 would be a claim.

use super::checkpoint_log::CheckpointLog;
use crate::progress::SyncView;
use crate::status::why_not_protected;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use std::sync::atomic::AtomicU64;

/// One daemon as seen by a scrape.
#[derive(Debug, Clone, PartialEq)]
pub enum Daemon {
    /// This role does not run it (netbuf on the backup).
    NotRun,
    /// Its control socket did not answer.
    Down,
    /// Its status JSON.
    Up(Value),
}

impl Daemon {
    pub fn json(&self) -> Option<&Value> {
        match self {
            Daemon::Up(v) => Some(v),
            _ => None,
        }
    }
}

/// Everything one scrape saw.
#[derive(Debug, Clone)]
pub struct Observed {
    /// "primary" (`remus protect`) or "backup" (`remus receive`).
    pub role: &'static str,
    pub netbuf: Daemon,
    pub diskrep: Daemon,
    pub checkpointd: Daemon,
    /// The guest's RAM, for the initial-sync ratio (the first checkpoint carries all of it).
    pub ram_mib: u64,
}

/// The two text formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (`text/plain; version=0.0.4`), what `promtool check metrics` reads.
    Prometheus,
    /// OpenMetrics 1.0 (`application/openmetrics-text`), what a Prometheus server prefers.
    OpenMetrics,
}

impl Format {
    /// From the request's `Accept` header.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

fn u(v: Option<&Value>, key: &str) -> Option<u64> {
    v.and_then(|v| v.get(key)).and_then(Value::as_u64)
}

fn i(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

type Labels = Vec<(String, String)>;

/// A registry under construction; every helper skips an absent value.
struct Out {
    reg: Registry,
}

impl Out {
    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, v: Option<u64>) {
        if let Some(v) = v {
            let g: Gauge = Gauge::default();
            g.set(i(v));
            match unit {
                Some(unit) => self.reg.register_with_unit(name, help, unit, g),
                None => self.reg.register(name, help, g),
            }
        }
    }

    fn flag(&mut self, name: &str, help: &str, v: Option<bool>) {
        self.gauge(name, help, None, v.map(u64::from));
    }

    fn ratio(&mut self, name: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            let g: Gauge<f64, AtomicU64> = Gauge::default();
            g.set(v);
            self.reg.register(name, help, g);
        }
    }

    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, v: Option<u64>) {
        if let Some(v) = v {
            let c: Counter = Counter::default();
            c.inc_by(v);
            match unit {
                Some(unit) => self.reg.register_with_unit(name, help, unit, c),
                None => self.reg.register(name, help, c),
            }
        }
    }

    /// A gauge per label value (`remus_role{role="primary"} 1`, `{role="backup"} 0`).
    fn labelled(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        if values.is_empty() {
            return;
        }
        let f: Family<Labels, Gauge> = Family::default();
        for (value, n) in values {
            f.get_or_create(&vec![(label.to_string(), value.to_string())])
                .set(i(*n));
        }
        self.reg.register(name, help, f);
    }
}

/// The registry for one scrape. `log` holds the primary's pause and ack histograms (fed from
/// checkpointd's per-checkpoint log), `None` on the backup.
pub fn registry(o: &Observed, log: Option<&CheckpointLog>) -> Registry {
    let mut out = Out {
        reg: Registry::with_prefix("remus"),
    };
    out.reg.register(
        "build",
        "The remus build serving these metrics",
        Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    );
    let daemons = [
        ("netbuf", &o.netbuf),
        ("diskrep", &o.diskrep),
        ("checkpointd", &o.checkpointd),
    ];
    let up: Vec<(&str, u64)> = daemons
        .iter()
        .filter(|(_, d)| **d != Daemon::NotRun)
        .map(|(n, d)| (*n, u64::from(matches!(d, Daemon::Up(_)))))
        .collect();
    out.labelled(
        "daemon_up",
        "Whether the daemon's control socket answered this scrape",
        "daemon",
        &up,
    );
    out.labelled(
        "role",
        "This host's role for the VM: 1 for the role it has",
        "role",
        &[
            ("primary", u64::from(o.role == "primary")),
            ("backup", u64::from(o.role == "backup")),
        ],
    );
    let (n, d, c) = (o.netbuf.json(), o.diskrep.json(), o.checkpointd.json());
    // Protected only when every daemon this role runs answered and none says otherwise
    // (the same rule as `remus status`).
    let all_up = up.iter().all(|(_, ok)| *ok == 1);
    let protected = all_up && why_not_protected(n, d, c).is_empty();
    out.flag(
        "protected",
        "1 when the VM is protected (remus status exits 0): every epoch's output waits for the backup",
        Some(protected),
    );
    checkpointd(&mut out, o.role, c, log);
    netbuf(&mut out, n);
    diskrep(&mut out, d, c, o.ram_mib);
    out.reg
}

fn checkpointd(out: &mut Out, role: &str, c: Option<&Value>, log: Option<&CheckpointLog>) {
    let phase = c.and_then(|c| c["phase"].as_str());
    if let Some(p) = phase {
        out.labelled(
            "phase",
            "checkpointd's phase (primary: protected, unprotected, ...; backup: waiting, receiving, failedover, ...)",
            "phase",
            &[(p, 1)],
        );
    }
    out.counter(
        "checkpoints",
        "Checkpoints shipped (primary) or received (backup) by this run",
        None,
        u(c, "checkpoints"),
    );
    out.gauge(
        "open_epoch",
        "The epoch the guest runs in now",
        None,
        u(c, "open_epoch"),
    );
    out.gauge(
        "committed_epoch",
        "The last epoch whose memory and disk the backup holds (primary: released through; backup: the restore point)",
        None,
        u(c, "committed_through"),
    );
    out.gauge(
        "epochs_unacked",
        "Checkpoints shipped and not yet acknowledged by the backup",
        None,
        u(c, "unacked"),
    );
    out.gauge(
        "checkpoint_last_size",
        "Bytes on the wire of the last checkpoint",
        Some(Unit::Bytes),
        u(c, "last_bytes"),
    );
    out.gauge(
        "checkpoint_last_dirty_pages",
        "Guest pages the last checkpoint carried",
        None,
        u(c, "last_dirty_pages"),
    );
    if let Some(phase) = phase {
        let taken_over = role == "backup" && matches!(phase, "failingover" | "failedover");
        let fenced = phase == "fenced";
        out.flag(
            "guest_running",
            "1 when this host runs the guest (a primary not fenced, or a backup that took over)",
            Some(if role == "primary" {
                !fenced
            } else {
                taken_over
            }),
        );
        if role == "backup" {
            out.counter(
                "failovers",
                "Takeovers by this backup (at most one per remus receive run)",
                None,
                Some(u64::from(taken_over)),
            );
        } else {
            // A primary that was protected (something committed) and is not any more has
            // lost protection; nothing restarts it within a run.
            let dropped = phase != "protected" && u(c, "committed_through").is_some();
            out.counter(
                "protection_drops",
                "Times this primary lost its backup and ran on (at most one per remus protect run)",
                None,
                Some(u64::from(dropped)),
            );
        }
    }
    if let Some(w) = c.and_then(|c| c.get("witness")).filter(|w| w.is_object()) {
        // Reported once the witness (etcd fencing) is configured.
        out.flag(
            "witness_reachable",
            "1 when the witness (etcd) answers",
            w["reachable"].as_bool(),
        );
        out.gauge(
            "generation",
            "The protection generation at the witness, as last read or claimed",
            None,
            w["generation"].as_u64(),
        );
        out.counter(
            "witness_claims",
            "Claims of the next generation this run made at the witness",
            None,
            w["claims"].as_u64(),
        );
    }
    if let Some(log) = log {
        out.reg.register_with_unit(
            "checkpoint_pause",
            "How long the guest was paused for each checkpoint (capture only)",
            Unit::Seconds,
            log.pause.clone(),
        );
        out.reg.register_with_unit(
            "checkpoint_ack",
            "From shipping a checkpoint to the backup's acknowledgement of it (memory and disk safe)",
            Unit::Seconds,
            log.ack.clone(),
        );
    }
}

fn netbuf(out: &mut Out, n: Option<&Value>) {
    out.gauge(
        "netbuf_held",
        "Bytes of guest output held until their epoch commits",
        Some(Unit::Bytes),
        u(n, "held_bytes"),
    );
    out.gauge(
        "netbuf_held_frames",
        "Frames of guest output held until their epoch commits",
        None,
        u(n, "held_frames"),
    );
    out.gauge(
        "netbuf_held_epochs",
        "Epochs with output held",
        None,
        n.and_then(|n| n["epochs"].as_array())
            .map(|a| a.len() as u64),
    );
    let counters = n.map(|n| &n["counters"]);
    for (key, name, help) in [
        (
            "released_frames",
            "netbuf_released_frames",
            "Frames held and released after their epoch committed",
        ),
        (
            "passed_frames",
            "netbuf_passed_frames",
            "Frames passed straight through while unprotected",
        ),
        (
            "dropped_overflow_frames",
            "netbuf_dropped_frames",
            "Frames dropped because the buffer was full (tail drop)",
        ),
        (
            "discarded_frames",
            "netbuf_discarded_frames",
            "Frames held and thrown away because their epoch never committed",
        ),
    ] {
        out.counter(name, help, None, u(counters, key));
    }
    out.counter(
        "netbuf_released",
        "Bytes held and released after their epoch committed",
        Some(Unit::Bytes),
        u(counters, "released_bytes"),
    );
}

fn diskrep(out: &mut Out, d: Option<&Value>, c: Option<&Value>, ram_mib: u64) {
    out.gauge(
        "disk_size",
        "Size of the replicated disk",
        Some(Unit::Bytes),
        u(d, "size"),
    );
    let Some(dj) = d else { return };
    if dj["role"] == "primary" {
        if let Some(link) = dj["link"].as_str() {
            out.labelled(
                "diskrep_link",
                "diskrep's link to the backup (none, connecting, syncing, protected, down)",
                "state",
                &[(link, 1)],
            );
        }
        out.gauge(
            "diskrep_backlog",
            "Bytes of writes queued for the backup and not yet sent",
            Some(Unit::Bytes),
            u(d, "queued_bytes"),
        );
        out.gauge(
            "diskrep_out_of_sync",
            "Bytes of the disk the backup does not hold yet (dirty regions to resync)",
            Some(Unit::Bytes),
            u(d, "dirty_bytes"),
        );
        let r = d.map(|d| &d["resync"]);
        out.gauge(
            "diskrep_resync_regions",
            "Regions the current (or last) resync run has to copy",
            None,
            u(r, "regions_total"),
        );
        out.gauge(
            "diskrep_resync_regions_done",
            "Regions the current (or last) resync run has copied",
            None,
            u(r, "regions_done"),
        );
        let v = SyncView::from_status(dj, c, ram_mib);
        out.ratio(
            "disk_sync_ratio",
            "Share of the disk the backup holds (1 when in sync)",
            Some(if v.disk_in_sync {
                1.0
            } else if v.disk_total == 0 {
                0.0
            } else {
                v.disk_done as f64 / v.disk_total as f64
            }),
        );
        out.counter(
            "diskrep_written",
            "Bytes the guest wrote to its disk",
            Some(Unit::Bytes),
            u(d, "write_bytes"),
        );
        out.counter(
            "diskrep_replicated",
            "Bytes streamed to the backup (writes and resync)",
            Some(Unit::Bytes),
            u(d, "stream_bytes"),
        );
        out.counter(
            "diskrep_stalls",
            "Times a guest write waited for room in the backlog",
            None,
            u(d, "stalls"),
        );
        out.counter(
            "diskrep_protection_drops",
            "Times diskrep's link to the backup was lost (it resyncs on reconnection)",
            None,
            u(d, "protection_drops"),
        );
    } else {
        out.flag(
            "diskrep_consistent",
            "1 when the backup's image is a committed epoch's disk",
            dj["consistent"].as_bool(),
        );
        out.gauge(
            "diskrep_buffered",
            "Bytes of writes buffered for epochs not yet committed",
            Some(Unit::Bytes),
            u(d, "buffered_bytes"),
        );
        out.counter(
            "diskrep_received",
            "Bytes of writes received from the primary",
            Some(Unit::Bytes),
            u(d, "received_bytes"),
        );
        out.counter(
            "diskrep_applied",
            "Bytes of committed writes applied to the image",
            Some(Unit::Bytes),
            u(d, "applied_bytes"),
        );
        out.counter(
            "diskrep_protocol_errors",
            "Malformed or out-of-order messages from the primary",
            None,
            u(d, "protocol_errors"),
        );
    }
}

/// The registry as text in `format`.
pub fn encode(reg: &Registry, format: Format) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = match format {
        Format::Prometheus => prometheus_text::encode(&mut s, reg),
        Format::OpenMetrics => text::encode(&mut s, reg),
    };
    s
}

#[cfg(test)]
mod tests;
