//! The exposition of typical daemon states, and the names the documented alerts use.
use super::*;
use serde_json::json;

fn primary() -> Observed {
    Observed {
        role: "primary",
        netbuf: Daemon::Up(
            json!({"protected": true, "held_bytes": 3000, "held_frames": 2,
            "epochs": [{"epoch": 7}], "counters": {"released_frames": 40, "released_bytes": 5000,
            "passed_frames": 1, "dropped_overflow_frames": 0, "discarded_frames": 0}}),
        ),
        diskrep: Daemon::Up(
            json!({"role": "primary", "link": "protected", "size": 8u64 << 20,
            "region_size": 1 << 20, "queued_bytes": 4096, "dirty_bytes": 0,
            "resync": {"regions_total": 8, "regions_done": 8}, "write_bytes": 9000,
            "stream_bytes": 12000, "stalls": 0, "protection_drops": 0}),
        ),
        checkpointd: Daemon::Up(
            json!({"role": "primary", "phase": "protected", "reason": "",
            "checkpoints": 55, "open_epoch": 57, "committed_through": 55, "unacked": 1,
            "last_bytes": 777, "last_dirty_pages": 12,
            "witness": {"witness": "etcd http://10.97.0.10:2379", "reachable": true,
                "generation": 4, "owner": "primary", "claims": 0}}),
        ),
        ram_mib: 128,
    }
}

fn text_of(o: &Observed) -> String {
    encode(&registry(o, None), Format::Prometheus)
}

#[test]
fn a_protected_primary() {
    let t = text_of(&primary());
    for line in [
        "remus_build_info{version=\"",
        "remus_protected 1\n",
        "remus_role{role=\"primary\"} 1\n",
        "remus_role{role=\"backup\"} 0\n",
        "remus_daemon_up{daemon=\"netbuf\"} 1\n",
        "remus_checkpoints_total 55\n",
        "remus_committed_epoch 55\n",
        "remus_open_epoch 57\n",
        "remus_epochs_unacked 1\n",
        "remus_checkpoint_last_size_bytes 777\n",
        "remus_netbuf_held_bytes 3000\n",
        "remus_netbuf_held_frames 2\n",
        "remus_netbuf_released_frames_total 40\n",
        "remus_diskrep_backlog_bytes 4096\n",
        "remus_diskrep_out_of_sync_bytes 0\n",
        "remus_disk_sync_ratio 1.0\n",
        "remus_protection_drops_total 0\n",
        "remus_guest_running 1\n",
        "remus_witness_reachable 1\n",
        "remus_generation 4\n",
        "remus_witness_claims_total 0\n",
        "# TYPE remus_checkpoints_total counter\n",
    ] {
        assert!(t.contains(line), "{line:?} missing in:\n{t}");
    }
    assert!(
        !t.contains("failovers"),
        "a primary has no failover counter:\n{t}"
    );
}

#[test]
fn a_daemon_down_is_up_0_and_not_protected_and_its_values_are_absent() {
    let mut o = primary();
    o.netbuf = Daemon::Down;
    let t = text_of(&o);
    assert!(t.contains("remus_daemon_up{daemon=\"netbuf\"} 0\n"), "{t}");
    assert!(t.contains("remus_protected 0\n"), "{t}");
    assert!(!t.contains("remus_netbuf_held_bytes"), "{t}");
}

#[test]
fn a_backup_that_took_over() {
    let o = Observed {
        role: "backup",
        netbuf: Daemon::NotRun,
        diskrep: Daemon::Up(json!({"role": "backup", "consistent": true, "size": 1024,
            "buffered_bytes": 0, "received_bytes": 10, "applied_bytes": 10, "protocol_errors": 0})),
        checkpointd: Daemon::Up(json!({"role": "backup", "phase": "failedover",
            "checkpoints": 9, "committed_through": 8})),
        ram_mib: 128,
    };
    let t = text_of(&o);
    for line in [
        "remus_failovers_total 1\n",
        "remus_guest_running 1\n",
        "remus_protected 0\n",
        "remus_role{role=\"backup\"} 1\n",
        "remus_phase{phase=\"failedover\"} 1\n",
        "remus_diskrep_consistent 1\n",
    ] {
        assert!(t.contains(line), "{line:?} missing in:\n{t}");
    }
    assert!(
        !t.contains("daemon=\"netbuf\""),
        "the backup runs no netbuf:\n{t}"
    );
}

#[test]
fn a_primary_that_lost_its_backup_counts_one_drop() {
    let mut o = primary();
    o.checkpointd = Daemon::Up(json!({"role": "primary", "phase": "unprotected",
        "reason": "backup silent", "committed_through": 80, "checkpoints": 90}));
    let t = text_of(&o);
    assert!(t.contains("remus_protection_drops_total 1\n"), "{t}");
    // Still in its initial sync: nothing committed yet, nothing dropped.
    o.checkpointd = Daemon::Up(json!({"role": "primary", "phase": "unprotected",
        "reason": "", "committed_through": null, "checkpoints": 0}));
    assert!(text_of(&o).contains("remus_protection_drops_total 0\n"));
}

#[test]
fn every_metric_the_documented_alerts_use_is_exported() {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dist/prometheus/remus-alerts.yml"),
    )
    .unwrap();
    let backup = Observed {
        role: "backup",
        netbuf: Daemon::NotRun,
        diskrep: Daemon::Up(json!({"role": "backup", "consistent": true, "size": 1})),
        checkpointd: Daemon::Up(json!({"role": "backup", "phase": "receiving"})),
        ram_mib: 1,
    };
    let log = CheckpointLog::new("/nonexistent".into());
    let exported = encode(&registry(&primary(), Some(&log)), Format::Prometheus)
        + &encode(&registry(&backup, None), Format::Prometheus);
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("remus_"))
        .collect();
    names.dedup();
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        assert!(
            exported.contains(&format!("\n{n}{{")) || exported.contains(&format!("\n{n} ")),
            "{n} is used by dist/prometheus/remus-alerts.yml but not exported"
        );
    }
}

#[test]
fn openmetrics_ends_with_eof_and_the_format_follows_accept() {
    let s = encode(&registry(&primary(), None), Format::OpenMetrics);
    assert!(s.ends_with("# EOF\n"), "{s}");
    assert_eq!(
        Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )),
        Format::OpenMetrics
    );
    assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
    assert_eq!(Format::from_accept(None), Format::Prometheus);
}
