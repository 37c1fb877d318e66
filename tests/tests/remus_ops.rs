//! Operability over a real run (two hosts as namespaces, a TCG guest): the Prometheus endpoint
//! of `remus protect` and `remus receive` (`--metrics`), scraped while the VM is protected and
//! after a switch-over (also once the restored guest is protected again with `remus protect
//! --attach`), checked against `remus status --json` and by `promtool check metrics`;
//! and systemd's notify protocol, read from our own NOTIFY_SOCKET (systemd is not PID 1 here).

use remus::demo::topology::Topology;
use remus_tests::guest::{build_image, repo_root};
use remus_tests::netns::{bin, require_root, unique_prefix};
use remus_tests::scrape::{get_in_netns, samples, Scrape};
use remus_tests::two_hosts::TwoHosts;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const METRICS: &str = "127.0.0.1:9779";

/// Removes files and directories, and kills children, when the test ends, passed or not.
struct Cleanup(Vec<PathBuf>, Vec<Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.1 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// What a NOTIFY_SOCKET received: each datagram with the time it arrived.
struct Notifications {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Notifications {
    /// Binds `path` and collects datagrams on a thread until the test ends.
    fn listen(path: &Path) -> Notifications {
        let sock = UnixDatagram::bind(path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut b) {
                if tx
                    .send(String::from_utf8_lossy(&b[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        Notifications {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a datagram containing `needle`; returns it.
    fn wait_for(
        &mut self,
        needle: &str,
        timeout: Duration,
        proc: &mut Child,
        log: &Path,
    ) -> String {
        if let Some(m) = self.seen.iter().find(|m| m.contains(needle)) {
            return m.clone();
        }
        let t = Instant::now();
        loop {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if m.contains(needle) {
                        return m;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Ok(Some(st)) = proc.try_wait() {
                panic!(
                    "waiting for {needle:?}: remus ended ({st}); notifications {:?}; log:\n{}",
                    self.seen,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < timeout,
                "no {needle:?} notification after {timeout:?}: {:?}\n{}",
                self.seen,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

fn start(topo: &Topology, host: &str, verb: &str, cfg: &Path, notify: &Path) -> (Child, PathBuf) {
    let log = cfg.with_extension(format!("{verb}.log"));
    let c = topo
        .command(host, &bin("remus"))
        .args([verb, "--metrics", METRICS, "--config"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    (c, log)
}

fn status(run: &Path) -> Value {
    let o = Command::new(bin("remus"))
        .args(["status", "--json", "--dir"])
        .arg(run)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", String::from_utf8_lossy(&o.stderr)))
}

fn scrape(topo: &Topology, host: &str, accept: Option<&str>) -> Scrape {
    let s = get_in_netns(&topo.ns(host), METRICS, "/metrics", accept).unwrap();
    assert_eq!(s.status, 200, "{s:?}");
    s
}

/// promtool's verdict on an exposition: it must pass with nothing to say.
fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (make setup installs prometheus)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
}

/// The sample `key`, which must be there.
fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in the scrape: {:?}", m.keys().collect::<Vec<_>>()))
}

/// `lo <= metric <= hi` for a value that only grows between the two status reads around the
/// scrape.
fn between(m: &BTreeMap<String, f64>, key: &str, lo: &Value, hi: &Value) {
    let v = get(m, key);
    let (lo, hi) = (lo.as_f64().unwrap(), hi.as_f64().unwrap());
    assert!(
        lo <= v && v <= hi,
        "{key} = {v}, status said {lo} before and {hi} after"
    );
}

/// Status, scrape, status: the scrape must lie between the two reads.
fn scrape_between(
    topo: &Topology,
    host: &str,
    run: &Path,
) -> (Value, BTreeMap<String, f64>, String, Value) {
    let before = status(run);
    let s = scrape(topo, host, None);
    assert!(
        s.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        s.content_type
    );
    let after = status(run);
    (before, samples(&s.body), s.body, after)
}

#[test]
fn metrics_and_readiness_follow_a_real_run() {
    require_root();
    let prefix = unique_prefix();
    let dir = std::env::temp_dir().join(format!("remus-ops-{prefix}"));
    let image = build_image(&prefix, &[], &repo_root().join("cli/guest/service.sh")).unwrap();
    let mut cleanup = Cleanup(TwoHosts::leftovers(&prefix, &dir, &image), Vec::new());
    let TwoHosts {
        topo,
        etcd: _etcd,
        bcfg,
        pcfg,
    } = TwoHosts::create(&prefix, &dir, &image).unwrap();
    let (prun, brun) = (dir.join("primary"), dir.join("backup"));
    let (pn, bn) = (dir.join("notify-primary"), dir.join("notify-backup"));
    let mut pnote = Notifications::listen(&pn);
    let mut bnote = Notifications::listen(&bn);

    let (recv, rlog) = start(&topo, "back", "receive", &bcfg, &bn);
    cleanup.1.push(recv);
    bnote.wait_for(
        "waiting for the primary",
        Duration::from_secs(30),
        &mut cleanup.1[0],
        &rlog,
    );
    // Before the first commit the backup is not ready, and says so in its metrics.
    let b = samples(&scrape(&topo, "back", None).body);
    assert_eq!(get(&b, "remus_protected"), 0.0);
    assert_eq!(get(&b, "remus_role{role=\"backup\"}"), 1.0);
    assert!(
        !bnote.seen.iter().any(|m| m.contains("READY=1")),
        "{:?}",
        bnote.seen
    );

    let (prot, plog) = start(&topo, "prim", "protect", &pcfg, &pn);
    cleanup.1.push(prot);
    // The primary's STATUS shows the initial sync, then READY=1 once protected, and not before.
    pnote.wait_for(
        "STATUS=initial sync [",
        Duration::from_secs(120),
        &mut cleanup.1[1],
        &plog,
    );
    let ready = pnote.wait_for(
        "READY=1",
        Duration::from_secs(180),
        &mut cleanup.1[1],
        &plog,
    );
    assert!(ready.contains("STATUS=PROTECTED"), "{ready}");
    let s = status(&prun);
    assert_eq!(
        s["protected"], true,
        "READY=1 before the VM was protected: {s}"
    );
    let first_ready = pnote
        .seen
        .iter()
        .position(|m| m.contains("READY=1"))
        .unwrap();
    assert!(
        pnote.seen[..first_ready]
            .iter()
            .any(|m| m.contains("initial sync")),
        "{:?}",
        pnote.seen
    );
    let ready = bnote.wait_for("READY=1", Duration::from_secs(30), &mut cleanup.1[0], &rlog);
    assert!(ready.contains("STATUS=RECEIVING: checkpoint"), "{ready}");
    assert!(status(&brun)["committed_through"].is_u64());

    // A steady state: the guest booted and checkpoints flow.
    let console = dir.join("primary-console.log");
    let t = Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("SERVICE up")
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the guest did not boot"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The running STATUS shows the committed epoch.
    pnote.wait_for(
        "STATUS=PROTECTED: epoch",
        Duration::from_secs(30),
        &mut cleanup.1[1],
        &plog,
    );

    // The primary's metrics against its status.
    let (s1, m, text, s2) = scrape_between(&topo, "prim", &prun);
    promtool_check(&text);
    assert_eq!(get(&m, "remus_protected"), 1.0, "{s1}");
    assert_eq!(get(&m, "remus_role{role=\"primary\"}"), 1.0);
    assert_eq!(get(&m, "remus_role{role=\"backup\"}"), 0.0);
    for d in ["netbuf", "diskrep", "checkpointd"] {
        assert_eq!(get(&m, &format!("remus_daemon_up{{daemon=\"{d}\"}}")), 1.0);
    }
    assert!(
        m.contains_key("remus_build_info{version=\"0.1.0\"}"),
        "{text}"
    );
    assert_eq!(get(&m, "remus_phase{phase=\"protected\"}"), 1.0);
    between(
        &m,
        "remus_checkpoints_total",
        &s1["checkpointd"]["checkpoints"],
        &s2["checkpointd"]["checkpoints"],
    );
    between(
        &m,
        "remus_committed_epoch",
        &s1["committed_through"],
        &s2["committed_through"],
    );
    between(&m, "remus_open_epoch", &s1["epoch"], &s2["epoch"]);
    between(
        &m,
        "remus_netbuf_released_frames_total",
        &s1["netbuf"]["counters"]["released_frames"],
        &s2["netbuf"]["counters"]["released_frames"],
    );
    between(
        &m,
        "remus_diskrep_written_bytes_total",
        &s1["diskrep"]["write_bytes"],
        &s2["diskrep"]["write_bytes"],
    );
    assert_eq!(
        get(&m, "remus_disk_size_bytes"),
        s1["diskrep"]["size"].as_f64().unwrap()
    );
    assert_eq!(get(&m, "remus_diskrep_link{state=\"protected\"}"), 1.0);
    assert_eq!(get(&m, "remus_disk_sync_ratio"), 1.0);
    assert_eq!(get(&m, "remus_protection_drops_total"), 0.0);
    assert_eq!(get(&m, "remus_guest_running"), 1.0);
    // The witness: reachable, and the generation the status shows.
    assert_eq!(get(&m, "remus_witness_reachable"), 1.0);
    assert_eq!(
        get(&m, "remus_generation"),
        s1["generation"].as_f64().unwrap(),
        "{s1}"
    );
    for k in [
        "remus_epochs_unacked",
        "remus_netbuf_held_bytes",
        "remus_netbuf_held_frames",
        "remus_diskrep_backlog_bytes",
        "remus_diskrep_out_of_sync_bytes",
    ] {
        assert!(get(&m, k) >= 0.0);
    }
    // The pause histogram saw every checkpoint the log had when it was scraped: at least those
    // the status had counted before, at most those counted after plus the one being written.
    let count = get(&m, "remus_checkpoint_pause_seconds_count");
    let (c1, c2) = (
        s1["checkpointd"]["checkpoints"].as_f64().unwrap(),
        s2["checkpointd"]["checkpoints"].as_f64().unwrap(),
    );
    assert!(
        c1 <= count && count <= c2 + 1.0,
        "pause count {count}, checkpoints {c1}..{c2}"
    );
    assert!(get(&m, "remus_checkpoint_pause_seconds_sum") > 0.0);
    assert_eq!(
        get(&m, "remus_checkpoint_pause_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    assert!(get(&m, "remus_checkpoint_ack_seconds_count") > 0.0);
    // A second scrape only adds: the histogram is cumulative.
    let m2 = samples(&scrape(&topo, "prim", None).body);
    assert!(get(&m2, "remus_checkpoint_pause_seconds_count") >= count);
    // OpenMetrics for a scraper that asks for it.
    let om = scrape(
        &topo,
        "prim",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert!(
        om.body.ends_with("# EOF\n") && om.body.contains("# TYPE remus_build info"),
        "{}",
        om.body
    );
    let nf = get_in_netns(&topo.ns("prim"), METRICS, "/nothing", None).unwrap();
    assert_eq!(nf.status, 404);

    // The backup's metrics against its status.
    let (b1, m, text, b2) = scrape_between(&topo, "back", &brun);
    promtool_check(&text);
    assert_eq!(get(&m, "remus_protected"), 1.0, "{b1}");
    assert_eq!(get(&m, "remus_role{role=\"backup\"}"), 1.0);
    assert!(
        !m.keys().any(|k| k.contains("daemon=\"netbuf\"")),
        "the backup runs no netbuf"
    );
    between(
        &m,
        "remus_committed_epoch",
        &b1["committed_through"],
        &b2["committed_through"],
    );
    between(
        &m,
        "remus_checkpoints_total",
        &b1["checkpointd"]["checkpoints"],
        &b2["checkpointd"]["checkpoints"],
    );
    assert_eq!(get(&m, "remus_failovers_total"), 0.0);
    assert_eq!(get(&m, "remus_guest_running"), 0.0);
    assert_eq!(get(&m, "remus_diskrep_consistent"), 1.0);
    assert!(
        !m.contains_key("remus_checkpoint_pause_seconds_count"),
        "pauses are the primary's"
    );

    // A switch-over: the backup's metrics count the takeover, its STATUS says so, the
    // primary's remus says STOPPING=1 as it stops its copy.
    let c0 = status(&brun)["committed_through"].as_u64().unwrap();
    let t = Instant::now();
    while status(&brun)["committed_through"].as_u64().unwrap() < c0 + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the backup stopped committing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = Command::new(bin("remus"))
        .args(["failover", "--dir"])
        .arg(&brun)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    bnote.wait_for(
        "STATUS=FAILOVER",
        Duration::from_secs(30),
        &mut cleanup.1[0],
        &rlog,
    );
    pnote.wait_for(
        "STOPPING=1",
        Duration::from_secs(30),
        &mut cleanup.1[1],
        &plog,
    );
    let m = samples(&scrape(&topo, "back", None).body);
    assert_eq!(get(&m, "remus_failovers_total"), 1.0);
    assert_eq!(get(&m, "remus_guest_running"), 1.0);
    assert_eq!(get(&m, "remus_protected"), 0.0);
    assert_eq!(get(&m, "remus_phase{phase=\"failedover\"}"), 1.0);
    // The takeover was claimed at the witness: one claim, one generation on.
    assert_eq!(get(&m, "remus_witness_claims_total"), 1.0);
    assert_eq!(
        get(&m, "remus_generation"),
        b2["generation"].as_f64().unwrap() + 1.0
    );

    // Protection again: the old primary's host receives, and the guest the switch-over
    // restored is attached (`remus protect --attach`). The endpoint of the `remus receive`
    // that restored it now reports that primary, as `remus status` does.
    let t = Instant::now();
    while cleanup.1[1].try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "remus protect did not end after the switch-over"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rx_cfg, at_cfg) = TwoHosts::turned_configs(&prefix, &dir, &image).unwrap();
    let tn = dir.join("notify-turned");
    let mut tnote = Notifications::listen(&tn);
    let (recv2, rlog2) = start(&topo, "prim", "receive", &rx_cfg, &tn);
    cleanup.1.push(recv2);
    let i = cleanup.1.len() - 1;
    tnote.wait_for(
        "waiting for the primary",
        Duration::from_secs(30),
        &mut cleanup.1[i],
        &rlog2,
    );
    let alog = dir.join("attach.log");
    let host = "back";
    let attach = topo
        .command(host, &bin("remus"))
        .args(["protect", "--attach", "--config"])
        .arg(&at_cfg)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&alog).unwrap())
        .stderr(std::fs::File::options().append(true).open(&alog).unwrap())
        .spawn()
        .unwrap();
    cleanup.1.push(attach);
    let j = cleanup.1.len() - 1;
    let t = Instant::now();
    while !std::fs::read_to_string(&alog)
        .unwrap_or_default()
        .contains("PROTECTED")
    {
        let ended = cleanup.1[j].try_wait().unwrap();
        let log = std::fs::read_to_string(&alog).unwrap_or_default();
        assert!(
            ended.is_none(),
            "remus protect --attach ended ({ended:?}):\n{log}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not PROTECTED after re-attaching:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a1, m, text, a2) = scrape_between(&topo, "back", &brun);
    promtool_check(&text);
    assert_eq!(a1["protected"], true, "{a1}");
    assert_eq!(get(&m, "remus_protected"), 1.0, "{a1}");
    assert_eq!(get(&m, "remus_role{role=\"primary\"}"), 1.0);
    assert_eq!(get(&m, "remus_role{role=\"backup\"}"), 0.0);
    assert_eq!(get(&m, "remus_phase{phase=\"protected\"}"), 1.0);
    for d in ["netbuf", "diskrep", "checkpointd"] {
        assert_eq!(get(&m, &format!("remus_daemon_up{{daemon=\"{d}\"}}")), 1.0);
    }
    between(
        &m,
        "remus_committed_epoch",
        &a1["committed_through"],
        &a2["committed_through"],
    );
    assert!(get(&m, "remus_checkpoint_pause_seconds_count") >= 1.0);
    assert_eq!(get(&m, "remus_guest_running"), 1.0);
    // The attached primary started a generation of its own, shown from its first answer on.
    let g = a1["generation"]
        .as_f64()
        .expect("the attached primary's generation");
    assert!(g > b2["generation"].as_f64().unwrap() + 1.0, "{a1}");
    assert_eq!(get(&m, "remus_generation"), g);
    assert_eq!(get(&m, "remus_witness_reachable"), 1.0);
}
