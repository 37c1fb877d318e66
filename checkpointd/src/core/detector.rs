//! Failure detection that adapts to how late the peer's heartbeats usually are: a phi-accrual
//! detector (Hayashibara et al., 2004; Cassandra and Akka use it) over heartbeat arrivals.
//!
//! A fixed timeout mistakes a starved peer for a dead one: on a loaded machine heartbeats
//! sent every 75 ms arrive with gaps of hundreds of milliseconds, and a 300 ms timeout then
//! fires on a live primary. Phi-accrual estimates the distribution of the gaps between
//! arrivals (here: normal, mean and deviation over the last [`WINDOW`] gaps) and suspects the
//! peer when the current silence is as unlikely as `phi` says: phi = -log10(P(gap ≥ silence)).
//! Suspecting at phi ≥ 8 (a one-in-10^8 gap) is the usual choice; for a normal distribution
//! that is a silence of mean + 5.6 deviations.
//!
//! The result is clamped: never below `floor` (the configured peer timeout, so a quiet link
//! does not get a hair trigger) and never above `ceiling` (so a dead peer is still detected in
//! bounded time: the outage budget). Pure: times come in as arguments.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Gaps remembered.
pub const WINDOW: usize = 200;
/// Gaps needed before the estimate is trusted (until then the floor applies).
pub const MIN_SAMPLES: usize = 20;
/// phi = 8 for a normal distribution: the silence is this many deviations beyond the mean.
pub const PHI8_SIGMAS: f64 = 5.6;

#[derive(Debug, Clone)]
pub struct Detector {
    floor: Duration,
    ceiling: Duration,
    gaps_ms: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
}

impl Detector {
    /// `floor ≤ ceiling`; a ceiling below the floor is raised to it.
    pub fn new(floor: Duration, ceiling: Duration) -> Detector {
        Detector {
            floor,
            ceiling: ceiling.max(floor),
            gaps_ms: VecDeque::with_capacity(WINDOW),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn heartbeat(&mut self, now: Instant) {
        if let Some(prev) = self.last {
            let gap = now.saturating_duration_since(prev).as_secs_f64() * 1000.0;
            if self.gaps_ms.len() == WINDOW {
                if let Some(old) = self.gaps_ms.pop_front() {
                    self.sum -= old;
                    self.sum_sq -= old * old;
                }
            }
            self.gaps_ms.push_back(gap);
            self.sum += gap;
            self.sum_sq += gap * gap;
        }
        self.last = Some(now.max(self.last.unwrap_or(now)));
    }

    /// Forget the history (a new peer, or our own stall that made the gaps meaningless).
    pub fn reset(&mut self) {
        self.gaps_ms.clear();
        self.sum = 0.0;
        self.sum_sq = 0.0;
        self.last = None;
    }

    /// Our own running had a gap (SIGSTOP, starvation): the next arrival's gap measures us,
    /// not the peer, and is not recorded.
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// How long a silence must last before the peer is suspected, now.
    pub fn timeout(&self) -> Duration {
        let n = self.gaps_ms.len();
        if n < MIN_SAMPLES {
            return self.floor;
        }
        let mean = self.sum / n as f64;
        let var = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        let ms = mean + PHI8_SIGMAS * var.sqrt();
        if !ms.is_finite() {
            return self.ceiling;
        }
        Duration::from_secs_f64(ms.max(0.0) / 1000.0).clamp(self.floor, self.ceiling)
    }

    /// The largest gap in the window (for status: how starved the link has been).
    pub fn max_gap(&self) -> Duration {
        let ms = self.gaps_ms.iter().copied().fold(0.0, f64::max);
        Duration::from_secs_f64(ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_heartbeats_keep_the_floor_and_jitter_raises_it_up_to_the_ceiling() {
        let (floor, ceiling) = (Duration::from_millis(300), Duration::from_millis(600));
        let t0 = Instant::now();
        let mut d = Detector::new(floor, ceiling);
        for i in 0..100u64 {
            d.heartbeat(t0 + Duration::from_millis(75 * i));
        }
        assert_eq!(d.timeout(), floor);
        // Gaps of 75 and 250 ms alternating (a starved sender): mean 162, deviation 87.
        let mut d = Detector::new(floor, ceiling);
        let mut t = t0;
        for i in 0..100 {
            t += Duration::from_millis(if i % 2 == 0 { 75 } else { 250 });
            d.heartbeat(t);
        }
        let to = d.timeout();
        assert!(
            to > Duration::from_millis(600) - Duration::from_millis(1),
            "{to:?}"
        );
        assert_eq!(to, ceiling);
        let mut d = Detector::new(floor, Duration::from_secs(5));
        let mut t = t0;
        for i in 0..100 {
            t += Duration::from_millis(if i % 2 == 0 { 75 } else { 250 });
            d.heartbeat(t);
        }
        let to = d.timeout().as_millis();
        assert!((640..=660).contains(&to), "{to}");
        assert_eq!(d.max_gap(), Duration::from_millis(250));
        d.reset();
        assert_eq!(d.timeout(), floor);
    }
}
