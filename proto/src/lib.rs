//! Types shared by every remus process.
//!
//! * [`Epoch`]: the checkpoint number carried on every control and wire message.
//! * [`control`]: the line protocol spoken on each daemon's Unix control socket
//!   (`barrier 42` → `ok ...` / `err CODE text`), parsed and formatted here once.
//! * [`ctl_socket`]: the thin I/O shell around it (a threaded Unix-socket server and a client).
//! * [`auth`]: mutual authentication and per-record protection of the replication links.
//! * [`wire`]: the framing of every primary↔backup stream (length-checked, crc32c-checked).
//! * [`exit`]: the exit codes every remus binary uses.
//! * [`generation`]: who may run a VM alone, as the witness (etcd) records it.
//! * [`peer`]: the pid at the other end of a Unix socket.

pub mod auth;
pub mod control;
pub mod ctl_socket;
pub mod epoch;
pub mod exit;
pub mod generation;
pub mod peer;
pub mod wire;

pub use epoch::Epoch;
