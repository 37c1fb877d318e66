//! ckstream: the checkpoint stream's throughput against a real `checkpointd backup`, from a
//! hand-driven primary (scripts/bench-auth.sh). Per checkpoint: every page of a RAM of
//! --mib MiB (each page different from its previous copy), the device state, END; then the
//! backup's ACK (it has staged, applied and acknowledged it). Prints
//! `MIB_PER_S CHECKPOINTS SECONDS`.
//!
//!   ckstream --addr 127.0.0.1:7791 --key-file k [--encrypt] --mib 256 --checkpoints 8
//!   ckstream --addr 127.0.0.1:7791 --insecure-no-auth --mib 256 --checkpoints 8

use anyhow::{bail, Context, Result};
use checkpointd::ram::PAGE;
use checkpointd::wire::{Hello, Msg, PAGES_PER_FRAME, VERSION};
use clap::Parser;
use remus_proto::auth::flags::AuthArgs;
use remus_proto::Epoch;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "checkpoint stream throughput against a checkpointd backup (remus)")]
struct Cli {
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    auth: AuthArgs,
    #[arg(long, default_value_t = 256)]
    mib: u64,
    #[arg(long, default_value_t = 8)]
    checkpoints: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let security = match cli.auth.security("ckstream") {
        Ok(s) => s,
        Err(code) => std::process::exit(code),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let link = loop {
        match checkpointd::link::connect(&cli.addr, &security, Duration::from_secs(10)) {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => return Err(e).context("connect"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    link.sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (mut w, mut r) = (link.writer, link.reader);
    let pages = cli.mib * (1 << 20) / PAGE as u64;
    Msg::Hello(Hello {
        version: VERSION,
        ram_size: pages * PAGE as u64,
        page_size: PAGE as u32,
        vm: "bench".into(),
        first_epoch: 0,
        driver: "qemu".into(),
        generation: None,
    })
    .write_to(&mut w)?;
    let send = |w: &mut dyn FnMut(&Msg) -> std::io::Result<()>, e: u64| -> Result<()> {
        w(&Msg::Begin(Epoch(e)))?;
        let mut idx = 0;
        while idx < pages {
            let n = (pages - idx).min(PAGES_PER_FRAME as u64);
            let batch = (idx..idx + n)
                .map(|i| (i, vec![(i as u8) ^ (e as u8); PAGE].into_boxed_slice()))
                .collect();
            w(&Msg::Pages(Epoch(e), batch))?;
            idx += n;
        }
        w(&Msg::Device(Epoch(e), vec![e as u8; 1024]))?;
        w(&Msg::End {
            epoch: Epoch(e),
            pages,
            device_bytes: 1024,
        })?;
        Ok(())
    };
    let mut put = |m: &Msg| m.write_to(&mut w).and_then(|_| w.flush());
    // The first checkpoint warms up (the backup creates its image); the rest are timed.
    let mut t0 = Instant::now();
    for e in 0..=cli.checkpoints {
        if e == 1 {
            t0 = Instant::now();
        }
        send(&mut put, e)?;
        loop {
            match Msg::read_from(&mut r)? {
                Some(Msg::Ack(a)) if a == Epoch(e) => break,
                Some(Msg::Ack(a)) => bail!("ack {a} while waiting for {e}"),
                Some(_) => continue,
                None => bail!("the backup closed the stream"),
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Msg::Stop.write_to(&mut w)?;
    w.flush()?;
    let mib = (cli.mib * cli.checkpoints) as f64;
    println!("{:.1} {} {:.3}", mib / secs, cli.checkpoints, secs);
    Ok(())
}
