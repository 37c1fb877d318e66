//! The fencing decisions of checkpointd's pure cores, in scenarios: a primary that loses the
//! generation fences itself (and pauses its guest for a full netbuf while it waits); a backup's
//! suspicion is cancelled by the primary within the grace, while a claim once started is only
//! resolved by the witness; and when only the replication link is cut, the primary claims
//! before the backup whatever the phase of either side's heartbeats. (The invariants under
//! random event orders are in core_props.rs.)

use checkpointd::core::backup::{self, BackupCore};
use checkpointd::core::claim::Outcome;
use checkpointd::core::primary::{Action, Config, Input, Phase, PrimaryCore};
use proptest::prelude::*;
use remus_proto::generation::GenerationRef;
use remus_proto::Epoch;
use std::time::{Duration, Instant};

/// The witness's answer: 0 won, 1 lost, 2 unknown.
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
fn a_primary_that_loses_the_generation_fences_itself_and_pauses_for_a_full_netbuf_meanwhile() {
    let (t0, _, mut c) = started_and_captured();
    c.handle(t0, Input::Shipped(Epoch(0)));
    // Watched silence (polled every 10 ms) until the primary gives up on the backup.
    let mut t = t0;
    loop {
        t += Duration::from_millis(10);
        let a = c.poll(t);
        if a.contains(&Action::Claim) {
            break;
        }
        assert!(t < t0 + Duration::from_secs(1), "no claim");
    }
    assert_eq!(c.handle(t, Input::OutputFull), vec![Action::PauseGuest]);
    assert!(c.handle(t, Input::OutputFull).is_empty(), "paused once");
    let a = c.handle(t, Input::Claimed(outcome(1)));
    assert!(
        matches!(&a[..], [Action::Fence(w)] if w.contains("lost the generation")),
        "{a:?}"
    );
    assert_eq!(c.phase(), Phase::Fenced);
    assert!(c.poll(t + Duration::from_secs(1)).is_empty());
}

/// A backup with checkpoint 0 committed, hearing heartbeats every `peer_timeout / 4` (the
/// primary's heartbeat period) up to `last`.
fn committed_backup(t0: Instant, cfg: backup::Config, last: Instant) -> BackupCore {
    let every = cfg.peer_timeout / 4;
    let mut b = BackupCore::new(cfg, t0);
    b.handle(t0, backup::Input::Begin(Epoch(0)));
    b.handle(t0, backup::Input::End(Epoch(0)));
    b.handle(t0, backup::Input::DiskCommitted(Epoch(0)));
    let mut t = t0;
    while t + every <= last {
        t += every;
        b.handle(t, backup::Input::Heartbeat);
    }
    b.handle(last, backup::Input::Heartbeat);
    b
}

#[test]
fn the_primary_heard_again_during_the_grace_cancels_the_suspicion() {
    let t0 = Instant::now();
    let cfg = backup::Config::new(Duration::from_millis(300));
    let mut b = committed_backup(t0, cfg, t0 + Duration::from_secs(3));
    let t = t0 + Duration::from_secs(3);
    let (a, t) = watch(&mut b, t, cfg.peer_timeout + Duration::from_millis(50));
    assert!(a.is_empty(), "suspect, in grace: {a:?}");
    b.handle(t, backup::Input::Heartbeat);
    let (a, t) = watch(&mut b, t, cfg.peer_timeout);
    assert!(a.is_empty(), "{a:?}");
    // A claim, once started, is only resolved by the witness: hearing the primary does not
    // cancel it, an unknown answer is retried, a loss restores nothing.
    let (a, t) = watch(&mut b, t, cfg.peer_timeout + cfg.grace);
    assert_eq!(a, vec![backup::Action::Claim]);
    b.handle(t, backup::Input::Heartbeat);
    assert!(b.handle(t, backup::Input::Claimed(outcome(2))).is_empty());
    let (a, t) = watch(&mut b, t, cfg.claim_retry);
    assert_eq!(a, vec![backup::Action::Claim]);
    let a = b.handle(t, backup::Input::Claimed(outcome(1)));
    assert!(matches!(&a[..], [backup::Action::Lost(_)]), "{a:?}");
    assert_eq!(b.phase(), backup::Phase::Fenced);
    assert!(b.handle(t, backup::Input::Failover).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Only the replication link is cut (at `cut`; each side last heard the other up to one
    /// heartbeat period, timeout/4, before it): the primary, which claims as soon as it gives
    /// up on the backup, claims before the backup does (timeout + grace), whatever the phase
    /// of either side's heartbeats. The backup's detector has learnt steady heartbeats. (This
    /// is why the grace, timeout/2 by default, must exceed the heartbeat period.)
    #[test]
    fn a_cut_replication_link_lets_the_primary_claim_first(
        p_frac in 0u64..100, b_frac in 0u64..100, timeout_ms in 100u64..1000,
    ) {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(timeout_ms);
        let (p_last, b_last) = (timeout_ms / 4 * p_frac / 100, timeout_ms / 4 * b_frac / 100);
        let cut = t0 + Duration::from_secs(5);
        let pcfg = Config { peer_timeout: timeout, heartbeat: timeout / 4, ..Config::default() };
        let mut p = PrimaryCore::new(pcfg, t0);
        p.handle(t0, Input::Start { first: Epoch(0) });
        let mut t = t0;
        while t < cut - Duration::from_millis(p_last) {
            t += Duration::from_millis(5);
            p.handle(t, Input::Heard);
        }
        let bcfg = backup::Config::new(timeout);
        let mut b = committed_backup(t0, bcfg, cut - Duration::from_millis(b_last));
        let (mut p_claim, mut b_claim) = (None, None);
        let mut now = cut - timeout / 4;
        while p_claim.is_none() || b_claim.is_none() {
            now += Duration::from_millis(1);
            if p_claim.is_none() && p.poll(now).contains(&Action::Claim) {
                p_claim = Some(now);
            }
            if b_claim.is_none() && b.poll(now).contains(&backup::Action::Claim) {
                b_claim = Some(now);
            }
            prop_assert!(now < cut + Duration::from_secs(5));
        }
        prop_assert!(p_claim < b_claim, "primary claims at {:?}, backup at {:?}", p_claim.map(|x| x - cut), b_claim.map(|x| x - cut));
    }
}
