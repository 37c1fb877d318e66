//! checkpointd's Xen driver, built against Debian's real libxen headers, run against a stand-in
//! libxenctrl/libxenguest (tests/xen-standin) that calls the Remus callbacks in the order Xen
//! 4.17's xg_sr_save.c / xg_sr_restore.c do, and logs what the driver asks of the hypervisor.
//! netbuf, the authenticated link, the control sockets and `remus failover` are real. The
//! faults are the QEMU path's: dead backup, dead primary, SIGSTOP of either side, planned
//! stop, planned switch-over. This driver has never run on a Xen host (there is none here).

use remus_proto::control::Reply;
use remus_tests::diskrep_rig::free_port;
use remus_tests::guest::repo_root;
use remus_tests::netns::{bin, require_root, GroupGuard};
use remus_tests::topo::NetbufTopo;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rig {
    dir: PathBuf,
    key: String,
    t: NetbufTopo,
    /// `--witness` for both sides.
    witness: String,
}

struct Pair {
    primary: GroupGuard,
    backup: GroupGuard,
    plog: PathBuf,
    blog: PathBuf,
    pctl: PathBuf,
    bctl: PathBuf,
    /// The epoch the primary's first checkpoint closes (netbuf's numbering goes on).
    first: u64,
}

/// Whether something listens on TCP `port` (IPv4), from /proc/net/tcp.
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
        })
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exits_within(g: &mut GroupGuard, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = g.0.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < limit, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exits 0 within `limit`; else the failure shows checkpointd's own log (beside the
/// stand-in's `log`).
fn exits_ok(g: &mut GroupGuard, limit: Duration, log: &Path) {
    let st = exits_within(g, limit);
    assert!(
        st.success(),
        "checkpointd {st}:\n{}",
        std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
}

fn signal(g: &GroupGuard, sig: i32) {
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(g.0.id() as i32, sig) };
}

fn status(sock: &Path) -> serde_json::Value {
    let mut c = remus_proto::ctl_socket::ControlClient::connect(sock).unwrap();
    match c.request("status json").unwrap() {
        Reply::Ok(j) => serde_json::from_str(&j).unwrap(),
        Reply::Err(e) => panic!("{e:?}"),
    }
}

fn stdout_of(g: &mut GroupGuard) -> String {
    let mut out = String::new();
    if let Some(mut o) = g.0.stdout.take() {
        o.read_to_string(&mut out).unwrap();
    }
    out
}

impl Rig {
    fn new() -> Rig {
        let dir = std::env::temp_dir().join(format!("xen-{}", remus_tests::netns::unique_prefix()));
        let key = remus_tests::replication_key(&dir).display().to_string();
        let o = Command::new(repo_root().join("tests/xen-standin/build.sh"))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut t = NetbufTopo::new().unwrap();
        t.start_netbuf(&[]).unwrap();
        Rig {
            dir,
            key,
            t,
            witness: "none".into(),
        }
    }

    fn netbuf(&self) -> serde_json::Value {
        match self.t.client().unwrap().request("stats json").unwrap() {
            Reply::Ok(j) => serde_json::from_str(&j).unwrap(),
            Reply::Err(e) => panic!("{e:?}"),
        }
    }

    fn released(&self) -> u64 {
        self.netbuf()["released_through"].as_u64().unwrap_or(0)
    }

    fn cmd(&self, log: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin("checkpointd"));
        c.args(args)
            .args(["--key-file", &self.key, "--witness", &self.witness])
            .env("LD_LIBRARY_PATH", &self.dir)
            .env("XEN_STANDIN_LOG", log)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        c
    }

    /// A protected pair for domain `domid`, once the backup has committed a few checkpoints.
    fn pair(&self, name: &str, domid: &str) -> Pair {
        self.pair_via(name, domid, str::to_string)
    }

    /// The same, the primary dialling `route(backup's address)`.
    fn pair_via(&self, name: &str, domid: &str, route: impl FnOnce(&str) -> String) -> Pair {
        // The primary numbers on from netbuf's last barrier.
        let first = self.netbuf()["last_barrier"].as_u64().unwrap_or(0);
        let (plog, blog) = (
            self.dir.join(format!("{name}-p.log")),
            self.dir.join(format!("{name}-b.log")),
        );
        let (pctl, bctl) = (
            self.dir.join(format!("{name}-p.sock")),
            self.dir.join(format!("{name}-b.sock")),
        );
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let backup = GroupGuard::spawn(&mut self.cmd(
            &blog,
            &[
                "xen-backup",
                "--domid",
                domid,
                "--listen",
                &listen,
                "--control",
                &bctl.to_string_lossy(),
            ],
        ))
        .unwrap();
        until("the backup to listen", Duration::from_secs(10), || {
            listening(port)
        });
        let primary = GroupGuard::spawn(&mut self.cmd(
            &plog,
            &[
                "xen-primary",
                "--domid",
                domid,
                "--backup",
                &route(&listen),
                "--interval-ms",
                "50",
                "--netbuf-control",
                &self.t.control.to_string_lossy(),
                "--control",
                &pctl.to_string_lossy(),
            ],
        ))
        .unwrap();
        until("checkpoints acknowledged", Duration::from_secs(20), || {
            self.released() >= first + 5
        });
        Pair {
            primary,
            backup,
            plog,
            blog,
            pctl,
            bctl,
            first,
        }
    }
}

