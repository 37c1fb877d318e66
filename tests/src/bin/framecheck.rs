//! framecheck: sends tagged test frames and reports tagged frames it captures.
//!
//!   framecheck send --if g0 --from guest arp:1 ns6:2 ping:3 syn:4 vlan:5
//!   framecheck capture --if c0 --from guest     # prints "ready", then "KIND TAG" per frame

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use netbuf::backend::packet::{PacketSocket, MAX_FRAME, VNET_HDR_LEN};
use remus_tests::frames::{build, classify, Kind, CLIENT_MAC, GUEST_MAC};
use std::io::Write;

#[derive(Parser)]
#[command(about = "Send and capture tagged test frames (remus test tool)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send frames, each given as KIND:TAG (kinds: arp ns6 ping syn vlan).
    Send {
        #[arg(long = "if")]
        ifname: String,
        /// Whose marker MAC to send from: guest or client.
        #[arg(long)]
        from: String,
        /// Delay between frames in microseconds.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        frames: Vec<String>,
    },
    /// Send 64-byte (or --size) frames as fast as possible for --seconds; print how many.
    Flood {
        #[arg(long = "if")]
        ifname: String,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Print "KIND TAG" for every tagged frame from --from that arrives on --if.
    Capture {
        #[arg(long = "if")]
        ifname: String,
        #[arg(long)]
        from: String,
    },
}

fn mac(who: &str) -> Result<[u8; 6]> {
    match who {
        "guest" => Ok(GUEST_MAC),
        "client" => Ok(CLIENT_MAC),
        _ => bail!("--from must be guest or client"),
    }
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Send {
            ifname,
            from,
            gap_us,
            frames,
        } => {
            let src = mac(&from)?;
            let s = PacketSocket::open(&ifname).with_context(|| format!("open {ifname}"))?;
            for spec in frames {
                let (k, t) = spec.split_once(':').context("frame spec is KIND:TAG")?;
                let kind = Kind::parse(k).with_context(|| format!("unknown kind {k}"))?;
                let tag: u16 = t.parse().context("tag is a u16")?;
                let mut f = vec![0u8; VNET_HDR_LEN];
                f.extend_from_slice(&build(kind, tag, src));
                s.send(&mut f)?;
                if gap_us > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(gap_us));
                }
            }
            Ok(())
        }
        Cmd::Flood {
            ifname,
            seconds,
            size,
        } => {
            let s = PacketSocket::open(&ifname).with_context(|| format!("open {ifname}"))?;
            let mut f = vec![0u8; VNET_HDR_LEN];
            f.extend_from_slice(&build(Kind::Ping, 0, GUEST_MAC));
            f.resize(VNET_HDR_LEN + size.max(42), 0);
            let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
            let mut sent = 0u64;
            while std::time::Instant::now() < end {
                for _ in 0..256 {
                    if s.send(&mut f).is_ok() {
                        sent += 1;
                    }
                }
            }
            println!("{sent}");
            Ok(())
        }
        Cmd::Capture { ifname, from } => {
            let src = mac(&from)?;
            let s = PacketSocket::open(&ifname).with_context(|| format!("open {ifname}"))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready")?;
            out.flush()?;
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                if let Some(n) = s.recv(&mut buf)? {
                    if let Some((k, t)) = classify(&buf[VNET_HDR_LEN..n], src) {
                        writeln!(out, "{} {}", k.name(), t)?;
                        out.flush()?;
                    }
                }
            }
        }
    }
}
