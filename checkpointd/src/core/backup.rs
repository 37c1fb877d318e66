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
//! Failover (primary silent for `peer_timeout`, or a `Failover` request): a disk commit in
//! flight is allowed to finish (and its checkpoint promoted if it succeeded), then the VM is
//! restored from the restore point. Memory, device state and disk always come from one epoch.
//!
//! A failed disk commit is final for this run. diskrep may have applied part of the epoch, so
//! the backup's disk matches no checkpoint at all: nothing is acknowledged or committed any
//! more, the primary is told at once (it ends protection and tells us to stand down), and
//! this side never restores (a failover would start the guest on a disk it never had).

use remus_proto::Epoch;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Begin(Epoch),
    /// The whole checkpoint `epoch` arrived and checked out.
    End(Epoch),
    /// A piece was corrupt or out of order: the partial checkpoint is void.
    Corrupt(String),
    /// diskrep answered `commit N` with ok.
    DiskCommitted(Epoch),
    /// diskrep refused or failed `commit N`.
    DiskCommitFailed(Epoch, String),
    /// Any message from the primary.
    Heard,
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
    /// Protection ended by the primary: stop receiving, restore nothing.
    StandDown,
    /// Tell the primary that diskrep could not commit N (and why): nothing of N or later will
    /// be acknowledged, and this side can no longer restore anything.
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
    /// A disk commit failed: the disk matches no checkpoint. Waits for the primary's stop;
    /// refuses to restore.
    DiskFailed,
}

#[derive(Debug, Clone)]
pub struct BackupCore {
    peer_timeout: Duration,
    phase: Phase,
    receiving: Option<Epoch>,
    /// Staged and being committed on disk (one commit at a time).
    committing: Option<Epoch>,
    /// Staged while another commit was in flight; the newest wins.
    waiting: Option<Epoch>,
    /// The restore point: memory, device state and disk all of this epoch.
    committed: Option<Epoch>,
    last_heard: Instant,
    /// The last time the shell called in: a gap longer than the peer timeout means this
    /// process was not running (frozen, starved), so the primary's silence over that gap was
    /// not observed and must not count.
    last_tick: Instant,
    started: bool,
    /// The epoch whose disk commit failed, and diskrep's answer.
    disk_failure: Option<(Epoch, String)>,
}

impl BackupCore {
    pub fn new(peer_timeout: Duration, now: Instant) -> Self {
        BackupCore {
            peer_timeout,
            phase: Phase::Receiving,
            receiving: None,
            committing: None,
            waiting: None,
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

    /// Why this side cannot restore any more, if a disk commit failed.
    pub fn disk_failure(&self) -> Option<String> {
        self.disk_failure
            .as_ref()
            .map(|(e, why)| format!("the disk commit of checkpoint {e} failed ({why}): the backup's disk matches no checkpoint"))
    }

    /// Newest epoch fully received (committing or waiting), if any.
    fn newest_staged(&self) -> Option<Epoch> {
        self.waiting.or(self.committing)
    }

    /// Called on every entry: after a gap in our own running longer than the peer timeout,
    /// the primary gets a fresh window (what it sent meanwhile is still queued for us to read;
    /// failing over before reading it could restore a checkpoint the primary has given up).
    fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_tick) > self.peer_timeout {
            self.last_heard = self.last_heard.max(now);
        }
        self.last_tick = self.last_tick.max(now);
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        self.tick(now);
        let mut out = Vec::new();
        match (self.phase, input) {
            (Phase::FailedOver | Phase::Stopped, _) => {}
            (Phase::DiskFailed, Input::PrimaryStopped) => {
                self.phase = Phase::Stopped;
                out.push(Action::StandDown);
            }
            (Phase::DiskFailed, Input::Failover) => self.refuse_to_restore(&mut out),
            (Phase::DiskFailed, _) => self.last_heard = now,
            (Phase::Receiving, Input::PrimaryStopped) => {
                // A commit in flight finishes or not on diskrep's side; either way this side
                // restores nothing, so its outcome no longer matters here.
                self.phase = Phase::Stopped;
                self.receiving = None;
                self.waiting = None;
                out.push(Action::StandDown);
            }
            (_, Input::DiskCommitted(e)) => {
                if self.committing == Some(e) {
                    self.committing = None;
                    out.push(Action::Promote(e));
                    self.committed = Some(e);
                    if self.phase == Phase::Receiving {
                        out.push(Action::Ack(e));
                        if let Some(w) = self.waiting.take() {
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
                    self.committing = None;
                    self.waiting = None;
                    self.receiving = None;
                    self.disk_failure = Some((e, why.clone()));
                    if self.phase == Phase::Receiving {
                        self.phase = Phase::DiskFailed;
                        out.push(Action::ReportDiskFailure(e, why));
                    } else {
                        self.refuse_to_restore(&mut out);
                    }
                }
            }
            (Phase::FailingOver, _) => {}
            (Phase::Receiving, Input::Heard) => {
                self.started = true;
                self.last_heard = now;
            }
            (Phase::Receiving, Input::Begin(e)) => {
                self.started = true;
                self.last_heard = now;
                if let Some(p) = self.receiving.take() {
                    out.push(Action::DiscardPartial(p));
                }
                // Epochs only move forward; an old one is a replay and is ignored.
                let newest = self.newest_staged().max(self.committed);
                if newest.is_none_or(|n| e > n) {
                    self.receiving = Some(e);
                }
            }
            (Phase::Receiving, Input::Corrupt(_)) => {
                if let Some(p) = self.receiving.take() {
                    out.push(Action::DiscardPartial(p));
                }
            }
            (Phase::Receiving, Input::End(e)) => {
                self.last_heard = now;
                if self.receiving == Some(e) {
                    self.receiving = None;
                    if self.committing.is_none() {
                        self.committing = Some(e);
                        out.push(Action::CommitDisk(e));
                    } else {
                        self.waiting = Some(e);
                    }
                }
            }
            (Phase::Receiving, Input::Failover) => self.fail_over(&mut out),
        }
        out
    }

    /// Time has passed: fail over if the primary has been silent too long. Before the first
    /// checkpoint is committed (the initial full copy can take longer than the timeout) there
    /// is nothing to restore, so silence is only waited out.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.tick(now);
        let mut out = Vec::new();
        if self.phase == Phase::DiskFailed
            && now.duration_since(self.last_heard) > self.peer_timeout
        {
            // The primary is gone without a word: there is nothing this side may restore.
            self.refuse_to_restore(&mut out);
            return out;
        }
        if self.phase == Phase::Receiving
            && self.started
            && (self.committed.is_some() || self.committing.is_some())
            && now.duration_since(self.last_heard) > self.peer_timeout
        {
            self.fail_over(&mut out);
        }
        out
    }

    fn fail_over(&mut self, out: &mut Vec<Action>) {
        if let Some(p) = self.receiving.take() {
            out.push(Action::DiscardPartial(p));
        }
        // A checkpoint received but not yet committing will never be: it may be newer than
        // what diskrep has, so it is dropped. One being committed finishes first.
        self.waiting = None;
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
