//! The generation of a protected VM: who may run it alone, as recorded by the witness (etcd).
//!
//! A generation is `{number, owner, committed epoch}`, stored as JSON under
//! `<prefix>/<vm>/generation` (default prefix `/remus`). Starting protection creates or bumps
//! it with the primary as owner. Whoever wants to act alone (the backup before it restores,
//! the primary before it releases held output and runs unprotected) must first win a
//! compare-and-swap: "if the key is still at the revision I know, write number+1 with owner =
//! me". The loser stands down. This is VMware FT's generation file and DRBD's generation
//! identifier, kept in a consensus store instead of on shared storage.
//!
//! [`GenerationRef`] is what a side *knows*: the number and the etcd revision at which that
//! generation was written (the compare of the swap). It travels in the replication HELLO so the
//! backup knows the generation the primary started, without a read that could race.
//!
//! Re-protection (a later generation started by the side that took over) builds on the same
//! record: `committed_epoch` is the checkpoint the generation started from, and the history of
//! the key (etcd keeps every revision until compaction) is the VM's lineage.

use serde::{Deserialize, Serialize};

/// The value stored under the generation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Strictly increasing; every successful claim adds one.
    pub number: u64,
    /// Who may run the VM alone in this generation: `ROLE@HOST/PID` (see [`owner_id`]).
    pub owner: String,
    /// The committed checkpoint this generation started from (the backup's restore point on a
    /// takeover, the primary's last released epoch when it went on unprotected, the first
    /// epoch when protection started). `None` before anything was committed.
    pub committed_epoch: Option<u64>,
}

/// A generation as one side knows it: its number and the etcd `mod_revision` of the write
/// that made it (the swap compares against this revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRef {
    pub number: u64,
    pub revision: i64,
}

impl Generation {
    /// The JSON text stored in the witness.
    pub fn to_json(&self) -> String {
        // A struct of a number, a string and an optional number always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored value; `Err` names what is wrong (the key is outside input).
    pub fn from_json(bytes: &[u8]) -> Result<Generation, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed generation record: {e}"))
    }

    /// The generation `me` writes when it wins against this one.
    pub fn successor(&self, me: &str, committed_epoch: Option<u64>) -> Generation {
        Generation {
            number: self.number + 1,
            owner: me.to_string(),
            committed_epoch,
        }
    }
}

/// The generation key of `vm` under `prefix` (`/remus` → `/remus/vm1/generation`).
pub fn key(prefix: &str, vm: &str) -> String {
    format!("{}/{vm}/generation", prefix.trim_end_matches('/'))
}

/// An owner identity unique to this process on this host: `ROLE@HOST/PID`. A retried claim
/// recognises its own earlier write by it (an attempt whose answer was lost may have landed).
pub fn owner_id(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{role}@{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let g = Generation {
            number: 7,
            owner: "backup@h/1".into(),
            committed_epoch: Some(41),
        };
        assert_eq!(Generation::from_json(g.to_json().as_bytes()), Ok(g.clone()));
        let s = g.successor("primary@h/2", None);
        assert_eq!((s.number, s.owner.as_str()), (8, "primary@h/2"));
        assert!(Generation::from_json(b"{\"number\":\"x\"}")
            .unwrap_err()
            .contains("malformed"));
        assert_eq!(key("/remus/", "vm1"), "/remus/vm1/generation");
        assert!(owner_id("backup").starts_with("backup@"));
    }
}
