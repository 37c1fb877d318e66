//! Judging a failover from its evidence (pure): the replies the client got, the moment of the
//! crash, and the backup's disk afterwards.
//!
//! The promises checked:
//! - output commit: every reply continues the counter (n = previous + 1), so no reply came
//!   from an epoch the backup never got; the writer's position `w` never goes back;
//! - the connection survived (checked by the caller: the client never saw a reset);
//! - the disk is a consistent prefix: records 0..=K intact and in order, nothing after K,
//!   and K covers every record the guest reported as written.

pub const SECTOR: usize = 512;

/// What the disk writer puts in sector `i`.
pub fn record(i: u64) -> String {
    format!("REC {i:08} {}\n", (i * 7919) % 1_000_003)
}

/// The highest intact record K such that 0..=K are all intact and nothing follows them;
/// `Err` describes the first inconsistency.
pub fn disk_prefix(image: &[u8]) -> Result<Option<u64>, String> {
    let mut last: Option<u64> = None;
    let mut ended = false;
    for (i, sector) in image.chunks(SECTOR).enumerate() {
        let i = i as u64;
        if sector.iter().all(|b| *b == 0) {
            ended = true;
            continue;
        }
        if ended {
            return Err(format!("sector {i} holds data after a hole: not a prefix"));
        }
        let want = record(i);
        let ok = sector.len() == SECTOR
            && sector.starts_with(want.as_bytes())
            && sector[want.len()..].iter().all(|b| *b == 0);
        if !ok {
            let shown = String::from_utf8_lossy(&sector[..sector.len().min(40)]).into_owned();
            return Err(format!("sector {i} is not record {i}: {shown:?}"));
        }
        last = Some(i);
    }
    Ok(last)
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Judgement {
    pub replies: usize,
    pub before_crash: usize,
    /// Longest time between two consecutive replies (ms).
    pub longest_gap_ms: u64,
    /// Crash → the first reply that ends a silence after it (ms): see [`SILENCE_MS`].
    pub outage_ms: Option<u64>,
    pub max_written_reported: i64,
    pub problems: Vec<String>,
}

/// A gap between replies at least this long (four of the client's 50 ms request intervals) is
/// a silence. The outage ends with the first reply after the crash that ends a silence, not with
/// the first reply after the crash: replies the primary released just before it died can still
/// arrive a few ms after the crash, and counting them made a 680 ms outage read as 5 ms.
/// A real takeover always makes a silence (the backup's detection alone takes 300 ms).
pub const SILENCE_MS: u64 = 200;

/// Judges the replies `(n, written, at_unix_ms)` around a crash at `crash_unix_ms`.
pub fn judge_replies(replies: &[(u64, i64, u64)], crash_unix_ms: u64) -> Judgement {
    let mut j = Judgement {
        replies: replies.len(),
        ..Default::default()
    };
    let mut prev: Option<(u64, i64, u64)> = None;
    for &(n, w, at) in replies {
        let expect = prev.map_or(1, |p| p.0 + 1);
        if n != expect {
            j.problems.push(format!(
                "reply {n} where {expect} was due: output of an epoch the backup never had was seen, or a reply was lost"
            ));
        }
        if let Some(p) = prev {
            if w < p.1 {
                j.problems.push(format!(
                    "the disk writer went back from record {} to {w}",
                    p.1
                ));
            }
            j.longest_gap_ms = j.longest_gap_ms.max(at.saturating_sub(p.2));
        }
        if at <= crash_unix_ms {
            j.before_crash += 1;
        } else if j.outage_ms.is_none() && prev.is_none_or(|p| at.saturating_sub(p.2) >= SILENCE_MS)
        {
            j.outage_ms = Some(at.saturating_sub(crash_unix_ms));
        }
        j.max_written_reported = j.max_written_reported.max(w);
        prev = Some((n, w, at));
    }
    if j.outage_ms.is_none() {
        // No silence after the crash (no takeover happened, or it was hidden): the first reply.
        j.outage_ms = replies
            .iter()
            .find(|r| r.2 > crash_unix_ms)
            .map(|r| r.2 - crash_unix_ms);
    }
    j
}

/// Adds the disk's verdict: a consistent prefix covering everything reported.
pub fn judge_disk(j: &mut Judgement, image: &[u8]) -> Option<u64> {
    match disk_prefix(image) {
        Err(e) => {
            j.problems.push(format!("disk: {e}"));
            None
        }
        Ok(k) => {
            let covered = k.map_or(-1, |k| k as i64);
            if covered < j.max_written_reported {
                j.problems.push(format!(
                    "disk: records end at {covered} but the guest reported record {} written",
                    j.max_written_reported
                ));
            }
            k
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(records: u64, sectors: usize) -> Vec<u8> {
        let mut d = vec![0u8; sectors * SECTOR];
        for i in 0..records {
            let r = record(i);
            let o = i as usize * SECTOR;
            d[o..o + r.len()].copy_from_slice(r.as_bytes());
        }
        d
    }

    #[test]
    fn a_prefix_is_accepted_and_holes_or_garbage_are_not() {
        assert_eq!(disk_prefix(&disk(0, 8)), Ok(None));
        assert_eq!(disk_prefix(&disk(5, 8)), Ok(Some(4)));
        let mut d = disk(5, 8);
        d[2 * SECTOR..3 * SECTOR].fill(0);
        assert!(disk_prefix(&d).unwrap_err().contains("after a hole"));
        let mut d = disk(5, 8);
        d[3 * SECTOR + 6] = b'9';
        assert!(disk_prefix(&d).unwrap_err().contains("sector 3"));
        let mut d = disk(5, 8);
        d[4 * SECTOR + 100] = 1; // junk after the record's text
        assert!(disk_prefix(&d).is_err());
    }

    #[test]
    fn replies_must_continue_the_counter_and_never_go_back() {
        let ok = [
            (1, -1, 100),
            (2, 0, 150),
            (3, 1, 200),
            (4, 1, 900),
            (5, 2, 950),
        ];
        let j = judge_replies(&ok, 500);
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(
            (j.before_crash, j.outage_ms, j.longest_gap_ms),
            (3, Some(400), 700)
        );
        let skipped = [(1, 0, 1), (2, 0, 2), (4, 0, 3)];
        assert_eq!(judge_replies(&skipped, 0).problems.len(), 1);
        let repeated = [(1, 0, 1), (2, 0, 2), (2, 0, 3)];
        assert_eq!(judge_replies(&repeated, 0).problems.len(), 1);
        let went_back = [(1, 5, 1), (2, 4, 2)];
        assert!(judge_replies(&went_back, 0).problems[0].contains("went back"));
    }

    #[test]
    fn a_reply_in_flight_at_the_crash_does_not_end_the_outage() {
        // The primary released reply 3 just before it died; it arrives 5 ms after the crash.
        // The backup's first reply comes 680 ms later: that is when service came back.
        let r = [
            (1, 0, 400),
            (2, 0, 450),
            (3, 0, 505),
            (4, 1, 1185),
            (5, 1, 1235),
        ];
        let j = judge_replies(&r, 500);
        assert_eq!((j.before_crash, j.outage_ms), (2, Some(685)));
        // No silence after the crash at all (the crash came after the last gap): first reply.
        let r = [(1, 0, 400), (2, 0, 450), (3, 0, 505)];
        assert_eq!(judge_replies(&r, 500).outage_ms, Some(5));
    }

    #[test]
    fn the_disk_must_cover_what_was_reported() {
        let mut j = judge_replies(&[(1, 6, 1)], 0);
        assert_eq!(judge_disk(&mut j, &disk(7, 10)), Some(6));
        assert!(j.problems.is_empty());
        let mut j = judge_replies(&[(1, 6, 1)], 0);
        judge_disk(&mut j, &disk(6, 10));
        assert!(
            j.problems[0].contains("reported record 6"),
            "{:?}",
            j.problems
        );
    }
}
