//! Property tests of the pure core: random sequences of frames, barriers, releases,
//! release-all and discard, checked against what the output-commit rule allows.

use netbuf::{EpochQueue, Limits, Push};
use proptest::prelude::*;
use remus_proto::Epoch;

/// A test frame: a unique id, a length, and the epoch open when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
struct F {
    id: u64,
    len: usize,
    epoch: Option<u64>,
}

impl netbuf::WireLen for F {
    fn wire_len(&self) -> usize {
        self.len
    }
}

#[derive(Debug, Clone)]
enum Op {
    Frame(usize),
    /// Barrier at (last barrier + delta); delta 0 is illegal and must be refused.
    Barrier(u64),
    Release(u64),
    ReleaseAll,
    Discard,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..2000).prop_map(Op::Frame),
        2 => (0u64..4).prop_map(Op::Barrier),
        2 => (0u64..30).prop_map(Op::Release),
        1 => Just(Op::ReleaseAll),
        1 => Just(Op::Discard),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn output_commit_order_and_accounting(ops in proptest::collection::vec(op(), 0..200),
                                          max_frames in 1usize..40, max_bytes in 1usize..40_000) {
        let mut q = EpochQueue::new(Limits { max_frames, max_bytes });
        let mut sent: Vec<F> = Vec::new();
        let mut next_id = 0u64;
        let mut last_barrier: Option<u64> = None;
        let mut dropped = 0u64;
        let mut discarded = 0u64;
        for op in ops {
            match op {
                Op::Frame(len) => {
                    let epoch = q.ledger().open().map(|e| e.0);
                    let f = F { id: next_id, len, epoch };
                    next_id += 1;
                    match q.push(f) {
                        Push::Forward(g) => { prop_assert!(epoch.is_none()); sent.push(g) }
                        Push::Held => prop_assert!(epoch.is_some()),
                        Push::Dropped(_) => { prop_assert!(epoch.is_some()); dropped += 1 }
                    }
                }
                Op::Barrier(d) => {
                    let e = last_barrier.map_or(d, |l| l + d);
                    let legal = last_barrier.is_none_or(|l| e > l);
                    let r = q.barrier(Epoch(e));
                    prop_assert_eq!(r.is_ok(), legal, "barrier {} after {:?}", e, last_barrier);
                    if legal { last_barrier = Some(e); }
                }
                Op::Release(e) => {
                    let open = q.ledger().open().map(|o| o.0);
                    let legal = match open {
                        Some(o) => e < o,
                        None => last_barrier.is_some_and(|l| e <= l),
                    };
                    let before = sent.len();
                    match q.release_through(Epoch(e)) {
                        Ok(it) => { prop_assert!(legal); sent.extend(it) }
                        Err(_) => { prop_assert!(!legal); continue; }
                    }
                    // Output commit: a frame leaves only once its epoch is released, and never
                    // while its epoch is still open.
                    for f in &sent[before..] {
                        let fe = f.epoch.expect("held frames carry an epoch");
                        prop_assert!(fe <= e, "frame of epoch {} left on release {}", fe, e);
                        prop_assert!(open.is_none_or(|o| fe < o));
                    }
                }
                Op::ReleaseAll => sent.extend(q.release_all()),
                Op::Discard => discarded += q.discard(),
            }
            let c = q.counters();
            prop_assert_eq!(c.received_frames, next_id);
            prop_assert_eq!(
                c.passed_frames + c.released_frames + c.dropped_overflow_frames
                    + c.discarded_frames + q.held_frames() as u64,
                c.received_frames
            );
            prop_assert_eq!(c.dropped_overflow_frames, dropped);
            prop_assert_eq!(c.discarded_frames, discarded);
            prop_assert!(q.held_frames() <= max_frames && q.held_bytes() <= max_bytes);
            let per_epoch: u64 = q.held_per_epoch().map(|h| h.frames).sum();
            prop_assert_eq!(per_epoch, q.held_frames() as u64);
            let per_epoch_bytes: u64 = q.held_per_epoch().map(|h| h.bytes).sum();
            prop_assert_eq!(per_epoch_bytes, q.held_bytes() as u64);
        }
        // Release order is arrival order, and nothing leaves twice.
        for w in sent.windows(2) {
            prop_assert!(w[0].id < w[1].id, "out of order: {} then {}", w[0].id, w[1].id);
        }
        let c = q.counters();
        prop_assert_eq!(c.passed_frames + c.released_frames, sent.len() as u64);
    }
}

#[test]
fn overflow_drops_newest_and_keeps_order() {
    let mut q = EpochQueue::new(Limits {
        max_frames: 2,
        max_bytes: 1000,
    });
    q.barrier(Epoch(1)).unwrap();
    assert_eq!(q.push(vec![1u8; 10]), Push::Held);
    assert_eq!(q.push(vec![2u8; 10]), Push::Held);
    assert_eq!(q.push(vec![3u8; 10]), Push::Dropped(vec![3u8; 10]));
    q.barrier(Epoch(2)).unwrap();
    let out: Vec<_> = q.release_through(Epoch(1)).unwrap().collect();
    assert_eq!(out, vec![vec![1u8; 10], vec![2u8; 10]]);
    assert_eq!(q.counters().dropped_overflow_frames, 1);
    assert_eq!(q.push(vec![0u8; 1001]), Push::Dropped(vec![0u8; 1001]));
    assert_eq!(q.push(vec![0u8; 1000]), Push::Held);
}

#[test]
fn open_epoch_never_leaves() {
    let mut q: EpochQueue<Vec<u8>> = EpochQueue::new(Limits::default());
    q.barrier(Epoch(10)).unwrap();
    q.push(vec![1]);
    assert!(q.release_through(Epoch(10)).is_err());
    assert!(q.release_through(Epoch(9)).unwrap().next().is_none());
    q.barrier(Epoch(11)).unwrap();
    q.push(vec![2]);
    let out: Vec<_> = q.release_through(Epoch(10)).unwrap().collect();
    assert_eq!(out, vec![vec![1]]);
    assert_eq!(q.held_frames(), 1);
}

#[test]
fn counters_hold_when_release_is_not_consumed() {
    let mut q: EpochQueue<Vec<u8>> = EpochQueue::new(Limits::default());
    q.barrier(Epoch(1)).unwrap();
    q.push(vec![0; 5]);
    q.push(vec![0; 7]);
    q.barrier(Epoch(2)).unwrap();
    drop(q.release_through(Epoch(1)).unwrap());
    assert_eq!(q.counters().released_bytes, 12);
    assert_eq!(q.held_bytes(), 0);
}
