//! The checkpoint stream, in remus-proto frames (version, kind, epoch, length, crc32c).
//!
//! primary → backup: HELLO (JSON), then per checkpoint BEGIN, PAGES* (page index + 4 KiB, up
//! to 64 pages a frame) or PAGES_Z (compressed), DEVICE (the device state) or DEVICE_Z (its
//! XOR with the previous one, LZ4'd), END (page and device byte counts, checked).
//! A Xen checkpoint carries, instead of PAGES and DEVICE, XEN_STREAM frames: libxenguest's
//! own stream for that checkpoint, in order, cut only at checkpoint boundaries (END's
//! `device_bytes` counts its bytes).
//! backup → primary: ACK N (memory and disk of N are safe), DISK_FAILED N (diskrep could not
//! commit N; UTF-8 text says why). Both: HEARTBEAT.

use crate::compress::Encoded;
use crate::ram::PAGE;
use remus_proto::wire::{self, Frame};
use remus_proto::Epoch;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// 2: DEVICE_Z (compressed device state), DISK_FAILED, and the device state may be a migration
/// stream. 3: XEN_STREAM (Xen checkpoints in the same BEGIN/END framing as QEMU's).
pub const VERSION: u32 = 3;
pub const PAGES_PER_FRAME: usize = 64;
pub const MAX_PAYLOAD: usize = 16 << 20;

const HELLO: u8 = 1;
const BEGIN: u8 = 2;
const PAGES: u8 = 3;
const DEVICE: u8 = 4;
const END: u8 = 5;
const ACK: u8 = 6;
const HEARTBEAT: u8 = 7;
const PAGES_Z: u8 = 8;
const STOP: u8 = 9;
const TAKING_OVER: u8 = 10;
const DISK_FAILED: u8 = 11;
/// Longest reason carried by DISK_FAILED; longer ones are cut (at a character boundary).
pub const MAX_REASON: usize = 1024;
const DEVICE_Z: u8 = 12;
const XEN_STREAM: u8 = 13;
/// Most bytes of libxenguest's stream in one XEN_STREAM frame.
pub const XEN_STREAM_CHUNK: usize = 1 << 20;
/// In a PAGES_Z entry's length word: the data is the raw page, not an XOR delta.
const RAW_FLAG: u32 = 1 << 31;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub ram_size: u64,
    pub page_size: u32,
    pub vm: String,
    /// The epoch the first checkpoint closes (runs continue numbering where netbuf and
    /// diskrep left off).
    #[serde(default)]
    pub first_epoch: u64,
    /// "qemu" or "xen": a backup refuses a stream its driver cannot restore.
    #[serde(default)]
    pub driver: String,
    /// The generation the primary started at the witness (absent: no witness). The backup
    /// claims against exactly this revision, so it needs no read that could race.
    #[serde(default)]
    pub generation: Option<remus_proto::generation::GenerationRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    Begin(Epoch),
    Pages(Epoch, Vec<(u64, Box<[u8]>)>),
    /// Compressed pages of `epoch`, XOR deltas against the pages of checkpoint `base`.
    PagesZ {
        epoch: Epoch,
        base: Epoch,
        pages: Vec<(u64, Encoded)>,
    },
    Device(Epoch, Vec<u8>),
    /// Compressed device state of `epoch`: LZ4 of its XOR with the device state of `base`.
    DeviceZ {
        epoch: Epoch,
        base: Epoch,
        z: Vec<u8>,
    },
    End {
        epoch: Epoch,
        pages: u64,
        device_bytes: u64,
    },
    /// A piece of libxenguest's stream for Xen checkpoint `epoch`.
    XenStream(Epoch, Vec<u8>),
    Ack(Epoch),
    Heartbeat,
    /// Primary → backup: protection ends on purpose; do not fail over.
    Stop,
    /// Backup → primary: the backup is restoring the VM from checkpoint N; a primary that
    /// hears this must stop its own copy at once (two running copies would diverge).
    TakingOver(Epoch),
    /// Backup → primary: diskrep could not commit checkpoint N (the text says why). Nothing
    /// of N or later will be acknowledged and the backup can no longer restore: the primary
    /// ends protection.
    DiskFailed(Epoch, String),
}

/// `s` cut to at most `max` bytes without splitting a character.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed {what} message"),
    )
}

