//! The primary's epoch loop as a pure state machine.
//!
//! ```text
//! epoch N running ─► [Checkpoint{close N, open N+1}: pause, barriers, capture, resume]
//!                 ─► ship N (overlaps epoch N+1) ─► backup acks N ─► Release{through N}
//! ```
//! * Cadence: checkpoints start `interval` apart, measured pause to pause; a checkpoint that
//!   takes longer than the interval delays the next one to its end (period = max(interval,
//!   checkpoint duration)), unlike libxl whose period is interval + checkpoint time.
//! * Pipelining: at most `depth` checkpoints shipped and not yet acknowledged; `depth` is the
//!   smallest maximum the output and disk backends report (sch_plug: 1).
//! * Output commit: `Release{through N}` only on the backup's ack of N, which means memory AND
//!   disk of N are safe there.
//! * Failure: no word from the backup for `peer_timeout`, an ack overdue by `ack_timeout`, or
//!   the backup reporting that it cannot commit an epoch (`BackupFailed`: that epoch and every
//!   later one are never released as committed), ends protection, but output stays held: the
//!   primary first claims the generation from the
//!   witness (`Claim`, see [`super::claim`]). Won: `GoUnprotected` (netbuf releases
//!   everything, diskrep tracks dirty regions). Lost: `Fence`. Unknown: nothing is released,
//!   the claim is retried, and if netbuf fills up meanwhile the guest is paused
//!   (`PauseGuest`) rather than its output dropped or released. Acks that still arrive release
//!   their epochs (the backup has them, whatever happens next).
//! * Fencing: a backup that takes over says so first (`BackupTookOver`); this copy then stops
//!   for good (`Fence`), whatever it was doing: two running copies would diverge.

use super::claim::{Claim, Outcome, Resolution};
use remus_proto::Epoch;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub interval: Duration,
    pub depth: usize,
    pub peer_timeout: Duration,
    pub ack_timeout: Duration,
    pub heartbeat: Duration,
    /// After an unknown claim outcome, the next attempt comes this much later.
    pub claim_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: Duration::from_millis(50),
            depth: 1,
            peer_timeout: Duration::from_millis(300),
            ack_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_millis(50),
            claim_retry: Duration::from_millis(200),
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pause the VM, barrier `open` in netbuf and diskrep, capture epoch `close` into the
    /// staging buffer, resume; then report [`Input::Captured`].
    Checkpoint { close: Epoch, open: Epoch },
    /// Send the captured checkpoint `epoch` to the backup; then report [`Input::Shipped`].
    Ship(Epoch),
    /// netbuf `release N`: the backup holds memory and disk of every epoch ≤ N.
    Release(Epoch),
    /// The backup is gone: ask the witness to advance the generation to this side; then
    /// report [`Input::Claimed`]. Output stays held until the answer.
    Claim,
    /// The generation is ours and the backup is gone: netbuf `release-all`; keep running
    /// unprotected.
    GoUnprotected(String),
    /// Nothing was sent for a while: tell the backup we are alive.
    Heartbeat,
    /// Output is held with nowhere to go (the claim is unresolved) and netbuf is full: pause
    /// the guest rather than let netbuf drop or anyone release its output.
    PauseGuest,
    /// The claim was won while the guest was paused for a full netbuf: resume it.
    ResumeGuest,
    /// The other side runs the VM (it took over, or holds the generation): stop this copy,
    /// discard its held output, end. The text says why.
    Fence(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Protection starts (the backup holds the initial full copy). `first` is the epoch
    /// running now.
    Start {
        first: Epoch,
    },
    /// The checkpoint that closed `epoch` is captured; the pause lasted `pause`.
    Captured {
        epoch: Epoch,
        pause: Duration,
    },
    Shipped(Epoch),
    /// The backup acknowledged `epoch` (memory staged and disk committed).
    Acked(Epoch),
    /// Any message from the backup.
    Heard,
    /// Shipping failed (connection lost).
    ShipFailed(String),
    /// The backup announced it is restoring the VM from this checkpoint.
    BackupTookOver(Epoch),
    /// The backup could not commit this epoch (its disk failed; the text says why): it will
    /// acknowledge nothing more.
    BackupFailed(Epoch, String),
    /// The witness answered a [`Action::Claim`].
    Claimed(Outcome),
    /// netbuf is (nearly) at its limit.
    OutputFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Unprotected,
    Protected,
    /// The backup is lost and the witness has not answered the claim yet: output is held.
    Claiming,
    /// The backup took over: this copy must not run on, or say anything more.
    Fenced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    epoch: Epoch,
    captured: bool,
    shipped_at: Option<Instant>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub checkpoints: u64,
    pub released: u64,
    pub duplicate_acks: u64,
    pub bogus_acks: u64,
    pub protection_losses: u64,
}

