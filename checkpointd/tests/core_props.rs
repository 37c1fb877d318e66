//! Property tests of checkpointd's pure cores under random event orders: acks lost, late,
//! duplicated, reordered or bogus; captures and shipments delayed; silence on either side;
//! the witness answering claims won, lost or unknown (fencing).

use checkpointd::core::backup::{self, BackupCore};
use checkpointd::core::claim::Outcome;
use checkpointd::core::primary::{Action, Config, Input, Phase, PrimaryCore};
use proptest::prelude::*;
use remus_proto::generation::GenerationRef;
use remus_proto::Epoch;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Ev {
    Advance(u64), // ms
    CaptureOne,
    ShipOne,
    AckShipped(usize), // ack the i-th shipped-unacked epoch (any order)
    AckDuplicate,
    AckBogus(u64),
    Heard,
    ShipFailed,
    TookOver(u64),
    DiskFailed(usize), // the backup reports that the i-th shipped-unacked epoch cannot commit
    /// The witness answers the outstanding claim: 0 won, 1 lost, 2 unknown.
    Answer(u8),
    OutputFull,
}

fn outcome(kind: u8) -> Outcome {
    match kind {
        0 => Outcome::Won(GenerationRef {
            number: 2,
            revision: 9,
        }),
        1 => Outcome::Lost {
            owner: "the other side".into(),
            number: 2,
        },
        _ => Outcome::Unknown("timeout".into()),
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0u64..80).prop_map(Ev::Advance),
        3 => Just(Ev::CaptureOne),
        3 => Just(Ev::ShipOne),
        3 => (0usize..4).prop_map(Ev::AckShipped),
        1 => Just(Ev::AckDuplicate),
        1 => (0u64..50).prop_map(Ev::AckBogus),
        2 => Just(Ev::Heard),
        1 => Just(Ev::ShipFailed),
        1 => (0u64..50).prop_map(Ev::TookOver),
        1 => (0usize..4).prop_map(Ev::DiskFailed),
        2 => (0u8..3).prop_map(Ev::Answer),
        1 => Just(Ev::OutputFull),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Output commit and pipelining: a release never covers an epoch that was not both shipped
    /// and acknowledged; releases only move forward; unacked checkpoints never exceed the
    /// depth; epochs strictly increase; checkpoints start at most once per interval
    /// (pause to pause) and never while one is capturing; silence ends protection.
    /// Fencing: held output is let go (`GoUnprotected`) only after a claim the witness answered
    /// Won; an unknown answer changes nothing; a lost claim fences and nothing follows; at most
    /// one claim attempt is with the witness at a time; the guest is paused for a full netbuf
    /// only while a claim is unresolved.
    #[test]
    fn primary_invariants(events in proptest::collection::vec(ev(), 0..200), depth in 1usize..4) {
        let t0 = Instant::now();
        let cfg = Config { depth, ..Config::default() };
        let mut now = t0;
        let mut core = PrimaryCore::new(cfg, now);
        let mut to_capture: Vec<Epoch> = Vec::new();
        let mut to_ship: Vec<Epoch> = Vec::new();
        let mut shipped: Vec<Epoch> = Vec::new();
        let mut acked: BTreeSet<Epoch> = BTreeSet::new();
        let mut released: Option<Epoch> = None;
        let mut last_open = Epoch(0);
        let mut last_pause: Option<Instant> = None;
        let mut capturing = false;
        let mut unprotected_seen = false;
        let mut fenced = false;
        let mut disk_failed: Option<Epoch> = None;
        let mut claim_outstanding = false;
        let mut won = false;
        let mut paused = false;
        let mut actions = core.handle(now, Input::Start { first: Epoch(0) });
        for e in events {
            // Once the backup took over, this copy does nothing at all any more.
            prop_assert!(!fenced || actions.is_empty(), "acted after being fenced: {:?}", actions);
            for a in actions.drain(..) {
                match a {
                    Action::Checkpoint { close, open } => {
                        prop_assert!(!capturing, "checkpoint while one is capturing");
                        prop_assert_eq!(open, close.next());
                        prop_assert!(open > last_open || (last_open == Epoch(0) && open == Epoch(1)));
                        if let Some(p) = last_pause {
                            prop_assert!(now.duration_since(p) >= cfg.interval, "cadence");
                        }
                        last_open = open;
                        last_pause = Some(now);
                        capturing = true;
                        to_capture.push(close);
                        prop_assert!(core.unacked() <= depth, "depth {}", core.unacked());
                    }
                    Action::Ship(ep) => to_ship.push(ep),
                    Action::Release(ep) => {
                        prop_assert!(acked.contains(&ep), "release {} without its ack", ep);
                        prop_assert!(shipped.contains(&ep));
                        prop_assert!(released.is_none_or(|r| ep > r), "release went back");
                        prop_assert!(disk_failed.is_none_or(|f| ep < f), "released {} at or after the failed epoch {:?}", ep, disk_failed);
                        released = Some(ep);
                    }
                    Action::GoUnprotected(_) => {
                        prop_assert!(won, "output released to run alone without a won generation");
                        prop_assert!(!unprotected_seen);
                        prop_assert!(!paused, "unprotected with the guest still paused");
                        unprotected_seen = true;
                    }
                    Action::Heartbeat => {}
                    Action::Fence(_) => {
                        prop_assert!(!fenced, "fenced twice");
                        fenced = true;
                    }
                    Action::Claim => {
                        prop_assert!(!claim_outstanding, "two claims with the witness at once");
                        prop_assert_eq!(core.phase(), Phase::Claiming);
                        claim_outstanding = true;
                    }
                    Action::PauseGuest => {
                        prop_assert_eq!(core.phase(), Phase::Claiming);
                        prop_assert!(!paused);
                        paused = true;
                    }
                    Action::ResumeGuest => {
                        prop_assert!(paused && won);
                        paused = false;
                    }
                }
            }
            prop_assert!(core.unacked() <= depth);
            match e {
                Ev::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    actions = core.poll(now);
                }
                Ev::CaptureOne => {
                    if let Some(ep) = to_capture.pop() {
                        capturing = false;
                        actions = core.handle(now, Input::Captured { epoch: ep, pause: Duration::from_millis(2) });
                    }
                }
                Ev::ShipOne => {
                    if !to_ship.is_empty() {
                        let ep = to_ship.remove(0);
                        shipped.push(ep);
                        actions = core.handle(now, Input::Shipped(ep));
                    }
                }
                Ev::AckShipped(i) => {
                    let pending: Vec<Epoch> = shipped.iter().copied().filter(|s| !acked.contains(s)).collect();
                    if let Some(&ep) = pending.get(i % pending.len().max(1)) {
                        acked.insert(ep);
                        actions = core.handle(now, Input::Acked(ep));
                    }
                }
                Ev::AckDuplicate => {
                    if let Some(&ep) = acked.iter().next_back() {
                        actions = core.handle(now, Input::Acked(ep));
                    }
                }
                Ev::AckBogus(n) => {
                    // An ack for something never shipped must change nothing.
                    let ep = Epoch(n + 1000);
                    let before = core.released_through();
                    actions = core.handle(now, Input::Acked(ep));
                    prop_assert_eq!(core.released_through(), before);
                    prop_assert!(!actions.iter().any(|a| matches!(a, Action::Release(_))));
                }
                Ev::Heard => actions = core.handle(now, Input::Heard),
                Ev::ShipFailed => {
                    actions = core.handle(now, Input::ShipFailed("test".into()));
                    prop_assert!(matches!(core.phase(), Phase::Claiming | Phase::Unprotected | Phase::Fenced));
                }
                Ev::DiskFailed(i) => {
                    let pending: Vec<Epoch> = shipped.iter().copied().filter(|s| !acked.contains(s)).collect();
                    if let Some(&ep) = pending.get(i % pending.len().max(1)) {
                        disk_failed = Some(disk_failed.map_or(ep, |f| f.min(ep)));
                        actions = core.handle(now, Input::BackupFailed(ep, "disk full".into()));
                        prop_assert!(matches!(core.phase(), Phase::Claiming | Phase::Unprotected | Phase::Fenced));
                    }
                }
                Ev::TookOver(n) => {
                    actions = core.handle(now, Input::BackupTookOver(Epoch(n)));
                    prop_assert_eq!(core.phase(), Phase::Fenced);
                    prop_assert!(fenced || (actions.len() == 1 && matches!(&actions[0], Action::Fence(w) if w.contains(&format!("checkpoint {n}")))), "{:?}", actions);
                }
                Ev::Answer(kind) => {
                    if claim_outstanding {
                        claim_outstanding = false;
                        let before = core.phase();
                        won = kind == 0;
                        actions = core.handle(now, Input::Claimed(outcome(kind)));
                        match kind {
                            0 => prop_assert!(before != Phase::Claiming || actions.iter().any(|a| matches!(a, Action::GoUnprotected(_)))),
                            1 => prop_assert!(fenced || actions.iter().any(|a| matches!(a, Action::Fence(_)))),
                            _ => {
                                prop_assert!(
                                    !actions.iter().any(|a| matches!(a, Action::GoUnprotected(_) | Action::Fence(_) | Action::Claim)),
                                    "acted on an unknown outcome: {:?}", actions
                                );
                                prop_assert_eq!(core.phase(), before);
                            }
                        }
                    }
                }
                Ev::OutputFull => actions = core.handle(now, Input::OutputFull),
            }
        }
        if core.phase() == Phase::Unprotected {
            prop_assert!(unprotected_seen || actions.iter().any(|a| matches!(a, Action::GoUnprotected(_))));
        }
        if core.phase() == Phase::Claiming {
            prop_assert!(!unprotected_seen);
        }
    }
}

