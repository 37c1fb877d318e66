//! Protection that outlasts the first failure, end to end: `remus demo --cycles 3 --failback`
//! crashes the primary host, the backup takes over, the crashed host comes back with its disk
//! as the crash left it and receives, the new primary protects the running guest again with
//! `remus protect --attach`; then that host crashes and the VM returns to the first one, which
//! is protected again in turn; finally a planned `remus failover` moves the VM back.
//!
//! This test judges every move from the demo's raw evidence with its own checks
//! (`remus_tests::demo_evidence`): one TCP connection throughout (the guest's per-connection
//! counter never restarts), every reply in sequence, the disk of the host that took over a
//! consistent prefix covering every record reported; after each resync the two images, saved
//! with the guest's writer parked and a checkpoint committed after it, are identical, and the
//! resync sent only what diverged (the disk lineage), not the disk.

use remus_tests::demo_evidence::check_round;
use remus_tests::netns::{bin, require_root};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn protection_outlasts_two_crashes_and_the_vm_fails_back() {
    require_root();
    let evidence =
        std::env::temp_dir().join(format!("remus-reprotect-evidence-{}", std::process::id()));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let t = Instant::now();
    // --keep: on a failure the daemons' logs stay in the demo's work directory (named by its
    // pid); removed here when everything passed.
    let demo = Command::new(bin("remus"))
        .args(["demo", "--cycles", "3", "--failback", "--json", "--keep"])
        .args(["--crash-min-ms", "1500", "--crash-max-ms", "4000"])
        .args(["--seed", &seed.to_string()])
        .arg("--evidence")
        .arg(&evidence)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let work = std::env::temp_dir().join(format!("remus-demo-{}", demo.id()));
    let out = demo.wait_with_output().unwrap();
    let elapsed = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "remus demo --cycles 3 --failback (seed {seed}) failed (logs in {}):\n{stdout}",
        work.display()
    );
    let moves: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(moves.len(), 3, "{stdout}");
    let round = evidence.join("round-1");
    let mut replies_seen = 0;
    for (i, s) in moves.iter().enumerate() {
        let cycle = i + 1;
        let dir = round.join(format!("cycle-{cycle}"));
        let r = check_round(&dir);
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["replies"].as_u64(), Some(r.replies as u64), "{s}");
        assert_eq!(s["disk_records"].as_u64(), Some(r.records), "{s}");
        assert_eq!(s["outage_ms"].as_u64(), Some(r.outage_ms), "{s}");
        // check_round found replies 1, 2, ... n: the guest's counter is per connection, so the
        // client never reconnected, across every move so far.
        assert!(r.replies > replies_seen, "{s}");
        replies_seen = r.replies;
        let (from, to) = if cycle % 2 == 1 {
            ("primary", "backup")
        } else {
            ("backup", "primary")
        };
        assert_eq!(
            (s["from"].as_str(), s["runs_on"].as_str()),
            (Some(from), Some(to)),
            "{s}"
        );
        assert_eq!(s["planned"], cycle == 3, "{s}");
        assert!(
            r.outage_ms <= 1000,
            "cycle {cycle}: outage {} ms (the promise is at most 1 s): {s}",
            r.outage_ms
        );
        // Fenced through the witness: each takeover (by a crash or planned) was won there.
        let generations = std::fs::read_to_string(dir.join("generation.txt")).unwrap();
        assert!(
            generations.lines().count() >= 2 * cycle
                && generations
                    .lines()
                    .last()
                    .unwrap_or("")
                    .contains("\"owner\":\"backup@"),
            "cycle {cycle}: generation history {generations}"
        );
        if cycle == 3 {
            assert!(s["reprotect"].is_null(), "{s}");
            continue;
        }
        // Re-protected: the two images at the quiesced checkpoint, compared here.
        let a = std::fs::read(dir.join("resync/primary.img")).unwrap();
        let b = std::fs::read(dir.join("resync/backup.img")).unwrap();
        assert_eq!(a.len(), b.len());
        if let Some(k) = a.chunks(512).zip(b.chunks(512)).position(|(x, y)| x != y) {
            panic!("cycle {cycle}: after the resync the images differ at sector {k}: {s}");
        }
        let p = &s["reprotect"];
        assert_eq!(p["images_identical"], true, "{s}");
        let (sent, size) = (
            p["resync_bytes"].as_u64().unwrap(),
            p["disk_bytes"].as_u64().unwrap(),
        );
        assert_eq!(size, a.len() as u64);
        // Only what diverged: the regions the new primary wrote since the common point and the
        // crashed host's activity log (the writer touches a few 1 MiB regions), not the disk.
        assert!(
            sent > 0 && sent * 4 <= size,
            "cycle {cycle}: the resync sent {sent} of {size} bytes: {s}"
        );
        assert!(
            p["plan"]
                .as_str()
                .unwrap_or("")
                .starts_with("partial resync"),
            "{s}"
        );
        eprintln!(
            "cycle {cycle}: outage {} ms; re-protected in {} ms, resync {sent} of {size} bytes; {} records",
            r.outage_ms, p["attach_to_protected_ms"], r.records
        );
    }
    let _ = std::fs::remove_dir_all(&evidence);
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("3 moves in {:.0} s", elapsed.as_secs_f64());
    assert!(elapsed < Duration::from_secs(300), "took {elapsed:?}");
}