/// Every suspend was followed by its dirty pages, postcopy, resume and checkpoint callback,
/// in that order, and no byte went to the network while the domain was suspended (beyond a
/// heartbeat or two from their own thread). A primary that ended (not killed) did not leave
/// the domain suspended.
fn check_primary_log(plog: &Path, at_least: usize, ended: bool) {
    let p = lines(plog);
    assert!(
        !p.iter()
            .any(|l| l.contains("not suspended") || l.contains("has not been")),
        "{p:?}"
    );
    let cycle = [
        "suspend-callback",
        "shutdown",
        "postcopy-callback",
        "resume",
        "checkpoint-callback",
    ];
    let seq: Vec<&str> = p
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| cycle.contains(w))
        .collect();
    let whole = seq
        .iter()
        .rposition(|w| *w == "checkpoint-callback")
        .map_or(0, |i| i + 1);
    assert!(whole >= at_least * cycle.len(), "{seq:?}");
    for (i, w) in seq[..whole].iter().enumerate() {
        assert_eq!(
            *w,
            cycle[i % cycle.len()],
            "event {i} out of order: {seq:?}"
        );
    }
    // Protection ended waiting for the next suspend (or cut a checkpoint short): the domain
    // runs either way.
    let rest = &seq[whole..];
    assert!(
        !ended || rest.is_empty() || rest == ["suspend-callback"] || rest.last() == Some(&"resume"),
        "left suspended: {rest:?}"
    );
    // And it exited only after xc_domain_save had returned (the stand-in says why it did):
    // not while libxenguest was still inside the call.
    assert!(
        !ended || p.last().is_some_and(|l| l.starts_with("save: ")),
        "exited inside xc_domain_save: {p:?}"
    );
    let field = |l: &str, name: &str| -> Option<u64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|n| n.parse().unwrap())
    };
    let during: Vec<u64> = p
        .iter()
        .filter_map(|l| field(l, "tcp_bytes_while_suspended="))
        .collect();
    assert!(during.len() >= at_least, "{p:?}");
    // The count is real: by the last resume, every earlier checkpoint (1 MiB of dirty
    // record each) went out through TCP.
    let total = p
        .iter()
        .rev()
        .find_map(|l| field(l, "tcp_bytes_total="))
        .unwrap();
    assert!(
        total >= (during.len() as u64 - 1) << 20,
        "{total} bytes written to TCP after {} checkpoints",
        during.len()
    );
    println!(
        "{}: {} checkpoints, at most {} bytes written to TCP while suspended, {total} in all",
        plog.display(),
        during.len(),
        during.iter().max().unwrap()
    );
    // Each checkpoint's dirty record is 1 MiB: a stream on the network during the suspend
    // would show here. A heartbeat frame is well under 200 bytes.
    assert!(
        during.iter().all(|n| *n < 4096),
        "bytes written to TCP while suspended: {during:?}"
    );
}