#[test]
fn silence_ends_protection_and_releases_nothing_early() {
    let t0 = Instant::now();
    let cfg = Config::default();
    let mut c = PrimaryCore::new(cfg, t0);
    let a = c.handle(t0, Input::Start { first: Epoch(0) });
    assert!(matches!(
        a[0],
        Action::Checkpoint {
            close: Epoch(0),
            open: Epoch(1)
        }
    ));
    let a = c.handle(
        t0,
        Input::Captured {
            epoch: Epoch(0),
            pause: Duration::from_millis(1),
        },
    );
    assert_eq!(a[0], Action::Ship(Epoch(0)));
    c.handle(t0, Input::Shipped(Epoch(0)));
    // Watched silence (the shell polls at least every 100 ms while idle).
    let mut later = t0;
    let mut a = Vec::new();
    while a.is_empty() || a == vec![Action::Heartbeat] {
        later += Duration::from_millis(10);
        a = c.poll(later);
        assert!(
            later <= t0 + cfg.peer_timeout + Duration::from_millis(20),
            "no loss detected"
        );
    }
    assert!(
        later > t0 + cfg.peer_timeout,
        "loss declared early at {:?}",
        later - t0
    );
    // Output stays held: the generation must be won first.
    assert_eq!(a, vec![Action::Claim], "{a:?}");
    assert_eq!(c.phase(), Phase::Claiming);
    assert_eq!(c.released_through(), None);
    // Unknown: nothing happens until the retry, which is the only action then.
    let a = c.handle(later, Input::Claimed(Outcome::Unknown("down".into())));
    assert!(a.iter().all(|x| *x == Action::Heartbeat), "{a:?}");
    let retry = later + Config::default().claim_retry;
    let a = c.poll(retry - Duration::from_millis(1));
    assert!(!a.contains(&Action::Claim), "{a:?}");
    assert!(c.poll(retry).contains(&Action::Claim));
    // A late ack meanwhile releases its epoch: the backup has it, whoever wins.
    let a = c.handle(retry, Input::Acked(Epoch(0)));
    assert!(a.contains(&Action::Release(Epoch(0))), "{a:?}");
    let a = c.handle(retry, Input::Claimed(outcome(0)));
    assert!(
        a.iter().any(|x| matches!(x, Action::GoUnprotected(_))),
        "{a:?}"
    );
    assert_eq!(c.phase(), Phase::Unprotected);
}

