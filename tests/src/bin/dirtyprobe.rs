//! dirtyprobe: runs checkpointd's dirty trackers against a real process, the way checkpointd
//! runs them against QEMU. Built for the soft-dirty test, which runs it inside a guest booted
//! from Debian's 6.1 kernel (soft-dirty there, not on the 6.18 hosts).
//!
//!   dirtyprobe exact --tracker soft-dirty --mib 32 --rounds 6 --pages 300
//!   dirtyprobe bench --tracker soft-dirty --mib 128 --rounds 12 --pages 256
//!
//! A writer process (this binary, `writer`) maps a shared RAM file read-write, as QEMU maps
//! guest RAM, and writes the random pages it is told to, one round at a time; between rounds it
//! waits, as a paused guest does. `exact` checks that the tracker (set up by checkpointd's own
//! `dirty::build`, on the writer's pid) reports exactly the written pages with their new
//! contents; `bench` times the tracker against the comparing tracker on the same memory.
//! Prints `RESULT <name> <value>` lines.

use anyhow::{bail, Context, Result};
use checkpointd::dirty::build::{build, Guest};
use checkpointd::dirty::compare::ComparingTracker;
use checkpointd::dirty::{DirtyPage, DirtyTracker, Kind, PAGE};
use checkpointd::ram::GuestRam;
use clap::{Parser, Subcommand};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Check and time checkpointd's dirty trackers on a real writer process")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Opts {
    #[arg(long, value_enum, default_value_t = Kind::SoftDirty)]
    tracker: Kind,
    /// Size of the RAM file.
    #[arg(long, default_value_t = 32)]
    mib: usize,
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Pages written per round.
    #[arg(long, default_value_t = 300)]
    pages: usize,
    /// Where the RAM file goes (a tmpfs, as /dev/shm is for QEMU).
    #[arg(long, default_value = "/tmp/dirtyprobe-ram")]
    file: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand)]
enum Cmd {
    Exact(Opts),
    Bench(Opts),
    /// The writer: maps FILE shared, writes the pages named on each stdin line.
    Writer {
        file: PathBuf,
    },
}

/// xorshift64*: reproducible random pages without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pages(&mut self, n: usize, total: usize) -> BTreeSet<u64> {
        let mut s = BTreeSet::new();
        while s.len() < n.min(total) {
            s.insert(self.next() % total as u64);
        }
        s
    }
}

struct Writer {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Writer {
    fn start(file: &Path) -> Result<Writer> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("writer")
            .arg(file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let to = child.stdin.take().context("stdin")?;
        let mut from = BufReader::new(child.stdout.take().context("stdout")?);
        let mut l = String::new();
        from.read_line(&mut l)?;
        if l.trim() != "mapped" {
            bail!("writer: {l:?}");
        }
        Ok(Writer { child, to, from })
    }