/// The backup resumed the domain from the last checkpoint libxenguest was given, which was
/// whole (nothing buffered or partial was discarded), and unpaused it last.
fn check_failover(pair: &mut Pair, domid: &str) -> u64 {
    let st = exits_within(&mut pair.backup, Duration::from_secs(15));
    assert!(st.success(), "{st}");
    let out = stdout_of(&mut pair.backup);
    let b = lines(&pair.blog);
    let last_cb: u64 = b
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("apply ")
                .and_then(|r| r.split("checkpoint-callback ").nth(1))
        })
        .unwrap()
        .parse()
        .unwrap();
    let resumed = pair.first + last_cb;
    assert_eq!(out.trim(), format!("resumed_from={resumed}"), "{b:?}");
    assert!(
        b[b.len() - 2]
            .starts_with("restore: stream broken; discarding 0 buffered record(s) and 0 byte(s)"),
        "libxenguest was fed part of a checkpoint: {b:?}"
    );
    assert_eq!(b[b.len() - 1], format!("unpause {domid}"), "{b:?}");
    resumed
}

#[test]
fn xen_driver_under_the_engine_survives_the_qemu_paths_faults() {
    require_root();
    let help = Command::new(bin("checkpointd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("xen-primary"),
        "checkpointd was built without the `xen` feature (make build enables it)"
    );
    let rig = Rig::new();

    // 1. Protected run: both control sockets answer; then the backup dies. The primary runs
    //    on unprotected (netbuf passes everything), and ends on SIGTERM.
    let mut p = rig.pair("dead-backup", "7");
    let ps = status(&p.pctl);
    assert_eq!(ps["role"], "primary", "{ps}");
    assert_eq!(ps["phase"], "protected", "{ps}");
    assert_eq!(ps["dirty_tracker"], "xen-log-dirty", "{ps}");
    let bs = status(&p.bctl);
    assert_eq!(bs["role"], "backup", "{bs}");
    assert!(
        bs["committed_through"].as_u64().unwrap() >= p.first + 4,
        "{bs}"
    );
    // Depth 1: between checkpoints, exactly one epoch is open beyond the released ones.
    let s = rig.netbuf();
    assert!(
        s["last_barrier"].as_u64().unwrap() <= s["released_through"].as_u64().unwrap() + 2,
        "{s}"
    );
    p.backup.0.kill().unwrap();
    until(
        "the primary to give up on the backup",
        Duration::from_secs(10),
        || rig.netbuf()["protected"] == false,
    );
    assert_eq!(status(&p.pctl)["phase"], "unprotected");
    assert!(p.primary.0.try_wait().unwrap().is_none(), "runs on alone");
    signal(&p.primary, libc::SIGTERM);
    exits_ok(&mut p.primary, Duration::from_secs(10), &p.plog);
    check_primary_log(&p.plog, 5, true);

    // 2. The primary dies: the backup notices the silence and resumes from the last whole
    //    checkpoint.
    let mut p = rig.pair("dead-primary", "9");
    p.primary.0.kill().unwrap();
    check_failover(&mut p, "9");
    check_primary_log(&p.plog, 5, false);

    // 3. The primary freezes (SIGSTOP): the backup takes over; the thawed primary reads the
    //    takeover notice and stops its copy of the domain (fenced, exit 9).
    let mut p = rig.pair("frozen-primary", "11");
    signal(&p.primary, libc::SIGSTOP);
    check_failover(&mut p, "11");
    signal(&p.primary, libc::SIGCONT);
    let st = exits_within(&mut p.primary, Duration::from_secs(15));
    assert_eq!(st.code(), Some(9), "{st}");
    assert!(
        lines(&p.plog).iter().any(|l| l == "pause 11"),
        "the fenced primary pauses its domain: {:?}",
        lines(&p.plog)
    );

    // 4. The backup freezes: the primary goes on unprotected and tells it to stand down; the
    //    thawed backup resumes nothing.
    let mut p = rig.pair("frozen-backup", "13");
    signal(&p.backup, libc::SIGSTOP);
    until(
        "the primary to give up on the backup",
        Duration::from_secs(10),
        || rig.netbuf()["protected"] == false,
    );
    signal(&p.backup, libc::SIGCONT);
    exits_ok(&mut p.backup, Duration::from_secs(15), &p.blog);
    assert!(
        !lines(&p.blog).iter().any(|l| l.starts_with("unpause")),
        "{:?}",
        lines(&p.blog)
    );
    assert!(stdout_of(&mut p.backup).is_empty());
    signal(&p.primary, libc::SIGTERM);
    exits_ok(&mut p.primary, Duration::from_secs(10), &p.plog);
    check_primary_log(&p.plog, 5, true);

    // 5. Planned stop: SIGTERM to the primary; the backup stands down without a failover.
    let mut p = rig.pair("planned-stop", "15");
    signal(&p.primary, libc::SIGTERM);
    exits_ok(&mut p.primary, Duration::from_secs(10), &p.plog);
    exits_ok(&mut p.backup, Duration::from_secs(10), &p.blog);
    assert!(
        !lines(&p.blog).iter().any(|l| l.starts_with("unpause")),
        "{:?}",
        lines(&p.blog)
    );
    check_primary_log(&p.plog, 5, true);

    // 6. Planned switch-over with `remus failover`: the backup resumes from its restore
    //    point; the primary hears it and stops its copy.
    let mut p = rig.pair("switch-over", "17");
    let o = Command::new(bin("remus"))
        .args(["failover", "--checkpointd", &p.bctl.to_string_lossy()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_failover(&mut p, "17");
    let st = exits_within(&mut p.primary, Duration::from_secs(15));
    assert_eq!(st.code(), Some(9), "{st}");
    let _ = std::fs::remove_dir_all(&rig.dir);
}

/// A TCP relay to `to` that can be cut: from then on it swallows everything in both
/// directions, with the connections left open (a partitioned network, not a closed socket).
fn cuttable_relay(to: String) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let c = cut.clone();
    std::thread::spawn(move || {
        for a in l.incoming().flatten() {
            let Ok(b) = TcpStream::connect(&to) else {
                return;
            };
            for (from, into) in [(&a, &b), (&b, &a)] {
                let (mut from, mut into, cut) = (
                    from.try_clone().unwrap(),
                    into.try_clone().unwrap(),
                    c.clone(),
                );
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if !cut.load(Ordering::Relaxed) && into.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, cut)
}

#[test]
fn xen_driver_fences_through_the_etcd_witness() {
    require_root();
    let mut rig = Rig::new();
    let (_etcd, port) = remus_tests::etcd::loopback(&rig.dir);
    until("etcd to listen", Duration::from_secs(20), || {
        listening(port)
    });
    rig.witness = format!("http://127.0.0.1:{port}");

    // 1. Only the replication link is cut (both sides alive, each hears silence): the primary
    //    wins the generation first and runs on unprotected; the backup loses it, resumes
    //    nothing, and ends fenced (exit 9).
    let mut cut = None;
    let mut p = rig.pair_via("link-cut", "21", |backup| {
        let (addr, c) = cuttable_relay(backup.to_string());
        cut = Some(c);
        addr
    });
    cut.unwrap().store(true, Ordering::Relaxed);
    let st = exits_within(&mut p.backup, Duration::from_secs(20));
    assert_eq!(st.code(), Some(9), "{st}");
    assert!(
        !lines(&p.blog).iter().any(|l| l.starts_with("unpause")),
        "a fenced backup resumed the domain: {:?}",
        lines(&p.blog)
    );
    until("the primary to run on", Duration::from_secs(10), || {
        rig.netbuf()["protected"] == false
    });
    let ps = status(&p.pctl);
    assert_eq!(ps["phase"], "unprotected", "{ps}");
    assert!(
        p.primary.0.try_wait().unwrap().is_none(),
        "the winner runs on"
    );
    signal(&p.primary, libc::SIGTERM);
    exits_ok(&mut p.primary, Duration::from_secs(10), &p.plog);
    check_primary_log(&p.plog, 5, true);

    // 2. The primary freezes: the backup wins the next generation and resumes the domain; the
    //    thawed primary stops its copy (exit 9).
    let mut p = rig.pair("witness-frozen-primary", "23");
    signal(&p.primary, libc::SIGSTOP);
    check_failover(&mut p, "23");
    signal(&p.primary, libc::SIGCONT);
    let st = exits_within(&mut p.primary, Duration::from_secs(15));
    assert_eq!(st.code(), Some(9), "{st}");
    assert!(lines(&p.plog).iter().any(|l| l == "pause 23"));
    let _ = std::fs::remove_dir_all(&rig.dir);
}