#[test]
fn a_frozen_primary_reads_the_backup_before_judging_its_silence() {
    let (t0, _, mut c) = started_and_captured();
    c.handle(t0, Input::Shipped(Epoch(0)));
    // Frozen for 5 s, then awake: the backup's queued messages come first, protection stays.
    let woke = t0 + Duration::from_secs(5);
    let a = c.poll(woke);
    assert!(
        !a.iter().any(|x| matches!(x, Action::GoUnprotected(_))),
        "{a:?}"
    );
    let a = c.handle(woke, Input::Acked(Epoch(0)));
    assert!(a.contains(&Action::Release(Epoch(0))), "{a:?}");
    assert_eq!(c.phase(), Phase::Protected);
}

#[test]
fn slow_capture_stretches_the_period_without_overlap() {
    let t0 = Instant::now();
    let cfg = Config {
        depth: 4,
        ..Config::default()
    };
    let mut c = PrimaryCore::new(cfg, t0);
    c.handle(t0, Input::Start { first: Epoch(0) });
    // Capture takes 3 intervals: nothing new starts meanwhile.
    for k in 1..3 {
        c.handle(t0 + cfg.interval * k, Input::Heard);
        assert!(c
            .poll(t0 + cfg.interval * k)
            .iter()
            .all(|a| !matches!(a, Action::Checkpoint { .. })));
    }
    let done = t0 + cfg.interval * 3;
    let a = c.handle(
        done,
        Input::Captured {
            epoch: Epoch(0),
            pause: cfg.interval * 3,
        },
    );
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::Checkpoint {
                close: Epoch(1),
                ..
            }
        )),
        "{a:?}"
    );
}

