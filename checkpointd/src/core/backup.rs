//! The backup's side as a pure state machine: staging checkpoints, committing them, and
//! choosing what to restore on failover.
//!
//! A checkpoint N arrives in pieces (`Begin`, data, `End`). Only a whole one is staged; a new
//! `Begin` before `End` (or a corrupt piece) discards the partial one. Once N is staged the
//! shell commits diskrep's epoch N; when that is durable (`DiskCommitted`) the staged memory and
//! device state become the restore point and N is acknowledged. So an ack always means memory
//! AND disk of N are safe.
//!
//! Silence is only counted while this side is watching: after a gap in its own running longer
//! than the timeout (SIGSTOP, starvation) the primary gets a fresh window, so the messages it
//! sent meanwhile (perhaps a stand-down) are read before anything is decided. The shell calls
//! in at least every few milliseconds while idle.
//!
//! Failover needs a won generation. The primary is suspected when its heartbeats stop for
//! longer than the adaptive timeout of [`Detector`] (never below `peer_timeout`); the backup
//! then waits `grace` more (any word from the primary cancels the suspicion), so that when only
//! the replication link is cut the primary, which claims at once, wins. Then it claims the
//! generation ([`Claim`]): Won, and a disk commit in flight is allowed to finish (and its
//! checkpoint promoted if it succeeded), then the VM is restored from the restore point;
//! Lost, and nothing is ever restored (`Lost`); Unknown, and nothing happens until the witness
//! answers a retry. Checkpoints keep being received, committed and acknowledged while the
//! claim is open, so a live primary stays protected, and the restore point stays at or beyond
//! everything the primary released. An operator's `Failover` claims at once, without grace.
//! Memory, device state and disk always come from one epoch.
//!
//! A failed disk commit is final for this run. diskrep may have applied part of the epoch, so
//! the backup's disk matches no checkpoint at all: nothing is acknowledged or committed any
//! more, the primary is told at once (it ends protection and tells us to stand down), and
//! this side never restores (a failover would start the guest on a disk it never had).

use super::claim::{Claim, Outcome, Resolution};
use super::detector::Detector;
use remus_proto::Epoch;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The shortest silence that can make the primary suspect (the detector's floor).
    pub peer_timeout: Duration,
    /// The longest: however jittery the heartbeats have been, a dead primary is suspected
    /// after this much silence.
    pub detect_ceiling: Duration,
    /// After suspicion, how long to wait before claiming (the primary claims at once).
    pub grace: Duration,
    /// After an unknown claim outcome, the next attempt comes this much later.
    pub claim_retry: Duration,
}

