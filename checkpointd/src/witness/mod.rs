//! The witness that decides who may run the VM alone (fencing), and the thread that talks to
//! it.
//!
//! [`Witness`] is the small interface the daemons need: create or bump the generation when
//! protection starts, try to advance it when acting alone, read it for status. [`EtcdWitness`]
//! keeps it in etcd; [`NoWitness`] is the explicit opt-out (every claim is won at once: a
//! network partition then yields two running copies, as without fencing).
//!
//! [`Worker`] runs a witness on its own thread, so no etcd call ever blocks an epoch loop:
//! claims are queued to it and their outcomes come back through a callback (which feeds the
//! core as an input); between claims it reads the generation every `probe` for status
//! (generation number, owner, whether the witness answers).

pub mod etcd;

pub use etcd::EtcdWitness;

use crate::core::claim::Outcome;
use remus_proto::generation::{Generation, GenerationRef};
use serde::Serialize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub trait Witness: Send {
    /// For logs: what and where.
    fn describe(&self) -> String;
    /// This side's owner identity.
    fn owner(&self) -> &str;
    /// The current generation and the revision it was written at, if the key exists.
    fn read(&mut self) -> Result<Option<(Generation, GenerationRef)>, String>;
    /// Protection starts: create the generation (number 1) or bump it, owner = this side.
    fn start(
        &mut self,
        committed_epoch: Option<u64>,
    ) -> Result<(Generation, GenerationRef), String>;
    /// Act alone: if the key is still at `known.revision`, write number+1 with owner = this
    /// side.
    fn try_advance(&mut self, known: GenerationRef, committed_epoch: Option<u64>) -> Outcome;
}

/// `witness = "none"`: nobody to ask, so every claim is won. Two running copies after a
/// partition are then possible; `remus protect` says so.
pub struct NoWitness;

impl Witness for NoWitness {
    fn describe(&self) -> String {
        "none (a network partition yields two running copies)".into()
    }
    fn owner(&self) -> &str {
        "-"
    }
    fn read(&mut self) -> Result<Option<(Generation, GenerationRef)>, String> {
        Ok(None)
    }
    fn start(
        &mut self,
        committed_epoch: Option<u64>,
    ) -> Result<(Generation, GenerationRef), String> {
        let g = Generation {
            number: 0,
            owner: "-".into(),
            committed_epoch,
        };
        Ok((
            g,
            GenerationRef {
                number: 0,
                revision: 0,
            },
        ))
    }
    fn try_advance(&mut self, known: GenerationRef, _: Option<u64>) -> Outcome {
        Outcome::Won(known)
    }
}

/// What status shows about the witness.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WitnessStatus {
    /// "etcd ..." or "none".
    pub witness: String,
    /// Whether the last call got an answer.
    pub reachable: Option<bool>,
    pub generation: Option<u64>,
    pub owner: Option<String>,
    pub last_error: Option<String>,
    /// Claim attempts made, and the last outcome ("won", "lost: ...", "unknown: ...").
    pub claims: u64,
    pub last_claim: Option<String>,
}

pub type SharedWitnessStatus = Arc<Mutex<WitnessStatus>>;

fn lock(s: &SharedWitnessStatus) -> std::sync::MutexGuard<'_, WitnessStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

struct ClaimRequest {
    known: GenerationRef,
    committed_epoch: Option<u64>,
}

/// The witness thread. Dropping the handle ends it (after a call in progress).
pub struct Worker {
    tx: mpsc::Sender<ClaimRequest>,
    pub status: SharedWitnessStatus,
}

