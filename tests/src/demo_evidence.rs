//! A demo failover judged from its raw evidence (`remus demo --evidence`) with the tests' own
//! checks, not the demo's verdict code: every reply continued the guest's counter (output
//! commit held), the disk writer's position never went back, and the disk of the host that
//! took over is a consistent prefix of the writer's records covering everything the guest
//! reported.
//!
//! A directory of evidence holds replies.txt ("n written at_unix_ms" per reply),
//! crash_unix_ms and disk.img.

use std::path::Path;

/// The tests' own reading of sector `i` of the guest disk: the record or nothing.
pub fn sector_is_record(sector: &[u8], i: u64) -> Option<bool> {
    if sector.iter().all(|b| *b == 0) {
        return None;
    }
    let text = format!("REC {:08} {}\n", i, (i * 7919) % 1_000_003);
    Some(sector[..text.len()] == *text.as_bytes() && sector[text.len()..].iter().all(|b| *b == 0))
}

pub struct Round {
    pub outage_ms: u64,
    pub gap_ms: u64,
    pub replies: usize,
    pub records: u64,
}

pub fn check_round(dir: &Path) -> Round {
    let crash: u64 = std::fs::read_to_string(dir.join("crash_unix_ms"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let replies: Vec<(u64, i64, u64)> = std::fs::read_to_string(dir.join("replies.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            r.0,
            i as u64 + 1,
            "{}: reply #{i} is {} — output of an epoch that never reached the backup was seen, or a reply was lost",
            dir.display(),
            r.0
        );
    }
    for w in replies.windows(2) {
        assert!(
            w[1].1 >= w[0].1,
            "{}: the disk writer went back: {w:?}",
            dir.display()
        );
    }
    let after: Vec<_> = replies.iter().filter(|r| r.2 > crash).collect();
    let before = replies.len() - after.len();
    assert!(
        before >= 10,
        "{}: only {before} replies before the crash",
        dir.display()
    );
    assert!(
        after.len() >= 20,
        "{}: {} replies after the crash",
        dir.display(),
        after.len()
    );
    let reported = replies.iter().map(|r| r.1).max().unwrap();

    let disk = std::fs::read(dir.join("disk.img")).unwrap();
    let mut records = 0u64;
    let mut hole = false;
    for (i, s) in disk.chunks(512).enumerate() {
        match sector_is_record(s, i as u64) {
            None => hole = true,
            Some(true) => {
                assert!(
                    !hole,
                    "{}: record {i} after a hole: the disk is not a prefix",
                    dir.display()
                );
                records = i as u64 + 1;
            }
            Some(false) => panic!(
                "{}: sector {i} holds something that is not record {i}",
                dir.display()
            ),
        }
    }
    assert!(
        records as i64 > reported,
        "{}: the backup's disk ends at record {} but the guest had reported record {reported} written",
        dir.display(),
        records as i64 - 1
    );
    let gap = replies.windows(2).map(|w| w[1].2 - w[0].2).max().unwrap();
    // Service is back with the first reply after the crash that ends a silence (200 ms, four
    // request intervals): replies the primary released just before it died may still arrive
    // a few ms after the crash and say nothing about the takeover.
    let outage_end = replies
        .windows(2)
        .find(|w| w[1].2 > crash && w[1].2 - w[0].2 >= 200)
        .map_or(after[0].2, |w| w[1].2);
    Round {
        outage_ms: outage_end - crash,
        gap_ms: gap,
        replies: replies.len(),
        records,
    }
}
