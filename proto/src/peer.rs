//! Who is at the other end of a Unix socket (SO_PEERCRED): checkpointd finds QEMU's pid from
//! its QMP socket, and `remus protect --attach` the guest it must stop.

use std::io;
use std::os::fd::AsRawFd;

/// The pid of the process at the other end of `sock` (for a client: the listener, from the
/// moment of `connect`, even before it accepts).
pub fn peer_pid(sock: &impl AsRawFd) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred of the size we pass.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if cred.pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket's peer has no pid",
        ));
    }
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_socket_pair_peer_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(super::peer_pid(&a).unwrap(), std::process::id() as i32);
    }
}
