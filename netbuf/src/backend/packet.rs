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
    /// (never silently truncated).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: receives into our buffer; MSG_TRUNC makes the return the real length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
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
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "frame of {n} bytes on {} exceeds {} bytes",
                    self.ifname,
                    buf.len()
                ),
            ));
        }
        if n < VNET_HDR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame without a vnet header on {}", self.ifname),
            ));
        }
        Ok(Some(n))
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
