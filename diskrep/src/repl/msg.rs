//! The replication stream's messages, carried in remus-proto wire frames (length-checked,
//! crc32c-checked). Pure encode/decode.
//!
//! primary → backup: HELLO, WRITE/ZERO (tagged with their epoch), BARRIER N (epoch N starts:
//! every write of earlier epochs has been sent), RESYNC_WRITE/RESYNC_ZERO (applied at once,
//! outside epochs), SYNC_DONE E (the image is consistent once E commits), HEARTBEAT.
//! backup → primary: HELLO_ACK, COMMITTED N, HEARTBEAT, FAILED (why the backup gives up on the
//! stream, or could not commit an epoch; sent just before it stops, so that the primary shows
//! the backup's own error rather than a broken pipe).

use remus_proto::wire::{self, Frame};
use remus_proto::Epoch;
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame payload: a maximal NBD write plus its offset.
pub const MAX_PAYLOAD: usize = (32 << 20) + 16;

const HELLO: u8 = 1;
const HELLO_ACK: u8 = 2;
const WRITE: u8 = 3;
const ZERO: u8 = 4;
const BARRIER: u8 = 5;
const RESYNC_WRITE: u8 = 6;
const RESYNC_ZERO: u8 = 7;
const SYNC_DONE: u8 = 8;
const COMMITTED: u8 = 9;
const HEARTBEAT: u8 = 10;
const FAILED: u8 = 11;
/// Longest error text a FAILED message carries; longer texts are cut.
pub const MAX_ERROR_TEXT: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub size: u64,
    pub export: String,
    /// The primary's lineage: a backup brought up to date adopts it.
    #[serde(default)]
    pub lineage: Option<crate::lineage::LineageId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: u32,
    pub size: u64,
    pub committed_through: Option<Epoch>,
    /// What the backup's image holds (its claim and activity log): decides the resync.
    #[serde(default)]
    pub lineage: Option<crate::lineage::plan::LineageView>,
}

/// Why the backup stopped taking the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The epoch whose commit failed: the backup's image may hold part of it and every later
    /// commit is refused until the primary has resynced. None: the stream itself failed (a
    /// resync write that could not be applied, a malformed frame, a full buffer).
    pub commit: Option<Epoch>,
    /// The backup's error, e.g. "No space left on device (os error 28)".
    pub error: String,
}

