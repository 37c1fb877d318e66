//! A minimal rtnetlink client: just the messages the plug backend needs (links, qdiscs, one u32
//! filter with a mirred action, qdisc statistics).
//!
//! Hand-written rather than built on `netlink-packet-route` because what we send is a handful
//! of fixed structures, and the crate's tc action API has changed shape between releases; this
//! keeps every byte we put on the wire visible and reviewable here. Errors carry the kernel's
//! extended-ack text (e.g. "Specified qdisc kind is unknown").

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_NEWQDISC: u16 = 36;
pub const RTM_DELQDISC: u16 = 37;
pub const RTM_GETQDISC: u16 = 38;
pub const RTM_NEWTFILTER: u16 = 44;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message body under construction: a fixed header struct, then attributes.
#[derive(Default)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub fn new(fixed: &[u8]) -> Self {
        let mut buf = fixed.to_vec();
        buf.resize(align4(buf.len()), 0);
        MsgBuilder { buf }
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(ty, &d)
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; close it with [`MsgBuilder::end_nest`].
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        at
    }

    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Like begin_nest but with NLA_F_NESTED set, for kernels that validate it.
    pub fn begin_nest_flagged(&mut self, ty: u16) -> usize {
        self.begin_nest(ty | NLA_F_NESTED)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Iterates over the attributes in `b` (type with flags masked off, payload).
pub fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = b.get(off..off + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        let data = b.get(off + 4..off + len)?;
        off += align4(len);
        Some((ty, data))
    })
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned immediately.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            // SAFETY: setsockopt with a valid int; failure only loses error text.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
        }
        Ok(Netlink { fd, seq: 1 })
    }

    fn send(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + body.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        // SAFETY: sends our buffer on our socket; the kernel is the default destination.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receives into our buffer.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends a request and waits for its acknowledgement. `what` names the operation in errors.
    pub fn request(&mut self, ty: u16, flags: u16, body: &[u8], what: &str) -> io::Result<()> {
        let seq = self.send(ty, flags | NLM_F_ACK, body)?;
        let mut out = Ok(());
        self.receive_until_done(seq, true, |mt, payload, hflags| {
            if mt == NLMSG_ERROR {
                out = parse_error(payload, hflags, what);
                return true;
            }
            false
        })?;
        out
    }

    /// Sends a dump request and hands every reply message (type, payload) to `each`.
    pub fn dump(
        &mut self,
        ty: u16,
        body: &[u8],
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        let seq = self.send(ty, NLM_F_DUMP, body)?;
        let mut out = Ok(());
        self.receive_until_done(seq, false, |mt, payload, hflags| match mt {
            NLMSG_DONE => true,
            NLMSG_ERROR => {
                out = parse_error(payload, hflags, "dump");
                true
            }
            _ => {
                each(mt, payload);
                false
            }
        })?;
        out
    }

    /// Reads messages for `seq` until `f` says stop.
    fn receive_until_done(
        &mut self,
        seq: u32,
        _ack: bool,
        mut f: impl FnMut(u16, &[u8], u16) -> bool,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let h = &buf[off..off + 16];
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let mt = u16::from_ne_bytes([h[4], h[5]]);
                let hflags = u16::from_ne_bytes([h[6], h[7]]);
                let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if len < 16 || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                if mseq == seq && f(mt, &buf[off + 16..off + len], hflags) {
                    return Ok(());
                }
                let _ = hflags & NLM_F_MULTI;
                off += align4(len);
            }
        }
    }
}

fn parse_error(payload: &[u8], hflags: u16, what: &str) -> io::Result<()> {
    let Some(code) = payload.get(0..4) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error",
        ));
    };
    let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if errno == 0 {
        return Ok(());
    }
    // With NETLINK_CAP_ACK the echoed request is only its 16-byte header; TLVs follow.
    let mut text = String::new();
    if hflags & NLM_F_ACK_TLVS != 0 {
        if let Some(tlvs) = payload.get(4 + 16..) {
            for (ty, data) in attrs(tlvs) {
                if ty == NLMSGERR_ATTR_MSG {
                    text = String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_string();
                }
            }
        }
    }
    let os = io::Error::from_raw_os_error(errno);
    let msg = if text.is_empty() {
        format!("{what}: {os}")
    } else {
        format!("{what}: {os}: {text}")
    };
    Err(io::Error::new(os.kind(), msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_nests_and_aligns() {
        let mut m = MsgBuilder::new(&[1, 2, 3]);
        assert_eq!(m.bytes().len(), 4);
        let n = m.begin_nest(18);
        m.attr_str(1, "ifb");
        m.end_nest(n);
        let parsed: Vec<_> = attrs(&m.bytes()[4..]).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, 18);
        let inner: Vec<_> = attrs(parsed[0].1).collect();
        assert_eq!(inner, vec![(1u16, &b"ifb\0"[..])]);
    }

    #[test]
    fn attrs_stops_on_garbage() {
        assert_eq!(attrs(&[0xff, 0xff, 0, 0]).count(), 0);
        assert_eq!(attrs(&[2, 0, 0, 0]).count(), 0);
    }
}
