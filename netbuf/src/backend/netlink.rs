//! The plug backend's rtnetlink client: messages typed by `netlink-packet-route`, sent on a
//! blocking `netlink-sys` socket, one request at a time, each acknowledged before the next.
//!
//! Not `rtnetlink`, which is an async (tokio) handle layer over these same two crates: netbuf's
//! control path is synchronous (one control request, one netlink request, wait for the kernel),
//! so a runtime would add threads and a dependency tree for nothing, and rtnetlink's current
//! release needs a newer Rust than this workspace's. Errors carry the kernel's extended-ack
//! text (e.g. "Specified qdisc kind is unknown"), which `netlink-packet-core` leaves unparsed
//! in the error message's payload; [`ext_ack_text`] reads it.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_ECHO, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};

/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The header of the request the kernel echoes in an error.
const NLMSG_HDRLEN: usize = 16;
/// The kernel answers at once; a reply that never comes is an error, not a control request
/// (and the backend's lock) blocked for ever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Only the error text is lost if the kernel refuses these.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on our own socket with a valid timeval.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            sock,
            seq: 1,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut bytes = vec![0u8; m.buffer_len()];
        m.serialize(&mut bytes);
        self.sock.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads the replies to `seq`, handing each to `each` until it says done.
    fn replies(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Option<io::Result<()>>,
    ) -> io::Result<()> {
        loop {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel")
                } else {
                    e
                }
            })?;
            let mut off = 0;
            while off < self.buf.len() {
                let b = NetlinkBuffer::new_checked(&self.buf[off..])
                    .map_err(|e| invalid(format!("netlink reply: {e}")))?;
                let len = b.length() as usize;
                let m =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..off + len])
                        .map_err(|e| invalid(format!("netlink reply: {e}")))?;
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                if let Some(done) = each(m) {
                    return done;
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement. `what` names the operation in errors.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.replies(seq, |m| match m.payload {
            NetlinkPayload::Error(e) => Some(error(m.header.flags, &e, what)),
            _ => None,
        })
    }

    /// Sends a (non-dump) get and returns its answer. The kernel sends a tc object's answer to
    /// the asker only when asked to echo (otherwise it only notifies the tc multicast group);
    /// the acknowledgement that follows ends the exchange.
    pub fn get(&mut self, msg: RouteNetlinkMessage, what: &str) -> io::Result<RouteNetlinkMessage> {
        let seq = self.send(msg, NLM_F_ECHO | NLM_F_ACK)?;
        let mut answer = None;
        self.replies(seq, |m| match m.payload {
            NetlinkPayload::Error(e) => Some(error(m.header.flags, &e, what)),
            NetlinkPayload::InnerMessage(r) => {
                answer.get_or_insert(r);
                None
            }
            _ => None,
        })?;
        answer.ok_or_else(|| invalid(format!("{what}: no answer")))
    }
}

/// An acknowledgement (`Ok`) or the kernel's refusal, with its extended-ack text.
fn error(flags: u16, e: &netlink_packet_core::ErrorMessage, what: &str) -> io::Result<()> {
    let Some(code) = e.code else {
        return Ok(());
    };
    let os = io::Error::from_raw_os_error(-code.get());
    let msg = match ext_ack_text(flags, &e.header) {
        Some(text) => format!("{what}: {os}: {text}"),
        None => format!("{what}: {os}"),
    };
    Err(io::Error::new(os.kind(), msg))
}

/// The extended ack's message in an error's payload (after the error code): the echoed request
/// (its header only when the kernel capped it), then attributes.
pub fn ext_ack_text(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = payload.get(0..4)?;
        u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize
    };
    NlasIterator::new(payload.get(echoed..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    #[test]
    fn reads_the_extended_ack_text() {
        // A capped echo: the request's 16-byte header, then TLVs (an offset, then the message).
        let mut p = vec![0u8; 16];
        p.extend(tlv(2, &8u32.to_ne_bytes()));
        p.extend(tlv(1, b"Specified qdisc kind is unknown\0"));
        assert_eq!(
            ext_ack_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &p).as_deref(),
            Some("Specified qdisc kind is unknown")
        );
        assert_eq!(ext_ack_text(NLM_F_CAPPED, &p), None, "no TLVs flagged");
        // An uncapped echo: the whole request (its length in its first 4 bytes), then TLVs.
        let mut p = 24u32.to_ne_bytes().to_vec();
        p.resize(24, 0);
        p.extend(tlv(1, b"bad\0"));
        assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &p).as_deref(), Some("bad"));
        assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &[1, 0]), None, "garbage");
    }
}