// ---- backup ----

#[derive(Debug, Clone)]
enum Bv {
    Deliver, // Begin + End of the next checkpoint
    Partial, // Begin only (then something else)
    Corrupt,
    DiskOk,
    DiskFail,
    Silence,
    Failover,
    Stop, // the primary ends protection on purpose
    Answer(u8),
    Heartbeat,
}

fn bv() -> impl Strategy<Value = Bv> {
    prop_oneof![
        4 => Just(Bv::Deliver),
        1 => Just(Bv::Partial),
        1 => Just(Bv::Corrupt),
        3 => Just(Bv::DiskOk),
        1 => Just(Bv::DiskFail),
        1 => Just(Bv::Silence),
        1 => Just(Bv::Failover),
        1 => Just(Bv::Stop),
        2 => (0u8..3).prop_map(Bv::Answer),
        1 => Just(Bv::Heartbeat),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// An ack is sent only for an epoch whose memory was fully received and whose disk commit
    /// succeeded, after it was promoted; acks increase; at most one disk commit is in flight;
    /// activation restores exactly the last promoted epoch, after any commit in flight ended.
    /// A failed disk commit is final: it is reported once, and nothing is committed, promoted,
    /// acknowledged or restored after it (the disk may hold part of that epoch).
    /// No checkpoint is skipped: each carries only its own epoch's pages, so an epoch is
    /// promoted only if every epoch the primary sent before it was promoted; one that arrived
    /// void (corrupt, or never ended) stops the backup from following, reported like a
    /// failed disk commit.
    /// Fencing: nothing is ever restored without a claim the witness answered Won; an unknown
    /// answer changes nothing; a lost claim restores nothing, ever; one claim at a time.
    #[test]
    fn backup_invariants(events in proptest::collection::vec(bv(), 0..120)) {
        let t0 = Instant::now();
        let mut now = t0;
        let timeout = Duration::from_millis(300);
        let cfg = backup::Config::new(timeout);
        let mut core = BackupCore::new(cfg, now);
        let mut next = 0u64;
        let mut claim_outstanding = false;
        let mut won = false;
        let mut lost = false;
        let mut received: BTreeSet<Epoch> = BTreeSet::new();
        let mut disk_ok: BTreeSet<Epoch> = BTreeSet::new();
        let mut promoted: Option<Epoch> = None;
        let mut acked: Option<Epoch> = None;
        let mut in_commit: Option<Epoch> = None;
        let mut activated: Option<Epoch> = None;
        let mut stood_down = false;
        let mut disk_failed: Option<Epoch> = None;
        let mut reported = false;
        // Epochs the primary began but never ended (their pages are lost).
        let mut unended: BTreeSet<Epoch> = BTreeSet::new();
        let mut out: Vec<backup::Action> = Vec::new();
        for e in events {
            match e {
                Bv::Deliver => {
                    let ep = Epoch(next);
                    next += 1;
                    out.extend(core.handle(now, backup::Input::Begin(ep)));
                    received.insert(ep);
                    out.extend(core.handle(now, backup::Input::End(ep)));
                }
                Bv::Partial => {
                    unended.insert(Epoch(next));
                    out.extend(core.handle(now, backup::Input::Begin(Epoch(next))));
                    next += 1;
                }
                Bv::Corrupt => out.extend(core.handle(now, backup::Input::Corrupt("x".into()))),
                Bv::DiskOk => {
                    if let Some(c) = in_commit.take() {
                        disk_ok.insert(c);
                        out.extend(core.handle(now, backup::Input::DiskCommitted(c)));
                    }
                }
                Bv::DiskFail => {
                    if let Some(c) = in_commit.take() {
                        disk_failed = disk_failed.or(Some(c));
                        out.extend(core.handle(now, backup::Input::DiskCommitFailed(c, "x".into())));
                    }
                }
                Bv::Silence => {
                    // Watched silence: the shell polls every few milliseconds.
                    let end = now + cfg.detect_ceiling + cfg.grace + Duration::from_millis(1);
                    while now < end {
                        now += Duration::from_millis(10);
                        out.extend(core.poll(now));
                    }
                }
                Bv::Failover => out.extend(core.handle(now, backup::Input::Failover)),
                Bv::Stop => out.extend(core.handle(now, backup::Input::PrimaryStopped)),
                Bv::Heartbeat => out.extend(core.handle(now, backup::Input::Heartbeat)),
                Bv::Answer(kind) => {
                    if claim_outstanding {
                        claim_outstanding = false;
                        won |= kind == 0;
                        let before = core.phase();
                        out.extend(core.handle(now, backup::Input::Claimed(outcome(kind))));
                        if kind == 2 {
                            prop_assert!(
                                !out.iter().any(|a| matches!(a, backup::Action::Activate(_) | backup::Action::Lost(_) | backup::Action::Claim)),
                                "acted on an unknown outcome: {:?}", out
                            );
                            prop_assert_eq!(core.phase(), before);
                        }
                    }
                }
            }
            // After a planned stop or a lost claim nothing restores, acks or commits.
            prop_assert!(!stood_down || out.is_empty(), "acted after standing down: {:?}", out);
            prop_assert!(!lost || out.is_empty(), "acted after losing the generation: {:?}", out);
            for a in out.drain(..) {
                if disk_failed.is_some() {
                    prop_assert!(
                        matches!(a, backup::Action::ReportDiskFailure(..)
                            | backup::Action::CannotActivate(_)
                            | backup::Action::StandDown
                            | backup::Action::Lost(_)
                            | backup::Action::DiscardPartial(_)),
                        "{:?} after the disk commit of {:?} failed", a, disk_failed
                    );
                }
                match a {
                    backup::Action::ReportDiskFailure(ep, _) => {
                        // A failed commit, or a void checkpoint: from then on the same rules.
                        prop_assert!(disk_failed.is_none_or(|d| d == ep), "{:?} {:?}", ep, disk_failed);
                        disk_failed = Some(ep);
                        prop_assert!(!reported, "reported twice");
                        reported = true;
                    }
                    backup::Action::CommitDisk(ep) => {
                        prop_assert!(in_commit.is_none(), "two disk commits in flight");
                        prop_assert!(received.contains(&ep), "commit of a partial checkpoint");
                        prop_assert!(activated.is_none());
                        in_commit = Some(ep);
                    }
                    backup::Action::Promote(ep) => {
                        prop_assert!(disk_ok.contains(&ep), "promote before the disk commit");
                        prop_assert!(
                            !received.iter().any(|r| *r < ep && promoted.is_none_or(|p| *r > p)),
                            "checkpoint {:?} promoted over an unapplied earlier one (promoted {:?}, received {:?})",
                            ep, promoted, received
                        );
                        prop_assert!(
                            !unended.iter().any(|u| *u < ep),
                            "checkpoint {:?} promoted over a void one {:?}", ep, unended
                        );
                        prop_assert!(promoted.is_none_or(|p| ep > p));
                        promoted = Some(ep);
                    }
                    backup::Action::Ack(ep) => {
                        prop_assert_eq!(promoted, Some(ep), "ack of something not promoted");
                        prop_assert!(acked.is_none_or(|a| ep > a));
                        acked = Some(ep);
                    }
                    backup::Action::Activate(ep) => {
                        prop_assert!(won, "restored without a won generation");
                        prop_assert!(in_commit.is_none(), "activated with a disk commit in flight");
                        prop_assert_eq!(Some(ep), promoted);
                        prop_assert_eq!(Some(ep), core.committed());
                        activated = Some(ep);
                    }
                    backup::Action::CannotActivate(_) => {
                        // No restore point after a won claim, or a disk that matches no
                        // checkpoint (whatever asked for the restore).
                        prop_assert!(disk_failed.is_some() || (won && promoted.is_none()));
                    }
                    backup::Action::Claim => {
                        prop_assert!(!claim_outstanding, "two claims with the witness at once");
                        prop_assert!(activated.is_none() && !stood_down);
                        claim_outstanding = true;
                    }
                    backup::Action::Lost(_) => {
                        prop_assert!(activated.is_none() && !won);
                        lost = true;
                    }
                    backup::Action::DiscardPartial(_) => {}
                    backup::Action::StandDown => {
                        prop_assert!(activated.is_none(), "stood down after failing over");
                        prop_assert!(!stood_down, "stood down twice");
                        stood_down = true;
                    }
                }
            }
        }
    }
}

/// A primary that has started and captured checkpoint 0 (not shipped yet).
fn started_and_captured() -> (Instant, Config, PrimaryCore) {
    let t0 = Instant::now();
    let cfg = Config::default();
    let mut c = PrimaryCore::new(cfg, t0);
    c.handle(t0, Input::Start { first: Epoch(0) });
    c.handle(
        t0,
        Input::Captured {
            epoch: Epoch(0),
            pause: Duration::from_millis(1),
        },
    );
    (t0, cfg, c)
}

#[test]
fn happy_path_releases_after_the_ack_only() {
    let (t0, cfg, mut c) = started_and_captured();
    let a = c.handle(t0, Input::Shipped(Epoch(0)));
    assert!(
        !a.iter().any(|x| matches!(x, Action::Release(_))),
        "shipped is not safe"
    );
    let a = c.handle(t0, Input::Acked(Epoch(0)));
    assert_eq!(a[0], Action::Release(Epoch(0)));
    assert_eq!(c.released_through(), Some(Epoch(0)));
    // The next checkpoint is due one interval after the previous pause.
    let a = c.poll(t0 + cfg.interval);
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Checkpoint {
            close: Epoch(1),
            open: Epoch(2)
        }
    )));
}

