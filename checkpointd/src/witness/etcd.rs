//! The generation in etcd (v3 API, through the `etcd-client` crate).
//!
//! * start: create the key (compare `version == 0`) or bump it (compare `mod_revision`), owner
//!   = this side; retried on a race.
//! * try_advance: one transaction, `if mod_revision(key) == known.revision then put(successor)
//!   else get(key)`. The else branch tells a loss from our own earlier attempt that landed
//!   although its answer was lost (the owner read back is us, one generation on).
//!
//! etcd-client is async; checkpointd is thread-based. So this type owns a single-threaded
//! tokio runtime and every call blocks on it for at most `timeout` (a call past that is
//! Unknown). It runs on the witness thread only ([`super::Worker`]), never on an epoch loop.

use super::Witness;
use crate::core::claim::Outcome;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnOpResponse};
use remus_proto::generation::{key, Generation, GenerationRef};
use std::time::Duration;

pub struct EtcdWitness {
    endpoints: Vec<String>,
    key: String,
    me: String,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl EtcdWitness {
    /// Nothing is contacted yet: the first call connects (and every call after a failure
    /// reconnects), so a witness that is down at start-up is an Unknown, not a crash.
    pub fn new(
        endpoints: Vec<String>,
        prefix: &str,
        vm: &str,
        me: String,
        timeout: Duration,
    ) -> std::io::Result<EtcdWitness> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(EtcdWitness {
            endpoints,
            key: key(prefix, vm),
            me,
            timeout,
            rt,
            client: None,
        })
    }

    /// Runs one etcd operation with the connection (made if needed), bounded by the timeout.
    /// Any failure drops the connection so the next call starts afresh.
    fn call<T, F, Fut>(&mut self, f: F) -> Result<T, String>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.timeout;
        let endpoints = self.endpoints.clone();
        let existing = self.client.clone();
        let res = self.rt.block_on(async move {
            tokio::time::timeout(timeout, async move {
                let client = match existing {
                    Some(c) => c,
                    None => {
                        let opts = ConnectOptions::new()
                            .with_connect_timeout(timeout)
                            .with_timeout(timeout);
                        Client::connect(&endpoints, Some(opts)).await?
                    }
                };
                let out = f(client.clone()).await?;
                Ok::<_, etcd_client::Error>((client, out))
            })
            .await
        });
        match res {
            Ok(Ok((client, out))) => {
                self.client = Some(client);
                Ok(out)
            }
            Ok(Err(e)) => {
                self.client = None;
                Err(format!("witness {}: {e}", self.endpoints.join(",")))
            }
            Err(_) => {
                self.client = None;
                Err(format!(
                    "witness {}: no answer within {:?}",
                    self.endpoints.join(","),
                    self.timeout
                ))
            }
        }
    }
}

fn parse(kv: &etcd_client::KeyValue) -> Result<(Generation, GenerationRef), String> {
    let g = Generation::from_json(kv.value())?;
    let r = GenerationRef {
        number: g.number,
        revision: kv.mod_revision(),
    };
    Ok((g, r))
}

impl Witness for EtcdWitness {
    fn describe(&self) -> String {
        format!("etcd {} key {}", self.endpoints.join(","), self.key)
    }

    fn owner(&self) -> &str {
        &self.me
    }

    fn read(&mut self) -> Result<Option<(Generation, GenerationRef)>, String> {
        let k = self.key.clone();
        let resp = self.call(|mut c| async move { c.get(k, None).await })?;
        resp.kvs().first().map(parse).transpose()
    }

    fn start(
        &mut self,
        committed_epoch: Option<u64>,
    ) -> Result<(Generation, GenerationRef), String> {
        for _ in 0..5 {
            let current = self.read()?;
            let (compare, next) = match &current {
                None => (
                    Compare::version(self.key.clone(), CompareOp::Equal, 0),
                    Generation {
                        number: 1,
                        owner: self.me.clone(),
                        committed_epoch,
                    },
                ),
                Some((g, r)) => (
                    Compare::mod_revision(self.key.clone(), CompareOp::Equal, r.revision),
                    g.successor(&self.me, committed_epoch),
                ),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                self.key.clone(),
                next.to_json(),
                None,
            )]);
            let resp = self.call(|mut c| async move { c.txn(txn).await })?;
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok((
                    next.clone(),
                    GenerationRef {
                        number: next.number,
                        revision,
                    },
                ));
            }
            // Someone wrote between our read and our swap: read again.
        }
        Err("the generation key kept changing under us".into())
    }

    fn try_advance(&mut self, known: GenerationRef, committed_epoch: Option<u64>) -> Outcome {
        let next = Generation {
            number: known.number + 1,
            owner: self.me.clone(),
            committed_epoch,
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key.clone(),
                CompareOp::Equal,
                known.revision,
            )])
            .and_then([TxnOp::put(self.key.clone(), next.to_json(), None)])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let resp = match self.call(|mut c| async move { c.txn(txn).await }) {
            Ok(r) => r,
            Err(e) => return Outcome::Unknown(e),
        };
        if resp.succeeded() {
            return Outcome::Won(GenerationRef {
                number: next.number,
                revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            });
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(parse),
            _ => None,
        });
        match current {
            None => Outcome::Unknown(format!("the generation key {} is gone", self.key)),
            Some(Err(e)) => Outcome::Unknown(e),
            // Our own earlier attempt landed; its answer was lost.
            Some(Ok((g, r))) if g.owner == self.me && g.number == next.number => Outcome::Won(r),
            Some(Ok((g, _))) => Outcome::Lost {
                owner: g.owner,
                number: g.number,
            },
        }
    }
}
