//! One etcd member (Debian's etcd-server) on loopback ports of its own, for tests of the
//! witness outside network namespaces.

use crate::diskrep_rig::free_port;
use crate::netns::GroupGuard;
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts etcd with its data in `dir`/etcd; returns it and its client port. It may take a
/// moment to answer: callers wait for what they need.
pub fn loopback(dir: &Path) -> (GroupGuard, u16) {
    let (client, peer) = (free_port(), free_port());
    let (url, peer_url) = (
        format!("http://127.0.0.1:{client}"),
        format!("http://127.0.0.1:{peer}"),
    );
    let g = GroupGuard::spawn(
        Command::new("etcd")
            .args(["--name", "w", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("w={peer_url}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("etcd (make setup installs etcd-server)");
    (g, client)
}
