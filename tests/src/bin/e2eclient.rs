//! e2eclient: holds one TCP connection to the demo guest's counter service, sends a request
//! every 50 ms for --seconds, checks that every reply is the previous one plus one, and prints
//! progress once a second and a summary at the end. Exit 0 if the connection survived and
//! every reply was in sequence, 1 otherwise.

use clap::Parser;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Counter-service client for the remus demo")]
struct Cli {
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
}

fn main() {
    let cli = Cli::parse();
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        match std::net::TcpStream::connect(&cli.addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect: {e}; retrying");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => {
                println!("client: cannot connect to {}: {e}", cli.addr);
                std::process::exit(1);
            }
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(e) => {
            println!("client: {e}");
            std::process::exit(1);
        }
    };
    let mut r = BufReader::new(s);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(cli.seconds);
    let (mut last, mut count) = (0u64, 0u64);
    let mut last_at = Instant::now();
    let mut gap = Duration::ZERO;
    let mut gap_end_unix_ms = 0u128;
    let mut next_send = Instant::now();
    let mut next_report = start + Duration::from_secs(1);
    let mut line = String::new();
    let fail = |msg: String| -> ! {
        println!("client: FAILED: {msg}");
        std::process::exit(1);
    };
    while Instant::now() < end {
        if Instant::now() >= next_send {
            if let Err(e) = w.write_all(b"x\n") {
                fail(format!("send: {e}"));
            }
            next_send += Duration::from_millis(50);
        }
        match r.read_line(&mut line) {
            Ok(0) => fail(format!("the connection was closed after {count} replies")),
            Ok(_) => {
                let n: u64 = line.trim().parse().unwrap_or(0);
                if n != last + 1 {
                    fail(format!("reply {n} after {last}: out of sequence"));
                }
                let now = Instant::now();
                if now.duration_since(last_at) > gap {
                    gap = now.duration_since(last_at);
                    gap_end_unix_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis());
                }
                last_at = now;
                last = n;
                count += 1;
                line.clear();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => fail(format!("{e}")),
        }
        if Instant::now() >= next_report {
            println!(
                "client: t={:>4.1}s replies={count} last={last} (silent for {} ms)",
                start.elapsed().as_secs_f64(),
                last_at.elapsed().as_millis()
            );
            next_report += Duration::from_secs(1);
        }
    }
    println!(
        "client: {count} replies, every one in sequence, one connection throughout; longest gap {} ms",
        gap.as_millis()
    );
    println!("client: longest_gap_end_unix_ms={gap_end_unix_ms}");
}