#[derive(Debug, Clone)]
pub struct PrimaryCore {
    cfg: Config,
    phase: Phase,
    reason: String,
    /// The epoch the VM is running in now.
    open: Epoch,
    in_flight: VecDeque<InFlight>,
    /// A checkpoint has been requested and not reported captured yet.
    capturing: bool,
    last_pause: Option<Instant>,
    last_heard: Instant,
    /// The last call into the core: a longer gap than the peer timeout means this process did
    /// not run (frozen, starved) and the backup's silence over it was not observed.
    last_tick: Instant,
    last_sent: Instant,
    released_through: Option<Epoch>,
    counters: Counters,
    claim: Claim,
    guest_paused: bool,
}

impl PrimaryCore {
    pub fn new(cfg: Config, now: Instant) -> Self {
        assert!(cfg.depth >= 1, "pipeline depth must be at least 1");
        PrimaryCore {
            cfg,
            phase: Phase::Unprotected,
            reason: "not started".into(),
            open: Epoch(0),
            in_flight: VecDeque::new(),
            capturing: false,
            last_pause: None,
            last_heard: now,
            last_tick: now,
            last_sent: now,
            released_through: None,
            counters: Counters::default(),
            claim: Claim::new(cfg.claim_retry),
            guest_paused: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn open_epoch(&self) -> Epoch {
        self.open
    }

    pub fn released_through(&self) -> Option<Epoch> {
        self.released_through
    }

    pub fn unacked(&self) -> usize {
        self.in_flight.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Where the claim on the generation stands (Idle while protected).
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// When the shell should call [`PrimaryCore::poll`] next at the latest.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.last_sent + self.cfg.heartbeat;
        if self.phase == Phase::Protected {
            if let Some(p) = self.last_pause {
                d = d.min(p + self.cfg.interval);
            }
            d = d.min(self.last_heard + self.cfg.peer_timeout);
        }
        if let Some(t) = self.claim.deadline() {
            d = d.min(t);
        }
        d
    }

    /// After a gap in our own running longer than the peer timeout the backup gets a fresh
    /// window: what it sent meanwhile may still be unread, and giving up on a live backup
    /// releases all held output.
    fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_tick) > self.cfg.peer_timeout {
            self.last_heard = self.last_heard.max(now);
        }
        self.last_tick = self.last_tick.max(now);
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        self.tick(now);
        let mut out = Vec::new();
        if self.phase == Phase::Fenced {
            return out;
        }
        match input {
            Input::Start { first } => {
                if self.phase == Phase::Unprotected {
                    self.phase = Phase::Protected;
                    self.reason.clear();
                    self.open = first;
                    self.in_flight.clear();
                    self.capturing = false;
                    self.last_pause = None;
                    self.last_heard = now;
                }
            }
            Input::Captured { epoch, .. } => {
                self.capturing = false;
                if let Some(f) = self.in_flight.iter_mut().find(|f| f.epoch == epoch) {
                    f.captured = true;
                    if self.phase == Phase::Protected {
                        out.push(Action::Ship(epoch));
                    }
                }
            }
            Input::Shipped(epoch) => {
                if let Some(f) = self.in_flight.iter_mut().find(|f| f.epoch == epoch) {
                    f.shipped_at = Some(now);
                }
                self.last_sent = now;
            }
            Input::Heard => self.last_heard = now,
            Input::Acked(epoch) => {
                self.last_heard = now;
                self.ack(epoch, &mut out);
            }
            Input::ShipFailed(why) => self.lose(format!("shipping failed: {why}"), &mut out),
            Input::BackupFailed(e, why) => {
                // The backup will never have e or anything after it: an ack for one of them,
                // however it came, must not release it.
                self.in_flight.retain(|f| f.epoch < e);
                self.lose(
                    format!("the backup could not commit epoch {e}: {why}"),
                    &mut out,
                );
            }
            Input::BackupTookOver(e) => {
                self.fence(
                    format!("the backup took over from checkpoint {e}"),
                    &mut out,
                );
                return out;
            }
            Input::Claimed(o) => match self.claim.answer(now, o) {
                Resolution::Won(g) if self.phase == Phase::Claiming => {
                    self.phase = Phase::Unprotected;
                    self.in_flight.clear();
                    if std::mem::take(&mut self.guest_paused) {
                        out.push(Action::ResumeGuest);
                    }
                    self.reason = format!("{} (generation {} is ours)", self.reason, g.number);
                    out.push(Action::GoUnprotected(self.reason.clone()));
                }
                Resolution::Lost(why) => {
                    self.fence(
                        format!("lost the generation to the backup: {why}"),
                        &mut out,
                    );
                    return out;
                }
                _ => {}
            },
            Input::OutputFull => {
                if self.phase == Phase::Claiming && !self.guest_paused {
                    self.guest_paused = true;
                    out.push(Action::PauseGuest);
                }
            }
        }
        out.extend(self.poll(now));
        out
    }