#[test]
fn backup_acks_after_disk_and_finishes_a_commit_before_failover() {
    let t0 = Instant::now();
    let mut b = BackupCore::new(backup::Config::new(Duration::from_millis(300)), t0);
    b.handle(t0, backup::Input::Begin(Epoch(0)));
    assert_eq!(
        b.handle(t0, backup::Input::End(Epoch(0))),
        vec![backup::Action::CommitDisk(Epoch(0))]
    );
    assert_eq!(
        b.handle(t0, backup::Input::DiskCommitted(Epoch(0))),
        vec![
            backup::Action::Promote(Epoch(0)),
            backup::Action::Ack(Epoch(0))
        ]
    );
    b.handle(t0, backup::Input::Begin(Epoch(1)));
    b.handle(t0, backup::Input::End(Epoch(1))); // commit of 1 in flight
    let (a, t) = watch(&mut b, t0, Duration::from_millis(460));
    assert_eq!(
        a,
        vec![backup::Action::Claim],
        "claims after timeout and grace"
    );
    let a = b.handle(t, backup::Input::Claimed(outcome(0)));
    assert!(a.is_empty(), "waits for the commit in flight: {a:?}");
    let a = b.handle(t, backup::Input::DiskCommitted(Epoch(1)));
    assert_eq!(
        a,
        vec![
            backup::Action::Promote(Epoch(1)),
            backup::Action::Activate(Epoch(1))
        ]
    );
}

