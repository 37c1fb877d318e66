//! netbuf's userspace backend against real namespaces, veths and kernel-generated traffic.

use remus_proto::control::{ErrorCode, Reply};
use remus_tests::capture::Capture;
use remus_tests::frames::Kind;
use remus_tests::netns::{bin, require_root};
use remus_tests::topo::NetbufTopo;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(400);
const ARRIVE: Duration = Duration::from_secs(5);

fn ok(r: Reply) -> String {
    match r {
        Reply::Ok(t) => t,
        Reply::Err(e) => panic!("unexpected err {} {}", e.code, e.message),
    }
}

fn err_code(r: Reply) -> ErrorCode {
    match r {
        Reply::Err(e) => e.code,
        Reply::Ok(t) => panic!("unexpected ok {t}"),
    }
}

fn stats(t: &NetbufTopo) -> serde_json::Value {
    let mut c = t.client().unwrap();
    serde_json::from_str(&ok(c.request("stats json").unwrap())).unwrap()
}

/// Waits until netbuf has taken `n` frames from the guest (held, passed or dropped).
fn wait_received(t: &NetbufTopo, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats(t)["counters"]["received_frames"]
        .as_u64()
        .unwrap_or(0)
        < n
    {
        assert!(
            std::time::Instant::now() < deadline,
            "netbuf never received {n} frames"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_ethertype_is_held_until_its_epoch_is_released_in_order() {
    require_root();
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&[]).unwrap();
    let cap = Capture::start(&t.client, &bin("framecheck"), "c0", "guest").unwrap();
    let mut c = t.client().unwrap();

    // Unprotected: passes at once.
    t.send_from_guest(&["ping:100"]).unwrap();
    assert_eq!(cap.collect_n(1, ARRIVE), vec![(Kind::Ping, 100)]);

    ok(c.request("barrier 1").unwrap());
    t.send_from_guest(&["arp:1", "ns6:2", "ping:3", "syn:4", "vlan:5"])
        .unwrap();
    assert_eq!(
        cap.collect_for(QUIET),
        vec![],
        "epoch 1 is open: nothing may leave"
    );

    ok(c.request("barrier 2").unwrap());
    t.send_from_guest(&["ping:6"]).unwrap();
    assert_eq!(
        cap.collect_for(QUIET),
        vec![],
        "epoch 1 closed but not released"
    );
    let s = stats(&t);
    assert_eq!(s["held_frames"], 6);
    assert_eq!(s["epochs"][0]["frames"], 5);
    assert_eq!(s["epochs"][1]["frames"], 1);

    assert_eq!(ok(c.request("release 1").unwrap()), "released_frames=5");
    let got = cap.collect_n(5, ARRIVE);
    assert_eq!(
        got,
        vec![
            (Kind::Arp, 1),
            (Kind::Ns6, 2),
            (Kind::Ping, 3),
            (Kind::Syn, 4),
            (Kind::Vlan, 5)
        ],
        "released in arrival order"
    );
    assert_eq!(cap.collect_for(QUIET), vec![], "epoch 2's frame stays held");

    ok(c.request("barrier 3").unwrap());
    ok(c.request("release 2").unwrap());
    assert_eq!(cap.collect_n(1, ARRIVE), vec![(Kind::Ping, 6)]);

    ok(c.request("release-all").unwrap());
    t.send_from_guest(&["syn:7"]).unwrap();
    assert_eq!(
        cap.collect_n(1, ARRIVE),
        vec![(Kind::Syn, 7)],
        "release-all passes through"
    );
    let s = stats(&t);
    assert_eq!(s["protected"], false);
    assert_eq!(s["counters"]["released_frames"], 6);
    assert_eq!(s["io_errors"], 0);
}

#[test]
fn inbound_frames_are_never_held() {
    require_root();
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&[]).unwrap();
    let cap = Capture::start(&t.guest, &bin("framecheck"), "g0", "client").unwrap();
    let mut c = t.client().unwrap();
    ok(c.request("barrier 1").unwrap());
    let fc = bin("framecheck");
    t.client
        .exec(&[
            &fc, "send", "--if", "c0", "--from", "client", "ping:1", "arp:2",
        ])
        .unwrap();
    assert_eq!(
        cap.collect_n(2, ARRIVE),
        vec![(Kind::Ping, 1), (Kind::Arp, 2)]
    );
    assert_eq!(
        stats(&t)["inbound_frames"].as_u64().map(|n| n >= 2),
        Some(true)
    );
}

#[test]
fn overflow_drops_the_newest_frames_and_counts_them() {
    require_root();
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&["--max-frames", "3"]).unwrap();
    let cap = Capture::start(&t.client, &bin("framecheck"), "c0", "guest").unwrap();
    let mut c = t.client().unwrap();
    ok(c.request("barrier 1").unwrap());
    t.send_from_guest(&["ping:1", "ping:2", "ping:3", "ping:4", "ping:5"])
        .unwrap();
    // Let the forwarding thread take all five before the barrier.
    wait_received(&t, 5);
    ok(c.request("barrier 2").unwrap());
    ok(c.request("release 1").unwrap());
    assert_eq!(
        cap.collect_n(3, ARRIVE),
        vec![(Kind::Ping, 1), (Kind::Ping, 2), (Kind::Ping, 3)]
    );
    assert_eq!(cap.collect_for(QUIET), vec![]);
    let s = stats(&t);
    assert_eq!(s["counters"]["dropped_overflow_frames"], 2);
    assert_eq!(s["held_frames"], 0);
}

