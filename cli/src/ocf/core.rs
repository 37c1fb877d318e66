//! The agent's decisions, pure: what this host is doing for the VM (from remus' pid file and
//! the daemons' status), what each OCF action reports for it, and the promotion score that
//! tells Pacemaker where the VM should run.
//!
//! Two rules shape everything here, both checked against Pacemaker's own scheduler
//! (`crm_simulate`, tests/tests/ocf_agent.rs):
//! - A backup that took the VM over by itself (remus' own failure detection, a few hundred
//!   milliseconds, fenced by remus' witness rules), or any VM running here that Pacemaker
//!   believes unpromoted, is reported by the *unpromoted* recurring monitor as running (0),
//!   with the top promotion score. Reporting 8 there makes Pacemaker
//!   "recover" the instance: demote, stop, start, which would stop the only running copy of
//!   the VM. With 0 and the score, Pacemaker promotes it, and promote only confirms. Probes
//!   and promoted-role monitors report 8, which is what it is.
//! - Only a host that can run the VM from its live state, or runs it, is a candidate for
//!   promotion (a score); a backup that has received nothing is not. Booting the VM from disk
//!   where nothing runs (a cold start) happens only where an operator's `role=Promoted`
//!   location preference points, because only the operator knows which host's disk is the
//!   newest (see README.md, "Operating remus").

use serde_json::Value;

/// OCF exit codes (OCF 1.1 resource agent API).
pub mod code {
    pub const SUCCESS: i32 = 0;
    pub const ERR_GENERIC: i32 = 1;
    pub const ERR_ARGS: i32 = 2;
    pub const ERR_UNIMPLEMENTED: i32 = 3;
    pub const ERR_PERM: i32 = 4;
    pub const ERR_INSTALLED: i32 = 5;
    pub const ERR_CONFIGURED: i32 = 6;
    pub const NOT_RUNNING: i32 = 7;
    pub const RUNNING_PROMOTED: i32 = 8;
    pub const FAILED_PROMOTED: i32 = 9;
}

/// What this host does for the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// No remus runs for the VM's run directory.
    Stopped,
    /// remus runs, but none of its daemons says what it is (starting, or wedged).
    Unknown(String),
    /// A backup that holds no committed checkpoint (no primary yet, or a fresh run).
    Waiting,
    /// A backup that holds a committed checkpoint: it can take the VM over with its state.
    Receiving { committed: u64 },
    /// A backup whose primary ended protection on purpose: its remus is about to exit.
    StandingDown,
    /// A backup whose disk commit failed: it acknowledges nothing more and never restores (its
    /// disk may hold part of an epoch); it waits for the primary to stop it.
    DiskFailed,
    /// A backup that took over: the VM runs here.
    TookOver,
    /// `remus protect`: the VM runs here (protected, still syncing, or unprotected).
    Primary { protected: bool },
    /// The witness gave the VM to the other host; this copy stopped.
    Fenced,
}

/// From remus' liveness and its checkpointd's (or, while that starts, diskrep's) status.
pub fn classify(remus_alive: bool, checkpointd: Option<&Value>, diskrep: Option<&Value>) -> Local {
    if !remus_alive {
        return Local::Stopped;
    }
    let Some(c) = checkpointd else {
        return match diskrep.and_then(|d| d["role"].as_str()) {
            Some(role) => Local::Unknown(format!("{role} starting (checkpointd not answering)")),
            None => Local::Unknown("remus runs but none of its daemons answers".into()),
        };
    };
    let phase = c["phase"].as_str().unwrap_or("");
    match (c["role"].as_str(), phase) {
        (_, "fenced") => Local::Fenced,
        (Some("primary"), p) => Local::Primary {
            protected: p == "protected",
        },
        (Some("backup"), "failingover" | "failedover") => Local::TookOver,
        (Some("backup"), "stopped") => Local::StandingDown,
        (Some("backup"), "diskfailed") => Local::DiskFailed,
        (Some("backup"), _) => match c["committed_through"].as_u64() {
            Some(committed) => Local::Receiving { committed },
            None => Local::Waiting,
        },
        (role, _) => Local::Unknown(format!("checkpointd role {role:?} phase {phase:?}")),
    }
}

impl Local {
    /// The VM runs on this host.
    pub fn runs_vm(&self) -> bool {
        matches!(self, Local::TookOver | Local::Primary { .. })
    }

    /// A started instance (unpromoted or promoted).
    pub fn started(&self) -> bool {
        matches!(
            self,
            Local::Waiting
                | Local::Receiving { .. }
                | Local::DiskFailed
                | Local::TookOver
                | Local::Primary { .. }
        )
    }
}