impl Failure {
    pub fn new(commit: Option<Epoch>, error: impl Into<String>) -> Failure {
        let mut error: String = error.into();
        if error.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        Failure { commit, error }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.commit {
            Some(e) => write!(f, "the backup could not commit epoch {e}: {}", self.error),
            None => write!(f, "the backup refused the stream: {}", self.error),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    HelloAck(HelloAck),
    Write {
        epoch: Epoch,
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        epoch: Epoch,
        offset: u64,
        len: u64,
    },
    Barrier(Epoch),
    ResyncWrite {
        offset: u64,
        data: Vec<u8>,
    },
    ResyncZero {
        offset: u64,
        len: u64,
    },
    SyncDone(Epoch),
    Committed(Epoch),
    Heartbeat,
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

fn u64_at(p: &[u8], o: usize) -> Option<u64> {
    p.get(o..o + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

impl Msg {
    /// Encodes a write without building a `Msg` (saves a copy on the hot path).
    pub fn encode_write(epoch: Epoch, offset: u64, data: &[u8], resync: bool) -> Vec<u8> {
        let kind = if resync { RESYNC_WRITE } else { WRITE };
        wire::encode_parts(kind, 0, epoch, &[&offset.to_le_bytes(), data])
    }

    pub fn encode(&self) -> Vec<u8> {
        let range = |o: u64, l: u64| {
            let mut p = o.to_le_bytes().to_vec();
            p.extend_from_slice(&l.to_le_bytes());
            p
        };
        match self {
            Msg::Hello(h) => wire::encode(
                HELLO,
                0,
                Epoch(0),
                &serde_json::to_vec(h).unwrap_or_default(),
            ),
            Msg::HelloAck(h) => wire::encode(
                HELLO_ACK,
                0,
                Epoch(0),
                &serde_json::to_vec(h).unwrap_or_default(),
            ),
            Msg::Write {
                epoch,
                offset,
                data,
            } => Msg::encode_write(*epoch, *offset, data, false),
            Msg::Zero { epoch, offset, len } => {
                wire::encode(ZERO, 0, *epoch, &range(*offset, *len))
            }
            Msg::Barrier(e) => wire::encode(BARRIER, 0, *e, &[]),
            Msg::ResyncWrite { offset, data } => Msg::encode_write(Epoch(0), *offset, data, true),
            Msg::ResyncZero { offset, len } => {
                wire::encode(RESYNC_ZERO, 0, Epoch(0), &range(*offset, *len))
            }
            Msg::SyncDone(e) => wire::encode(SYNC_DONE, 0, *e, &[]),
            Msg::Committed(e) => wire::encode(COMMITTED, 0, *e, &[]),
            Msg::Heartbeat => wire::encode(HEARTBEAT, 0, Epoch(0), &[]),
            Msg::Failed(f) => wire::encode(
                FAILED,
                0,
                Epoch(0),
                &serde_json::to_vec(f).unwrap_or_default(),
            ),
        }
    }

    pub fn decode(f: Frame) -> Result<Msg, MsgError> {
        let p = f.payload;
        let range = |what| -> Result<(u64, u64), MsgError> {
            if p.len() != 16 {
                return Err(MsgError::Malformed(what));
            }
            Ok((
                u64_at(&p, 0).ok_or(MsgError::Malformed(what))?,
                u64_at(&p, 8).ok_or(MsgError::Malformed(what))?,
            ))
        };
        Ok(match f.kind {
            HELLO => {
                Msg::Hello(serde_json::from_slice(&p).map_err(|_| MsgError::Malformed("HELLO"))?)
            }
            HELLO_ACK => Msg::HelloAck(
                serde_json::from_slice(&p).map_err(|_| MsgError::Malformed("HELLO_ACK"))?,
            ),
            WRITE | RESYNC_WRITE => {
                let offset = u64_at(&p, 0).ok_or(MsgError::Malformed("WRITE"))?;
                let data = p[8..].to_vec();
                if f.kind == WRITE {
                    Msg::Write {
                        epoch: f.epoch,
                        offset,
                        data,
                    }
                } else {
                    Msg::ResyncWrite { offset, data }
                }
            }
            ZERO => {
                let (offset, len) = range("ZERO")?;
                Msg::Zero {
                    epoch: f.epoch,
                    offset,
                    len,
                }
            }
            RESYNC_ZERO => {
                let (offset, len) = range("RESYNC_ZERO")?;
                Msg::ResyncZero { offset, len }
            }
            BARRIER => Msg::Barrier(f.epoch),
            SYNC_DONE => Msg::SyncDone(f.epoch),
            COMMITTED => Msg::Committed(f.epoch),
            HEARTBEAT => Msg::Heartbeat,
            FAILED => {
                let f: Failure =
                    serde_json::from_slice(&p).map_err(|_| MsgError::Malformed("FAILED"))?;
                if f.error.len() > MAX_ERROR_TEXT {
                    return Err(MsgError::Malformed("FAILED"));
                }
                Msg::Failed(f)
            }
            k => return Err(MsgError::UnknownKind(k)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msgs = vec![
            Msg::Hello(Hello {
                version: 1,
                size: 10,
                export: "d".into(),
                lineage: Some(crate::lineage::LineageId {
                    id: 5,
                    fence: Some(2),
                }),
            }),
            Msg::HelloAck(HelloAck {
                version: 1,
                size: 10,
                committed_through: Some(Epoch(3)),
                lineage: None,
            }),
            Msg::Write {
                epoch: Epoch(4),
                offset: 512,
                data: vec![7; 100],
            },
            Msg::Zero {
                epoch: Epoch(4),
                offset: 0,
                len: 4096,
            },
            Msg::Barrier(Epoch(5)),
            Msg::ResyncWrite {
                offset: 1 << 20,
                data: vec![1, 2, 3],
            },
            Msg::ResyncZero { offset: 0, len: 1 },
            Msg::SyncDone(Epoch(9)),
            Msg::Committed(Epoch(8)),
            Msg::Heartbeat,
            Msg::Failed(Failure::new(Some(Epoch(2)), "No space left on device")),
            Msg::Failed(Failure::new(None, "x".repeat(5000))),
        ];
        for m in msgs {
            let bytes = m.encode();
            let (f, used) = wire::decode(&bytes, MAX_PAYLOAD).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(Msg::decode(f).unwrap(), m);
        }
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let f = wire::decode(&wire::encode(3, 0, Epoch(1), &[1, 2]), 100)
            .unwrap()
            .unwrap()
            .0;
        assert!(Msg::decode(f).is_err());
        let f = wire::decode(&wire::encode(4, 0, Epoch(1), &[0; 15]), 100)
            .unwrap()
            .unwrap()
            .0;
        assert!(Msg::decode(f).is_err());
        let f = wire::decode(&wire::encode(99, 0, Epoch(1), &[]), 100)
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(Msg::decode(f), Err(MsgError::UnknownKind(99)));
    }
}
