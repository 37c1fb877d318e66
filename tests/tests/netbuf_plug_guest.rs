//! netbuf's kernel backend (IFB + sch_plug over rtnetlink), for real, inside a QEMU guest whose
//! kernel has sch_plug (this host's kernel does not). The guest runs tests/guest/netbuf-plug.sh
//! against the same binaries the host uses.

use remus_tests::guest::{boot_and_collect, build_image, repo_root, result};
use remus_tests::netns::bin;
use std::time::Duration;

#[test]
fn plug_backend_holds_and_releases_in_a_real_kernel() {
    let image = build_image(
        "netbuf-plug",
        &[
            &bin("netbuf"),
            &bin("framecheck"),
            "/usr/sbin/ip",
            "/usr/sbin/tc",
        ],
        &repo_root().join("tests/guest/netbuf-plug.sh"),
    )
    .unwrap();
    let console = boot_and_collect(&image, 512, Duration::from_secs(240)).unwrap();
    let _ = std::fs::remove_dir_all(&image);
    let r = |k: &str| {
        result(&console, k)
            .unwrap_or_else(|| panic!("no RESULT {k}; console:\n{console}"))
            .to_string()
    };
    assert!(r("hello").contains("backend=plug max_depth=1"), "{console}");
    assert_eq!(r("qdisc"), "qdisc plug");
    assert_eq!(
        r("unprotected"),
        "ping:100",
        "released-indefinite until protection starts"
    );
    assert_eq!(r("open"), "[]", "nothing leaves while epoch 1 is open");
    assert_eq!(r("closed"), "[]");
    assert!(
        r("depth").contains("err DEPTH") && r("depth").ends_with("rc=3"),
        "{}",
        r("depth")
    );
    assert_eq!(
        r("release1"),
        "arp:1,ns6:2,ping:3,syn:4,vlan:5",
        "every ethertype, in order"
    );
    assert_eq!(r("release2"), "ping:6");
    assert!(r("order").contains("err ORDER"), "{}", r("order"));
    assert_eq!(
        r("overflow"),
        "ping:11,ping:12,ping:13,ping:14,ping:15,ping:16",
        "tail drop at the byte limit"
    );
    assert_eq!(r("drops"), "2");
    assert_eq!(r("releaseall"), "syn:7");
    assert_eq!(r("exit"), "0");
    assert_eq!(
        r("teardown"),
        "ifb=gone ingress=0",
        "teardown restores the interface"
    );
}

/// On this host (no sch_plug) the plug backend's set-up goes as far as the kernel lets it: the
/// IFB device is created, the plug qdisc is refused with the kernel's own words (the extended
/// ack), and the partial set-up is removed again. This is the rtnetlink path without a guest.
#[test]
fn plug_backend_reports_the_kernels_refusal_and_leaves_nothing_behind() {
    use remus_tests::netns::{require_root, unique_prefix, Netns};
    require_root();
    let p = unique_prefix();
    let ns = Netns::new(&format!("{p}-plug")).unwrap();
    ns.exec(&[
        "ip", "link", "add", "g0", "type", "veth", "peer", "name", "g1",
    ])
    .unwrap();
    ns.exec(&["ip", "link", "set", "dev", "g0", "up"]).unwrap();
    let has_plug = ns
        .exec(&["ip", "link", "add", "probe0", "type", "ifb"])
        .and_then(|_| ns.exec(&["tc", "qdisc", "add", "dev", "probe0", "root", "plug"]))
        .is_ok();
    let _ = ns.exec(&["ip", "link", "del", "probe0"]);
    let sock = std::env::temp_dir().join(format!("{p}-plug.sock"));
    let run = || {
        ns.command(&bin("netbuf"))
            .args(["run", "--backend", "plug", "--guest-if", "g0", "--control"])
            .arg(&sock)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    if has_plug {
        // A kernel with sch_plug (not this project's CI host): the set-up succeeds, and a
        // stop removes it.
        let mut c = remus_tests::netns::ChildGuard(Some(run()));
        let t = std::time::Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "netbuf did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(c.terminate(10), Some(0));
    } else {
        let o = run().wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("add plug qdisc on nb-g0")
                && err.contains("Specified qdisc kind is unknown"),
            "the kernel's extended ack is passed on: {err}"
        );
    }
    let links = ns.exec(&["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.contains("nb-g0"), "the IFB was removed: {links}");
    let qdiscs = ns.exec(&["tc", "qdisc", "show", "dev", "g0"]).unwrap();
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    let _ = std::fs::remove_file(&sock);
}
