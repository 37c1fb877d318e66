//! checkpointd's uffd dirty tracker against a real TCG guest on this host's kernel, in
//! validation mode: every checkpoint's dirty set is checked against a full comparison of guest
//! RAM, and a single missed page ends checkpointd with an error. Two ways of getting the uffd
//! into QEMU: the preload shim (how `remus protect` starts QEMU) and, for a QEMU started
//! without it, a syscall injected with ptrace (how attaching to a running QEMU works). Also: a
//! process that could write guest RAM past QEMU's mapping makes the uffd tracker refuse, and
//! `auto` fall back to comparison.

use remus_proto::control::Reply;
use remus_proto::ctl_socket::ControlClient;
use remus_tests::guest::{build_image, repo_root, Scratch};
use remus_tests::netns::{bin, ChildGuard, GroupGuard};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status(sock: &Path) -> Option<Value> {
    let mut c = ControlClient::connect(sock).ok()?;
    match c.request("status json").ok()? {
        Reply::Ok(j) => serde_json::from_str(&j).ok(),
        _ => None,
    }
}

struct Guest {
    _qemu: ChildGuard,
    qmp: String,
    ram: String,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ram);
    }
}

/// A workload guest (fresh random data written to tmpfs all the time) with its RAM in a shared
/// file, running once it prints.
fn start_guest(image: &Path, s: &Scratch, tag: &str, shim: bool) -> Guest {
    let serial = s.dir.join(format!("{tag}.serial"));
    let qmp = s
        .dir
        .join(format!("{tag}.qmp"))
        .to_string_lossy()
        .into_owned();
    let ram = format!("{}-{tag}", s.ram);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "256M",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args([
        "-no-reboot",
        "-machine",
        "pc",
        "-append",
        "console=ttyS0 quiet",
    ])
    .arg("-kernel")
    .arg(image.join("vmlinuz"))
    .arg("-initrd")
    .arg(image.join("initramfs.cpio.gz"))
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .args([
        "-object",
        &format!("memory-backend-file,id=remus-ram,size=256M,mem-path={ram},share=on"),
    ])
    .args(["-machine", "memory-backend=remus-ram"])
    .args(["-qmp", &format!("unix:{qmp},server=on,wait=off")])
    .stdout(Stdio::null());
    if shim {
        cmd.env("LD_PRELOAD", bin("libremus_uffd_shim.so"));
    }
    let qemu = ChildGuard(Some(cmd.spawn().unwrap()));
    let t = Instant::now();
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("ITER")
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "guest never ran its workload"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Guest {
        _qemu: qemu,
        qmp,
        ram,
    }
}

/// Protects `g` with `tracker` and --validate-dirty until `checkpoints` were validated;
/// returns the primary's last status.
fn validate(s: &Scratch, g: &Guest, tag: &str, tracker: &str, checkpoints: u64) -> Value {
    let port = remus_tests::diskrep_rig::free_port();
    let backup_ram = format!("{}-{tag}", s.backup_ram);
    let _backup = GroupGuard::spawn(
        Command::new(bin("checkpointd"))
            .args(["backup", "--listen", &format!("127.0.0.1:{port}")])
            .args(remus_tests::key_args(&s.dir))
            // Restoring and dirty tracking are under test here; fencing has its own tests.
            .args(["--witness", "none"])
            .args(["--ram-image", &backup_ram, "--peer-timeout-ms", "3000"])
            .arg("--state-dir")
            .arg(s.dir.join(format!("{tag}-b")))
            .args(["--", "qemu-system-x86_64"]),
    )
    .unwrap();
    let ctl = s.dir.join(format!("{tag}.ctl"));
    let mut primary = ChildGuard(Some(
        Command::new(bin("checkpointd"))
            .args(["primary", "--qmp", &g.qmp, "--ram", &g.ram])
            .args(remus_tests::key_args(&s.dir))
            .args(["--witness", "none"])
            .args([
                "--backup",
                &format!("127.0.0.1:{port}"),
                "--interval-ms",
                "50",
            ])
            .args(["--peer-timeout-ms", "3000", "--dirty-tracker", tracker])
            .args(["--validate-dirty", "--compress"])
            .arg("--state-dir")
            .arg(s.dir.join(format!("{tag}-p")))
            .arg("--control")
            .arg(&ctl)
            .spawn()
            .unwrap(),
    ));
    let t = Instant::now();
    let last = loop {
        if let Some(st) = primary.child().try_wait().unwrap() {
            panic!("checkpointd primary ended ({st}): a page was missed, or set-up failed (its log is above)");
        }
        if let Some(v) = status(&ctl) {
            if v["validated_checkpoints"].as_u64().unwrap_or(0) >= checkpoints {
                break v;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "too few checkpoints validated"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(primary.terminate(10), Some(0), "a clean stop");
    let _ = std::fs::remove_file(&backup_ram);
    last
}

#[test]
fn uffd_tracker_misses_no_page_of_a_running_guest() {
    let s = Scratch::new("dirty-uffd").unwrap();
    let image = build_image(
        "dirty-uffd",
        &[],
        &repo_root().join("tests/guest/workload.sh"),
    )
    .unwrap();

    // QEMU as remus protect starts it: the shim made the uffd.
    let g = start_guest(&image, &s, "shim", true);
    let st = validate(&s, &g, "shim", "uffd", 100);
    eprintln!("shim: {st}");
    assert_eq!(st["dirty_tracker"], "uffd");
    let reason = st["dirty_tracker_reason"].as_str().unwrap();
    assert!(reason.contains("preload shim"), "{reason}");
    drop(g);

    // A QEMU started without the shim, as when attaching: auto injects a uffd with ptrace.
    let g = start_guest(&image, &s, "inject", false);
    let st = validate(&s, &g, "inject", "auto", 40);
    eprintln!("inject: {st}");
    assert_eq!(st["dirty_tracker"], "uffd");
    let reason = st["dirty_tracker_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("auto: ") && reason.contains("injected with ptrace"),
        "{reason}"
    );

    // Something else holding guest RAM writable (as a vhost-user back end would): the uffd
    // tracker cannot see its writes and refuses; auto compares instead.
    let _writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&g.ram)
        .unwrap();
    let o = Command::new(bin("checkpointd"))
        .args([
            "primary",
            "--qmp",
            &g.qmp,
            "--ram",
            &g.ram,
            "--backup",
            "127.0.0.1:9",
        ])
        .args(remus_tests::key_args(&s.dir))
        .args([
            "--witness",
            "none",
            "--dirty-tracker",
            "uffd",
            "--state-dir",
        ])
        .arg(s.dir.join("refused"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another process can write the guest RAM") && err.contains("open for writing"),
        "{err}"
    );
    let st = validate(&s, &g, "fallback", "auto", 3);
    assert_eq!(st["dirty_tracker"], "compare", "{st}");
    assert!(
        st["dirty_tracker_reason"]
            .as_str()
            .unwrap()
            .contains("not uffd: another process"),
        "{st}"
    );
    drop(g);
    let _ = std::fs::remove_dir_all(&image);
}
