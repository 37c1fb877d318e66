//! Runs diskrep daemons for tests: a primary and a backup on loopback with their own images,
//! sockets and ports, all removed (and the processes killed) on drop.

use crate::netns::{bin, ChildGuard};
use anyhow::{bail, Context, Result};
use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback TCP port that is free now and that the kernel will not hand out by itself.
///
/// Binding port 0 and closing it (the usual trick) returns a port from the ephemeral range,
/// which the kernel may give to any outgoing connection a moment later (one test's NBD client,
/// say) before the daemon under test binds it: seen as "Address already in use" under load.
/// So ports come from below the ephemeral range, each handed out once per process (the pid
/// spreads test binaries apart), and only if they can be bound now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let span = ephemeral_low.saturating_sub(LOW).max(1000);
    let start = (std::process::id() * 211) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {ephemeral_low}");
}

/// Panics unless two raw images are identical (`qemu-img compare`).
pub fn images_identical(a: &std::path::Path, b: &std::path::Path) {
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img runs");
    assert!(
        o.status.success(),
        "images differ: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

pub struct Daemon {
    pub child: ChildGuard,
    pub control: PathBuf,
}

impl Daemon {
    pub fn ctl(&self, line: &str) -> Result<Reply> {
        let mut c = ControlClient::connect(&self.control)?;
        c.set_timeout(Some(Duration::from_secs(30)))?;
        Ok(c.request(line)?)
    }

    pub fn ok(&self, line: &str) -> Result<String> {
        match self.ctl(line)? {
            Reply::Ok(t) => Ok(t),
            Reply::Err(e) => bail!("{line}: err {} {}", e.code, e.message),
        }
    }

    pub fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ok("status json")?)?)
    }

    /// Waits until `pred` holds for the status, or fails after `timeout`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status() {
                if pred(&s) {
                    return Ok(s);
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for {what}; status: {s}");
                }
            } else if Instant::now() > deadline {
                bail!("timed out waiting for {what}; no status");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(c) = self.child.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = self.child.0.as_ref() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
}

pub fn spawn_daemon(args: &[String], control: PathBuf) -> Result<Daemon> {
    let child = Command::new(bin("diskrep"))
        .args(args)
        .env(
            "DISKREP_LOG",
            std::env::var("DISKREP_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn diskrep")?;
    let d = Daemon {
        child: ChildGuard(Some(child)),
        control,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ctl("hello").is_err() {
        if Instant::now() > deadline {
            bail!("diskrep did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

pub struct Rig {
    pub dir: PathBuf,
    pub primary_img: PathBuf,
    pub backup_img: PathBuf,
    pub nbd_port: u16,
    pub backup_nbd_port: u16,
    pub repl_port: u16,
    pub size: u64,
}

impl Rig {
    pub fn new(size: u64) -> Result<Rig> {
        let dir = std::env::temp_dir().join(format!("diskrep-{}", crate::netns::unique_prefix()));
        std::fs::create_dir_all(&dir)?;
        let primary_img = dir.join("primary.img");
        let backup_img = dir.join("backup.img");
        for p in [&primary_img, &backup_img] {
            std::fs::File::create(p)?.set_len(size)?;
        }
        Ok(Rig {
            dir,
            primary_img,
            backup_img,
            nbd_port: free_port(),
            backup_nbd_port: free_port(),
            repl_port: free_port(),
            size,
        })
    }

    pub fn nbd_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/disk", self.nbd_port)
    }

    pub fn backup_nbd_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/disk", self.backup_nbd_port)
    }

    pub fn primary(&self, extra: &[&str], with_backup: bool) -> Result<Daemon> {
        let control = self.dir.join("primary.sock");
        let mut a: Vec<String> = vec![
            "primary".into(),
            "--image".into(),
            self.primary_img.to_string_lossy().into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.nbd_port),
            "--control".into(),
            control.to_string_lossy().into(),
        ];
        if with_backup {
            a.push("--backup".into());
            a.push(format!("127.0.0.1:{}", self.repl_port));
            a.extend(crate::key_args(&self.dir));
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        spawn_daemon(&a, control)
    }

    /// A hand-driven primary connection to the backup's replication port, authenticated with
    /// the rig's key (as a real primary would be): what is written to it is sealed into
    /// records, so what reaches the stream's parser is exactly what the test wrote.
    pub fn fake_primary(
        &self,
    ) -> Result<remus_proto::auth::blocking::SealedWriter<std::net::TcpStream>> {
        let security = remus_proto::auth::Security::Keyed {
            key: remus_proto::auth::Key::load(&crate::replication_key(&self.dir))?,
            encrypt: false,
        };
        let s = std::net::TcpStream::connect(("127.0.0.1", self.repl_port))?;
        let session = remus_proto::auth::blocking::connect(
            &s,
            &security,
            remus_proto::auth::StreamKind::Disk,
            Duration::from_secs(10),
        )?;
        Ok(remus_proto::auth::blocking::SealedWriter::new(
            s,
            session.map(|x| x.send),
        ))
    }

    /// `diskrep backup` on another image (e.g. the old primary's, rejoining), replication on
    /// `repl_port`, NBD (once activated) on `nbd_port`, control socket DIR/NAME.sock.
    pub fn backup_on(
        &self,
        image: &std::path::Path,
        name: &str,
        repl_port: u16,
        nbd_port: u16,
    ) -> Result<Daemon> {
        let control = self.dir.join(format!("{name}.sock"));
        let mut args: Vec<String> = vec![
            "backup".into(),
            "--image".into(),
            image.to_string_lossy().into(),
            "--repl-listen".into(),
            format!("127.0.0.1:{repl_port}"),
            "--listen".into(),
            format!("127.0.0.1:{nbd_port}"),
            "--control".into(),
            control.to_string_lossy().into(),
        ];
        args.extend(crate::key_args(&self.dir));
        spawn_daemon(&args, control)
    }

    pub fn backup(&self, extra: &[&str]) -> Result<Daemon> {
        let control = self.dir.join("backup.sock");
        let mut a: Vec<String> = vec![
            "backup".into(),
            "--image".into(),
            self.backup_img.to_string_lossy().into(),
            "--repl-listen".into(),
            format!("127.0.0.1:{}", self.repl_port),
            "--listen".into(),
            format!("127.0.0.1:{}", self.backup_nbd_port),
            "--control".into(),
            control.to_string_lossy().into(),
        ];
        a.extend(crate::key_args(&self.dir));
        a.extend(extra.iter().map(|s| s.to_string()));
        spawn_daemon(&a, control)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One random write, write-zeroes or trim (up to 64 KiB, 512-byte aligned) through `c`, also
/// applied to `model` (the disk's expected contents).
pub fn random_op(
    rng: &mut crate::rng::Rng,
    c: &mut crate::nbd_client::NbdClient,
    model: &mut [u8],
) {
    let size = model.len() as u64;
    let len = (1 + rng.below(128)) * 512;
    let off = rng.below((size - len) / 512) * 512;
    let (o, l) = (off as usize, len as usize);
    match rng.below(10) {
        0 => {
            c.zero(off, len as u32).expect("NBD write-zeroes");
            model[o..o + l].fill(0);
        }
        1 => {
            c.trim(off, len as u32).expect("NBD trim");
            model[o..o + l].fill(0);
        }
        _ => {
            let b = (rng.next_u64() & 0xff) as u8;
            let data: Vec<u8> = (0..l).map(|k| b.wrapping_add((k / 512) as u8)).collect();
            c.write(off, &data).expect("NBD write");
            model[o..o + l].copy_from_slice(&data);
        }
    }
}