impl Msg {
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let e0 = Epoch(0);
        match self {
            Msg::Hello(h) => wire::write_frame(w, HELLO, 0, e0, &serde_json::to_vec(h)?),
            Msg::Begin(e) => wire::write_frame(w, BEGIN, 0, *e, &[]),
            Msg::Pages(e, pages) => {
                let mut p = Vec::with_capacity(pages.len() * (8 + PAGE));
                for (idx, data) in pages {
                    p.extend_from_slice(&idx.to_le_bytes());
                    p.extend_from_slice(data);
                }
                wire::write_frame(w, PAGES, 0, *e, &p)
            }
            Msg::PagesZ { epoch, base, pages } => {
                let mut p = base.0.to_le_bytes().to_vec();
                for (idx, enc) in pages {
                    p.extend_from_slice(&idx.to_le_bytes());
                    let (tag, data): (u32, &[u8]) = match enc {
                        Encoded::Raw(r) => (r.len() as u32 | RAW_FLAG, r),
                        Encoded::Xor(z) => (z.len() as u32, z),
                    };
                    p.extend_from_slice(&tag.to_le_bytes());
                    p.extend_from_slice(data);
                }
                wire::write_frame(w, PAGES_Z, 0, *epoch, &p)
            }
            Msg::Device(e, d) => wire::write_frame(w, DEVICE, 0, *e, d),
            Msg::DeviceZ { epoch, base, z } => {
                let mut p = base.0.to_le_bytes().to_vec();
                p.extend_from_slice(z);
                wire::write_frame(w, DEVICE_Z, 0, *epoch, &p)
            }
            Msg::End {
                epoch,
                pages,
                device_bytes,
            } => {
                let mut p = pages.to_le_bytes().to_vec();
                p.extend_from_slice(&device_bytes.to_le_bytes());
                wire::write_frame(w, END, 0, *epoch, &p)
            }
            Msg::XenStream(e, b) => wire::write_frame(w, XEN_STREAM, 0, *e, b),
            Msg::Ack(e) => wire::write_frame(w, ACK, 0, *e, &[]),
            Msg::Heartbeat => wire::write_frame(w, HEARTBEAT, 0, e0, &[]),
            Msg::Stop => wire::write_frame(w, STOP, 0, e0, &[]),
            Msg::TakingOver(e) => wire::write_frame(w, TAKING_OVER, 0, *e, &[]),
            Msg::DiskFailed(e, why) => {
                wire::write_frame(w, DISK_FAILED, 0, *e, cut(why, MAX_REASON).as_bytes())
            }
        }
    }

    /// Reads one message; `Ok(None)` at a clean end of stream.
    pub fn read_from<R: Read>(r: &mut R) -> io::Result<Option<Msg>> {
        let Some(f) = wire::read_frame(r, MAX_PAYLOAD)? else {
            return Ok(None);
        };
        Msg::decode(f).map(Some)
    }

    pub fn decode(f: Frame) -> io::Result<Msg> {
        let p = f.payload;
        let u64_at = |o: usize| -> io::Result<u64> {
            p.get(o..o + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .ok_or_else(|| bad("END"))
        };
        Ok(match f.kind {
            HELLO => Msg::Hello(serde_json::from_slice(&p).map_err(|_| bad("HELLO"))?),
            BEGIN => Msg::Begin(f.epoch),
            PAGES => {
                if !p.len().is_multiple_of(8 + PAGE) || p.len() / (8 + PAGE) > PAGES_PER_FRAME {
                    return Err(bad("PAGES"));
                }
                let pages = p
                    .chunks(8 + PAGE)
                    .map(|c| {
                        let idx = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
                        (idx, Box::from(&c[8..]))
                    })
                    .collect();
                Msg::Pages(f.epoch, pages)
            }
            PAGES_Z => {
                let base = Epoch(u64_at(0)?);
                let mut pages = Vec::new();
                let mut o = 8;
                while o < p.len() {
                    let idx = u64_at(o)?;
                    let tag = p
                        .get(o + 8..o + 12)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| bad("PAGES_Z"))?;
                    let len = (tag & !RAW_FLAG) as usize;
                    let data = p.get(o + 12..o + 12 + len).ok_or_else(|| bad("PAGES_Z"))?;
                    let enc = if tag & RAW_FLAG != 0 {
                        if len != PAGE {
                            return Err(bad("PAGES_Z"));
                        }
                        Encoded::Raw(Box::from(data))
                    } else {
                        Encoded::Xor(data.to_vec())
                    };
                    pages.push((idx, enc));
                    if pages.len() > PAGES_PER_FRAME {
                        return Err(bad("PAGES_Z"));
                    }
                    o += 12 + len;
                }
                Msg::PagesZ {
                    epoch: f.epoch,
                    base,
                    pages,
                }
            }
            DEVICE => Msg::Device(f.epoch, p),
            DEVICE_Z => Msg::DeviceZ {
                epoch: f.epoch,
                base: Epoch(u64_at(0).map_err(|_| bad("DEVICE_Z"))?),
                z: p[8..].to_vec(),
            },
            END => {
                if p.len() != 16 {
                    return Err(bad("END"));
                }
                Msg::End {
                    epoch: f.epoch,
                    pages: u64_at(0)?,
                    device_bytes: u64_at(8)?,
                }
            }
            XEN_STREAM => {
                if p.len() > XEN_STREAM_CHUNK {
                    return Err(bad("XEN_STREAM"));
                }
                Msg::XenStream(f.epoch, p)
            }
            ACK => Msg::Ack(f.epoch),
            HEARTBEAT => Msg::Heartbeat,
            STOP => Msg::Stop,
            TAKING_OVER => Msg::TakingOver(f.epoch),
            DISK_FAILED => {
                if p.len() > MAX_REASON {
                    return Err(bad("DISK_FAILED"));
                }
                Msg::DiskFailed(
                    f.epoch,
                    String::from_utf8(p).map_err(|_| bad("DISK_FAILED"))?,
                )
            }
            k => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown message kind {k}"),
                ))
            }
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
                ram_size: 1 << 20,
                page_size: 4096,
                vm: "vm".into(),
                first_epoch: 7,
                driver: "qemu".into(),
                generation: Some(remus_proto::generation::GenerationRef {
                    number: 3,
                    revision: 40,
                }),
            }),
            Msg::Begin(Epoch(3)),
            Msg::Pages(
                Epoch(3),
                vec![(7, vec![1u8; PAGE].into()), (9, vec![2u8; PAGE].into())],
            ),
            Msg::PagesZ {
                epoch: Epoch(3),
                base: Epoch(2),
                pages: vec![
                    (1, Encoded::Xor(vec![9, 9, 9])),
                    (2, Encoded::Raw(vec![4u8; PAGE].into())),
                ],
            },
            Msg::Device(Epoch(3), vec![5; 100]),
            Msg::DeviceZ {
                epoch: Epoch(3),
                base: Epoch(2),
                z: vec![1, 2, 3],
            },
            Msg::End {
                epoch: Epoch(3),
                pages: 2,
                device_bytes: 100,
            },
            Msg::XenStream(Epoch(3), b"CHECKPOINT 0\n".to_vec()),
            Msg::Ack(Epoch(3)),
            Msg::Heartbeat,
            Msg::Stop,
            Msg::TakingOver(Epoch(9)),
            Msg::DiskFailed(Epoch(4), "diskrep refused 'commit 4': No space left".into()),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            m.write_to(&mut buf).unwrap();
        }
        let mut r = &buf[..];
        for m in msgs {
            assert_eq!(Msg::read_from(&mut r).unwrap(), Some(m));
        }
        assert_eq!(Msg::read_from(&mut r).unwrap(), None);
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let mut buf = Vec::new();
        Msg::DiskFailed(Epoch(1), "é".repeat(MAX_REASON))
            .write_to(&mut buf)
            .unwrap();
        match Msg::read_from(&mut &buf[..]).unwrap() {
            Some(Msg::DiskFailed(_, why)) => assert_eq!(why, "é".repeat(MAX_REASON / 2)),
            m => panic!("{m:?}"),
        }
        let f = wire::decode(
            &wire::encode(DISK_FAILED, 0, Epoch(1), &[0xff]),
            MAX_PAYLOAD,
        )
        .unwrap()
        .unwrap()
        .0;
        assert!(Msg::decode(f).is_err(), "not UTF-8");
    }

    #[test]
    fn malformed_pages_are_refused() {
        let f = wire::decode(&wire::encode(PAGES, 0, Epoch(1), &[0u8; 100]), MAX_PAYLOAD)
            .unwrap()
            .unwrap()
            .0;
        assert!(Msg::decode(f).is_err());
    }
}
