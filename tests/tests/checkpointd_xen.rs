//! checkpointd's Xen driver, built against Debian's real libxen headers, run against a stand-in
//! libxenctrl/libxenguest (tests/xen-standin) that calls the Remus callbacks in the order Xen
//! 4.17's xg_sr_save.c / xg_sr_restore.c do, and logs what the driver asks of the hypervisor.
//! netbuf is real. This driver has never run on a Xen host (there is none here).

use remus_proto::control::Reply;
use remus_tests::diskrep_rig::free_port;
use remus_tests::guest::repo_root;
use remus_tests::netns::{bin, require_root, GroupGuard};
use remus_tests::topo::NetbufTopo;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn standin(dir: &Path) {
    let o = Command::new(repo_root().join("tests/xen-standin/build.sh"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn xen_cmd(dir: &Path, log: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("checkpointd"));
    c.args(args)
        .env("LD_LIBRARY_PATH", dir)
        .env("XEN_STANDIN_LOG", log)
        .stdout(Stdio::piped());
    c
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn netbuf_stats(t: &NetbufTopo) -> serde_json::Value {
    match t.client().unwrap().request("stats json").unwrap() {
        Reply::Ok(j) => serde_json::from_str(&j).unwrap(),
        Reply::Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn xen_driver_follows_the_remus_callback_protocol() {
    require_root();
    let help = Command::new(bin("checkpointd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("xen-primary"),
        "checkpointd was built without the `xen` feature (make build enables it)"
    );
    let dir = std::env::temp_dir().join(format!("xen-{}", remus_tests::netns::unique_prefix()));
    let key = remus_tests::replication_key(&dir).display().to_string();
    standin(&dir);
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&[]).unwrap();
    let ctl = t.control.to_string_lossy().into_owned();

    // 1. Protected run, then the backup dies: the primary stops checkpointing, output flows.
    let (plog, blog) = (dir.join("p1.log"), dir.join("b1.log"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let backup = GroupGuard::spawn(&mut xen_cmd(
        &dir,
        &blog,
        &[
            "xen-backup",
            "--domid",
            "7",
            "--listen",
            &listen,
            "--key-file",
            &key,
        ],
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut primary = GroupGuard::spawn(&mut xen_cmd(
        &dir,
        &plog,
        &[
            "xen-primary",
            "--domid",
            "7",
            "--backup",
            &listen,
            "--key-file",
            &key,
            "--interval-ms",
            "50",
            "--ack-timeout-ms",
            "500",
            "--netbuf-control",
            &ctl,
        ],
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = netbuf_stats(&t);
    assert_eq!(s["protected"], true, "{s}");
    let released = s["released_through"].as_u64().unwrap();
    assert!(
        released >= 10,
        "released through {released} in 1.5 s at 50 ms"
    );
    // Depth 1: between checkpoints, exactly one epoch is open beyond the released ones.
    assert!(s["last_barrier"].as_u64().unwrap() <= released + 2, "{s}");
    drop(backup); // SIGKILL
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = primary.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "primary did not give up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st}");
    assert_eq!(
        netbuf_stats(&t)["protected"],
        false,
        "release-all after losing the backup"
    );
    let p = lines(&plog);
    // Per checkpoint: suspend callback → the domain is suspended → postcopy → resumed →
    // checkpoint callback, and libxenguest never found the domain unsuspended.
    assert!(
        !p.iter()
            .any(|l| l.contains("not suspended") || l.contains("has not been")),
        "{p:?}"
    );
    let seq: Vec<&str> = p
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| {
            [
                "suspend-callback",
                "shutdown",
                "postcopy-callback",
                "resume",
                "checkpoint-callback",
            ]
            .contains(w)
        })
        .collect();
    let cycle = [
        "suspend-callback",
        "shutdown",
        "postcopy-callback",
        "resume",
        "checkpoint-callback",
    ];
    let whole = seq
        .iter()
        .rposition(|w| *w == "checkpoint-callback")
        .map_or(0, |i| i + 1);
    assert!(whole >= 10 * cycle.len(), "{seq:?}");
    for (i, w) in seq[..whole].iter().enumerate() {
        assert_eq!(
            *w,
            cycle[i % cycle.len()],
            "event {i} out of order: {seq:?}"
        );
    }
    // The backup died in the middle of the next checkpoint (or while we waited for its ack):
    // whatever was cut short, the domain is left running, never suspended.
    let rest = &seq[whole..];
    assert!(
        rest.is_empty() || rest.last() == Some(&"resume"),
        "left suspended: {rest:?}"
    );
    assert!(rest.iter().all(|w| cycle.contains(w)), "{rest:?}");

    // 2. The primary dies: the backup completes from the last checkpoint and unpauses. The new
    //    run numbers its epochs on from where netbuf left off.
    let first = netbuf_stats(&t)["last_barrier"].as_u64().unwrap();
    let (plog, blog) = (dir.join("p2.log"), dir.join("b2.log"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut backup = GroupGuard::spawn(&mut xen_cmd(
        &dir,
        &blog,
        &[
            "xen-backup",
            "--domid",
            "9",
            "--listen",
            &listen,
            "--key-file",
            &key,
        ],
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let primary = GroupGuard::spawn(&mut xen_cmd(
        &dir,
        &plog,
        &[
            "xen-primary",
            "--domid",
            "9",
            "--backup",
            &listen,
            "--key-file",
            &key,
            "--interval-ms",
            "50",
            "--netbuf-control",
            &ctl,
        ],
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    drop(primary); // SIGKILL
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = backup.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "backup did not fail over"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st}");
    let mut out = String::new();
    use std::io::Read;
    backup
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let b = lines(&blog);
    let last_cb = b
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("apply ")
                .and_then(|r| r.split("checkpoint-callback ").nth(1))
        })
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(
        out.trim(),
        format!("resumed_from={}", first + last_cb),
        "{b:?}"
    );
    assert!(
        b[b.len() - 2].starts_with("restore: stream broken"),
        "{b:?}"
    );
    assert_eq!(
        b[b.len() - 1],
        "unpause 9",
        "the restored domain is unpaused last"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
