//! checkpointd's etcd witness against a real etcd (Debian's etcd-server, one member on
//! loopback ports of its own): creating and bumping the generation, the compare-and-swap that
//! exactly one side wins, a retry that recognises its own landed attempt (an answer lost in
//! flight), and an unreachable witness answering Unknown within the timeout.

use checkpointd::core::claim::Outcome;
use checkpointd::witness::{EtcdWitness, Witness};
use std::time::{Duration, Instant};

fn witness(port: u16, me: &str, timeout_ms: u64) -> EtcdWitness {
    EtcdWitness::new(
        vec![format!("http://127.0.0.1:{port}")],
        "/remus-test",
        "vm1",
        me.into(),
        Duration::from_millis(timeout_ms),
    )
    .unwrap()
}

#[test]
fn exactly_one_side_wins_and_a_lost_answer_is_recognised() {
    let dir = tempfile_dir();
    let (etcd, client) = remus_tests::etcd::loopback(&dir);
    let mut primary = witness(client, "primary@t/1", 2000);
    let mut backup = witness(client, "backup@t/2", 2000);
    let t = Instant::now();
    let (g, known) = loop {
        match primary.start(Some(7)) {
            Ok(g) => break g,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "etcd never answered: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(
        (g.number, g.owner.as_str(), g.committed_epoch),
        (1, "primary@t/1", Some(7))
    );
    let (g2, known2) = primary.start(Some(9)).unwrap();
    assert_eq!(g2.number, 2, "a new protection bumps the generation");
    assert!(known2.revision > known.revision);
    // The backup knew generation 1: stale, it loses to what is there.
    assert_eq!(
        backup.try_advance(known, Some(9)),
        Outcome::Lost {
            owner: "primary@t/1".into(),
            number: 2
        }
    );
    // Both claim against generation 2: the first wins, the second loses to it.
    let won = match backup.try_advance(known2, Some(10)) {
        Outcome::Won(r) => r,
        o => panic!("{o:?}"),
    };
    assert_eq!(won.number, 3);
    assert_eq!(
        primary.try_advance(known2, Some(11)),
        Outcome::Lost {
            owner: "backup@t/2".into(),
            number: 3
        }
    );
    // The backup's answer was lost and it retries the same claim: its own write is recognised.
    assert_eq!(backup.try_advance(known2, Some(10)), Outcome::Won(won));
    let (now, _) = backup.read().unwrap().unwrap();
    assert_eq!(
        (now.number, now.owner.as_str(), now.committed_epoch),
        (3, "backup@t/2", Some(10))
    );

    // The witness dies: Unknown, within the timeout (plus connection set-up), never a win.
    drop(etcd);
    let mut late = witness(client, "primary@t/3", 300);
    let t = Instant::now();
    match late.try_advance(won, None) {
        Outcome::Unknown(e) => assert!(e.contains("witness"), "{e}"),
        o => panic!("{o:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(matches!(backup.try_advance(won, None), Outcome::Unknown(_)));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("remus-witness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
