//! The machine-readable status every backend reports (`stats json`).

use crate::queue::{Counters, EpochHeld, Limits};
use remus_proto::Epoch;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub backend: &'static str,
    /// False: unprotected, frames pass straight through.
    pub protected: bool,
    pub open_epoch: Option<Epoch>,
    pub released_through: Option<Epoch>,
    /// Highest epoch ever barriered: the next barrier must exceed it (also after release-all).
    pub last_barrier: Option<Epoch>,
    /// Closed epochs the backend can hold at once; null is unlimited.
    pub max_depth: Option<usize>,
    /// Per barriered, unreleased epoch (the open one last). Frame counts are exact for the
    /// user backend; the plug backend reports epochs only (the frames are in the kernel).
    pub epochs: Vec<EpochHeld>,
    pub held_frames: u64,
    pub held_bytes: u64,
    pub limits: Limits,
    pub counters: Counters,
    /// Inbound (uplink → guest) frames forwarded; never held.
    pub inbound_frames: u64,
    pub inbound_bytes: u64,
    /// Frames that could not be received whole or sent; each is also logged.
    pub io_errors: u64,
}

impl Stats {
    /// The `key=value` form of `stats` for shells.
    pub fn to_kv(&self) -> String {
        let opt = |e: Option<Epoch>| e.map_or("none".to_string(), |e| e.to_string());
        let c = &self.counters;
        format!(
            "backend={} protected={} open_epoch={} released_through={} max_depth={} \
             held_epochs={} held_frames={} held_bytes={} received_frames={} passed_frames={} \
             released_frames={} dropped_overflow_frames={} discarded_frames={} \
             inbound_frames={} io_errors={}",
            self.backend,
            self.protected,
            opt(self.open_epoch),
            opt(self.released_through),
            self.max_depth
                .map_or("unlimited".to_string(), |d| d.to_string()),
            self.epochs.len(),
            self.held_frames,
            self.held_bytes,
            c.received_frames,
            c.passed_frames,
            c.released_frames,
            c.dropped_overflow_frames,
            c.discarded_frames,
            self.inbound_frames,
            self.io_errors,
        )
    }
}
