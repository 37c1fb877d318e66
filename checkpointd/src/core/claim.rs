//! Claiming the generation: the one step before either side may act alone.
//!
//! The backup before it restores anything, and the primary before it releases held output to
//! run unprotected, ask the witness to advance the generation ("if the key is still at the
//! revision I know, write number+1 with owner = me"). The answer is one of:
//!
//! * **Won**: this side owns the new generation and may act alone.
//! * **Lost**: the other side advanced it first; this side must stand down for good.
//! * **Unknown** (timeout, witness unreachable): nobody may act. The attempt is repeated every
//!   `retry` until the witness answers; the witness recognises a repeated attempt whose earlier
//!   answer was lost but which did land (it reads the owner back), so a retry never turns a win
//!   into a loss.
//!
//! Once a claim has started it is only ever resolved by the witness: a peer heard again
//! meanwhile does not cancel it (the attempt may already have landed). This type keeps that
//! state; the two cores decide when to start a claim and what a resolution means for them.

use remus_proto::generation::GenerationRef;
use std::time::{Duration, Instant};

/// The witness's answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Won(GenerationRef),
    /// Who holds the generation now, and its number.
    Lost {
        owner: String,
        number: u64,
    },
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No claim started.
    Idle,
    /// An attempt is with the witness.
    InFlight,
    /// The last attempt's outcome was unknown; the next one is due at this instant.
    RetryAt(Instant),
    Won(GenerationRef),
    Lost(String),
}

/// What an answer means for the side that claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Won(GenerationRef),
    Lost(String),
    /// Still unknown (or an answer nobody asked for): do nothing yet.
    Pending,
}

#[derive(Debug, Clone)]
pub struct Claim {
    state: State,
    retry: Duration,
    attempts: u64,
}

impl Claim {
    pub fn new(retry: Duration) -> Claim {
        Claim {
            state: State::Idle,
            retry,
            attempts: 0,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Started and not resolved: the side waits for the witness.
    pub fn pending(&self) -> bool {
        matches!(self.state, State::InFlight | State::RetryAt(_))
    }

    /// Starts a claim; true when an attempt must be sent now (false if one already started).
    pub fn start(&mut self) -> bool {
        if self.state == State::Idle {
            self.state = State::InFlight;
            self.attempts += 1;
            true
        } else {
            false
        }
    }

    /// The witness answered an attempt.
    pub fn answer(&mut self, now: Instant, outcome: Outcome) -> Resolution {
        if self.state != State::InFlight {
            return Resolution::Pending;
        }
        match outcome {
            Outcome::Won(g) => {
                self.state = State::Won(g);
                Resolution::Won(g)
            }
            Outcome::Lost { owner, number } => {
                let why = format!("generation {number} is held by {owner}");
                self.state = State::Lost(why.clone());
                Resolution::Lost(why)
            }
            Outcome::Unknown(_) => {
                self.state = State::RetryAt(now + self.retry);
                Resolution::Pending
            }
        }
    }

    /// True when a retry is due now (the attempt is then in flight).
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.state {
            State::RetryAt(t) if now >= t => {
                self.state = State::InFlight;
                self.attempts += 1;
                true
            }
            _ => false,
        }
    }

    /// When the next retry is due, if one is waiting.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::RetryAt(t) => Some(t),
            _ => None,
        }
    }
}