#[test]
fn bad_control_input_is_refused_and_nothing_leaks() {
    require_root();
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&[]).unwrap();
    let cap = Capture::start(&t.client, &bin("framecheck"), "c0", "guest").unwrap();
    let mut c = t.client().unwrap();
    assert_eq!(err_code(c.request("release 1").unwrap()), ErrorCode::Order);
    ok(c.request("barrier 5").unwrap());
    t.send_from_guest(&["ping:1"]).unwrap();
    assert_eq!(
        err_code(c.request("release 5").unwrap()),
        ErrorCode::Order,
        "open epoch"
    );
    assert_eq!(
        err_code(c.request("release 9").unwrap()),
        ErrorCode::Order,
        "future epoch"
    );
    assert_eq!(
        err_code(c.request("barrier 4").unwrap()),
        ErrorCode::Order,
        "backwards"
    );
    assert_eq!(
        err_code(c.request("barrier 5").unwrap()),
        ErrorCode::Order,
        "repeated"
    );
    assert_eq!(err_code(c.request("barrier x").unwrap()), ErrorCode::Parse);
    assert_eq!(err_code(c.request("barrier -1").unwrap()), ErrorCode::Parse);
    assert_eq!(
        err_code(c.request("barrier 1 2").unwrap()),
        ErrorCode::Parse
    );
    assert_eq!(err_code(c.request("release").unwrap()), ErrorCode::Parse);
    assert_eq!(
        err_code(c.request("flush everything").unwrap()),
        ErrorCode::Unknown
    );
    assert_eq!(err_code(c.request("stats yaml").unwrap()), ErrorCode::Parse);
    // Raw garbage on a fresh connection.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&t.control).unwrap();
        s.write_all(b"\xff\xfe\x00garbage\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.starts_with("err PARSE"), "{line}");
    }
    assert_eq!(cap.collect_for(QUIET), vec![], "no error released anything");
    assert_eq!(stats(&t)["held_frames"], 1);
    // The daemon is alive and correct afterwards.
    ok(c.request("barrier 6").unwrap());
    ok(c.request("release 5").unwrap());
    assert_eq!(cap.collect_n(1, ARRIVE), vec![(Kind::Ping, 1)]);

    // netbuf ctl maps replies onto exit codes.
    let o = t.netbuf_ctl(&["release", "6"]);
    assert_eq!(o.status.code(), Some(3), "err reply → exit 3");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err ORDER"));
    let o = t.netbuf_ctl(&["stats", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["open_epoch"], 6);
}

