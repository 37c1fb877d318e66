//! diskrep's control commands (same line protocol as netbuf; see diskrep/README.md).

use crate::lineage::LineageId;
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
        /// `activate`, once the backup is activated: serves NBD on the listener from now on,
        /// in the new lineage; returns what the reply says about it and the server's
        /// replicator (which `barrier`, `replicate` and `status` then reach).
        serve: Box<dyn Fn(Listener, LineageId) -> (String, Arc<Replicator>) + Send + Sync>,
        activated: std::sync::OnceLock<Arc<Replicator>>,
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

/// The replicator that serves NBD: a primary's, or an activated backup's.
fn serving(role: &Role) -> Option<&Arc<Replicator>> {
    match role {
        Role::Primary(p) => Some(p),
        Role::Backup { activated, .. } => activated.get(),
    }
}

/// `activate [force] [generation=N]`.
fn activate_args(args: &[String]) -> Result<(bool, Option<u64>), ControlError> {
    let mut force = false;
    let mut fence = None;
    for a in args {
        if a == "force" && !force {
            force = true;
        } else if let (Some(n), None) = (a.strip_prefix("generation="), fence) {
            fence = Some(n.parse::<u64>().map_err(|_| {
                ControlError::new(ErrorCode::Parse, format!("generation={n}: not a number"))
            })?);
        } else {
            return Err(ControlError::new(
                ErrorCode::Parse,
                "activate takes 'force' and 'generation=N' (the witness' generation), each at most once",
            ));
        }
    }
    Ok((force, fence))
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
        ("barrier", role) => match (serving(role), req.epoch_arg()) {
            (Some(p), Ok(e)) => p.barrier(e).await.map(|_| format!("epoch={e}")),
            (None, _) => wrong_role("primary (or activated backup)"),
            (_, Err(e)) => Err(e),
        },
        ("replicate", role) => match (serving(role), req.args.as_slice()) {
            (Some(p), [addr]) => p
                .replicate_to(addr.clone())
                .await
                .map(|started| match started {
                    true => format!("replicating={addr}"),
                    false => format!("replicating={addr} already=true"),
                }),
            (None, _) => wrong_role("primary (or activated backup)"),
            (_, _) => Err(ControlError::new(
                ErrorCode::Parse,
                "replicate takes one argument: the backup's HOST:PORT",
            )),
        },
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
                activated,
            },
        ) => match activate_args(&req.args) {
            Ok((force, fence)) => {
                let bind = || {
                    bind().map_err(|e| {
                        ControlError::new(
                            ErrorCode::Backend,
                            format!("not activated: {e}; nothing changed, retry when it is free"),
                        )
                    })
                };
                backup
                    .activate(force, fence, bind)
                    .await
                    .map(|(dropped, l, lineage)| {
                        let (said, repl) = serve(l, lineage);
                        let _ = activated.set(repl);
                        format!(
                            "discarded_bytes={dropped} {said} lineage={:016x}",
                            lineage.id
                        )
                    })
            }
            Err(e) => Err(e),
        },
        ("activate", _) => wrong_role("backup"),
        ("status", role) => match req.wants_json() {
            Ok(as_json) => {
                let mut v = match role {
                    Role::Primary(p) => serde_json::to_value(p.status().await),
                    Role::Backup { backup, .. } => serde_json::to_value(backup.status().await),
                }
                .unwrap_or_default();
                // An activated backup is also a primary now: its server's status under
                // "serving" (JSON only).
                if let (Role::Backup { .. }, Some(p)) = (role, serving(role)) {
                    if let (Some(o), Ok(s)) =
                        (v.as_object_mut(), serde_json::to_value(p.status().await))
                    {
                        o.insert("serving".into(), s);
                    }
                }
                Ok(if as_json { json(&v) } else { kv(&v) })
            }
            Err(e) => Err(e),
        },
        _ => Err(req.unknown(&[
            "hello",
            "barrier",
            "commit",
            "activate",
            "replicate",
            "status",
        ])),
    };
    Reply::from(r)
}