impl Worker {
    /// Starts the thread; `answer` is called with every claim's outcome, on that thread.
    pub fn spawn(
        mut witness: Box<dyn Witness>,
        probe: Duration,
        answer: impl Fn(Outcome) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel::<ClaimRequest>();
        let status: SharedWitnessStatus = Arc::new(Mutex::new(WitnessStatus {
            witness: witness.describe(),
            ..Default::default()
        }));
        let st = status.clone();
        std::thread::Builder::new()
            .name("witness".into())
            .spawn(move || loop {
                match rx.recv_timeout(probe) {
                    Ok(req) => {
                        let o = witness.try_advance(req.known, req.committed_epoch);
                        {
                            let mut s = lock(&st);
                            s.claims += 1;
                            match &o {
                                Outcome::Won(g) => {
                                    s.reachable = Some(true);
                                    s.generation = Some(g.number);
                                    s.owner = Some(witness.owner().to_string());
                                    s.last_claim = Some(format!("won generation {}", g.number));
                                }
                                Outcome::Lost { owner, number } => {
                                    s.reachable = Some(true);
                                    s.generation = Some(*number);
                                    s.owner = Some(owner.clone());
                                    s.last_claim = Some(format!("lost to {owner}"));
                                }
                                Outcome::Unknown(e) => {
                                    s.reachable = Some(false);
                                    s.last_error = Some(e.clone());
                                    s.last_claim = Some(format!("unknown: {e}"));
                                }
                            }
                        }
                        tracing::warn!(outcome = ?o, "claim on the generation");
                        answer(o);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let r = witness.read();
                        let mut s = lock(&st);
                        match r {
                            Ok(g) => {
                                s.reachable = Some(true);
                                if let Some((g, _)) = g {
                                    s.generation = Some(g.number);
                                    s.owner = Some(g.owner);
                                }
                            }
                            Err(e) => {
                                s.reachable = Some(false);
                                s.last_error = Some(e);
                            }
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Worker { tx, status })
    }

    /// Records the generation this side just started, so that status shows it from the first
    /// answer on rather than after the first probe.
    pub fn started(&self, g: &Generation) {
        let mut s = lock(&self.status);
        s.reachable = Some(true);
        s.generation = Some(g.number);
        s.owner = Some(g.owner.clone());
    }

    /// Queues one claim attempt (its outcome comes through the callback).
    pub fn claim(&self, known: GenerationRef, committed_epoch: Option<u64>) {
        let _ = self.tx.send(ClaimRequest {
            known,
            committed_epoch,
        });
    }

    pub fn status(&self) -> WitnessStatus {
        lock(&self.status).clone()
    }
}

/// How to reach the witness (from the command line).
#[derive(Debug, Clone)]
pub enum WitnessConfig {
    None,
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        timeout: Duration,
    },
}

impl WitnessConfig {
    /// The witness for `vm`, acting as `role` ("primary" or "backup").
    pub fn open(&self, vm: &str, role: &str) -> std::io::Result<Box<dyn Witness>> {
        Ok(match self {
            WitnessConfig::None => Box::new(NoWitness),
            WitnessConfig::Etcd {
                endpoints,
                prefix,
                timeout,
            } => Box::new(EtcdWitness::new(
                endpoints.clone(),
                prefix,
                vm,
                remus_proto::generation::owner_id(role),
                *timeout,
            )?),
        })
    }

    pub fn is_none(&self) -> bool {
        matches!(self, WitnessConfig::None)
    }
}

/// Protection starts: create or bump the generation, retrying an unreachable witness for up
/// to `patience` (nothing is protected, so nothing waits on this but the start itself).
pub fn start_generation(
    witness: &mut dyn Witness,
    committed_epoch: Option<u64>,
    patience: Duration,
) -> anyhow::Result<(Generation, GenerationRef)> {
    let t = std::time::Instant::now();
    loop {
        match witness.start(committed_epoch) {
            Ok(g) => return Ok(g),
            Err(e) if t.elapsed() < patience => {
                tracing::warn!("starting the generation: {e}; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => anyhow::bail!(
                "cannot start the generation at the witness ({}) within {patience:?}: {e}",
                witness.describe()
            ),
        }
    }
}

/// Whether netbuf holds 90 % or more of its frame or byte limit (its `stats json`): past that
/// it would start dropping the guest's output.
pub fn netbuf_nearly_full(stats: &serde_json::Value) -> bool {
    let near = |held: &str, max: &str| match (stats[held].as_u64(), stats["limits"][max].as_u64()) {
        (Some(h), Some(m)) if m > 0 => h * 10 >= m * 9,
        _ => false,
    };
    near("held_frames", "max_frames") || near("held_bytes", "max_bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netbuf_is_nearly_full_at_ninety_percent_of_either_limit() {
        let s = |f: u64, b: u64| {
            serde_json::json!({"held_frames": f, "held_bytes": b,
                               "limits": {"max_frames": 100, "max_bytes": 1000}})
        };
        assert!(!netbuf_nearly_full(&s(89, 899)));
        assert!(netbuf_nearly_full(&s(90, 0)));
        assert!(netbuf_nearly_full(&s(0, 900)));
        assert!(!netbuf_nearly_full(&serde_json::json!({})));
    }

    #[test]
    fn without_a_witness_every_claim_is_won() {
        let mut w = NoWitness;
        let (_, r) = w.start(Some(3)).unwrap();
        assert_eq!(w.try_advance(r, None), Outcome::Won(r));
    }
}
