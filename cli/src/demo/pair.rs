//! A demo round's set-up: each host's config, `remus` started on a host until it is ready,
//! the pair protected (receive, then protect), the client's connection, and the waits the
//! rounds and cycles share.

use super::*;

/// A round's set-up once the VM is protected (see `Demo::start_pair`).
pub(super) struct Pair {
    pub(super) prefix: String,
    pub(super) rdir: PathBuf,
    pub(super) topo: Topology,
    pub(super) etcd: Option<witness::Etcd>,
    pub(super) receive: Owned,
    pub(super) protect: Owned,
    pub(super) back_cfg: PathBuf,
    pub(super) prim_cfg: PathBuf,
}

impl Demo {
    /// Writes HOST's set-up for `round` and registers its RAM file for removal.
    pub(super) fn config(&mut self, round: u32, host: &str, prefix: &str) -> Step<PathBuf> {
        self.host_config(round, host, prefix, None)
    }

    /// As `config`, or with `turned = Some((stem, backup))` another config of the same host
    /// (image, RAM file, run directory) in DIR/STEM.toml naming `backup` as the receiving host.
    pub(super) fn host_config(
        &mut self,
        round: u32,
        host: &str,
        prefix: &str,
        turned: Option<(&str, &str)>,
    ) -> Step<PathBuf> {
        let dir = self.scratch.dir.join(format!("round-{round}"));
        let h = HostSetup {
            dir: &dir,
            host,
            prefix,
            image: &self.image,
            disk_mib: self.args.disk_mib,
            interval_ms: self.args.interval_ms,
            peer_timeout_ms: self.args.peer_timeout_ms,
            witness: !self.args.no_witness,
        };
        let path = match turned {
            None => h.write()?,
            Some((stem, backup)) => h.write_config(stem, backup)?,
        };
        self.scratch.shm.push(h.ram_file());
        Ok(path)
    }

    /// As `start`, then waits until its log shows `ready` (failing if it ends first).
    pub(super) fn start_until(
        &self,
        topo: &Topology,
        host: &str,
        args: &[&str],
        config: &Path,
        ready: &str,
    ) -> Step<Owned> {
        let mut c = self.start(topo, host, args, config)?;
        let log = config.with_extension("log");
        let what = format!("remus {}", args.join(" "));
        self.wait(
            &what,
            Duration::from_secs(240),
            || read(&log).contains(ready),
            || ended(&mut c, &what, &log),
        )?;
        Ok(c)
    }

    /// `remus ARGS... --config CONFIG` on `host`, logging to CONFIG with extension .log.
    pub(super) fn start(
        &self,
        topo: &Topology,
        host: &str,
        args: &[&str],
        config: &Path,
    ) -> Step<Owned> {
        let verb = args.join(" ");
        let log = config.with_extension("log");
        let c = topo
            .command(host, &self.remus.display().to_string())
            .args(args)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .map_err(|e| e.to_string())?,
            )
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start remus {verb}: {e}"))?;
        Ok(Owned(c))
    }

    /// A round's hosts, witness and the VM protected on them: `remus receive` on the backup,
    /// `remus protect` on the primary, PROTECTED.
    pub(super) fn start_pair(&mut self, round: u32) -> Step<Pair> {
        let prefix = format!("rd{}r{round}", std::process::id());
        let rdir = self.scratch.dir.join(format!("round-{round}"));
        std::fs::create_dir_all(&rdir).map_err(|e| e.to_string())?;
        say(self.t0, &format!("round {round}: hosts primary, backup, client and a LAN as network namespaces {prefix}-*"));
        let topo = Topology::create(&prefix)?;
        let etcd = if self.args.no_witness {
            say(
                self.t0,
                "no witness (--no-witness): a network partition would yield two copies",
            );
            None
        } else {
            let e = witness::Etcd::start(&topo, "wit", &rdir)?;
            say(
                self.t0,
                &format!(
                    "witness: etcd at {} in {} decides who may run the VM alone",
                    witness::endpoint(),
                    topo.ns("wit")
                ),
            );
            Some(e)
        };
        let back_cfg = self.config(round, "backup", &prefix)?;
        let prim_cfg = self.config(round, "primary", &prefix)?;
        let receive = self.start_until(&topo, "back", &["receive"], &back_cfg, READY_RECEIVE)?;
        say(
            self.t0,
            "backup: remus receive (diskrep, netbuf in pass-through, checkpointd) waits for the primary",
        );
        let started = Instant::now();
        say(
            self.t0,
            "primary: remus protect (diskrep, netbuf, the guest's QEMU, checkpointd)",
        );
        let protect = self.start_until(&topo, "prim", &["protect"], &prim_cfg, READY_PROTECT)?;
        say(self.t0, &format!(
            "PROTECTED after {:.1} s (whole disk and a first full memory checkpoint on the backup): a checkpoint every {} ms, output held until the backup has it",
            started.elapsed().as_secs_f64(),
            self.args.interval_ms
        ));
        Ok(Pair {
            prefix,
            rdir,
            topo,
            etcd,
            receive,
            protect,
            back_cfg,
            prim_cfg,
        })
    }

    /// The client's one connection to the guest's service (waits for the guest to boot).
    pub(super) fn connect(&self, topo: &Topology) -> Step<(Client, u64)> {
        let addr = topology::GUEST_ADDR.parse().map_err(|e| format!("{e}"))?;
        say(self.t0, "the guest boots under protection (TCG: some seconds); the client waits for its service");
        let cl = Client::start(&topo.ns("cli"), addr, Duration::from_secs(60))?;
        Ok((cl, client::unix_ms()))
    }

    /// Waits until the client has 20 replies more than `before` (the guest answers from the
    /// host that took over), failing if the connection breaks.
    pub(super) fn replies_after_failover(&self, cl: &Client, before: usize) -> Step {
        let want = before + 20;
        self.wait(
            "replies after the failover",
            Duration::from_secs(30),
            || cl.snapshot().len() >= want,
            || match cl.ended() {
                client::Ended::Broken(why) => Some(format!("the connection broke: {why}")),
                _ => None,
            },
        )
    }

    /// Lets the client talk to the guest for `ms`.
    pub(super) fn pause_for(&self, ms: u64) -> Step {
        let t = Instant::now();
        self.wait(
            "the client",
            Duration::from_millis(ms),
            || t.elapsed() >= Duration::from_millis(ms),
            || None,
        )
        .or_else(|e| {
            if e.contains("not after") {
                Ok(())
            } else {
                Err(e)
            }
        })
    }
}