#[test]
fn backup_waits_out_silence_before_its_first_commit() {
    let t0 = Instant::now();
    let mut b = BackupCore::new(backup::Config::new(Duration::from_millis(300)), t0);
    b.handle(t0, backup::Input::Begin(Epoch(0)));
    let (a, t) = watch(&mut b, t0, Duration::from_secs(5));
    assert!(a.is_empty(), "initial copy still arriving");
    b.handle(t, backup::Input::End(Epoch(0)));
    b.handle(t, backup::Input::DiskCommitted(Epoch(0)));
    let (a, t) = watch(&mut b, t, Duration::from_secs(1));
    assert_eq!(a, vec![backup::Action::Claim]);
    let a = b.handle(t, backup::Input::Claimed(outcome(0)));
    assert_eq!(a, vec![backup::Action::Activate(Epoch(0))]);
}

/// Polls as the shell does while idle (every 10 ms) for `d`; returns the actions and the time.
fn watch(b: &mut BackupCore, from: Instant, d: Duration) -> (Vec<backup::Action>, Instant) {
    let mut out = Vec::new();
    let mut t = from;
    while t < from + d {
        t += Duration::from_millis(10);
        out.extend(b.poll(t));
    }
    (out, t)
}

#[test]
fn a_frozen_backup_reads_what_the_primary_sent_before_judging_its_silence() {
    let t0 = Instant::now();
    let timeout = Duration::from_millis(300);
    let mut b = BackupCore::new(backup::Config::new(timeout), t0);
    b.handle(t0, backup::Input::Begin(Epoch(0)));
    b.handle(t0, backup::Input::End(Epoch(0)));
    b.handle(t0, backup::Input::DiskCommitted(Epoch(0)));
    // Frozen for 5 s (no calls at all), then awake: no failover on waking...
    let woke = t0 + Duration::from_secs(5);
    assert!(
        b.poll(woke).is_empty(),
        "a stall of our own is not the primary's silence"
    );
    // ...so the stand-down the primary queued meanwhile is read and obeyed.
    assert_eq!(
        b.handle(
            woke + Duration::from_millis(1),
            backup::Input::PrimaryStopped
        ),
        vec![backup::Action::StandDown]
    );
    // Without one, watched silence after waking still fails over, one timeout later.
    let mut b = BackupCore::new(backup::Config::new(timeout), t0);
    b.handle(t0, backup::Input::Begin(Epoch(0)));
    b.handle(t0, backup::Input::End(Epoch(0)));
    b.handle(t0, backup::Input::DiskCommitted(Epoch(0)));
    assert!(b.poll(woke).is_empty());
    let (a, t) = watch(&mut b, woke, Duration::from_millis(280));
    assert!(a.is_empty(), "{a:?}");
    let (a, _) = watch(&mut b, t, Duration::from_millis(190));
    assert_eq!(a, vec![backup::Action::Claim]);
}

