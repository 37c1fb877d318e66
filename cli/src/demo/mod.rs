//! `remus demo`: the whole story on one machine. Two hosts, a client and a LAN as network
//! namespaces; a guest under QEMU (Debian's kernel, a busybox initramfs) running a TCP counter
//! service and a disk writer; `remus receive` on the backup and `remus protect` on the primary;
//! a client holding one TCP connection; the primary host crashes at a random moment; the
//! backup takes over. Each round is judged from its evidence (see `verdict`), and everything
//! the demo created is removed when it ends, also when interrupted.

mod cadence;
pub mod client;
mod cycles;
mod pair;
use pair::Pair;
mod host;
pub mod topology;
pub mod verdict;
pub mod witness;

use crate::preflight;
use crate::protect::say;
use client::Client;
pub use host::HostSetup;
use remus_proto::exit;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use topology::Topology;

/// What `remus receive` and `remus protect` log once ready.
const READY_RECEIVE: &str = "waiting for the primary";
const READY_PROTECT: &str = "PROTECTED";

const IMAGE_SCRIPT: &str = include_str!("../../../scripts/guest-image.sh");
const GUEST_SCRIPT: &str = include_str!("../../guest/service.sh");

#[derive(clap::Args, Clone)]
pub struct DemoArgs {
    /// Crash-and-failover rounds, each on a fresh pair of hosts.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Seed for the crash moments (printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The crash comes at a random moment between these two delays after the client connects.
    #[arg(long, default_value_t = 2000)]
    pub crash_min_ms: u64,
    /// The latest moment for the crash.
    #[arg(long, default_value_t = 6000)]
    pub crash_max_ms: u64,
    /// Milliseconds between checkpoints.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// The backup's failure-detection timeout.
    #[arg(long, default_value_t = 300)]
    pub peer_timeout_ms: u64,
    /// The guest's disk size.
    #[arg(long, default_value_t = 32)]
    pub disk_mib: u64,
    /// Print one JSON object per round on standard output (narration stays on standard error).
    #[arg(long)]
    pub json: bool,
    /// Keep each round's raw evidence here: replies.txt ("n written at_unix_ms" per reply),
    /// crash_unix_ms, the backup's disk image (disk.img) and its final status.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// Keep the work directory (logs of every daemon and both guests' consoles).
    #[arg(long)]
    pub keep: bool,
    /// Failovers in one round (at least 1). From 2 on, protection outlasts each failure: the
    /// crashed host comes back with its disk as the crash left it and runs `remus receive`, the
    /// new primary protects the running guest again (`remus protect --attach`, resyncing only
    /// what diverged), then it crashes in turn and the VM returns. The client keeps its one
    /// connection throughout; after each resync the two images are compared at a quiesced
    /// checkpoint.
    #[arg(long, default_value_t = 1)]
    pub cycles: u32,
    /// With --cycles 2 or more: the last move is a planned switch-over back (`remus
    /// failover` on the re-protected backup) instead of a crash.
    #[arg(long)]
    pub failback: bool,
    /// Run without the witness (witness = "none": no fencing), e.g. to compare failover
    /// times; by default an etcd in a witness namespace fences the hosts.
    #[arg(long)]
    pub no_witness: bool,
}

