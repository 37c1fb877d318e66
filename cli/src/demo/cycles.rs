//! `remus demo --cycles N`: protection that outlasts the first failure.
//!
//! Each cycle crashes the host that runs the VM; the other takes over. Between cycles the
//! crashed host comes back with its disk image exactly as the crash left it (writes of epochs
//! that never committed included) and runs `remus receive`; the new primary protects the
//! running guest again with `remus protect --attach` (the VM never stops, the network is not
//! re-plumbed: its TAP has been behind a pass-through netbuf since receive started), and the
//! disk lineage decides what is resynced. Then the next crash sends the VM back.
//!
//! Judged after each failover, with the guest's disk writer parked (`hold`, so the disk holds
//! still while it is read): the client's one connection never broke, every reply continued
//! the counter, the new primary's disk is a consistent prefix covering every record reported.
//! After each re-protection, with the writer parked and a checkpoint committed after it, the
//! two images must be identical; the resync volume (bytes sent, and the lineage's plan) and the
//! time from `remus protect --attach` to PROTECTED are reported.

use super::*;

/// One of the two hosts: its namespace key in the topology, its name in the set-up files
/// (image, run directory), and its replication address.
#[derive(Clone, Copy)]
struct Host {
    ns: &'static str,
    name: &'static str,
    addr: &'static str,
}

const HOSTS: [Host; 2] = [
    Host {
        ns: "prim",
        name: "primary",
        addr: topology::PRIMARY_REPL,
    },
    Host {
        ns: "back",
        name: "backup",
        addr: topology::BACKUP_REPL,
    },
];

/// What one re-protection showed.
struct Reprotected {
    attach_ms: u64,
    resync_bytes: Option<u64>,
    disk_bytes: Option<u64>,
    plan: String,
    identical: Result<(), String>,
}

/// `a` and `b` byte for byte, or where they first differ (a sector number).
pub fn same_image(a: &[u8], b: &[u8]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("sizes differ: {} and {} bytes", a.len(), b.len()));
    }
    match a
        .chunks(verdict::SECTOR)
        .zip(b.chunks(verdict::SECTOR))
        .position(|(x, y)| x != y)
    {
        None => Ok(()),
        Some(i) => Err(format!("sector {i} differs")),
    }
}