#[test]
fn a_failed_disk_commit_is_never_skipped_over() {
    let t0 = Instant::now();
    let mut b = BackupCore::new(backup::Config::new(Duration::from_millis(300)), t0);
    b.handle(t0, backup::Input::Begin(Epoch(0)));
    b.handle(t0, backup::Input::End(Epoch(0)));
    b.handle(t0, backup::Input::DiskCommitted(Epoch(0)));
    b.handle(t0, backup::Input::Begin(Epoch(1)));
    b.handle(t0, backup::Input::End(Epoch(1))); // commit of 1 in flight
    b.handle(t0, backup::Input::Begin(Epoch(2)));
    b.handle(t0, backup::Input::End(Epoch(2))); // staged, waiting
    let a = b.handle(
        t0,
        backup::Input::DiskCommitFailed(Epoch(1), "No space left on device".into()),
    );
    assert_eq!(
        a,
        vec![backup::Action::ReportDiskFailure(
            Epoch(1),
            "No space left on device".into()
        )],
        "epoch 2 is not committed on top of a half-applied epoch 1"
    );
    assert_eq!(b.phase(), backup::Phase::DiskFailed);
    assert_eq!(b.committed(), Some(Epoch(0)));
    // Later checkpoints are neither committed nor acknowledged.
    b.handle(t0, backup::Input::Begin(Epoch(3)));
    assert!(b.handle(t0, backup::Input::End(Epoch(3))).is_empty());
    // A failover request restores nothing: the disk holds part of epoch 1.
    let mut f = b.clone();
    match f.handle(t0, backup::Input::Failover).as_slice() {
        [backup::Action::CannotActivate(why)] => assert!(why.contains("No space left"), "{why}"),
        a => panic!("{a:?}"),
    }
    // Nor does the primary's silence.
    let mut s = b.clone();
    let (a, _) = watch(&mut s, t0, Duration::from_millis(400));
    assert!(
        matches!(a.as_slice(), [backup::Action::CannotActivate(_)]),
        "{a:?}"
    );
    // The primary's stop (it went unprotected) ends the run quietly.
    assert_eq!(
        b.handle(t0, backup::Input::PrimaryStopped),
        vec![backup::Action::StandDown]
    );
}
