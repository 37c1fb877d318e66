//! Fencing under partitions: `remus receive` and `remus protect` with an etcd witness, in
//! namespaces (primary, backup, witness, LAN, client), each cut made while a client talks to
//! the guest. In every case at most one copy of the VM sends to the LAN (watched per bridge
//! port: `lp` leads to the primary, `lb` to the backup), the client's replies never fork or go
//! back, the surviving disk is a consistent prefix covering what the guest reported, and the
//! generation's history in etcd names the side that runs the VM. The evidence of each case
//! (the key's history, the LAN frames, the replies) is written to target/fence-evidence/CASE.
//!
//! One topology, one guest image and one etcd serve every case; each case starts a fresh
//! protected pair (a case that ends with one side alone cannot be re-protected yet).

use remus_tests::fence_bed::{exit_code_within, now_ms, read, status, until, Bed};
use remus_tests::netns::require_root;
use std::time::{Duration, Instant};

/// REMUS_FENCE_CASES=2,5 runs only those cases (while working on one); all by default.
fn wanted(case: u32) -> bool {
    std::env::var("REMUS_FENCE_CASES")
        .map_or(true, |v| v.split(',').any(|c| c.trim() == case.to_string()))
}

#[test]
fn partitions_never_yield_two_running_copies() {
    require_root();
    let mut bed = Bed::create();
    let t_all = Instant::now();
    let prun = bed.run_dir("primary");

    if wanted(1) {
        // 1. The witness dies alone: nothing changes. Then only the replication link is cut: the
        // primary claims first (the backup waits a grace) and runs on; the backup never restores.
        let mut p = bed.pair();
        bed.etcd.kill();
        let t = now_ms();
        bed.replies_after(&p, t, 30, "replies with the witness down");
        let s = status(&prun);
        assert_eq!(
            (s["protected"].as_bool(), s["witness_reachable"].as_bool()),
            (Some(true), Some(false)),
            "{s}"
        );
        assert!(!read(&p.plog).contains("PROTECTION LOST") && !read(&p.rlog).contains("FAILOVER"));
        bed.etcd.restart().unwrap();
        until(
            "the witness reachable again",
            Duration::from_secs(10),
            || status(&prun)["witness_reachable"] == true,
        );
        let cut = now_ms();
        bed.link("prim", "repl", "down");
        bed.primary_won(&mut p, &[9]);
        bed.replies_after(&p, cut, 20, "replies after the cut");
        bed.link("prim", "repl", "up");
        bed.finish(
            "1-witness-down-alone-then-replication-cut",
            p,
            cut,
            "primary",
            ("lb", 0),
        );
    }

    if wanted(2) {
        // 2. The primary is isolated from the backup and the witness: the backup wins; nothing
        // the old primary holds reaches the LAN; when the witness answers it again, it is fenced.
        let mut p = bed.pair();
        let cut = now_ms();
        bed.link("prim", "repl", "down");
        bed.link("prim", "wit", "down");
        bed.backup_won(&mut p);
        bed.replies_after(&p, cut, 20, "replies from the backup");
        let s = status(&prun);
        assert_eq!(
            s["checkpointd"]["phase"], "claiming",
            "the isolated primary holds its output: {s}"
        );
        bed.link("prim", "wit", "up");
        assert_eq!(
            exit_code_within(&mut p.prot, Duration::from_secs(20), "remus protect"),
            Some(9),
            "{}",
            read(&p.plog)
        );
        assert!(read(&p.plog).contains("FENCED"), "{}", read(&p.plog));
        bed.link("prim", "repl", "up");
        // Releases of epochs the backup acknowledged before the cut may still be on their way.
        bed.finish("2-primary-isolated", p, cut, "backup", ("lp", cut + 100));
    }

    if wanted(3) {
        // 3. The backup is isolated: the primary continues; the backup, which cannot reach the
        // witness, restores nothing, and is fenced once it can.
        let mut p = bed.pair();
        let cut = now_ms();
        bed.link("back", "repl", "down");
        bed.link("back", "wit", "down");
        until("the primary to win", Duration::from_secs(20), || {
            read(&p.plog).contains("PROTECTION LOST")
        });
        bed.replies_after(&p, cut, 20, "replies after the cut");
        assert!(
            p.recv.try_wait().unwrap().is_none(),
            "the backup waits for the witness"
        );
        assert!(!read(&p.rlog).contains("FAILOVER"));
        bed.link("back", "wit", "up");
        bed.primary_won(&mut p, &[9]);
        bed.link("back", "repl", "up");
        bed.finish("3-backup-isolated", p, cut, "primary", ("lb", 0));
    }

    if wanted(4) {
        // 4. The witness is down, then the replication link is cut: nobody acts (output held,
        // nothing restored) until the witness returns; then exactly one side runs the VM.
        let mut p = bed.pair();
        bed.etcd.kill();
        let cut = now_ms();
        bed.link("prim", "repl", "down");
        std::thread::sleep(Duration::from_secs(3)); // the window in which nobody may act
        let back = now_ms();
        assert!(p.prot.try_wait().unwrap().is_none() && p.recv.try_wait().unwrap().is_none());
        assert!(!read(&p.plog).contains("PROTECTION LOST") && !read(&p.rlog).contains("FAILOVER"));
        let s = status(&prun);
        assert_eq!(s["checkpointd"]["phase"], "claiming", "{s}");
        let held = p.client.as_ref().unwrap().snapshot();
        let during = held
            .iter()
            .filter(|r| r.at_unix_ms > cut + 500 && r.at_unix_ms < back)
            .count();
        assert_eq!(
            during, 0,
            "replies reached the client while nobody held the generation"
        );
        let quiet_lan = p
            .lan
            .seen()
            .iter()
            .filter(|s| s.at_ms > cut + 500 && s.at_ms < back)
            .count();
        assert_eq!(
            quiet_lan, 0,
            "frames reached the LAN while nobody held the generation"
        );
        bed.etcd.restart().unwrap();
        until("one side to win", Duration::from_secs(20), || {
            read(&p.plog).contains("PROTECTION LOST") || read(&p.rlog).contains("FAILOVER")
        });
        if read(&p.plog).contains("PROTECTION LOST") {
            bed.primary_won(&mut p, &[9]);
            bed.link("prim", "repl", "up");
            bed.finish(
                "4-witness-down-then-replication-cut",
                p,
                cut,
                "primary",
                ("lb", 0),
            );
        } else {
            assert_eq!(
                exit_code_within(&mut p.prot, Duration::from_secs(20), "remus protect"),
                Some(9)
            );
            bed.link("prim", "repl", "up");
            bed.finish(
                "4-witness-down-then-replication-cut",
                p,
                cut,
                "backup",
                ("lp", back),
            );
        }
    }

    if wanted(5) {
        // 5. One way, primary → backup dropped: both sides soon hear nothing (the backup's
        // segments still reach the primary, but once its unacknowledged data times out TCP
        // holds everything new behind a retransmission), so each claims: the backup after its
        // timeout and grace, the primary once its own timeout runs out from the backup's last
        // word. Which comes first is a race of a few tens of milliseconds; either outcome is
        // safe, and the test holds the winner to it: the other side stands down (a fenced
        // primary's output stays held; a losing backup restores nothing).
        let mut p = bed.pair();
        let cut = now_ms();
        bed.drop_out("prim", "repl");
        until("one side to win", Duration::from_secs(20), || {
            read(&p.plog).contains("PROTECTION LOST") || read(&p.rlog).contains("FAILOVER")
        });
        let (survivor, quiet) = if read(&p.rlog).contains("FAILOVER") {
            bed.backup_won(&mut p);
            assert_eq!(
                exit_code_within(&mut p.prot, Duration::from_secs(20), "remus protect"),
                Some(9),
                "{}",
                read(&p.plog)
            );
            ("backup", ("lp", cut + 100))
        } else {
            bed.primary_won(&mut p, &[9]);
            ("primary", ("lb", 0))
        };
        bed.replies_after(&p, cut, 20, "replies after the cut");
        bed.undrop("prim");
        bed.finish(
            "5-one-way-primary-to-backup-dropped",
            p,
            cut,
            survivor,
            quiet,
        );
    }

    if wanted(6) {
        // 6. One way, backup → primary dropped: the primary hears nothing, wins, runs on and tells
        // the backup to stand down (that direction works); the backup never suspected it.
        let mut p = bed.pair();
        let cut = now_ms();
        bed.drop_out("back", "repl");
        bed.primary_won(&mut p, &[0, 9]);
        bed.replies_after(&p, cut, 20, "replies after the cut");
        bed.undrop("back");
        bed.finish(
            "6-one-way-backup-to-primary-dropped",
            p,
            cut,
            "primary",
            ("lb", 0),
        );
    }

    if wanted(7) {
        // 7. The whole primary host is frozen (SIGSTOP) past the timeout: the backup wins; the
        // primary, thawed, is fenced.
        let mut p = bed.pair();
        let cut = now_ms();
        bed.signal_host("prim", libc::SIGSTOP);
        bed.backup_won(&mut p);
        bed.replies_after(&p, cut, 10, "replies from the backup");
        let thaw = now_ms();
        bed.signal_host("prim", libc::SIGCONT);
        assert_eq!(
            exit_code_within(&mut p.prot, Duration::from_secs(20), "remus protect"),
            Some(9),
            "{}",
            read(&p.plog)
        );
        // Acknowledged epochs the thawed primary releases before it reads the takeover are the
        // backup's history too (never re-sent by it); anything later would be a second copy.
        bed.finish(
            "7-primary-host-frozen",
            p,
            cut,
            "backup",
            ("lp", thaw + 500),
        );
    }

    if wanted(8) {
        // 8. The whole backup host is frozen past the timeout: the primary wins and runs on; the
        // backup, thawed, reads the stand-down and restores nothing.
        let mut p = bed.pair();
        let cut = now_ms();
        bed.signal_host("back", libc::SIGSTOP);
        until("the primary to win", Duration::from_secs(20), || {
            read(&p.plog).contains("PROTECTION LOST")
        });
        bed.replies_after(&p, cut, 10, "replies after the freeze");
        bed.signal_host("back", libc::SIGCONT);
        bed.primary_won(&mut p, &[0, 9]);
        bed.finish("8-backup-host-frozen", p, cut, "primary", ("lb", 0));
    }

    if wanted(9) {
        // 9. etcd is killed while claims are with it: frozen (requests accepted, never answered),
        // the replication link cut, then SIGKILLed and restarted on its data. Exactly one side
        // wins; an attempt whose answer was lost is recognised by its owner on the retry.
        let mut p = bed.pair();
        bed.etcd.signal(libc::SIGSTOP);
        let cut = now_ms();
        bed.link("prim", "repl", "down");
        std::thread::sleep(Duration::from_millis(1500));
        bed.etcd.kill();
        let back = now_ms();
        assert!(!read(&p.plog).contains("PROTECTION LOST") && !read(&p.rlog).contains("FAILOVER"));
        bed.etcd.restart().unwrap();
        until("one side to win", Duration::from_secs(20), || {
            read(&p.plog).contains("PROTECTION LOST") || read(&p.rlog).contains("FAILOVER")
        });
        if read(&p.plog).contains("PROTECTION LOST") {
            bed.primary_won(&mut p, &[9]);
            bed.link("prim", "repl", "up");
            bed.finish("9-etcd-killed-during-claims", p, cut, "primary", ("lb", 0));
        } else {
            assert_eq!(
                exit_code_within(&mut p.prot, Duration::from_secs(20), "remus protect"),
                Some(9)
            );
            bed.link("prim", "repl", "up");
            bed.finish(
                "9-etcd-killed-during-claims",
                p,
                cut,
                "backup",
                ("lp", back),
            );
        }
    }
    eprintln!(
        "partition matrix in {:.0} s; evidence in {}",
        t_all.elapsed().as_secs_f64(),
        bed.evidence.display()
    );
    let _ = &mut bed;
}
