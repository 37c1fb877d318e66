//! The netbuf control commands, mapped onto a [`Backend`]. Documented in netbuf/README.md.

use crate::backend::Backend;
use remus_proto::control::{Reply, Request};
use std::sync::Arc;

pub const VERBS: &[&str] = &[
    "hello",
    "barrier",
    "release",
    "release-all",
    "discard",
    "stats",
];

/// Protocol revision reported by `hello`; bumped on any incompatible change.
pub const PROTOCOL: u32 = 1;

pub fn handle(backend: &dyn Backend, req: &Request) -> Reply {
    let r = match req.verb.as_str() {
        "hello" => req.expect_args(0).map(|_| {
            format!(
                "netbuf protocol={PROTOCOL} backend={} max_depth={}",
                backend.name(),
                backend
                    .max_depth()
                    .map_or("unlimited".to_string(), |d| d.to_string())
            )
        }),
        "barrier" => req
            .epoch_arg()
            .and_then(|e| backend.barrier(e).map(|_| format!("epoch={e}"))),
        "release" => req.epoch_arg().and_then(|e| {
            backend
                .release_through(e)
                .map(|n| format!("released_frames={n}"))
        }),
        "release-all" => req
            .expect_args(0)
            .and_then(|_| backend.release_all())
            .map(|n| format!("released_frames={n}")),
        "discard" => req
            .expect_args(0)
            .and_then(|_| backend.discard())
            .map(|n| format!("discarded_frames={n}")),
        "stats" => req.wants_json().map(|json| {
            let s = backend.stats();
            if json {
                serde_json::to_string(&s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            } else {
                s.to_kv()
            }
        }),
        _ => Err(req.unknown(VERBS)),
    };
    Reply::from(r)
}

pub fn handler(backend: Arc<dyn Backend>) -> remus_proto::ctl_socket::Handler {
    Arc::new(move |req: &Request| handle(backend.as_ref(), req))
}