/// What the caller of `monitor` expects, from OCF_RESKEY_CRM_meta_interval / _role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// A one-off probe (interval 0): report what is, whatever it is.
    Probe,
    /// The recurring monitor of an instance Pacemaker believes unpromoted.
    Unpromoted,
    /// The recurring monitor of an instance Pacemaker believes promoted.
    Promoted,
}

impl Monitor {
    pub fn from_meta(interval_ms: Option<&str>, role: Option<&str>) -> Monitor {
        match (interval_ms.map(str::trim), role) {
            (None | Some("0") | Some(""), _) => Monitor::Probe,
            (_, Some("Promoted" | "Master")) => Monitor::Promoted,
            (_, Some("Unpromoted" | "Slave")) => Monitor::Unpromoted,
            // A recurring monitor without a role: a plain clone instance.
            _ => Monitor::Unpromoted,
        }
    }
}

/// The monitor action's exit code.
pub fn monitor(local: &Local, m: Monitor) -> i32 {
    match local {
        Local::Stopped | Local::StandingDown => code::NOT_RUNNING,
        Local::Unknown(_) => code::ERR_GENERIC,
        Local::Fenced => code::FAILED_PROMOTED,
        // A backup whose disk failed still runs as a backup (the primary's status says it is
        // not protected); restarting it would not mend its disk.
        Local::Waiting | Local::Receiving { .. } | Local::DiskFailed => code::SUCCESS,
        // See the module comment: 8 here would make Pacemaker stop the running VM.
        Local::TookOver | Local::Primary { .. } if m == Monitor::Unpromoted => code::SUCCESS,
        Local::TookOver | Local::Primary { .. } => code::RUNNING_PROMOTED,
    }
}

/// The promotion score this host asks for (`None`: not a candidate, the score is deleted).
pub fn promotion_score(local: &Local) -> Option<u32> {
    match local {
        Local::Primary { .. } | Local::TookOver => Some(100),
        Local::Receiving { .. } => Some(50),
        _ => None,
    }
}

/// An OCF code for a `remus` command that ended with `exit` (remus-proto's exit codes).
pub fn from_remus_exit(exit: i32) -> i32 {
    use remus_proto::exit as r;
    match exit {
        r::OK => code::SUCCESS,
        r::USAGE => code::ERR_CONFIGURED,
        r::PRIVILEGE => code::ERR_PERM,
        r::NOT_FOUND => code::ERR_INSTALLED,
        // 8 (NOT_PROTECTED) is `remus status`'s, and means "running, degraded", not OCF's
        // "running promoted": callers classify status JSON instead of passing it through.
        _ => code::ERR_GENERIC,
    }
}

/// A clone notification (OCF_RESKEY_CRM_meta_notify_*).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notification {
    /// "pre" or "post".
    pub kind: String,
    /// "start", "stop", "promote", "demote".
    pub operation: String,
    /// Nodes this transition promotes.
    pub promote: Vec<String>,
    /// Nodes this transition demotes.
    pub demote: Vec<String>,
}

