//! `remus status` and `remus failover`: one view of a VM over its daemons' control sockets.

use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use remus_proto::exit;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the daemons' control sockets are.
#[derive(clap::Args, Default)]
pub struct Sockets {
    /// Directory holding netbuf.sock, diskrep.sock and checkpointd.sock (a run directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub netbuf: Option<PathBuf>,
    #[arg(long)]
    pub diskrep: Option<PathBuf>,
    #[arg(long)]
    pub checkpointd: Option<PathBuf>,
}

impl Sockets {
    pub fn resolve(&self, name: &str, explicit: &Option<PathBuf>) -> Option<PathBuf> {
        // Beside a `remus receive` that failed over, `remus protect --attach` runs its
        // checkpointd primary on its own socket: while it answers, it speaks for the VM.
        if let (None, "checkpointd", Some(d)) = (explicit, name, &self.dir) {
            let p = d.join("checkpointd-primary.sock");
            if ask(&p, "hello").is_ok() {
                return Some(p);
            }
        }
        explicit.clone().or_else(|| {
            self.dir
                .as_ref()
                .map(|d| d.join(format!("{name}.sock")))
                .filter(|p| p.exists())
        })
    }
}

pub enum Error {
    Unreachable(String),
    Refused(String),
}

pub fn ask(path: &Path, line: &str) -> Result<String, Error> {
    let mut c = ControlClient::connect(path)
        .map_err(|e| Error::Unreachable(format!("{}: {e}", path.display())))?;
    let _ = c.set_timeout(Some(Duration::from_secs(10)));
    match c.request(line) {
        Ok(Reply::Ok(t)) => Ok(t),
        Ok(Reply::Err(e)) => Err(Error::Refused(format!(
            "{}: {} {}",
            path.display(),
            e.code,
            e.message
        ))),
        Err(e) => Err(Error::Unreachable(format!("{}: {e}", path.display()))),
    }
}

pub fn ask_json(path: &Path, line: &str) -> Result<Value, Error> {
    let t = ask(path, line)?;
    serde_json::from_str(&t)
        .map_err(|e| Error::Refused(format!("{}: bad JSON: {e}", path.display())))
}

pub fn fail(e: Error) -> i32 {
    match e {
        Error::Unreachable(m) => {
            eprintln!("remus: unreachable: {m}");
            exit::UNREACHABLE
        }
        Error::Refused(m) => {
            eprintln!("remus: refused: {m}");
            exit::REJECTED
        }
    }
}

