//! What checkpoint rate and pause the primary actually achieved, read from checkpointd's
//! per-checkpoint log (`checkpoints.jsonl` in the primary's run directory: one JSON line per
//! shipped checkpoint with `unix_ms` and `pause_us`), over a window of the demo's choosing.

use std::path::Path;

/// The share of the target rate below which the demo says plainly that it fell short.
pub const MIN_SHARE: f64 = 0.8;

#[derive(Debug, Clone, PartialEq)]
pub struct Achieved {
    pub checkpoints: usize,
    pub per_second: f64,
    pub pause_p50_ms: f64,
    pub pause_p99_ms: f64,
}

impl Achieved {
    /// True when the rate reaches [`MIN_SHARE`] of `target_per_second`.
    pub fn meets(&self, target_per_second: f64) -> bool {
        self.per_second >= MIN_SHARE * target_per_second
    }
}

/// Checkpoints shipped in `[from_ms, to_ms]` (Unix milliseconds) according to the log text.
/// `None` when the window is empty or the log has no checkpoint in it.
pub fn achieved(log: &str, from_ms: u64, to_ms: u64) -> Option<Achieved> {
    if to_ms <= from_ms {
        return None;
    }
    let mut pauses: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["unix_ms"]
                .as_u64()
                .is_some_and(|t| (from_ms..=to_ms).contains(&t))
        })
        .filter_map(|v| v["pause_us"].as_u64())
        .collect();
    if pauses.is_empty() {
        return None;
    }
    pauses.sort_unstable();
    let pick = |q: f64| pauses[((pauses.len() as f64 * q) as usize).min(pauses.len() - 1)];
    Some(Achieved {
        checkpoints: pauses.len(),
        per_second: pauses.len() as f64 * 1000.0 / (to_ms - from_ms) as f64,
        pause_p50_ms: pick(0.5) as f64 / 1000.0,
        pause_p99_ms: pick(0.99) as f64 / 1000.0,
    })
}

/// Reads the log at `path` (see [`achieved`]).
pub fn achieved_in(path: &Path, from_ms: u64, to_ms: u64) -> Option<Achieved> {
    achieved(&std::fs::read_to_string(path).ok()?, from_ms, to_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_window_and_ignores_ack_lines() {
        let mut log = String::new();
        for i in 0..30u64 {
            log += &format!(
                "{{\"epoch\":{i},\"unix_ms\":{},\"pause_us\":{}}}\n",
                1000 + i * 100,
                1000 + i * 1000
            );
            log += &format!(
                "{{\"acked\":{i},\"ack_us\":5,\"unix_ms\":{}}}\n",
                1000 + i * 100
            );
        }
        // 1000..=2000 holds epochs 0..=10: 11 checkpoints over one second.
        let a = achieved(&log, 1000, 2000).unwrap();
        assert_eq!(a.checkpoints, 11);
        assert!((a.per_second - 11.0).abs() < 1e-9);
        assert_eq!(a.pause_p50_ms, 6.0);
        assert_eq!(a.pause_p99_ms, 11.0);
        assert!(a.meets(10.0) && !a.meets(14.0));
        assert_eq!(achieved(&log, 5000, 6000), None);
        assert_eq!(achieved(&log, 2000, 2000), None);
        assert_eq!(achieved("garbage\n", 0, 10), None);
    }
}
