//! Boots a test guest under QEMU (TCG) from an image built by scripts/guest-image.sh and
//! collects what it prints on its serial console.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo")
        .to_path_buf()
}

/// Builds an image with `bins` (host paths) and `run` as the guest's job; returns its dir.
pub fn build_image(name: &str, bins: &[&str], run: &Path) -> Result<PathBuf> {
    let out = std::env::temp_dir().join(format!("remus-guest-{name}-{}", std::process::id()));
    let mut c = Command::new(repo_root().join("scripts/guest-image.sh"));
    c.arg(&out);
    for b in bins {
        c.args(["--bin", b]);
    }
    c.arg("--run").arg(run);
    let o = c.output().context("run scripts/guest-image.sh")?;
    if !o.status.success() {
        bail!(
            "guest-image.sh failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// Boots the image, waits for it to power off (or `timeout`), returns its console output.
pub fn boot_and_collect(image: &Path, mem_mb: u32, timeout: Duration) -> Result<String> {
    boot_with(image, mem_mb, timeout, &[])
}

/// Like [`boot_and_collect`], with extra QEMU arguments (drives, NICs).
pub fn boot_with(image: &Path, mem_mb: u32, timeout: Duration, extra: &[&str]) -> Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-m", &mem_mb.to_string(), "-serial", "stdio"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64 (make setup installs it)")?;
    let mut out = child.stdout.take().context("qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            let text = reader.join().unwrap_or_default();
            if !st.success() {
                bail!("qemu exited {st}: {text}");
            }
            return Ok(text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = reader.join().unwrap_or_default();
            bail!("guest did not finish within {timeout:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the first `RESULT <key> <value>` line.
pub fn result<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console.lines().find_map(|l| {
        let rest = l.trim_end_matches('\r').strip_prefix("RESULT ")?;
        let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
        (k == key).then_some(v)
    })
}

/// A test's scratch space: a work directory and the guest-RAM files a primary and a backup use
/// in /dev/shm, all removed on drop (also when the test fails).
pub struct Scratch {
    pub dir: PathBuf,
    pub ram: String,
    pub backup_ram: String,
}

impl Scratch {
    pub fn new(kind: &str) -> Result<Scratch> {
        let p = crate::netns::unique_prefix();
        let dir = std::env::temp_dir().join(format!("{kind}-{p}"));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch {
            dir,
            ram: format!("/dev/shm/{p}-ram"),
            backup_ram: format!("/dev/shm/{p}-bram"),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ram);
        let _ = std::fs::remove_file(&self.backup_ram);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
