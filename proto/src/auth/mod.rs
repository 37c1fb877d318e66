//! Mutual authentication (and optional encryption) of the replication links: diskrep's disk
//! stream and checkpointd's checkpoint stream, QEMU and Xen alike.
//!
//! Both ends hold the same per-VM secret ([`key`], written by `remus keygen`, mode 0600). A
//! connection starts with a challenge-response [`handshake`] in both directions: each side
//! sends a fresh 32-byte nonce and proves the key with an HMAC over both nonces, bound to its
//! role (a side's own proof can never be reflected back to it as the peer's) and to the stream
//! and mode (no cross-stream use, no downgrade). Nothing else, in particular not the image or
//! RAM size, is sent before both proofs check. Per-connection keys, one per direction, are then
//! derived from the secret and both nonces (HKDF-SHA256), and every byte after the handshake
//! travels in [`record`]s that carry an implicit sequence number: a record replayed, reordered,
//! dropped or forged fails its check and ends the connection.
//!
//! Crates: RustCrypto's `hmac` + `sha2` (HMAC-SHA256; SHA-NI is used where the CPU has it),
//! `hkdf`, and `chacha20poly1305` for `encrypt = true` (fast in software on any x86-64, no
//! AES-NI needed, constant time). They are small, pure Rust, audited and widely used; `ring`
//! would do as well but drags in C and assembly for no gain here, and TLS (rustls with PSK) is
//! much more machinery than two daemons with a shared secret need. Nonces come from the OS
//! (`getrandom`).
//!
//! Running without a key is possible only through an explicit opt-out ([`Security::Insecure`],
//! `--insecure-no-auth` / `key_file = "none"`), which the daemons warn about at start. Both
//! sides must agree: a side with a key refuses a peer without one, and the reverse.

pub mod blocking;
#[cfg(feature = "clap")]
pub mod flags;
pub mod handshake;
pub mod key;
#[cfg(feature = "tokio")]
pub mod nonblocking;
pub mod record;

pub use handshake::{HandshakeError, StreamKind};
pub use key::Key;

/// How a replication link is protected.
#[derive(Clone)]
pub enum Security {
    /// No authentication at all: anyone who reaches the port can feed or read the stream.
    /// Only on explicit request.
    Insecure,
    /// Authenticated with the shared key; `encrypt` also makes the stream confidential.
    Keyed { key: Key, encrypt: bool },
}

impl Security {
    /// From the daemons' flags: `--key-file PATH` (plus `--encrypt`) or `--insecure-no-auth`.
    /// Exactly one of the two is required; the error says how to fix it.
    pub fn from_flags(
        key_file: Option<&std::path::Path>,
        encrypt: bool,
        insecure: bool,
    ) -> Result<Security, String> {
        match (key_file, insecure) {
            (Some(_), true) => Err("--key-file and --insecure-no-auth exclude each other".into()),
            (None, false) => Err(
                "the replication link needs a key: --key-file PATH (made by `remus keygen PATH`), \
                 or --insecure-no-auth to run without authentication"
                    .into(),
            ),
            (None, true) if encrypt => Err("--encrypt needs a key (--key-file)".into()),
            (None, true) => Ok(Security::Insecure),
            (Some(p), false) => Ok(Security::Keyed {
                key: Key::load(p).map_err(|e| e.to_string())?,
                encrypt,
            }),
        }
    }

    /// The warning a daemon logs at start when it runs without authentication.
    pub const INSECURE_WARNING: &'static str = "replication runs WITHOUT authentication \
        (--insecure-no-auth): anyone who can reach the replication port can overwrite the \
        backup's disk and memory image, make it fail over onto forged state, or read the VM's \
        data. Use a key (remus keygen) outside of throw-away tests.";

    pub fn describe(&self) -> &'static str {
        match self {
            Security::Insecure => "none (insecure)",
            Security::Keyed { encrypt: false, .. } => "hmac-sha256",
            Security::Keyed { encrypt: true, .. } => "chacha20-poly1305",
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// What a finished handshake gives: for a keyed link, the record protection of each
/// direction; nothing for an insecure one (the stream is then plain bytes).
pub struct Session {
    pub send: record::Sealer,
    pub recv: record::Opener,
}