#[test]
fn discard_drops_held_frames_and_stays_protected() {
    require_root();
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&[]).unwrap();
    let cap = Capture::start(&t.client, &bin("framecheck"), "c0", "guest").unwrap();
    let mut c = t.client().unwrap();
    ok(c.request("barrier 1").unwrap());
    t.send_from_guest(&["ping:1", "ping:2"]).unwrap();
    wait_received(&t, 2);
    assert_eq!(ok(c.request("discard").unwrap()), "discarded_frames=2");
    t.send_from_guest(&["ping:3"]).unwrap();
    assert_eq!(
        cap.collect_for(QUIET),
        vec![],
        "still protected after discard"
    );
    ok(c.request("barrier 2").unwrap());
    ok(c.request("release 1").unwrap());
    assert_eq!(cap.collect_n(1, ARRIVE), vec![(Kind::Ping, 3)]);
}

#[test]
fn real_tcp_through_netbuf_with_gso_and_epochs() {
    require_root();
    let mut t = NetbufTopo::new().unwrap();
    t.start_netbuf(&[]).unwrap();
    // Kernel-generated ARP + ICMP, unprotected.
    t.guest
        .exec(&["ping", "-c", "2", "-W", "2", "10.77.0.2"])
        .unwrap();
    // A real TCP bulk transfer (GSO super-frames on veth) while epochs turn over every 10 ms.
    let mut server = t
        .client
        .spawn("iperf3", &["-s", "-1", "-B", "10.77.0.2"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ctl = t.control.clone();
    let epochs = std::thread::spawn(move || {
        let mut c = remus_proto::ctl_socket::ControlClient::connect(&ctl).unwrap();
        let mut e = 1u64;
        c.request(&format!("barrier {e}")).unwrap();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            assert!(matches!(
                c.request(&format!("barrier {}", e + 1)).unwrap(),
                Reply::Ok(_)
            ));
            assert!(matches!(
                c.request(&format!("release {e}")).unwrap(),
                Reply::Ok(_)
            ));
            e += 1;
        }
        c.request("release-all").unwrap();
        e
    });
    let out = t
        .guest
        .exec(&["iperf3", "-c", "10.77.0.2", "-t", "2", "-J"])
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let epochs = epochs.join().unwrap();
    let _ = server.child().wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(epochs > 50, "epochs turned over: {epochs}");
    assert!(bps > 10e6, "TCP through netbuf with epochs: {bps} bit/s");
    let s = stats(&t);
    assert_eq!(s["io_errors"], 0, "no frame truncated or unsendable: {s}");
    assert_eq!(s["counters"]["dropped_overflow_frames"], 0);
}

#[test]
fn startup_errors_are_clear_and_coded() {
    require_root();
    let t = NetbufTopo::new().unwrap();
    let ctl = t.control.to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let mut v = vec!["netns", "exec", &t.host.name, "setpriv"];
        let _ = &mut v;
        std::process::Command::new("ip")
            .args(["netns", "exec", &t.host.name])
            .args(args)
            .output()
            .unwrap()
    };
    let nb = bin("netbuf");
    let o = run(&[
        &nb,
        "run",
        "--guest-if",
        "nope0",
        "--uplink-if",
        "hup",
        "--control",
        &ctl,
    ]);
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope0"));
    let o = run(&[&nb, "run", "--guest-if", "gh", "--control", &ctl]);
    assert_eq!(o.status.code(), Some(2), "user backend without uplink");
    let o = run(&[
        &nb,
        "run",
        "--guest-if",
        "gh",
        "--uplink-if",
        "gh",
        "--control",
        &ctl,
    ]);
    assert_eq!(o.status.code(), Some(2), "same interface twice");
    let o = run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        &nb,
        "run",
        "--guest-if",
        "gh",
        "--uplink-if",
        "hup",
        "--control",
        "/tmp/x.sock",
    ]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "no privileges: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = std::process::Command::new(&nb)
        .args(["ctl", "--control", "/nonexistent.sock", "stats"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    let o = std::process::Command::new(&nb)
        .args(["run"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
