//! Valid inputs for every fuzz target (tests/src/fuzz_targets.rs): the mutation fuzzer starts
//! from them, and `make fuzz` writes them as libFuzzer's initial corpus.

use remus_proto::Epoch;

/// An encoded frame as fuzz_targets::frame reads it: kind, epoch, payload.
fn as_input(encoded: &[u8]) -> Vec<u8> {
    let (f, _) = remus_proto::wire::decode(encoded, usize::MAX)
        .ok()
        .flatten()
        .expect("a frame");
    let mut v = vec![f.kind];
    v.extend(f.epoch.0.to_le_bytes());
    v.extend(f.payload);
    v
}

fn nbd_seeds() -> Vec<Vec<u8>> {
    let mut go = vec![0u8];
    go.extend(7u32.to_be_bytes()); // OPT_GO
    go.extend(4u32.to_be_bytes());
    go.extend(b"disk");
    go.extend(0u16.to_be_bytes());
    let mut req = vec![2u8, 0, 0, 0, 0];
    req.extend(0x2560_9513u32.to_be_bytes());
    req.extend(0u16.to_be_bytes());
    req.extend(1u16.to_be_bytes()); // WRITE
    req.extend(7u64.to_be_bytes());
    req.extend(4096u64.to_be_bytes());
    req.extend(4096u32.to_be_bytes());
    vec![go, req]
}

fn disk_frames() -> Vec<Vec<u8>> {
    use diskrep::repl::msg::{Failure, Hello, Msg};
    let frame = |m: Msg| as_input(&m.encode());
    vec![
        frame(Msg::Hello(Hello {
            version: 1,
            size: 1 << 20,
            export: "disk".into(),
            lineage: None,
        })),
        frame(Msg::Hello(Hello {
            version: 1,
            size: 1 << 20,
            export: "disk".into(),
            lineage: Some(diskrep::lineage::LineageId {
                id: 0x75d8_a604_35be_8179,
                fence: Some(3),
            }),
        })),
        frame(Msg::Write {
            epoch: Epoch(3),
            offset: 4096,
            data: vec![1; 64],
        }),
        frame(Msg::Zero {
            epoch: Epoch(3),
            offset: 0,
            len: 4096,
        }),
        frame(Msg::Barrier(Epoch(4))),
        frame(Msg::Failed(Failure::new(Some(Epoch(2)), "disk full"))),
    ]
}

fn checkpoint_frames() -> Vec<Vec<u8>> {
    use checkpointd::wire::Msg;
    let frame = |m: Msg| {
        let mut raw = Vec::new();
        m.write_to(&mut raw).expect("a frame");
        as_input(&raw)
    };
    let page = vec![5u8; checkpointd::ram::PAGE];
    vec![
        frame(Msg::Pages(Epoch(1), vec![(3, page.clone().into())])),
        frame(Msg::PagesZ {
            epoch: Epoch(2),
            base: Epoch(1),
            pages: vec![(3, checkpointd::compress::encode(&page, &[0; 4096]))],
        }),
        frame(Msg::DeviceZ {
            epoch: Epoch(2),
            base: Epoch(1),
            z: checkpointd::compress::encode_device(&[1, 2, 4, 9], &[1, 2, 3]),
        }),
        frame(Msg::End {
            epoch: Epoch(2),
            pages: 1,
            device_bytes: 4,
        }),
        frame(Msg::DiskFailed(Epoch(2), "no space".into())),
        frame(Msg::XenStream(
            Epoch(3),
            b"PAGES-DIRTY 0 xx\nCHECKPOINT 0\n".to_vec(),
        )),
    ]
}

fn auth_seeds() -> Vec<Vec<u8>> {
    use remus_proto::auth::handshake::Connector;
    use remus_proto::auth::{Key, Security, StreamKind};
    let sec = Security::Keyed {
        key: Key::from_bytes([7; 32]),
        encrypt: false,
    };
    let c = Connector::start(&sec, StreamKind::Disk).expect("randomness");
    let mut v = c.opening().to_vec();
    v.extend([0u8; 64]);
    vec![v]
}

/// (target name, seeds).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "nbd" => nbd_seeds(),
        "wire" => disk_frames()
            .iter()
            .map(|f| remus_proto::wire::encode(f[0], 0, Epoch(1), &f[9..]))
            .collect(),
        "auth" => auth_seeds(),
        "diskrep_msg" => disk_frames(),
        "checkpointd_msg" => checkpoint_frames(),
        "control" => vec![
            b"barrier 5\ncommit 7\nstatus json\nok committed=2 bytes=0\nerr STATE no\n".to_vec(),
        ],
        "config" => vec![b"name = \"vm1\"\n[guest]\nqemu = [\"qemu-system-x86_64\"]\nram_mib = 256\nmac = \"52:54:00:12:34:56\"\n[disk]\nimage = \"/img\"\n[replication]\nbackup = \"10.0.0.2\"\nkey_file = \"/etc/remus/vm1.key\"\nencrypt = true\n[witness]\nendpoints = [\"http://10.0.0.9:2379\"]\n".to_vec()],
        _ => Vec::new(),
    }
}
