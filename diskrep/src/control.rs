//! diskrep's control commands (same line protocol as netbuf; see diskrep/README.md).

use crate::listen::Listener;
use crate::repl::backup::Backup;
use crate::repl::primary::Replicator;
use remus_proto::control::{ControlError, ErrorCode, Reply, Request};
use std::sync::Arc;

pub const PROTOCOL: u32 = 1;

/// What a control request acts on.
pub enum Role {
    Primary(Arc<Replicator>),
    Backup {
        backup: Arc<Backup>,
        /// `activate`: binds the NBD listener (before anything changes, so that a busy address
        /// leaves the backup as it was).
        bind: Box<dyn Fn() -> std::io::Result<Listener> + Send + Sync>,
        /// `activate`, once the backup is activated: serves NBD on the listener from now on;
        /// returns what the reply says about it.
        serve: Box<dyn Fn(Listener) -> String + Send + Sync>,
    },
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn kv(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            match v {
                serde_json::Value::Object(_) | serde_json::Value::Array(_) => {}
                serde_json::Value::String(s) => out.push(format!("{k}={}", s.replace(' ', "_"))),
                serde_json::Value::Null => out.push(format!("{k}=none")),
                v => out.push(format!("{k}={v}")),
            }
        }
    }
    out.join(" ")
}

pub async fn handle(role: &Role, req: &Request) -> Reply {
    let wrong_role = |what: &str| {
        Err(ControlError::new(
            ErrorCode::State,
            format!("{} is a {what} command", req.verb),
        ))
    };
    let r: Result<String, ControlError> = match (req.verb.as_str(), role) {
        ("hello", _) => req.expect_args(0).map(|_| {
            format!(
                "diskrep protocol={PROTOCOL} role={}",
                match role {
                    Role::Primary(_) => "primary",
                    Role::Backup { .. } => "backup",
                }
            )
        }),
        ("barrier", Role::Primary(p)) => match req.epoch_arg() {
            Ok(e) => p.barrier(e).await.map(|_| format!("epoch={e}")),
            Err(e) => Err(e),
        },
        ("barrier", _) => wrong_role("primary"),
        ("commit", Role::Backup { backup, .. }) => match req.epoch_arg() {
            Ok(e) => backup.commit(e).await,
            Err(e) => Err(e),
        },
        ("commit", _) => wrong_role("backup"),
        (
            "activate",
            Role::Backup {
                backup,
                bind,
                serve,
            },
        ) => {
            let force = match req.args.as_slice() {
                [] => Ok(false),
                [f] if f == "force" => Ok(true),
                _ => Err(ControlError::new(
                    ErrorCode::Parse,
                    "activate takes no argument or 'force'",
                )),
            };
            match force {
                Ok(force) => {
                    let bind = || {
                        bind().map_err(|e| {
                            ControlError::new(
                                ErrorCode::Backend,
                                format!(
                                    "not activated: {e}; nothing changed, retry when it is free"
                                ),
                            )
                        })
                    };
                    backup
                        .activate(force, bind)
                        .await
                        .map(|(dropped, l)| format!("discarded_bytes={dropped} {}", serve(l)))
                }
                Err(e) => Err(e),
            }
        }
        ("activate", _) => wrong_role("backup"),
        ("status", role) => match req.wants_json() {
            Ok(as_json) => {
                let v = match role {
                    Role::Primary(p) => serde_json::to_value(p.status().await),
                    Role::Backup { backup, .. } => serde_json::to_value(backup.status().await),
                }
                .unwrap_or_default();
                Ok(if as_json { json(&v) } else { kv(&v) })
            }
            Err(e) => Err(e),
        },
        _ => Err(req.unknown(&["hello", "barrier", "commit", "activate", "status"])),
    };
    Reply::from(r)
}