    /// Has the writer write `value` into the first byte of each page; waits until it did.
    fn write(&mut self, pages: &BTreeSet<u64>, value: u8) -> Result<()> {
        let list: Vec<String> = pages.iter().map(|p| p.to_string()).collect();
        writeln!(self.to, "{value} {}", list.join(" "))?;
        let mut l = String::new();
        self.from.read_line(&mut l)?;
        if l.trim() != "done" {
            bail!("writer: {l:?}");
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn writer(file: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let len = f.metadata()?.len() as usize;
    // SAFETY: a shared mapping of a file we opened, never unmapped (the process ends).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    drop(f); // only the mapping writes, as in QEMU
    let ram = p as *mut u8;
    println!("mapped");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut w = line.split_ascii_whitespace();
        let value: u8 = w.next().context("value")?.parse()?;
        for idx in w {
            let idx: usize = idx.parse()?;
            if idx * PAGE >= len {
                bail!("page {idx} beyond the file");
            }
            // SAFETY: inside our mapping.
            unsafe { ram.add(idx * PAGE).write_volatile(value) };
        }
        println!("done");
    }
    Ok(())
}

/// The RAM file (zeroed, `mib` MiB), the writer, our read-only mapping, and the tracker under
/// test set up on the writer's pid.
fn setup(o: &Opts) -> Result<(Writer, GuestRam, Box<dyn DirtyTracker>, String)> {
    let _ = std::fs::remove_file(&o.file);
    std::fs::File::create(&o.file)?.set_len((o.mib << 20) as u64)?;
    let w = Writer::start(&o.file)?;
    let ram = GuestRam::map(&o.file)?;
    let guest = Guest {
        pid: w.child.id() as i32,
        ram: &o.file,
        ram_len: ram.bytes().len(),
        keep_old: false,
        inject: true,
    };
    let (t, how) = build(o.tracker, &guest).map_err(anyhow::Error::msg)?;
    Ok((w, ram, t, how))
}

fn exact(o: &Opts) -> Result<()> {
    let (mut w, ram, mut t, how) = setup(o)?;
    println!("RESULT tracker {} ({how})", o.tracker);
    let total = ram.bytes().len() / PAGE;
    let mut rng = Rng(o.seed.max(1));
    // Before tracking starts: pages with data, which the first (full) pass must carry.
    let before = rng.pages(o.pages, total);
    w.write(&before, 200)?;
    let mut out: Vec<DirtyPage> = Vec::new();
    t.collect(ram.bytes(), &mut out)?;
    let first: BTreeSet<u64> = out.iter().map(|p| p.idx).collect();
    if first != before {
        println!(
            "RESULT exact FAIL first pass: {} pages, expected {}",
            first.len(),
            before.len()
        );
        return Ok(());
    }
    let mut checked = 0;
    for round in 0..o.rounds {
        let value = round as u8 + 1;
        let s = rng.pages(o.pages, total);
        w.write(&s, value)?;
        out.clear();
        let t0 = Instant::now();
        t.collect(ram.bytes(), &mut out)?;
        let took = t0.elapsed();
        let got: BTreeSet<u64> = out.iter().map(|p| p.idx).collect();
        let missed: Vec<_> = s.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&s).take(5).collect();
        let wrong = out.iter().filter(|p| p.new[0] != value).count();
        println!(
            "round {round}: wrote {} pages, tracker reported {} in {} us (missed {missed:?}, extra {extra:?}, wrong contents {wrong})",
            s.len(),
            got.len(),
            took.as_micros()
        );
        if got != s || wrong != 0 {
            println!("RESULT exact FAIL round {round}");
            return Ok(());
        }
        checked += s.len();
    }
    // A round without writes reports nothing.
    out.clear();
    t.collect(ram.bytes(), &mut out)?;
    if !out.is_empty() {
        println!(
            "RESULT exact FAIL {} pages reported with no writes",
            out.len()
        );
        return Ok(());
    }
    println!("RESULT exact ok rounds={} pages={checked}", o.rounds);
    Ok(())
}

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn bench(o: &Opts) -> Result<()> {
    let (mut w, ram, mut t, how) = setup(o)?;
    println!("RESULT tracker {} ({how})", o.tracker);
    let total = ram.bytes().len() / PAGE;
    let mut cmp = ComparingTracker::new(ram.bytes().len(), 1, false);
    let mut rng = Rng(o.seed.max(1));
    // Fill the file so that the comparison reads real pages, then arm both.
    let all: BTreeSet<u64> = (0..total as u64).collect();
    w.write(&all, 255)?;
    let mut out = Vec::new();
    t.collect(ram.bytes(), &mut out)?;
    out.clear();
    cmp.collect(ram.bytes(), &mut out)?;
    let (mut ts, mut tc) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let s = rng.pages(o.pages, total);
        w.write(&s, round as u8 + 1)?;
        out.clear();
        let t0 = Instant::now();
        t.collect(ram.bytes(), &mut out)?;
        ts.push(t0.elapsed().as_micros());
        let n = out.len();
        out.clear();
        let t0 = Instant::now();
        cmp.collect(ram.bytes(), &mut out)?;
        tc.push(t0.elapsed().as_micros());
        if n != s.len() || out.len() != s.len() {
            bail!(
                "round {round}: wrote {}, tracker {n}, comparison {}",
                s.len(),
                out.len()
            );
        }
    }
    let (s, c) = (median(ts), median(tc));
    println!(
        "RESULT bench mib={} pages_per_round={} rounds={} tracker_us={s} compare_us={c} ratio={:.1}",
        o.mib,
        o.pages,
        o.rounds,
        c as f64 / s.max(1) as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Writer { file } => writer(&file),
        Cmd::Exact(o) => {
            let r = exact(&o);
            let _ = std::fs::remove_file(&o.file);
            r
        }
        Cmd::Bench(o) => {
            let r = bench(&o);
            let _ = std::fs::remove_file(&o.file);
            r
        }
    }
}
