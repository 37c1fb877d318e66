//! The `[witness]` section: who decides, when the hosts lose each other, which one may run the
//! VM alone (checkpointd/README.md, "Failure, and who may act alone").

use serde::Deserialize;

/// `[witness] endpoints = [...]` (etcd), or `witness = "none"` (no fencing: a network partition
/// yields two running copies; an explicit choice, and `remus protect` warns about it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Witness {
    /// Only "none" is valid (checked by `validate`).
    Named(String),
    Etcd(Etcd),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Etcd {
    /// etcd client URLs (http://HOST:2379); production uses a 3-member cluster.
    pub endpoints: Vec<String>,
    /// Generation records live at PREFIX/NAME/generation.
    pub prefix: String,
    /// A witness call without an answer after this long is an unknown outcome (nobody acts).
    pub timeout_ms: u64,
    /// Backup: after suspecting the primary, wait this long before claiming (the primary,
    /// which claims at once, then wins when only the replication link is cut). Default: half
    /// of peer_timeout_ms.
    pub grace_ms: Option<u64>,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            endpoints: vec![DEMO_WITNESS.into()],
            prefix: "/remus".into(),
            timeout_ms: 500,
            grace_ms: None,
        }
    }
}

/// The witness of `remus demo`'s topology (an etcd in the witness namespace).
pub const DEMO_WITNESS: &str = "http://10.97.0.10:2379";

impl Default for Witness {
    fn default() -> Self {
        Witness::Etcd(Etcd::default())
    }
}

impl Witness {
    /// True for `witness = "none"`: no fencing.
    pub fn is_none(&self) -> bool {
        matches!(self, Witness::Named(n) if n == "none")
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Witness::Named(n) if n == "none" => Ok(()),
            Witness::Named(n) => Err(format!(
                "witness = {n:?}: give [witness] endpoints = [\"http://HOST:2379\", ...] or witness = \"none\""
            )),
            Witness::Etcd(e) => {
                if e.endpoints.is_empty()
                    || e.endpoints.iter().any(|u| u.is_empty() || u.contains(','))
                {
                    return Err("[witness] endpoints: one or more etcd URLs (http://HOST:2379), or witness = \"none\" for no fencing".into());
                }
                if e.timeout_ms == 0 || !e.prefix.starts_with('/') {
                    return Err(
                        "[witness] timeout_ms must be at least 1 and prefix start with /".into(),
                    );
                }
                Ok(())
            }
        }
    }

    /// checkpointd's witness arguments (both roles).
    pub fn checkpointd_args(&self) -> Vec<String> {
        match self {
            Witness::Etcd(e) => vec![
                "--witness".into(),
                e.endpoints.join(","),
                "--witness-prefix".into(),
                e.prefix.clone(),
                "--witness-timeout-ms".into(),
                e.timeout_ms.to_string(),
            ],
            Witness::Named(_) => vec!["--witness".into(), "none".into()],
        }
    }

    /// The backup's grace, if set.
    pub fn grace_ms(&self) -> Option<u64> {
        match self {
            Witness::Etcd(e) => e.grace_ms,
            Witness::Named(_) => None,
        }
    }
}
