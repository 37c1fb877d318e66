//! An AF_PACKET socket bound to one interface, with a virtio-net header on every frame.
//!
//! Why PACKET_VNET_HDR: on veth and TAP the kernel hands us GSO super-frames (up to 64 KiB)
//! rather than MTU-sized frames. Without the header they would arrive without their
//! segmentation metadata and could not be sent on (EMSGSIZE): silently lost. With it, each frame
//! carries its GSO type/size and checksum-offload fields, and sending it with the same header
//! makes the kernel segment it on the way out. So offloads stay on and nothing is truncated.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub const VNET_HDR_LEN: usize = 10;
/// Largest frame we accept: 64 KiB GSO payload plus link headers and the vnet header.
pub const MAX_FRAME: usize = 65_536 + 256 + VNET_HDR_LEN;

const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_AUXDATA: libc::c_int = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const ETH_P_ALL: u16 = 0x0003;
/// virtio_net_hdr.flags bit that says "checksum already verified": true where we received the
/// frame, not necessarily where it goes, so it is cleared before sending.
const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

pub struct PacketSocket {
    fd: OwnedFd,
    pub ifname: String,
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a valid int of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl PacketSocket {
    /// Opens a socket that receives every frame arriving on `ifname` (promiscuous, not the
    /// frames we send ourselves) and sends on it.
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let index = super::plug::ifindex(ifname)?;
        // Protocol 0 at creation: nothing is received until bind() names the interface, so no
        // frame of another interface can slip in between.
        // SAFETY: plain socket(2); the fd is owned immediately.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "AF_PACKET needs CAP_NET_RAW (run as root)",
                ));
            }
            return Err(e);
        }
        // SAFETY: raw is a fresh valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1)?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        // veth and most NICs strip 802.1Q tags into skb metadata on receive; AUXDATA hands the
        // tag to us so that we can put it back (otherwise VLAN frames would leave untagged).
        setsockopt_int(&fd, SOL_PACKET, PACKET_AUXDATA, 1)?;
        // Big buffers absorb bursts while the other direction holds the lock; FORCE needs root
        // and falls back to the capped value otherwise.
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(&fd, libc::SOL_SOCKET, force, 8 << 20).is_err() {
                let _ = setsockopt_int(&fd, libc::SOL_SOCKET, plain, 8 << 20);
            }
        }
        // SAFETY: zeroed sockaddr_ll is valid; we fill the fields bind needs.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zeroed packet_mreq is valid; promiscuous membership on our interface. The
        // kernel drops it when the socket closes, so the interface is restored on any exit.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = index as i32;
        mr.mr_type = PACKET_MR_PROMISC;
        // SAFETY: valid packet_mreq of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_ADD_MEMBERSHIP,
                &mr as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::packet_mreq>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = PacketSocket {
            fd,
            ifname: ifname.to_string(),
        };
        s.set_timeout(Duration::from_millis(100))?;
        Ok(s)
    }

    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: valid timeval of the size given.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one frame (vnet header first) into `buf`. `Ok(None)` on the receive timeout,
    /// so callers can check for shutdown. A frame larger than `buf` is an `InvalidData` error
    /// (never silently truncated). A VLAN tag the kernel stripped is re-inserted.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // Leave room to re-insert a 4-byte VLAN tag.
        let cap = buf.len().saturating_sub(4);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: cap,
        };
        let mut cbuf = [0u64; 16]; // aligned control buffer
                                   // SAFETY: zeroed msghdr is valid; we point it at our iovec and control buffer.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: msg points at live buffers; MSG_TRUNC makes the return the real length.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {n} bytes on {} exceeds {cap} bytes", self.ifname),
            ));
        }
        if n < VNET_HDR_LEN + 12 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("runt frame of {n} bytes on {}", self.ifname),
            ));
        }
        match vlan_from_cmsgs(&msg) {
            Some((tpid, tci)) => Ok(Some(insert_vlan(buf, n, tpid, tci))),
            None => Ok(Some(n)),
        }
    }

    /// Sends one frame (vnet header first) out of the interface.
    pub fn send(&self, frame: &mut [u8]) -> io::Result<()> {
        if let Some(flags) = frame.first_mut() {
            *flags &= !VIRTIO_NET_HDR_F_DATA_VALID;
        }
        loop {
            // SAFETY: sends our buffer on our bound socket.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The stripped VLAN tag (TPID, TCI) from a PACKET_AUXDATA control message, if any.
fn vlan_from_cmsgs(msg: &libc::msghdr) -> Option<(u16, u16)> {
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                let d = libc::CMSG_DATA(c);
                // struct tpacket_auxdata: status, len, snaplen (u32); mac, net, vlan_tci,
                // vlan_tpid (u16).
                let status = std::ptr::read_unaligned(d.cast::<u32>());
                let tci = std::ptr::read_unaligned(d.add(16).cast::<u16>());
                let tpid = std::ptr::read_unaligned(d.add(18).cast::<u16>());
                if status & TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        tpid
                    } else {
                        0x8100
                    };
                    return Some((tpid, tci));
                }
                return None;
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Re-inserts an 802.1Q tag after the MAC addresses of the frame in `buf[..n]` (vnet header
/// first) and shifts the checksum-offload start to match. Returns the new length.
fn insert_vlan(buf: &mut [u8], n: usize, tpid: u16, tci: u16) -> usize {
    let at = VNET_HDR_LEN + 12;
    buf.copy_within(at..n, at + 4);
    buf[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&tci.to_be_bytes());
    // virtio_net_hdr (little-endian): flags, gso_type, hdr_len, gso_size, csum_start, csum_off.
    let bump = |buf: &mut [u8], o: usize| {
        let v = u16::from_le_bytes([buf[o], buf[o + 1]]).saturating_add(4);
        buf[o..o + 2].copy_from_slice(&v.to_le_bytes());
    };
    if buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        bump(buf, 6);
    }
    if buf[2] != 0 || buf[3] != 0 {
        bump(buf, 2);
    }
    n + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_reinsertion_moves_payload_and_csum_start() {
        let mut buf = vec![0u8; 200];
        buf[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        buf[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        buf[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        let frame: Vec<u8> = (0..60u8).collect();
        buf[VNET_HDR_LEN..VNET_HDR_LEN + 60].copy_from_slice(&frame);
        let n = insert_vlan(&mut buf, VNET_HDR_LEN + 60, 0x8100, 42);
        assert_eq!(n, VNET_HDR_LEN + 64);
        let f = &buf[VNET_HDR_LEN..n];
        assert_eq!(&f[..12], &frame[..12]);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0, 42]);
        assert_eq!(&f[16..], &frame[12..]);
        assert_eq!(u16::from_le_bytes([buf[6], buf[7]]), 38);
        assert_eq!(u16::from_le_bytes([buf[2], buf[3]]), 58);
    }
}
