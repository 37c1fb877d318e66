//! Parsing and checking of transmission-phase requests. Pure: bytes in, a verdict out.

use super::consts::*;

pub const REQUEST_LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u16,
    pub ty: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        may_trim: bool,
    },
    Disconnect,
    /// A READ, WRITE, TRIM or WRITE_ZEROES of length 0 within the export. The NBD spec leaves
    /// its meaning to the server and says the server SHOULD NOT disconnect: it touches no byte,
    /// so it succeeds without doing anything (a READ answers with no data; nothing is
    /// replicated).
    Nothing,
}

/// The outcome of checking one request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok(Command),
    /// Answer with this errno. `drain` bytes of payload follow the header and must be read and
    /// thrown away to stay in sync (a refused WRITE).
    Refuse {
        errno: u32,
        drain: u32,
    },
}

/// Wrong magic: the stream is out of sync and the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMagic(pub u32);

pub fn parse_header(b: &[u8; REQUEST_LEN]) -> Result<Header, BadMagic> {
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_be_bytes(a)
    };
    Ok(Header {
        flags: u16::from_be_bytes([b[4], b[5]]),
        ty: u16::from_be_bytes([b[6], b[7]]),
        cookie: u64_at(8),
        offset: u64_at(16),
        len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    })
}

/// Checks a request against the export size and our limits.
pub fn check(h: &Header, export_size: u64, read_only: bool) -> Verdict {
    let known_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;
    // Payload that follows the header no matter what we think of it.
    let drain = if h.ty == CMD_WRITE { h.len } else { 0 };
    let refuse = |errno| Verdict::Refuse { errno, drain };
    if h.flags & !known_flags != 0 {
        return refuse(EINVAL);
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let in_range = h
        .offset
        .checked_add(u64::from(h.len))
        .is_some_and(|end| end <= export_size);
    let empty = h.len == 0;
    match h.ty {
        CMD_READ | CMD_WRITE if h.len > MAX_PAYLOAD => refuse(EOVERFLOW),
        CMD_READ if !in_range => refuse(EINVAL),
        CMD_READ if empty => Verdict::Ok(Command::Nothing),
        CMD_READ => Verdict::Ok(Command::Read {
            offset: h.offset,
            len: h.len,
        }),
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if read_only => refuse(EPERM),
        CMD_WRITE if !in_range => refuse(ENOSPC),
        CMD_TRIM | CMD_WRITE_ZEROES if !in_range => refuse(EINVAL),
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if empty => Verdict::Ok(Command::Nothing),
        CMD_WRITE => Verdict::Ok(Command::Write {
            offset: h.offset,
            len: h.len,
            fua,
        }),
        CMD_TRIM => Verdict::Ok(Command::Trim {
            offset: h.offset,
            len: h.len,
            fua,
        }),
        CMD_WRITE_ZEROES => Verdict::Ok(Command::WriteZeroes {
            offset: h.offset,
            len: h.len,
            fua,
            may_trim: h.flags & CMD_FLAG_NO_HOLE == 0,
        }),
        CMD_FLUSH => Verdict::Ok(Command::Flush),
        CMD_DISC => Verdict::Ok(Command::Disconnect),
        _ => refuse(EINVAL),
    }
}

pub fn simple_reply_header(errno: u32, cookie: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    r[4..8].copy_from_slice(&errno.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hdr(flags: u16, ty: u16, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&ty.to_be_bytes());
        b[8..16].copy_from_slice(&77u64.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        b
    }

    fn verdict(flags: u16, ty: u16, offset: u64, len: u32) -> Verdict {
        check(
            &parse_header(&hdr(flags, ty, offset, len)).unwrap(),
            1 << 20,
            false,
        )
    }

    #[test]
    fn checks() {
        assert_eq!(
            verdict(0, CMD_READ, 0, 4096),
            Verdict::Ok(Command::Read {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            verdict(0, CMD_READ, (1 << 20) - 1, 2),
            Verdict::Refuse {
                errno: EINVAL,
                drain: 0
            }
        );
        assert_eq!(
            verdict(0, CMD_WRITE, 1 << 20, 512),
            Verdict::Refuse {
                errno: ENOSPC,
                drain: 512
            }
        );
        assert_eq!(
            verdict(0, CMD_READ, 0, MAX_PAYLOAD + 1),
            Verdict::Refuse {
                errno: EOVERFLOW,
                drain: 0
            }
        );
        assert_eq!(
            verdict(0, CMD_WRITE, 0, MAX_PAYLOAD + 1),
            Verdict::Refuse {
                errno: EOVERFLOW,
                drain: MAX_PAYLOAD + 1
            }
        );
        assert_eq!(
            verdict(0, CMD_READ, u64::MAX, 1),
            Verdict::Refuse {
                errno: EINVAL,
                drain: 0
            },
            "offset + len overflows"
        );
        assert_eq!(
            verdict(0x80, CMD_READ, 0, 1),
            Verdict::Refuse {
                errno: EINVAL,
                drain: 0
            },
            "unknown flag"
        );
        assert_eq!(
            verdict(0, 99, 0, 0),
            Verdict::Refuse {
                errno: EINVAL,
                drain: 0
            }
        );
        assert!(matches!(
            verdict(CMD_FLAG_FUA, CMD_WRITE, 0, 1),
            Verdict::Ok(Command::Write { fua: true, .. })
        ));
        for ty in [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(
                verdict(0, ty, 4096, 0),
                Verdict::Ok(Command::Nothing),
                "zero-length {ty} inside the export"
            );
            assert_eq!(
                verdict(CMD_FLAG_FUA, ty, 1 << 20, 0),
                Verdict::Ok(Command::Nothing)
            );
            assert!(
                matches!(verdict(0, ty, (1 << 20) + 1, 0), Verdict::Refuse { .. }),
                "zero-length {ty} past the end"
            );
        }
        let mut b = hdr(0, 0, 0, 0);
        b[0] = 0;
        assert!(parse_header(&b).is_err());
    }

    proptest! {
        #[test]
        fn any_header_gets_a_verdict_within_bounds(b in proptest::array::uniform28(any::<u8>()),
                                                   size in 0u64..(1 << 40)) {
            if let Ok(h) = parse_header(&b) {
                match check(&h, size, false) {
                    Verdict::Ok(Command::Read { offset, len })
                    | Verdict::Ok(Command::Write { offset, len, .. })
                    | Verdict::Ok(Command::Trim { offset, len, .. })
                    | Verdict::Ok(Command::WriteZeroes { offset, len, .. }) => {
                        prop_assert!(offset + u64::from(len) <= size);
                        prop_assert!(len <= MAX_PAYLOAD);
                        prop_assert!(len > 0, "a zero-length request is Nothing");
                    }
                    Verdict::Ok(Command::Nothing) => {
                        prop_assert_eq!(h.len, 0);
                        prop_assert!(h.offset <= size);
                    }
                    Verdict::Refuse { drain, .. } => {
                        prop_assert_eq!(drain, if h.ty == CMD_WRITE { h.len } else { 0 });
                    }
                    _ => {}
                }
            }
        }
    }
}
