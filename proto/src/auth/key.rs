//! The per-VM replication key: 32 random bytes, stored as 64 hex digits and a newline in a
//! file only its owner can read. `remus keygen` makes it; both hosts hold the same file.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const KEY_LEN: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Key {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Key {
        Key(b)
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> io::Result<Key> {
        let mut b = [0u8; KEY_LEN];
        getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
        Ok(Key(b))
    }

    /// Parses the file's text: exactly 64 hex digits, surrounding white space ignored.
    pub fn parse(text: &str) -> Result<Key, String> {
        let t = text.trim();
        if t.len() != 2 * KEY_LEN || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "a key is {} hex digits (as `remus keygen` writes it)",
                2 * KEY_LEN
            ));
        }
        let mut b = [0u8; KEY_LEN];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Key(b))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a key file. Refused if others than its owner may read or write it (as ssh
    /// refuses a private key): a key others can read authenticates them too.
    pub fn load(path: &Path) -> io::Result<Key> {
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("key file {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "key file {} has mode {mode:04o}: others may read it; chmod 600 it",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("key file {}: {e}", path.display())))?;
        Key::parse(&text).map_err(|e| invalid(format!("key file {}: {e}", path.display())))
    }

    /// Writes a new random key to `path` with mode 0600. Never replaces an existing file
    /// (`AlreadyExists`): overwriting a key would cut the link to every peer holding it.
    pub fn generate_file(path: &Path) -> io::Result<Key> {
        let key = Key::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        // The umask may only remove bits; make sure of 0600 whatever it is.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(f, "{}", key.to_hex())?;
        f.sync_all()?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_mode_and_no_overwrite() {
        let dir = std::env::temp_dir().join(format!("remus-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let k = Key::generate_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Key::load(&p).unwrap(), k);
        let e = Key::generate_file(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            Key::load(&p).unwrap(),
            k,
            "an existing key is never replaced"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Key::load(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_refuses_anything_but_64_hex_digits() {
        let k = Key::generate().unwrap();
        assert_eq!(Key::parse(&format!(" {}\n", k.to_hex())).unwrap(), k);
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"0".repeat(65)] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
    }
}
