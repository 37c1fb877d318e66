//! The daemons' flags for the replication key (diskrep and checkpointd take the same ones).

use super::Security;
use std::path::PathBuf;

/// How the replication link is protected.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// The replication key shared with the peer (made by `remus keygen PATH`; mode 0600).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Also encrypt the stream (ChaCha20-Poly1305); both sides must agree.
    #[arg(long)]
    pub encrypt: bool,
    /// Run the replication link WITHOUT authentication: anyone who reaches the port can
    /// overwrite the backup's disk or memory image, stop it, or make it fail over onto forged
    /// state. Both sides must say so. For throw-away tests only.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

impl AuthArgs {
    /// The security asked for, warning (through tracing) when it is none. An error is printed
    /// as `PROGRAM: ...` and returned as the exit code: 6 for a key file that does not exist,
    /// 2 for anything else (no key and no opt-out, a malformed key, one others may read).
    pub fn security(&self, program: &str) -> Result<Security, i32> {
        match Security::from_flags(
            self.key_file.as_deref(),
            self.encrypt,
            self.insecure_no_auth,
        ) {
            Ok(s) => {
                if matches!(s, Security::Insecure) {
                    tracing::warn!("{}", Security::INSECURE_WARNING);
                }
                Ok(s)
            }
            Err(e) => {
                eprintln!("{program}: {e}");
                Err(match &self.key_file {
                    Some(p) if !p.exists() => crate::exit::NOT_FOUND,
                    _ => crate::exit::USAGE,
                })
            }
        }
    }
}