/// What the demo made outside its namespaces; removed on drop.
struct Scratch {
    dir: PathBuf,
    shm: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for f in &self.shm {
            let _ = std::fs::remove_file(f);
        }
        if self.keep {
            eprintln!("demo: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child that is killed (with its process group) when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for our own child.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

struct Demo {
    args: DemoArgs,
    t0: Instant,
    stop: Arc<AtomicBool>,
    remus: PathBuf,
    image: PathBuf,
    scratch: Scratch,
}

type Step<T = ()> = Result<T, String>;

pub fn run(args: DemoArgs) -> i32 {
    if let Err(p) = preflight::require_root("the demo's hosts") {
        eprintln!("remus demo: {}", p.message);
        return p.code;
    }
    if args.rounds == 0
        || args.cycles == 0
        || args.crash_min_ms > args.crash_max_ms
        || args.disk_mib == 0
    {
        eprintln!(
            "remus demo: --rounds, --cycles and --disk-mib at least 1, --crash-min-ms ≤ --crash-max-ms"
        );
        return exit::USAGE;
    }
    for (prog, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("cpio", "cpio"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
    ] {
        if args.no_witness && prog.starts_with("etcd") {
            continue;
        }
        if let Err(p) = preflight::find_program(prog, pkg) {
            eprintln!("remus demo: {}", p.message);
            return p.code;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let remus = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("remus demo: where am I? {e}");
            return exit::FAILURE;
        }
    };
    let dir = std::env::temp_dir().join(format!("remus-demo-{}", std::process::id()));
    let scratch = Scratch {
        dir: dir.clone(),
        shm: Vec::new(),
        keep: args.keep,
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("remus demo: {}: {e}", dir.display());
        return exit::for_io_error(&e);
    }
    let mut demo = Demo {
        image: dir.join("guest"),
        args,
        t0: Instant::now(),
        stop,
        remus,
        scratch,
    };
    let seed = demo
        .args
        .seed
        .unwrap_or_else(|| client::unix_ms() ^ u64::from(std::process::id()) << 20);
    let mut rng = XorShift(seed.max(1));
    say(
        demo.t0,
        &format!("remus demo: {} round(s), seed {seed}", demo.args.rounds),
    );
    let code = match demo.build_guest() {
        Err(e) => {
            eprintln!("remus demo: {e}");
            exit::FAILURE
        }
        Ok(()) => {
            let mut failed = 0;
            for round in 1..=demo.args.rounds {
                let span = demo.args.crash_max_ms - demo.args.crash_min_ms + 1;
                let crash_after = demo.args.crash_min_ms + rng.next() % span;
                match demo.round(round, crash_after) {
                    Ok(true) => {}
                    Ok(false) => failed += 1,
                    Err(e) => {
                        eprintln!("remus demo: round {round}: {e}");
                        failed += 1;
                        if demo.interrupted() {
                            break;
                        }
                    }
                }
            }
            if failed == 0 {
                exit::OK
            } else {
                exit::FAILURE
            }
        }
    };
    if demo.interrupted() {
        say(
            demo.t0,
            "interrupted: everything the demo made is being removed",
        );
    }
    code
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Why `child` is no longer running, with its log, if it is not.
fn ended(child: &mut Owned, what: &str, log: &Path) -> Option<String> {
    child
        .0
        .try_wait()
        .ok()
        .flatten()
        .map(|s| format!("{what} exited ({s}):\n{}", read(log)))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Demo {
    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits for `cond`, failing on interruption, timeout, or `dead` returning a reason.
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> bool,
        mut dead: impl FnMut() -> Option<String>,
    ) -> Step {
        let t = Instant::now();
        while !cond() {
            if self.interrupted() {
                return Err("interrupted".into());
            }
            if let Some(why) = dead() {
                return Err(format!("{what}: {why}"));
            }
            if t.elapsed() > timeout {
                return Err(format!("{what}: not after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn build_guest(&self) -> Step {
        say(self.t0, "guest: Debian's kernel and a busybox initramfs; a TCP counter service and a disk writer");
        let dir = &self.scratch.dir;
        std::fs::write(dir.join("guest-image.sh"), IMAGE_SCRIPT).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("service.sh"), GUEST_SCRIPT).map_err(|e| e.to_string())?;
        let mut child = Owned(
            Command::new("bash")
                .arg(dir.join("guest-image.sh"))
                .arg(&self.image)
                .arg("--run")
                .arg(dir.join("service.sh"))
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(dir.join("guest-image.log"))
                        .map_err(|e| e.to_string())?,
                )
                .process_group(0)
                .spawn()
                .map_err(|e| format!("bash: {e}"))?,
        );
        let mut status = None;
        self.wait(
            "building the guest image",
            Duration::from_secs(120),
            || {
                status = child.0.try_wait().ok().flatten();
                status.is_some()
            },
            || None,
        )?;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!(
                "building the guest image failed ({s}): {} (make setup installs what it needs)",
                read(&dir.join("guest-image.log")).trim()
            )),
            None => Err("building the guest image".into()),
        }
    }

    /// Says what checkpoint rate and pause the primary achieved while the client talked to
    /// the guest, next to the target, and plainly when it fell short.
    fn report_cadence(&self, achieved: Option<&cadence::Achieved>, target: f64, window_ms: u64) {
        match achieved {
            None => say(self.t0, &format!(
                "BELOW TARGET: checkpointd logged no checkpoint in the {window_ms} ms the client talked to the guest (target {target:.0}/s)"
            )),
            Some(a) => {
                say(self.t0, &format!(
                    "checkpoints while the client talked: {:.1}/s achieved (target {target:.0}/s, one every {} ms); pause p50 {:.1} ms, p99 {:.1} ms ({} checkpoints in {:.1} s)",
                    a.per_second, self.args.interval_ms, a.pause_p50_ms, a.pause_p99_ms, a.checkpoints, window_ms as f64 / 1000.0
                ));
                if !a.meets(target) {
                    say(self.t0, &format!(
                        "BELOW TARGET: only {:.0} % of the promised {target:.0} checkpoints a second (under {:.0} %): output waits longer than promised, and a failover resumes from an older checkpoint",
                        100.0 * a.per_second / target, 100.0 * cadence::MIN_SHARE
                    ));
                }
            }
        }
    }

    /// One round; `Ok(false)` when a promise was broken.
    fn round(&mut self, round: u32, crash_after_ms: u64) -> Step<bool> {
        if self.args.cycles > 1 {
            return self.cycles(round, crash_after_ms);
        }
        let Pair {
            rdir,
            topo,
            etcd,
            mut receive,
            mut protect,
            back_cfg,
            prim_cfg,
            ..
        } = self.start_pair(round)?;
        let (back_log, prim_log) = (
            back_cfg.with_extension("log"),
            prim_cfg.with_extension("log"),
        );
        let (cl, connected_ms) = self.connect(&topo)?;
        say(self.t0, &format!("client: one TCP connection to {}, a request every 50 ms; the crash comes in {crash_after_ms} ms", topology::GUEST_ADDR));
        self.pause_for(crash_after_ms)?;
        if let Ok(Some(st)) = protect.0.try_wait() {
            let log = read(&prim_log);
            let tail: Vec<&str> = log.lines().rev().take(6).collect();
            // Exit 9: the backup took over from this live primary (and won the generation).
            let what = if st.code() == Some(exit::FENCED) {
                "FALSE TAKEOVER: the backup took over from a live primary, which was fenced"
            } else {
                "remus protect ended before the crash"
            };
            return Err(format!(
                "{what} ({st}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        // How jittery the primary's heartbeats were at the backup until now, and the silence
        // that would have made it suspect the primary (adaptive): the margin against a false
        // takeover.
        let before_crash =
            crate::status::ask_json(&rdir.join("backup/checkpointd.sock"), "status json")
                .unwrap_or_default();
        let crash_ms = client::unix_ms();
        let killed = topo.crash("prim");
        let target = 1000.0 / self.args.interval_ms as f64;
        let achieved = cadence::achieved_in(
            &rdir.join("primary/checkpoints.jsonl"),
            connected_ms,
            crash_ms,
        );
        self.report_cadence(achieved.as_ref(), target, crash_ms - connected_ms);
        if let Some(l) = read(&prim_log)
            .lines()
            .find(|l| l.contains("PROTECTION LOST"))
        {
            return Err(format!(
                "FALSE PROTECTION LOSS: protection was lost before the crash, so nothing could take over: {l}"
            ));
        }
        let before = cl.snapshot().len();
        say(self.t0, &format!("CRASH: the primary host dies ({killed} processes frozen and SIGKILLed) after {before} replies"));
        let back_sock = rdir.join("backup/checkpointd.sock");
        self.wait(
            "failover",
            Duration::from_secs(30),
            || read(&back_log).contains("FAILOVER"),
            || ended(&mut receive, "remus receive", &back_log),
        )?;
        let st = crate::status::ask_json(&back_sock, "status json").unwrap_or_default();
        let dec = st["failover_decided_unix_ms"].as_u64().unwrap_or(0);
        let res = st["restored_unix_ms"].as_u64().unwrap_or(0);
        say(
            self.t0,
            &format!(
                "the backup took over from checkpoint {}: detection {} ms, restore {} ms",
                st["committed_through"],
                dec.saturating_sub(crash_ms),
                res.saturating_sub(dec)
            ),
        );
        self.replies_after_failover(&cl, before)?;
        let (replies, ended) = cl.finish();
        // The backup side ends (its guest too), so its disk can be read whole.
        // SAFETY: SIGTERM to our own child, remus receive.
        unsafe { libc::kill(receive.0.id() as i32, libc::SIGTERM) };
        let _ = receive.0.wait();
        let disk =
            std::fs::read(rdir.join("backup.img")).map_err(|e| format!("backup disk: {e}"))?;
        let raw: Vec<(u64, i64, u64)> = replies
            .iter()
            .map(|r| (r.n, r.written, r.at_unix_ms))
            .collect();
        let mut j = verdict::judge_replies(&raw, crash_ms);
        if let client::Ended::Broken(why) = &ended {
            j.problems.push(format!("the connection broke: {why}"));
        }
        let k = verdict::judge_disk(&mut j, &disk);
        if let Some(ev) = &self.args.evidence {
            let d = ev.join(format!("round-{round}"));
            let text: String = raw
                .iter()
                .map(|(n, w, a)| format!("{n} {w} {a}\n"))
                .collect();
            std::fs::create_dir_all(&d)
                .and_then(|_| std::fs::write(d.join("replies.txt"), text))
                .and_then(|_| std::fs::write(d.join("crash_unix_ms"), crash_ms.to_string()))
                .and_then(|_| std::fs::write(d.join("disk.img"), &disk))
                .and_then(|_| std::fs::write(d.join("backup-status.json"), st.to_string()))
                .map_err(|e| format!("evidence: {e}"))?;
        }
        // The generation's history: created by the primary, won by the backup at takeover.
        let generations = match &etcd {
            Some(e) => {
                let (h, problem) = e.judge("demo", "backup")?;
                j.problems.extend(problem);
                say(
                    self.t0,
                    &format!(
                        "witness: the generation went through {} revisions; now {}",
                        h.len(),
                        h.last().map_or("-", |(_, v)| v.as_str())
                    ),
                );
                h
            }
            None => Vec::new(),
        };
        if let Some(ev) = &self.args.evidence {
            let text: String = generations
                .iter()
                .map(|(r, v)| format!("{r} {v}\n"))
                .collect();
            let d = ev.join(format!("round-{round}"));
            std::fs::create_dir_all(&d)
                .and_then(|_| std::fs::write(d.join("generation.txt"), text))
                .map_err(|e| format!("evidence: {e}"))?;
        }
        let first_after = j.outage_ms.map(|o| crash_ms + o);
        let activation = first_after.map(|f| f.saturating_sub(dec));
        say(
            self.t0,
            &format!(
                "client: {} replies on one connection, {} before the crash; longest gap {} ms",
                j.replies, j.before_crash, j.longest_gap_ms
            ),
        );
        say(self.t0, &format!(
            "disk: records 0..={} on the backup form a consistent prefix; the guest had reported up to {}",
            k.map_or(-1, |k| k as i64),
            j.max_written_reported
        ));
        let ok = j.problems.is_empty();
        for p in &j.problems {
            eprintln!("  BROKEN: {p}");
        }
        say(
            self.t0,
            &format!(
                "round {round}: {} — failover detection {} ms, activation {} ms, outage {} ms",
                if ok { "OK" } else { "FAILED" },
                dec.saturating_sub(crash_ms),
                activation.map_or("-".into(), |a| a.to_string()),
                j.outage_ms.map_or("-".into(), |o| o.to_string()),
            ),
        );
        if self.args.json {
            println!(
                "{}",
                json!({
                    "round": round, "ok": ok, "crash_after_ms": crash_after_ms,
                    "replies": j.replies, "before_crash": j.before_crash,
                    "detection_ms": dec.saturating_sub(crash_ms), "restore_ms": res.saturating_sub(dec),
                    "activation_ms": activation, "outage_ms": j.outage_ms, "longest_gap_ms": j.longest_gap_ms,
                    "disk_records": k.map(|k| k + 1).unwrap_or(0), "max_written_reported": j.max_written_reported,
                    "restored_from": st["committed_through"], "problems": j.problems,
                    "target_checkpoints_per_s": target,
                    "checkpoints_per_s": achieved.as_ref().map(|a| a.per_second),
                    "pause_p50_ms": achieved.as_ref().map(|a| a.pause_p50_ms),
                    "pause_p99_ms": achieved.as_ref().map(|a| a.pause_p99_ms),
                    "rate_ok": achieved.as_ref().is_some_and(|a| a.meets(target)),
                    "witness": etcd.is_some(), "generations": generations.len(),
                    "heartbeat_gap_max_ms": before_crash["max_heartbeat_gap_ms"],
                    "detection_timeout_ms": before_crash["detection_timeout_ms"],
                })
            );
        }
        drop(protect);
        drop(etcd);
        drop(topo);
        Ok(ok)
    }
}
