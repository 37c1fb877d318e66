//! Test support for remus: real network namespaces and veths that clean up after themselves,
//! tagged test frames, a capture helper, a LAN watcher (which host's port the guest's frames
//! come in on), small tmpfs mounts, and the guest image builder's driver.

pub mod capture;
pub mod demo_evidence;
pub mod diskrep_rig;
pub mod etcd;
pub mod fence_bed;
pub mod forge;
pub mod frames;
pub mod fuzz_seeds;
pub mod fuzz_targets;
pub mod guest;
pub mod hostile;
pub mod lan;
pub mod nbd_client;
pub mod netns;
pub mod pacemaker;
pub mod rng;
pub mod scrape;
pub mod tmpfs;
pub mod topo;
pub mod two_hosts;

/// The replication key a test's daemons share: DIR/replication.key (mode 0600, as `remus
/// keygen` writes it), made on first use.
pub fn replication_key(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("replication.key");
    std::fs::create_dir_all(dir).expect("test directory");
    match remus_proto::auth::Key::generate_file(&p) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("{}: {e}", p.display()),
    }
    p
}

/// `--key-file DIR/replication.key` for a daemon of the test in DIR.
pub fn key_args(dir: &std::path::Path) -> [String; 2] {
    [
        "--key-file".into(),
        replication_key(dir).display().to_string(),
    ]
}
