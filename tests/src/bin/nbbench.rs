//! nbbench: the parts of netbuf's benchmark that need one process across namespaces.
//!
//!   nbbench epochs --control SOCK --interval-ms 25 --seconds 10
//!       barrier N+1 / release N every interval over one control connection; prints epochs done.
//!   nbbench latency --control SOCK --guest-ns G --guest-if g0 --client-ns C --client-if c0
//!       per iteration: a frame is held in epoch N, then `release N`; measures the time from
//!       sending the release command to the frame arriving on the client's interface.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use netbuf::backend::packet::{PacketSocket, MAX_FRAME, VNET_HDR_LEN};
use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use remus_tests::frames::{build, classify, Kind, GUEST_MAC};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "netbuf benchmark helper (remus)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Epochs {
        #[arg(long)]
        control: PathBuf,
        #[arg(long, default_value_t = 25)]
        interval_ms: u64,
        #[arg(long)]
        seconds: f64,
    },
    /// diskrep: `barrier N+1` on the primary then `commit N` on the backup, every interval.
    DiskEpochs {
        #[arg(long)]
        primary: PathBuf,
        #[arg(long)]
        backup: PathBuf,
        #[arg(long, default_value_t = 25)]
        interval_ms: u64,
        #[arg(long)]
        seconds: f64,
    },
    Latency {
        #[arg(long)]
        control: PathBuf,
        #[arg(long)]
        guest_ns: String,
        #[arg(long)]
        guest_if: String,
        #[arg(long)]
        client_ns: String,
        #[arg(long)]
        client_if: String,
        #[arg(long, default_value_t = 2000)]
        iters: u32,
    },
}

/// The first epoch number this run may use: one past the daemon's last barrier.
fn first_epoch(c: &mut ControlClient) -> Result<u64> {
    let Reply::Ok(j) = c.request("stats json")? else {
        bail!("stats refused");
    };
    let v: serde_json::Value = serde_json::from_str(&j)?;
    Ok(v["last_barrier"].as_u64().map_or(1, |e| e + 1))
}

/// Waits until netbuf holds at least one frame.
fn wait_held(c: &mut ControlClient) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let Reply::Ok(kv) = c.request("stats")? else {
            bail!("stats refused");
        };
        if !kv.contains(" held_frames=0 ") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the test frame never reached netbuf");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn req(c: &mut ControlClient, line: &str) -> Result<()> {
    match c.request(line)? {
        Reply::Ok(_) => Ok(()),
        Reply::Err(e) => bail!("{line}: {} {}", e.code, e.message),
    }
}

/// Opens a packet socket inside another network namespace (it stays there).
fn socket_in(ns: &str, ifname: &str) -> Result<PacketSocket> {
    let ifname = ifname.to_string();
    remus_tests::netns::run_in(ns, move || PacketSocket::open(&ifname))?.map_err(Into::into)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Epochs {
            control,
            interval_ms,
            seconds,
        } => {
            let mut c = ControlClient::connect(&control)?;
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let first = first_epoch(&mut c)?;
            let mut e = first;
            req(&mut c, &format!("barrier {e}"))?;
            let mut next = Instant::now();
            while Instant::now() < end {
                next += Duration::from_millis(interval_ms);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                req(&mut c, &format!("barrier {}", e + 1))?;
                req(&mut c, &format!("release {e}"))?;
                e += 1;
            }
            req(&mut c, "release-all")?;
            println!("{}", e - first);
            Ok(())
        }
        Cmd::DiskEpochs {
            primary,
            backup,
            interval_ms,
            seconds,
        } => {
            let mut p = ControlClient::connect(&primary)?;
            let mut b = ControlClient::connect(&backup)?;
            b.set_timeout(Some(Duration::from_secs(30)))?;
            let Reply::Ok(j) = p.request("status json")? else {
                bail!("status refused");
            };
            let v: serde_json::Value = serde_json::from_str(&j)?;
            let mut e = v["epoch"].as_u64().unwrap_or(0);
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut next = Instant::now();
            let (mut n, mut failed) = (0u64, 0u64);
            while Instant::now() < end {
                next += Duration::from_millis(interval_ms);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                req(&mut p, &format!("barrier {}", e + 1))?;
                // A commit can fail when the primary dropped protection (backlog over its cap
                // for too long): count it and go on, as checkpointd would after re-protecting.
                match req(&mut b, &format!("commit {e}")) {
                    Ok(()) => n += 1,
                    Err(_) => failed += 1,
                }
                e += 1;
            }
            println!("{n} committed, {failed} failed");
            Ok(())
        }
        Cmd::Latency {
            control,
            guest_ns,
            guest_if,
            client_ns,
            client_if,
            iters,
        } => {
            let tx = socket_in(&guest_ns, &guest_if)?;
            let rx = socket_in(&client_ns, &client_if)?;
            let (arrived_tx, arrived) = mpsc::channel::<(u16, Instant)>();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    if let Ok(Some(n)) = rx.recv(&mut buf) {
                        let t = Instant::now();
                        if let Some((Kind::Ping, tag)) = classify(&buf[VNET_HDR_LEN..n], GUEST_MAC)
                        {
                            if arrived_tx.send((tag, t)).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            let mut c = ControlClient::connect(&control)?;
            let mut lat = Vec::with_capacity(iters as usize);
            let first = first_epoch(&mut c)?;
            req(&mut c, &format!("barrier {first}"))?;
            for e in first..first + u64::from(iters) {
                let tag = (e % 65536) as u16;
                let mut f = vec![0u8; VNET_HDR_LEN];
                f.extend_from_slice(&build(Kind::Ping, tag, GUEST_MAC));
                tx.send(&mut f)?;
                wait_held(&mut c)?; // netbuf has taken it into epoch e
                req(&mut c, &format!("barrier {}", e + 1))?;
                let t0 = Instant::now();
                req(&mut c, &format!("release {e}"))?;
                loop {
                    let (got, t) =
                        arrived
                            .recv_timeout(Duration::from_secs(2))
                            .with_context(|| {
                                format!(
                                    "released frame of epoch {e} never arrived (iteration {})",
                                    lat.len()
                                )
                            })?;
                    if got == tag {
                        lat.push(t.duration_since(t0));
                        break;
                    }
                }
            }
            req(&mut c, "release-all")?;
            lat.sort();
            let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
            println!(
                "{{\"iters\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
                lat.len(),
                p(0.5),
                p(0.99),
                p(1.0)
            );
            Ok(())
        }
    }
}
