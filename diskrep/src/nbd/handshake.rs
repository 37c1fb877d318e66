//! Fixed-newstyle option negotiation, as a pure function from one option to the bytes to send
//! back and what happens next. The I/O shell in `server.rs` only moves bytes.

use super::consts::*;

#[derive(Debug, Clone)]
pub struct Export {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
}

impl Export {
    pub fn transmission_flags(&self) -> u16 {
        let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
        if self.read_only {
            f |= TF_READ_ONLY;
        } else {
            f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
        }
        f
    }

    fn matches(&self, name: &[u8]) -> bool {
        // The empty name is the default export.
        name.is_empty() || name == self.name.as_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next option.
    Continue,
    /// Negotiation is over: enter the transmission phase.
    Transmit,
    /// The client aborted (after our ACK).
    Abort,
    /// Close the connection without further replies (EXPORT_NAME of an unknown export).
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Vec<u8>,
    pub next: Next,
}

pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

fn option_reply(out: &mut Vec<u8>, opt: u32, ty: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn error(opt: u32, ty: u32, msg: &str) -> Outcome {
    let mut reply = Vec::new();
    option_reply(&mut reply, opt, ty, msg.as_bytes());
    Outcome {
        reply,
        next: Next::Continue,
    }
}

/// Handles one option. `no_zeroes`: the client set NBD_FLAG_C_NO_ZEROES.
pub fn handle_option(opt: u32, data: &[u8], export: &Export, no_zeroes: bool) -> Outcome {
    match opt {
        OPT_EXPORT_NAME => {
            if !export.matches(data) {
                return Outcome {
                    reply: Vec::new(),
                    next: Next::Close,
                };
            }
            let mut reply = Vec::with_capacity(134);
            reply.extend_from_slice(&export.size.to_be_bytes());
            reply.extend_from_slice(&export.transmission_flags().to_be_bytes());
            if !no_zeroes {
                reply.extend_from_slice(&[0u8; 124]);
            }
            Outcome {
                reply,
                next: Next::Transmit,
            }
        }
        OPT_ABORT => {
            let mut reply = Vec::new();
            option_reply(&mut reply, opt, REP_ACK, &[]);
            Outcome {
                reply,
                next: Next::Abort,
            }
        }
        OPT_LIST => {
            if !data.is_empty() {
                return error(opt, REP_ERR_INVALID, "LIST takes no data");
            }
            let mut reply = Vec::new();
            let mut d = (export.name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(export.name.as_bytes());
            option_reply(&mut reply, opt, REP_SERVER, &d);
            option_reply(&mut reply, opt, REP_ACK, &[]);
            Outcome {
                reply,
                next: Next::Continue,
            }
        }
        OPT_INFO | OPT_GO => {
            // u32 name length, name, u16 number of info requests, that many u16.
            let Some(nl) = data.get(0..4) else {
                return error(opt, REP_ERR_INVALID, "truncated INFO/GO request");
            };
            let nl = u32::from_be_bytes([nl[0], nl[1], nl[2], nl[3]]) as usize;
            let Some(name) = data.get(4..4 + nl) else {
                return error(opt, REP_ERR_INVALID, "name longer than the option");
            };
            let Some(nr) = data.get(4 + nl..6 + nl) else {
                return error(opt, REP_ERR_INVALID, "truncated INFO/GO request");
            };
            let nr = u16::from_be_bytes([nr[0], nr[1]]) as usize;
            if data.len() != 6 + nl + 2 * nr {
                return error(opt, REP_ERR_INVALID, "INFO/GO request length mismatch");
            }
            if !export.matches(name) {
                return error(opt, REP_ERR_UNKNOWN, "no such export");
            }
            let mut reply = Vec::new();
            let mut info = INFO_EXPORT.to_be_bytes().to_vec();
            info.extend_from_slice(&export.size.to_be_bytes());
            info.extend_from_slice(&export.transmission_flags().to_be_bytes());
            option_reply(&mut reply, opt, REP_INFO, &info);
            let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            bs.extend_from_slice(&MIN_BLOCK.to_be_bytes());
            bs.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
            bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
            option_reply(&mut reply, opt, REP_INFO, &bs);
            option_reply(&mut reply, opt, REP_ACK, &[]);
            Outcome {
                reply,
                next: if opt == OPT_GO {
                    Next::Transmit
                } else {
                    Next::Continue
                },
            }
        }
        _ => error(opt, REP_ERR_UNSUP, "option not supported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn export() -> Export {
        Export {
            name: "disk".into(),
            size: 1 << 30,
            read_only: false,
        }
    }

    fn go(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    fn reply_types(mut b: &[u8]) -> Vec<u32> {
        let mut v = Vec::new();
        while b.len() >= 20 {
            v.push(u32::from_be_bytes([b[12], b[13], b[14], b[15]]));
            let len = u32::from_be_bytes([b[16], b[17], b[18], b[19]]) as usize;
            b = &b[20 + len..];
        }
        v
    }

    #[test]
    fn go_and_info() {
        let o = handle_option(OPT_GO, &go("disk", &[INFO_BLOCK_SIZE]), &export(), true);
        assert_eq!(o.next, Next::Transmit);
        assert_eq!(reply_types(&o.reply), vec![REP_INFO, REP_INFO, REP_ACK]);
        let o = handle_option(OPT_INFO, &go("", &[]), &export(), true);
        assert_eq!(o.next, Next::Continue);
        let o = handle_option(OPT_GO, &go("other", &[]), &export(), true);
        assert_eq!(reply_types(&o.reply), vec![REP_ERR_UNKNOWN]);
        assert_eq!(o.next, Next::Continue);
        let mut bad = go("disk", &[1]);
        bad.push(0);
        let o = handle_option(OPT_GO, &bad, &export(), true);
        assert_eq!(reply_types(&o.reply), vec![REP_ERR_INVALID]);
    }

    #[test]
    fn export_name_list_abort_unsupported() {
        let o = handle_option(OPT_EXPORT_NAME, b"disk", &export(), false);
        assert_eq!(o.reply.len(), 8 + 2 + 124);
        assert_eq!(o.next, Next::Transmit);
        assert_eq!(
            handle_option(OPT_EXPORT_NAME, b"x", &export(), true).next,
            Next::Close
        );
        let o = handle_option(OPT_LIST, &[], &export(), true);
        assert_eq!(reply_types(&o.reply), vec![REP_SERVER, REP_ACK]);
        assert_eq!(
            handle_option(OPT_ABORT, &[], &export(), true).next,
            Next::Abort
        );
        let o = handle_option(8, &[], &export(), true);
        assert_eq!(reply_types(&o.reply), vec![REP_ERR_UNSUP]);
        assert_eq!(o.next, Next::Continue);
    }

    proptest! {
        #[test]
        fn options_never_panic(opt in 0u32..12, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = handle_option(opt, &data, &export(), true);
        }
    }
}
