//! Exit codes shared by every remus binary. They are part of the public interface: scripts
//! branch on them, so a code never changes meaning.

/// Success.
pub const OK: i32 = 0;
/// A runtime failure not covered below (I/O error, lost peer, ...).
pub const FAILURE: i32 = 1;
/// Bad command-line arguments (clap also uses 2).
pub const USAGE: i32 = 2;
/// The daemon answered `err ...` to a control command.
pub const REJECTED: i32 = 3;
/// The daemon's control socket could not be reached.
pub const UNREACHABLE: i32 = 4;
/// Missing privileges (CAP_NET_ADMIN / CAP_NET_RAW / root) for what was asked.
pub const PRIVILEGE: i32 = 5;
/// A named resource does not exist (interface, file, export).
pub const NOT_FOUND: i32 = 6;
/// A resource is busy (address in use, socket path held by a live daemon or by a file that is
/// not a socket).
pub const BUSY: i32 = 7;

/// The exit code for a failed I/O operation (missing privileges, missing file or interface,
/// address or socket in use, bad argument, anything else).
pub fn for_io_error(e: &std::io::Error) -> i32 {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied => PRIVILEGE,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::AddrInUse | ErrorKind::AlreadyExists => BUSY,
        ErrorKind::InvalidInput => USAGE,
        _ => match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => PRIVILEGE,
            Some(libc::ENODEV) | Some(libc::ENOENT) => NOT_FOUND,
            Some(libc::EEXIST) | Some(libc::EBUSY) | Some(libc::EADDRINUSE) => BUSY,
            _ => FAILURE,
        },
    }
}

/// `remus status`: every daemon answered, but the VM is not protected.
pub const NOT_PROTECTED: i32 = 8;

/// This copy of the VM was fenced: the other side won the generation (or took over), so this
/// side stopped its guest and discarded its held output. checkpointd primary and
/// `remus protect` exit with it; `remus status` returns it for a fenced primary.
pub const FENCED: i32 = 9;