impl Demo {
    pub(super) fn cycles(&mut self, round: u32, crash_after_ms: u64) -> Step<bool> {
        let Pair {
            prefix,
            rdir,
            topo,
            etcd,
            receive,
            protect,
            back_cfg,
            ..
        } = self.start_pair(round)?;
        let (cl, _) = self.connect(&topo)?;
        say(self.t0, &format!(
            "client: one TCP connection to {} for all {} failovers, a request every 50 ms; the first crash comes in {crash_after_ms} ms",
            topology::GUEST_ADDR, self.args.cycles
        ));
        // What runs on each host (dropping it kills it), and the log of the host that receives.
        let mut procs: [Vec<Owned>; 2] = [vec![protect], vec![receive]];
        let mut receiver_log = back_cfg.with_extension("log");
        let mut running = 0usize;
        let mut ok = true;
        for cycle in 1..=self.args.cycles {
            self.pause_for(crash_after_ms)?;
            let (dead, live) = (HOSTS[running], HOSTS[1 - running]);
            // The primary's supervisor must still run: if it ended, the backup took over (or
            // protection ended) before the move, and this cycle would prove nothing.
            if let Some(p) = procs[running].last_mut() {
                if let Ok(Some(st)) = p.0.try_wait() {
                    let log = read(&rdir.join(format!(
                        "{}{}.log",
                        dead.name,
                        if cycle == 1 {
                            String::new()
                        } else {
                            format!("-c{}", cycle - 1)
                        }
                    )));
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    return Err(format!(
                        "{} before cycle {cycle}: host {}'s remus protect ended ({st}):\n{}",
                        if st.code() == Some(exit::FENCED) {
                            "FALSE TAKEOVER"
                        } else {
                            "PROTECTION ENDED"
                        },
                        dead.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
            }
            let crash_ms = client::unix_ms();
            let planned = self.args.failback && cycle == self.args.cycles && cycle > 1;
            let before = cl.snapshot().len();
            if planned {
                self.fail_back(&topo, &rdir, live)?;
                say(self.t0, &format!(
                    "cycle {cycle}: FAILBACK (planned): remus failover on host {} after {before} replies",
                    live.name
                ));
            } else {
                let killed = topo.crash(dead.ns);
                procs[running].clear();
                say(self.t0, &format!(
                    "cycle {cycle}: CRASH of host {} ({killed} processes frozen and SIGKILLed) after {before} replies",
                    dead.name
                ));
            }
            let rx = procs[1 - running]
                .last_mut()
                .ok_or("no remus receive on the surviving host")?;
            self.wait(
                "failover",
                Duration::from_secs(30),
                || read(&receiver_log).contains("FAILOVER"),
                || ended(rx, "remus receive", &receiver_log),
            )?;
            let st = crate::status::ask_json(
                &rdir.join(live.name).join("checkpointd.sock"),
                "status json",
            )
            .unwrap_or_default();
            let dec = st["failover_decided_unix_ms"].as_u64().unwrap_or(0);
            say(
                self.t0,
                &format!(
                    "host {} took over from checkpoint {}: detection {} ms, restore {} ms",
                    live.name,
                    st["committed_through"],
                    dec.saturating_sub(crash_ms),
                    st["restored_unix_ms"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(dec)
                ),
            );
            if planned {
                // The old primary's attached run hears the takeover, is fenced (exit 9) and
                // kills its copy of the guest; its receive then ends with that guest.
                let at = procs[running]
                    .last_mut()
                    .ok_or("no remus protect --attach on the old primary")?;
                let mut code = None;
                self.wait(
                    "the old primary standing down",
                    Duration::from_secs(30),
                    || {
                        code = at.0.try_wait().ok().flatten().map(|s| s.code());
                        code.is_some()
                    },
                    || None,
                )?;
                if code != Some(Some(exit::FENCED)) {
                    return Err(format!(
                        "after the failback the old primary's remus protect --attach ended with {code:?}, not FENCED (9)"
                    ));
                }
                procs[running].clear();
                say(self.t0, &format!(
                    "host {} stood down: its protect --attach was fenced (exit 9) and killed its copy of the guest",
                    dead.name
                ));
            }
            self.replies_after_failover(&cl, before)?;
            // The writer parked: the disk holds still while it is judged.
            cl.send_line("hold", Duration::from_secs(30))?;
            let disk = std::fs::read(rdir.join(format!("{}.img", live.name)))
                .map_err(|e| format!("{}'s disk: {e}", live.name))?;
            let raw: Vec<(u64, i64, u64)> = cl
                .snapshot()
                .iter()
                .map(|r| (r.n, r.written, r.at_unix_ms))
                .collect();
            let mut j = verdict::judge_replies(&raw, crash_ms);
            let k = verdict::judge_disk(&mut j, &disk);
            let mut history = Vec::new();
            if let Some(e) = &etcd {
                let (h, problem) = e.judge("demo", "backup")?;
                j.problems.extend(problem);
                history = h;
            }
            let text: String = raw
                .iter()
                .map(|(n, w, a)| format!("{n} {w} {a}\n"))
                .collect();
            let generations: String = history.iter().map(|(r, v)| format!("{r} {v}\n")).collect();
            self.keep(
                round,
                &format!("cycle-{cycle}"),
                &[
                    ("replies.txt", text.as_bytes()),
                    ("crash_unix_ms", crash_ms.to_string().as_bytes()),
                    ("disk.img", &disk),
                    ("generation.txt", generations.as_bytes()),
                ],
            )?;
            cl.send_line("go", Duration::from_secs(30))?;
            running = 1 - running;
            let reprotected = if cycle < self.args.cycles {
                Some(self.reprotect(
                    (round, cycle),
                    &prefix,
                    &rdir,
                    &topo,
                    &cl,
                    running,
                    &mut procs,
                )?)
            } else {
                None
            };
            if let Some(r) = &reprotected {
                if let Err(e) = &r.identical {
                    j.problems
                        .push(format!("after the resync the images differ: {e}"));
                }
                receiver_log = rdir.join(format!("{}-c{cycle}.log", HOSTS[1 - running].name));
            }
            for p in &j.problems {
                eprintln!("  BROKEN: {p}");
            }
            let cycle_ok = j.problems.is_empty();
            ok &= cycle_ok;
            say(self.t0, &format!(
                "cycle {cycle}: {} — the VM now runs on host {}; outage {} ms; {} replies on one connection; records 0..={} on its disk form a consistent prefix (the guest had reported up to {})",
                if cycle_ok { "OK" } else { "FAILED" },
                live.name,
                j.outage_ms.map_or("-".into(), |o| o.to_string()),
                j.replies,
                k.map_or(-1, |k| k as i64),
                j.max_written_reported
            ));
            if self.args.json {
                println!(
                    "{}",
                    json!({
                        "round": round, "cycle": cycle, "ok": cycle_ok,
                        "from": dead.name, "runs_on": live.name, "planned": planned,
                        "detection_ms": dec.saturating_sub(crash_ms),
                        "outage_ms": j.outage_ms, "replies": j.replies,
                        "disk_records": k.map(|k| k + 1).unwrap_or(0),
                        "max_written_reported": j.max_written_reported,
                        "restored_from": st["committed_through"], "problems": j.problems,
                        "reprotect": reprotected.as_ref().map(|r| json!({
                            "attach_to_protected_ms": r.attach_ms,
                            "resync_bytes": r.resync_bytes, "disk_bytes": r.disk_bytes,
                            "plan": r.plan, "images_identical": r.identical.is_ok(),
                        })),
                    })
                );
            }
        }
        let (_, end) = cl.finish();
        if let client::Ended::Broken(why) = end {
            eprintln!("  BROKEN: the connection broke: {why}");
            ok = false;
        }
        drop(procs);
        drop(etcd);
        drop(topo);
        Ok(ok)
    }

    /// With --evidence: writes `files` into EVIDENCE/round-R/SUB.
    fn keep(&self, round: u32, sub: &str, files: &[(&str, &[u8])]) -> Step {
        let Some(ev) = &self.args.evidence else {
            return Ok(());
        };
        let d = ev.join(format!("round-{round}")).join(sub);
        std::fs::create_dir_all(&d).map_err(|e| format!("evidence {}: {e}", d.display()))?;
        for (name, bytes) in files {
            std::fs::write(d.join(name), bytes)
                .map_err(|e| format!("evidence {}/{name}: {e}", d.display()))?;
        }
        Ok(())
    }

    /// The planned switch-over: `remus failover` on the host that receives.
    fn fail_back(&self, topo: &Topology, rdir: &Path, to: Host) -> Step {
        let o = topo
            .command(to.ns, &self.remus.display().to_string())
            .arg("failover")
            .arg("--dir")
            .arg(rdir.join(to.name))
            .output()
            .map_err(|e| format!("remus failover: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "remus failover on host {} failed ({}): {}",
                to.name,
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(())
    }

    /// The crashed host `HOSTS[1 - primary]` comes back with its image as the crash left it
    /// and receives; the host that runs the VM protects it again with `--attach`; then, with
    /// the writer parked and a checkpoint committed after it, the images are compared.
    #[allow(clippy::too_many_arguments)]
    fn reprotect(
        &mut self,
        (round, cycle): (u32, u32),
        prefix: &str,
        rdir: &Path,
        topo: &Topology,
        cl: &Client,
        primary: usize,
        procs: &mut [Vec<Owned>; 2],
    ) -> Step<Reprotected> {
        let (back, prim) = (HOSTS[1 - primary], HOSTS[primary]);
        if !topo.wait_empty(back.ns, Duration::from_secs(10)) {
            return Err(format!(
                "host {} still runs processes after its crash",
                back.name
            ));
        }
        let stem = |h: Host| format!("{}-c{cycle}", h.name);
        let rx_cfg = self.host_config(round, back.name, prefix, Some((&stem(back), back.addr)))?;
        let at_cfg = self.host_config(round, prim.name, prefix, Some((&stem(prim), back.addr)))?;
        let rx = self.start_until(topo, back.ns, &["receive"], &rx_cfg, READY_RECEIVE)?;
        say(
            self.t0,
            &format!(
                "host {} is back, its disk as the crash left it: remus receive",
                back.name
            ),
        );
        let t = Instant::now();
        let at = self.start_until(
            topo,
            prim.ns,
            &["protect", "--attach"],
            &at_cfg,
            READY_PROTECT,
        )?;
        let attach_ms = t.elapsed().as_millis() as u64;
        procs[1 - primary].push(rx);
        procs[primary].push(at);
        let run = rdir.join(prim.name);
        let d = crate::status::ask_json(&run.join("diskrep.sock"), "status json")
            .map(crate::status::serving)
            .unwrap_or_default();
        let (sent, size) = (d["resync"]["bytes_sent"].as_u64(), d["size"].as_u64());
        let plan = d["lineage"]["plan"].as_str().unwrap_or("-").to_string();
        say(self.t0, &format!(
            "PROTECTED again after {attach_ms} ms (remus protect --attach on host {}, the VM never stopped); disk resync sent {} of {} bytes ({}); {plan}",
            prim.name,
            sent.map_or("?".into(), |b| b.to_string()),
            size.map_or("?".into(), |b| b.to_string()),
            match (sent, size) {
                (Some(s), Some(z)) if z > 0 => format!("{:.2} %", 100.0 * s as f64 / z as f64),
                _ => "-".into(),
            }
        ));
        // A quiesced checkpoint: the writer parked, then a checkpoint opened after that
        // committed on the backup; from then on neither image changes.
        cl.send_line("hold", Duration::from_secs(30))?;
        let cp = run.join("checkpointd-primary.sock");
        let open = crate::status::ask_json(&cp, "status json")
            .ok()
            .and_then(|c| c["open_epoch"].as_u64())
            .ok_or("the attached checkpointd does not answer")?;
        self.wait(
            "a checkpoint after the writer parked",
            Duration::from_secs(30),
            || {
                crate::status::ask_json(&cp, "status json")
                    .ok()
                    .and_then(|c| c["committed_through"].as_u64())
                    .is_some_and(|c| c >= open)
            },
            || None,
        )?;
        let img = |h: Host| {
            std::fs::read(rdir.join(format!("{}.img", h.name)))
                .map_err(|e| format!("{}'s disk: {e}", h.name))
        };
        let (a, b) = (img(prim)?, img(back)?);
        let identical = same_image(&a, &b);
        self.keep(
            round,
            &format!("cycle-{cycle}/resync"),
            &[("primary.img", &a), ("backup.img", &b)],
        )?;
        say(
            self.t0,
            &match &identical {
                Ok(()) => format!(
                    "images identical at checkpoint {open} (writer parked): {} and {}",
                    prim.name, back.name
                ),
                Err(e) => format!("IMAGES DIFFER at checkpoint {open} (writer parked): {e}"),
            },
        );
        cl.send_line("go", Duration::from_secs(30))?;
        Ok(Reprotected {
            attach_ms,
            resync_bytes: sent,
            disk_bytes: size,
            plan,
            identical,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::same_image;

    #[test]
    fn images_compare_by_sector() {
        let a = vec![0u8; 2048];
        let mut b = a.clone();
        assert!(same_image(&a, &b).is_ok());
        b[1500] = 1;
        assert_eq!(same_image(&a, &b).unwrap_err(), "sector 2 differs");
        assert!(same_image(&a, &b[..1024]).is_err());
    }
}