    fn ack(&mut self, epoch: Epoch, out: &mut Vec<Action>) {
        if self.released_through.is_some_and(|r| epoch <= r) {
            self.counters.duplicate_acks += 1;
            return;
        }
        // Only a captured epoch can be acknowledged. (The ack may overtake the shell's report
        // that shipping finished: the backup can answer before our last write returns.)
        let captured = self
            .in_flight
            .iter()
            .any(|f| f.epoch == epoch && f.captured);
        if !captured {
            self.counters.bogus_acks += 1;
            return;
        }
        while self.in_flight.front().is_some_and(|f| f.epoch <= epoch) {
            self.in_flight.pop_front();
        }
        self.released_through = Some(epoch);
        self.counters.released += 1;
        out.push(Action::Release(epoch));
    }

    fn fence(&mut self, why: String, out: &mut Vec<Action>) {
        self.phase = Phase::Fenced;
        self.in_flight.clear();
        self.reason = why.clone();
        out.push(Action::Fence(why));
    }

    /// The backup is gone: claim the generation before anything held is let go. Epochs in
    /// flight stay tracked, so an ack that still arrives releases its epoch.
    fn lose(&mut self, reason: String, out: &mut Vec<Action>) {
        if self.phase == Phase::Protected {
            self.phase = Phase::Claiming;
            self.counters.protection_losses += 1;
            self.reason = reason;
            if self.claim.start() {
                out.push(Action::Claim);
            }
        }
    }

    /// Time has passed: start a checkpoint if one is due, detect a silent backup, heartbeat.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.tick(now);
        let mut out = Vec::new();
        if self.phase == Phase::Fenced {
            return out;
        }
        if self.phase == Phase::Claiming && self.claim.poll(now) {
            out.push(Action::Claim);
        }
        if self.phase == Phase::Protected {
            if now.duration_since(self.last_heard) > self.cfg.peer_timeout {
                self.lose(
                    format!("backup silent for more than {:?}", self.cfg.peer_timeout),
                    &mut out,
                );
                return out;
            }
            if let Some(f) = self.in_flight.front() {
                if f.shipped_at
                    .is_some_and(|t| now.duration_since(t) > self.cfg.ack_timeout)
                {
                    let e = f.epoch;
                    self.lose(
                        format!("no ack for epoch {e} within {:?}", self.cfg.ack_timeout),
                        &mut out,
                    );
                    return out;
                }
            }
            let due = self
                .last_pause
                .is_none_or(|p| now.duration_since(p) >= self.cfg.interval);
            if due && !self.capturing && self.in_flight.len() < self.cfg.depth {
                let close = self.open;
                let open = close.next();
                self.open = open;
                self.capturing = true;
                self.last_pause = Some(now);
                self.in_flight.push_back(InFlight {
                    epoch: close,
                    captured: false,
                    shipped_at: None,
                });
                self.counters.checkpoints += 1;
                out.push(Action::Checkpoint { close, open });
            }
        }
        if now.duration_since(self.last_sent) >= self.cfg.heartbeat {
            self.last_sent = now;
            out.push(Action::Heartbeat);
        }
        out
    }
}