/// A planned move of the VM to this host: before the primary is demoted, the backup that is
/// about to be promoted takes the VM over with its live state (`remus failover`; the primary
/// stops its copy when it hears it). Demoting the primary first would end protection and
/// leave only a cold start, from a disk that lacks the primary's last writes.
pub fn takes_over_before_demote(n: &Notification, me: &str, local: &Local) -> bool {
    n.kind == "pre"
        && n.operation == "demote"
        && n.promote.iter().any(|u| u == me)
        && !n.demote.iter().any(|u| u == me)
        && matches!(local, Local::Receiving { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn classification_follows_the_daemons() {
        let cp = |role: &str, phase: &str, committed: Value| json!({"role": role, "phase": phase, "committed_through": committed});
        let c = |v: Value| classify(true, Some(&v), None);
        assert_eq!(classify(false, None, None), Local::Stopped);
        assert!(matches!(classify(true, None, None), Local::Unknown(_)));
        assert!(matches!(
            classify(true, None, Some(&json!({"role": "backup"}))),
            Local::Unknown(m) if m.contains("backup starting")
        ));
        assert_eq!(c(cp("backup", "waiting", Value::Null)), Local::Waiting);
        assert_eq!(c(cp("backup", "receiving", Value::Null)), Local::Waiting);
        assert_eq!(
            c(cp("backup", "receiving", json!(7))),
            Local::Receiving { committed: 7 }
        );
        assert_eq!(c(cp("backup", "failedover", json!(7))), Local::TookOver);
        assert_eq!(c(cp("backup", "failingover", json!(7))), Local::TookOver);
        assert_eq!(c(cp("backup", "stopped", json!(7))), Local::StandingDown);
        assert_eq!(c(cp("backup", "diskfailed", json!(7))), Local::DiskFailed);
        assert_eq!(
            c(cp("primary", "protected", json!(7))),
            Local::Primary { protected: true }
        );
        assert_eq!(
            c(cp("primary", "unprotected", Value::Null)),
            Local::Primary { protected: false }
        );
        assert_eq!(c(cp("primary", "fenced", json!(7))), Local::Fenced);
        assert_eq!(c(cp("backup", "fenced", json!(7))), Local::Fenced);
    }

    #[test]
    fn monitor_codes_and_meta() {
        assert_eq!(Monitor::from_meta(None, None), Monitor::Probe);
        assert_eq!(
            Monitor::from_meta(Some("0"), Some("Promoted")),
            Monitor::Probe
        );
        assert_eq!(
            Monitor::from_meta(Some("10000"), Some("Master")),
            Monitor::Promoted
        );
        assert_eq!(
            Monitor::from_meta(Some("11000"), Some("Unpromoted")),
            Monitor::Unpromoted
        );
        assert_eq!(monitor(&Local::Stopped, Monitor::Probe), code::NOT_RUNNING);
        assert_eq!(monitor(&Local::Waiting, Monitor::Unpromoted), code::SUCCESS);
        assert_eq!(
            monitor(&Local::Primary { protected: false }, Monitor::Promoted),
            code::RUNNING_PROMOTED
        );
        assert_eq!(
            monitor(&Local::TookOver, Monitor::Probe),
            code::RUNNING_PROMOTED
        );
        assert_eq!(
            monitor(&Local::TookOver, Monitor::Unpromoted),
            code::SUCCESS
        );
        assert_eq!(
            monitor(&Local::Fenced, Monitor::Promoted),
            code::FAILED_PROMOTED
        );
        assert_eq!(from_remus_exit(2), code::ERR_CONFIGURED);
        assert_eq!(from_remus_exit(6), code::ERR_INSTALLED);
        assert_eq!(from_remus_exit(8), code::ERR_GENERIC, "8 is not OCF's 8");
    }

    #[test]
    fn only_the_backup_to_be_promoted_takes_over_before_the_demote() {
        let n = Notification {
            kind: "pre".into(),
            operation: "demote".into(),
            promote: vec!["hostb".into()],
            demote: vec!["hosta".into()],
        };
        let r = Local::Receiving { committed: 3 };
        assert!(takes_over_before_demote(&n, "hostb", &r));
        assert!(!takes_over_before_demote(&n, "hosta", &r));
        assert!(!takes_over_before_demote(&n, "hostb", &Local::Waiting));
        let post = Notification {
            kind: "post".into(),
            ..n.clone()
        };
        assert!(!takes_over_before_demote(&post, "hostb", &r));
        let no_promotion = Notification {
            promote: vec![],
            ..n
        };
        assert!(!takes_over_before_demote(&no_promotion, "hostb", &r));
    }

    fn any_local() -> impl Strategy<Value = Local> {
        prop_oneof![
            Just(Local::Stopped),
            Just(Local::Unknown("x".into())),
            Just(Local::Waiting),
            any::<u64>().prop_map(|committed| Local::Receiving { committed }),
            Just(Local::StandingDown),
            Just(Local::DiskFailed),
            Just(Local::TookOver),
            any::<bool>().prop_map(|protected| Local::Primary { protected }),
            Just(Local::Fenced),
        ]
    }

    proptest! {
        /// Pacemaker stops an instance whose unpromoted monitor says "promoted": that must
        /// never be said of a host that runs the VM, and such a host must outrank every host
        /// that does not.
        #[test]
        fn a_running_vm_is_never_recovered_and_outranks_the_rest(a in any_local(), b in any_local()) {
            prop_assert_ne!(monitor(&a, Monitor::Unpromoted), code::RUNNING_PROMOTED);
            if a.runs_vm() {
                prop_assert!(a.started());
                if !b.runs_vm() {
                    prop_assert!(promotion_score(&a) > promotion_score(&b));
                }
            }
            // Not started means not a promotion candidate.
            if !a.started() {
                prop_assert_eq!(promotion_score(&a), None);
            }
            // The probe tells the truth about the VM.
            prop_assert_eq!(monitor(&a, Monitor::Probe) == code::RUNNING_PROMOTED, a.runs_vm());
        }
    }
}
