//! The systemd template units in dist/systemd: `systemd-analyze verify` has nothing to say
//! about them (systemd is not PID 1 here, so they are checked offline, under a root directory
//! holding systemd's own units, the unit files and an executable where ExecStart points), and
//! they keep the promises their comments make.

use remus_tests::guest::repo_root;
use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &["remus-protect@.service", "remus-receive@.service"];

/// A throwaway root: systemd's units, ours, and a stand-in for /usr/local/bin/remus (verify
/// checks that ExecStart names an executable, not what it does).
fn root_with(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let sys = r.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    for e in std::fs::read_dir("/usr/lib/systemd/system")
        .expect("systemd's units (make setup installs systemd)")
    {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), sys.join(e.file_name())).unwrap();
        }
    }
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    for (name, text) in units {
        std::fs::write(etc.join(name), text).unwrap();
    }
    let bin = r.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("remus"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("remus"), std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// `systemd-analyze verify` of `instances` under `root`: (exit code, stderr).
fn verify(root: &Path, instances: &[&str]) -> (Option<i32>, String) {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(instances)
        .output()
        .expect("systemd-analyze (make setup installs systemd)");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ours() -> Vec<(&'static str, String)> {
    UNITS
        .iter()
        .map(|u| {
            (
                *u,
                std::fs::read_to_string(repo_root().join("dist/systemd").join(u)).unwrap(),
            )
        })
        .collect()
}

#[test]
fn systemd_analyze_verify_has_nothing_to_say() {
    let root = root_with(&ours());
    let (code, err) = verify(
        root.path(),
        &["remus-protect@vm1.service", "remus-receive@vm1.service"],
    );
    assert_eq!(
        (code, err.as_str()),
        (Some(0), ""),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn the_verification_catches_a_broken_unit() {
    // The check above could not fail if verify never spoke: a typo and a missing program must
    // be reported.
    let mut units = ours();
    units[0].1 = units[0]
        .1
        .replace("KillMode=mixed", "KillMode=mixed\nRestartz=no");
    let root = root_with(&units);
    let (_, err) = verify(root.path(), &["remus-protect@vm1.service"]);
    assert!(
        err.contains("Unknown key") && err.contains("Restartz"),
        "{err}"
    );
    std::fs::remove_file(root.path().join("usr/local/bin/remus")).unwrap();
    let (code, err) = verify(root.path(), &["remus-receive@vm1.service"]);
    assert!(
        code != Some(0) && err.contains("/usr/local/bin/remus"),
        "{code:?} {err}"
    );
}

/// The value of `key=` in a unit (the last one wins, as in systemd).
fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

#[test]
fn the_units_keep_their_promises() {
    let units = ours();
    let (protect, receive) = (&units[0].1, &units[1].1);
    for u in [protect, receive] {
        assert_eq!(setting(u, "Type").as_deref(), Some("notify"));
        assert_eq!(
            setting(u, "NotifyAccess").as_deref(),
            Some("main"),
            "only remus notifies"
        );
        assert_eq!(setting(u, "RuntimeDirectory").as_deref(), Some("remus/%i"));
        assert_eq!(
            setting(u, "KillMode").as_deref(),
            Some("mixed"),
            "remus stops its daemons in order"
        );
        let exec = setting(u, "ExecStart").unwrap();
        assert!(
            exec.contains("--config /etc/remus/%i.toml")
                && exec.contains("--run-dir /run/remus/%i"),
            "{exec}"
        );
    }
    // A primary is never started again by systemd: not on failure, not at boot.
    assert_eq!(setting(protect, "Restart").as_deref(), Some("no"));
    assert!(
        !protect.lines().any(|l| l.trim() == "[Install]"),
        "the primary must not be enabled at boot"
    );
    assert!(
        protect.contains("second") && protect.contains("copy"),
        "the unit says why"
    );
    assert!(setting(protect, "ExecStart")
        .unwrap()
        .starts_with("/usr/local/bin/remus protect"));
    // A backup may restart: it never runs the VM by itself.
    assert_eq!(setting(receive, "Restart").as_deref(), Some("on-failure"));
    assert_eq!(
        setting(receive, "RestartPreventExitStatus").as_deref(),
        Some("2 5 6 7")
    );
    assert!(setting(receive, "ExecStart")
        .unwrap()
        .starts_with("/usr/local/bin/remus receive"));
}