pub fn status(s: &Sockets, as_json: bool) -> i32 {
    let (nb, dr, cp) = (
        s.resolve("netbuf", &s.netbuf),
        s.resolve("diskrep", &s.diskrep),
        s.resolve("checkpointd", &s.checkpointd),
    );
    if nb.is_none() && dr.is_none() && cp.is_none() {
        eprintln!(
            "remus: no control socket given or found (--dir, --netbuf, --diskrep, --checkpointd)"
        );
        return exit::USAGE;
    }
    let get = |p: &Option<PathBuf>, line: &str| -> Result<Option<Value>, Error> {
        p.as_ref().map(|p| ask_json(p, line)).transpose()
    };
    let (n, d, c) = match (
        get(&nb, "stats json"),
        get(&dr, "status json"),
        get(&cp, "status json"),
    ) {
        (Ok(n), Ok(d), Ok(c)) => (n, d, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(e),
    };
    let why_not = why_not_protected(n.as_ref(), d.clone().map(serving).as_ref(), c.as_ref());
    let role = c
        .as_ref()
        .map(|c| c["role"].clone())
        .or_else(|| d.as_ref().map(|d| d["role"].clone()))
        .unwrap_or(Value::Null);
    let protected = why_not.is_empty();
    let witness = c
        .as_ref()
        .and_then(|c| c.get("witness"))
        .filter(|w| w.is_object());
    let fenced = c.as_ref().is_some_and(|c| c["phase"] == "fenced");
    let summary = json!({
        "role": role,
        "protected": protected,
        "why_not": why_not,
        "epoch": c.as_ref().and_then(|c| c.get("open_epoch").cloned())
            .or_else(|| d.as_ref().and_then(|d| d.get("epoch").cloned())),
        "committed_through": c.as_ref().and_then(|c| c.get("committed_through").cloned()),
        "checkpoint_rate": c.as_ref().and_then(|c| c.get("rate").cloned()),
        "pause_p50_us": c.as_ref().and_then(|c| c.get("pause_p50_us").cloned()),
        "pause_p99_us": c.as_ref().and_then(|c| c.get("pause_p99_us").cloned()),
        "bytes_last_epoch": c.as_ref().and_then(|c| c.get("last_bytes").cloned()),
        "epochs_unacked": c.as_ref().and_then(|c| c.get("unacked").cloned()),
        "frames_held": n.as_ref().and_then(|n| n.get("held_frames").cloned()),
        "generation": witness.and_then(|w| w.get("generation").cloned()),
        "owner": witness.and_then(|w| w.get("owner").cloned()),
        "witness_reachable": witness.and_then(|w| w.get("reachable").cloned()),
        "witness": witness.and_then(|w| w.get("witness").cloned()),
        "fenced": fenced,
        "dirty_tracker": c.as_ref().and_then(|c| c.get("dirty_tracker").cloned())
            .filter(|t| t.as_str().is_some_and(|s| !s.is_empty())),
        "netbuf": n, "diskrep": d, "checkpointd": c,
    });
    if as_json {
        println!("{summary}");
    } else {
        let g = |k: &str| match &summary[k] {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        println!(
            "role {}  {}  epoch {}  committed {}  {} checkpoints/s  pause p50 {} us p99 {} us  \
             last epoch {} bytes  unacked {}  frames held {}  generation {} owner {} witness {}",
            g("role"),
            if protected {
                "PROTECTED"
            } else {
                "NOT PROTECTED"
            },
            g("epoch"),
            g("committed_through"),
            g("checkpoint_rate"),
            g("pause_p50_us"),
            g("pause_p99_us"),
            g("bytes_last_epoch"),
            g("epochs_unacked"),
            g("frames_held"),
            g("generation"),
            g("owner"),
            match &summary["witness_reachable"] {
                Value::Bool(true) => "reachable",
                Value::Bool(false) => "UNREACHABLE",
                _ => "-",
            },
        );
        if let Some(t) = summary["dirty_tracker"].as_str() {
            let why = summary["checkpointd"]["dirty_tracker_reason"]
                .as_str()
                .unwrap_or("");
            println!("  dirty pages: {t} ({why})");
        }
        for w in &why_not {
            println!("  not protected: {w}");
        }
    }
    if fenced {
        exit::FENCED
    } else if protected {
        exit::OK
    } else {
        exit::NOT_PROTECTED
    }
}

/// diskrep's status as a primary: an activated backup (the guest a failover restored, now
/// the primary's disk) has its serving side under `serving`.
pub fn serving(d: Value) -> Value {
    match d.get("serving") {
        Some(s) if s.is_object() => s.clone(),
        _ => d,
    }
}

/// Planned switch-over: the backup's checkpointd restores the VM now.
pub fn failover(sockets: &Sockets) -> i32 {
    match sockets.resolve("checkpointd", &sockets.checkpointd) {
        None => {
            eprintln!(
                "remus: failover needs the backup's checkpointd socket (--checkpointd or --dir)"
            );
            exit::USAGE
        }
        Some(p) => match ask(&p, "failover") {
            Ok(t) => {
                println!("{t}");
                exit::OK
            }
            Err(e) => fail(e),
        },
    }
}

/// Why the VM is not protected, from each daemon's status (empty: protected). On the backup,
/// "protected" means it holds a committed checkpoint and would take over.
pub fn why_not_protected(n: Option<&Value>, d: Option<&Value>, c: Option<&Value>) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(c) = c {
        let phase = c["phase"].as_str().unwrap_or("");
        let reason = c["reason"].as_str().unwrap_or("");
        match (c["role"].as_str(), phase) {
            (Some("primary"), "protected") => {}
            (Some("primary"), "claiming") => why.push(format!(
                "checkpointd: lost the backup ({reason}); output held until the witness decides"
            )),
            (Some(_), "fenced") => why.push(format!(
                "checkpointd: fenced ({reason}): the other host runs the VM"
            )),
            (Some("primary"), _) => why.push(format!("checkpointd: {phase} ({reason})")),
            (Some("backup"), "waiting") => why.push("checkpointd: no primary connected yet".into()),
            (Some("backup"), "receiving") if !c["committed_through"].is_u64() => {
                why.push("checkpointd: no checkpoint committed yet".into())
            }
            (Some("backup"), "receiving") => {}
            (Some("backup"), "failingover" | "failedover") => {
                why.push("checkpointd: failed over, the VM runs here without a backup".into())
            }
            (Some("backup"), "stopped") => {
                why.push("checkpointd: the primary ended protection".into())
            }
            (Some("backup"), "diskfailed") => why.push(format!(
                "checkpointd: {reason}; this backup acknowledges nothing more and will not take over"
            )),
            (role, _) => why.push(format!("checkpointd: role {role:?}, phase {phase}")),
        }
    }
    if let Some(n) = n {
        // A backup's netbuf passes everything by design (it is there for a guest a failover
        // restores); only a primary's must hold output.
        let backup = c.is_some_and(|c| c["role"] == "backup");
        if n["protected"] == false && !backup {
            why.push("netbuf: output passes unbuffered".into());
        }
    }
    if let Some(d) = d {
        if d["role"] == "backup" && d["failed_commit"].is_u64() {
            why.push(format!(
                "diskrep: the commit of epoch {} failed ({}); the image is inconsistent until the primary resyncs it",
                d["failed_commit"],
                d["last_error"].as_str().unwrap_or("")
            ));
        }
        if d["role"] == "primary" && d["link"] != "protected" {
            why.push(format!(
                "diskrep: backup link {} {}",
                d["link"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("")
            ));
        }
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_says_why_it_is_not_protected() {
        let cp = |role: &str, phase: &str, committed: Value| json!({"role": role, "phase": phase, "reason": "r", "committed_through": committed});
        let none = |c: Value| why_not_protected(None, None, Some(&c));
        assert!(none(cp("primary", "protected", json!(3))).is_empty());
        assert!(none(cp("primary", "unprotected", json!(3)))[0].contains("unprotected (r)"));
        assert!(none(cp("primary", "fenced", json!(3)))[0].contains("fenced"));
        assert!(none(cp("backup", "fenced", json!(3)))[0].contains("other host runs"));
        assert!(none(cp("primary", "claiming", json!(3)))[0].contains("output held"));
        assert!(none(cp("backup", "receiving", json!(3))).is_empty());
        assert!(none(cp("backup", "receiving", Value::Null))[0].contains("no checkpoint"));
        assert!(none(cp("backup", "waiting", Value::Null))[0].contains("no primary"));
        assert!(none(cp("backup", "failedover", json!(3)))[0].contains("without a backup"));
        assert!(none(cp("backup", "stopped", json!(3)))[0].contains("ended protection"));
        let nb = json!({"protected": false});
        assert_eq!(why_not_protected(Some(&nb), None, None).len(), 1);
        // A receiving backup's netbuf passes everything: that is no reason.
        let rx = cp("backup", "receiving", json!(3));
        assert!(why_not_protected(Some(&nb), None, Some(&rx)).is_empty());
        let pr = cp("primary", "protected", json!(3));
        assert_eq!(why_not_protected(Some(&nb), None, Some(&pr)).len(), 1);
        let dr = json!({"role": "primary", "link": "syncing", "reason": ""});
        assert!(why_not_protected(None, Some(&dr), None)[0].contains("syncing"));
        let dr = json!({"role": "backup", "link": "none"});
        assert!(why_not_protected(None, Some(&dr), None).is_empty());
        let dr =
            json!({"role": "backup", "failed_commit": 7, "last_error": "commit 7: No space left"});
        assert!(why_not_protected(None, Some(&dr), None)[0].contains("epoch 7 failed"));
        let mut c = cp("backup", "diskfailed", json!(6));
        c["reason"] = json!("the disk commit of checkpoint 7 failed (x)");
        assert!(none(c)[0].contains("will not take over"));
    }
}
