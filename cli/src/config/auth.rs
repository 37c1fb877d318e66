//! `[replication] key_file` and `encrypt`: how the two replication links (diskrep's and
//! checkpointd's) are authenticated, turned into the daemons' flags.

use std::path::Path;

/// The opt-out's spelling in the file.
pub const NO_KEY: &str = "none";

/// Checks the two keys' values. A key file is required: running without one has to be asked
/// for by name.
pub fn validate(key_file: Option<&str>, encrypt: bool) -> Result<(), String> {
    match key_file {
        None | Some("") => Err(format!(
            "[replication] key_file: required: the replication key both hosts hold (make one with \
             `remus keygen /etc/remus/NAME.key`, copy it to the other host with mode 0600), or \
             \"{NO_KEY}\" to run without authentication (anyone reaching the replication ports \
             could then overwrite the backup)"
        )),
        Some(NO_KEY) if encrypt => {
            Err("[replication] encrypt = true needs a key_file (not \"none\")".into())
        }
        Some(NO_KEY) => Ok(()),
        Some(p) if !Path::new(p).is_absolute() || p.chars().any(char::is_control) => Err(format!(
            "[replication] key_file {p:?}: an absolute path (or \"{NO_KEY}\")"
        )),
        Some(_) => Ok(()),
    }
}

/// The flags diskrep and checkpointd take for it.
pub fn daemon_args(key_file: Option<&str>, encrypt: bool) -> Vec<String> {
    match key_file {
        Some(NO_KEY) | None => vec!["--insecure-no-auth".into()],
        Some(p) => {
            let mut v = vec!["--key-file".into(), p.to_string()];
            if encrypt {
                v.push("--encrypt".into());
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_required_and_none_must_be_said() {
        assert!(validate(None, false).unwrap_err().contains("remus keygen"));
        assert!(validate(Some(""), false).is_err());
        assert!(validate(Some("rel/key"), false).is_err());
        assert!(validate(Some("/k\n--insecure-no-auth"), false).is_err());
        assert!(validate(Some("none"), true).is_err());
        validate(Some("none"), false).unwrap();
        validate(Some("/etc/remus/vm.key"), true).unwrap();
        assert_eq!(daemon_args(Some("none"), false), ["--insecure-no-auth"]);
        assert_eq!(
            daemon_args(Some("/k"), true),
            ["--key-file", "/k", "--encrypt"]
        );
    }
}