impl Config {
    /// `peer_timeout` as the floor, twice it as the ceiling, a grace of half of it, retries
    /// every 200 ms.
    pub fn new(peer_timeout: Duration) -> Config {
        Config {
            peer_timeout,
            detect_ceiling: peer_timeout * 2,
            grace: peer_timeout / 2,
            claim_retry: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Begin(Epoch),
    /// The whole checkpoint `epoch` arrived and checked out.
    End(Epoch),
    /// A piece was corrupt or out of order. Each checkpoint carries only what changed in its
    /// epoch, so a void one cannot be skipped: the backup stops following (see
    /// [`Phase::DiskFailed`]).
    Corrupt(String),
    /// diskrep answered `commit N` with ok.
    DiskCommitted(Epoch),
    /// diskrep refused or failed `commit N`.
    DiskCommitFailed(Epoch, String),
    /// Any message from the primary.
    Heard,
    /// A heartbeat from the primary (also a sign of life; feeds the failure detector).
    Heartbeat,
    /// The witness answered an [`Action::Claim`].
    Claimed(Outcome),
    /// An operator asked for failover (planned switch-over or fencing decision).
    Failover,
    /// The primary ended protection on purpose (`remus stop`): its silence from now on is not
    /// a failure, and failing over would start a second copy of the VM.
    PrimaryStopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop the partial checkpoint being received.
    DiscardPartial(Epoch),
    /// diskrep `commit N` (the memory checkpoint N is fully staged).
    CommitDisk(Epoch),
    /// Make staged checkpoint N the restore point (memory pages and device state).
    Promote(Epoch),
    /// Tell the primary: memory and disk of N are safe.
    Ack(Epoch),
    /// Fail over: diskrep `activate`, restore the VM from checkpoint N, resume it.
    Activate(Epoch),
    /// Nothing to restore from (no checkpoint ever committed): report, do not start a VM.
    CannotActivate(String),
    /// Ask the witness to advance the generation to this side; then report
    /// [`Input::Claimed`].
    Claim,
    /// The primary holds the generation: restore nothing, ever.
    Lost(String),
    /// Protection ended by the primary: stop receiving, restore nothing.
    StandDown,
    /// Tell the primary that this side cannot follow from N (diskrep could not commit N, or
    /// checkpoint N arrived void), and why: nothing of N or later will be acknowledged, and
    /// this side can no longer restore anything.
    ReportDiskFailure(Epoch, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Receiving,
    /// Failover decided while a disk commit was in flight: waiting for its outcome.
    FailingOver,
    FailedOver,
    /// The primary ended protection; nothing more happens on this side.
    Stopped,
    /// A disk commit failed (the disk matches no checkpoint), or a checkpoint arrived void
    /// (every later one would be applied on top of a hole): this side cannot follow. Waits for
    /// the primary's stop; refuses to restore, because the primary, told so, goes on
    /// unprotected and releases output past anything this side holds.
    DiskFailed,
    /// The primary won the generation: this side restores nothing.
    Fenced,
}

#[derive(Debug, Clone)]
pub struct BackupCore {
    cfg: Config,
    detector: Detector,
    /// When the primary became suspect (the grace runs from here).
    suspect_since: Option<Instant>,
    claim: Claim,
    phase: Phase,
    receiving: Option<Epoch>,
    /// Staged and being committed on disk (one commit at a time).
    committing: Option<Epoch>,
    /// Staged while another commit was in flight, oldest first. Every one is committed in
    /// turn: each carries only the pages its epoch dirtied, so none may be skipped.
    waiting: VecDeque<Epoch>,
    /// The restore point: memory, device state and disk all of this epoch.
    committed: Option<Epoch>,
    last_heard: Instant,
    /// The last time the shell called in: a gap longer than the peer timeout means this
    /// process was not running (frozen, starved), so the primary's silence over that gap was
    /// not observed and must not count.
    last_tick: Instant,
    started: bool,
    /// Why this side stopped following: a disk commit that failed, or a void checkpoint.
    disk_failure: Option<String>,
}

impl BackupCore {
    pub fn new(cfg: Config, now: Instant) -> Self {
        BackupCore {
            cfg,
            detector: Detector::new(cfg.peer_timeout, cfg.detect_ceiling),
            suspect_since: None,
            claim: Claim::new(cfg.claim_retry),
            phase: Phase::Receiving,
            receiving: None,
            committing: None,
            waiting: VecDeque::new(),
            committed: None,
            last_heard: now,
            last_tick: now,
            started: false,
            disk_failure: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn committed(&self) -> Option<Epoch> {
        self.committed
    }

    /// Why this side cannot restore any more, if a disk commit failed or a checkpoint
    /// arrived void.
    pub fn disk_failure(&self) -> Option<String> {
        self.disk_failure.clone()
    }

    /// Where the claim on the generation stands.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The silence that makes the primary suspect, now.
    pub fn detection_timeout(&self) -> Duration {
        self.detector.timeout()
    }

    /// The longest gap between the primary's recent heartbeats.
    pub fn max_heartbeat_gap(&self) -> Duration {
        self.detector.max_gap()
    }

    /// Newest epoch fully received (committing or waiting), if any.
    fn newest_staged(&self) -> Option<Epoch> {
        self.waiting.back().copied().or(self.committing)
    }

    /// Called on every entry: after a gap in our own running longer than the peer timeout,
    /// the primary gets a fresh window (what it sent meanwhile is still queued for us to read;
    /// failing over before reading it could restore a checkpoint the primary has given up).
    fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_tick) > self.cfg.peer_timeout {
            self.last_heard = self.last_heard.max(now);
            // A suspicion from before the gap is stale, and the gap says nothing about the
            // primary's heartbeats.
            self.suspect_since = None;
            self.detector.restart();
        }
        self.last_tick = self.last_tick.max(now);
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        self.tick(now);
        let mut out = Vec::new();
        match (self.phase, input) {
            (Phase::FailedOver | Phase::Stopped | Phase::Fenced, _) => {}
            (Phase::DiskFailed, Input::PrimaryStopped) => {
                self.phase = Phase::Stopped;
                out.push(Action::StandDown);
            }
            (Phase::DiskFailed, Input::Failover) => self.refuse_to_restore(&mut out),
            // A claim started before the disk failed: whoever it makes the owner, this side
            // has nothing consistent to restore.
            (Phase::DiskFailed, Input::Claimed(o)) => match self.claim.answer(now, o) {
                Resolution::Won(_) => self.refuse_to_restore(&mut out),
                Resolution::Lost(why) => {
                    self.phase = Phase::Fenced;
                    out.push(Action::Lost(why));
                }
                Resolution::Pending => {}
            },
            (Phase::DiskFailed, _) => self.last_heard = now,
            (Phase::Receiving, Input::PrimaryStopped) => {
                // A commit in flight finishes or not on diskrep's side; either way this side
                // restores nothing, so its outcome no longer matters here.
                self.phase = Phase::Stopped;
                self.receiving = None;
                self.waiting.clear();
                out.push(Action::StandDown);
            }
            (_, Input::DiskCommitted(e)) => {
                if self.committing == Some(e) {
                    self.committing = None;
                    out.push(Action::Promote(e));
                    self.committed = Some(e);
                    if self.phase == Phase::Receiving {
                        out.push(Action::Ack(e));
                        if let Some(w) = self.waiting.pop_front() {
                            self.committing = Some(w);
                            out.push(Action::CommitDisk(w));
                        }
                    }
                }
                if self.phase == Phase::FailingOver && self.committing.is_none() {
                    self.finish_failover(&mut out);
                }
            }
            (_, Input::DiskCommitFailed(e, why)) => {
                if self.committing == Some(e) {
                    // Never skipped over: a later epoch committed on top of a half-applied one
                    // would be acknowledged on a disk the primary never had.
                    let text = format!(
                        "the disk commit of checkpoint {e} failed ({why}): the backup's disk \
                         matches no checkpoint"
                    );
                    if self.phase == Phase::Receiving {
                        self.stop_following(e, text, why, &mut out);
                    } else {
                        self.committing = None;
                        self.waiting.clear();
                        self.receiving = None;
                        self.disk_failure = Some(text);
                        self.refuse_to_restore(&mut out);
                    }
                }
            }
            (Phase::FailingOver, _) => {}
            (Phase::Receiving, Input::Claimed(o)) => match self.claim.answer(now, o) {
                Resolution::Won(_) => self.fail_over(&mut out),
                Resolution::Lost(why) => {
                    self.phase = Phase::Fenced;
                    self.receiving = None;
                    self.waiting.clear();
                    out.push(Action::Lost(why));
                }
                Resolution::Pending => {}
            },
            (Phase::Receiving, Input::Heard) => self.heard(now),
            (Phase::Receiving, Input::Heartbeat) => {
                self.heard(now);
                self.detector.heartbeat(now);
            }
            (Phase::Receiving, Input::Begin(e)) => {
                self.heard(now);
                if let Some(p) = self.receiving {
                    // The primary never opens a checkpoint before ending the last one: what
                    // of `p` arrived is all there will be, and `e` would sit on that hole.
                    let why = format!("checkpoint {e} began before checkpoint {p} ended");
                    self.void(why, &mut out);
                    return out;
                }
                // Epochs only move forward; an old one is a replay and is ignored.
                let newest = self.newest_staged().max(self.committed);
                if newest.is_none_or(|n| e > n) {
                    self.receiving = Some(e);
                }
            }
            (Phase::Receiving, Input::Corrupt(why)) => self.void(why, &mut out),
            (Phase::Receiving, Input::End(e)) => {
                self.heard(now);
                if self.receiving == Some(e) {
                    self.receiving = None;
                    if self.committing.is_none() {
                        self.committing = Some(e);
                        out.push(Action::CommitDisk(e));
                    } else {
                        self.waiting.push_back(e);
                    }
                }
            }
            (Phase::Receiving, Input::Failover) => {
                // An operator's switch-over: no grace, but still only with the generation.
                self.suspect_since = None;
                if self.claim.start() {
                    out.push(Action::Claim);
                }
            }
        }
        out
    }

    /// A sign of life from the primary: it is not suspect (a claim already started is only
    /// ever resolved by the witness).
    fn heard(&mut self, now: Instant) {
        self.started = true;
        self.last_heard = now;
        self.suspect_since = None;
    }

    /// Time has passed: fail over if the primary has been silent too long. Before the first
    /// checkpoint is committed (the initial full copy can take longer than the timeout) there
    /// is nothing to restore, so silence is only waited out.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.tick(now);
        let mut out = Vec::new();
        if self.phase == Phase::DiskFailed
            && now.duration_since(self.last_heard) > self.cfg.peer_timeout
        {
            // The primary is gone without a word: there is nothing this side may restore.
            self.refuse_to_restore(&mut out);
            return out;
        }
        if self.phase != Phase::Receiving {
            return out;
        }
        if self.claim.poll(now) {
            out.push(Action::Claim);
        }
        if *self.claim.state() != super::claim::State::Idle {
            return out;
        }
        if self.suspect_since.is_none()
            && self.started
            && (self.committed.is_some() || self.committing.is_some())
            && now.duration_since(self.last_heard) > self.detector.timeout()
        {
            self.suspect_since = Some(now);
        }
        if self
            .suspect_since
            .is_some_and(|s| now.duration_since(s) >= self.cfg.grace)
        {
            self.suspect_since = None;
            if self.claim.start() {
                out.push(Action::Claim);
            }
        }
        out
    }

    /// A checkpoint arrived void (corrupt, out of order, or cut short by the next one). The
    /// next checkpoints carry only their own epochs' pages, so committing them would build a
    /// RAM image the primary never had: stop following from the first epoch not fully
    /// received.
    fn void(&mut self, why: String, out: &mut Vec<Action>) {
        let e = self.receiving.unwrap_or_else(|| {
            self.newest_staged()
                .or(self.committed)
                .map_or(Epoch::ZERO, Epoch::next)
        });
        let text = format!("checkpoint {e} arrived void ({why}): the backup cannot follow");
        self.stop_following(e, text, why, out);
    }

    /// Nothing of `e` or later is committed or acknowledged; the primary is told (it goes on
    /// unprotected), so this side must never restore.
    fn stop_following(&mut self, e: Epoch, text: String, why: String, out: &mut Vec<Action>) {
        if let Some(p) = self.receiving.take() {
            out.push(Action::DiscardPartial(p));
        }
        self.committing = None;
        self.waiting.clear();
        self.disk_failure = Some(text);
        self.phase = Phase::DiskFailed;
        out.push(Action::ReportDiskFailure(e, why));
    }

    fn fail_over(&mut self, out: &mut Vec<Action>) {
        if let Some(p) = self.receiving.take() {
            out.push(Action::DiscardPartial(p));
        }
        // A checkpoint received but not yet committing will never be: it may be newer than
        // what diskrep has, so it is dropped. One being committed finishes first.
        self.waiting.clear();
        if self.committing.is_some() {
            self.phase = Phase::FailingOver;
        } else {
            self.finish_failover(out);
        }
    }

    fn refuse_to_restore(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::FailedOver;
        out.push(Action::CannotActivate(
            self.disk_failure()
                .unwrap_or_else(|| "the backup's disk is inconsistent".into()),
        ));
    }

    fn finish_failover(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::FailedOver;
        match self.committed {
            Some(c) => out.push(Action::Activate(c)),
            None => out.push(Action::CannotActivate(
                "no checkpoint was ever committed: nothing consistent to restore".into(),
            )),
        }
    }
}
