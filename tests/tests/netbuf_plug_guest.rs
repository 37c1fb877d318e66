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
