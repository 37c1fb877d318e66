//! The primary's pause and acknowledgement histograms, fed from checkpointd's per-checkpoint
//! log (`RUN_DIR/checkpoints.jsonl`: one JSON line per shipped checkpoint with `pause_us`, one
//! per release with `ack_us`).
//!
//! Why the log and not checkpointd's status: the status holds the last 100 pauses as p50/p99,
//! and percentiles cannot be aggregated or re-bucketed; a histogram must see every checkpoint.
//! The log already records each one (the demo reads it), so the metrics follow it from where
//! the last scrape stopped, and checkpointd is left as it is.

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Bucket bounds: 0.5 ms to 2 s, doubling (pauses are milliseconds to tens of milliseconds; a
/// booting guest's first checkpoints and a slow backup's acks reach seconds).
fn buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 13)
}

#[derive(Debug)]
pub struct CheckpointLog {
    path: PathBuf,
    /// Bytes of the file already read.
    offset: u64,
    /// The start of a line checkpointd has not finished writing.
    partial: Vec<u8>,
    pub pause: Histogram,
    pub ack: Histogram,
}

impl CheckpointLog {
    pub fn new(path: PathBuf) -> Self {
        CheckpointLog {
            path,
            offset: 0,
            partial: Vec::new(),
            pause: Histogram::new(buckets()),
            ack: Histogram::new(buckets()),
        }
    }

    /// One whole line of the log.
    pub fn observe_line(&self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        if let Some(us) = v["pause_us"].as_u64() {
            self.pause.observe(us as f64 / 1e6);
        }
        if let Some(us) = v["ack_us"].as_u64() {
            self.ack.observe(us as f64 / 1e6);
        }
    }

    /// Reads what checkpointd appended since the last call. A missing file (checkpointd has
    /// not started yet) is nothing new; a shorter one (a new run of checkpointd) is read from
    /// its start.
    pub fn refresh(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(len - self.offset).read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.feed(&buf);
    }

    /// Appends `bytes` to what is pending and observes every line now complete.
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let rest = self.partial.split_off(last_nl + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.observe_line(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_the_file_across_partial_lines_and_a_new_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoints.jsonl");
        let mut log = CheckpointLog::new(p.clone());
        log.refresh(); // no file yet
        assert_eq!(log.pause.count(), 0);
        let mut f = std::fs::File::create(&p).unwrap();
        write!(f, "{{\"epoch\":1,\"pause_us\":1500}}\n{{\"acked\":1,\"ack_us\":40000}}\n{{\"epoch\":2,\"pau").unwrap();
        log.refresh();
        assert_eq!((log.pause.count(), log.ack.count()), (1, 1));
        assert!((log.pause.sum() - 0.0015).abs() < 1e-9);
        writeln!(f, "se_us\":2500}}").unwrap();
        log.refresh();
        log.refresh();
        assert_eq!(log.pause.count(), 2, "the finished line counts once");
        // A new checkpointd run recreates the file.
        std::fs::write(&p, "{\"epoch\":1,\"pause_us\":100}\n").unwrap();
        log.refresh();
        assert_eq!(log.pause.count(), 3);
        // Garbage is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        log.refresh();
        assert_eq!(log.pause.count(), 3);
    }
}
