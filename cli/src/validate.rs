//! Checks of the configuration values that end up on a command line: QEMU's option strings
//! (`-device virtio-net-pci,...,mac=M`, `-netdev tap,ifname=I`, `-drive file=nbd://A/E,...`,
//! `mem-path=P`, `-qmp unix:P,server=on`) and the daemons' arguments. QEMU splits an option
//! string at every comma, so a comma in any of these values would add options of the config
//! author's choosing (`mac = "a:b:c:d:e:f,romfile=/x"` loads a ROM); each value is held to the
//! narrow form it must have, and anything else is refused with a message naming the key.
//! Pure, hand-written because each rule is a line or two.

use std::net::IpAddr;
use std::path::Path;

/// Largest guest RAM accepted, in MiB (1 TiB): far beyond what checkpointing can keep up with,
/// and small enough that every size derived from it fits a u64.
pub const MAX_RAM_MIB: u64 = 1 << 20;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Six two-digit hex octets separated by ':', unicast (the low bit of the first octet clear:
/// QEMU refuses a multicast NIC address) and not all zero.
pub fn mac(s: &str) -> Result<(), String> {
    let octets: Vec<&str> = s.split(':').collect();
    let hex = |o: &&str| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit());
    if octets.len() != 6 || !octets.iter().all(hex) {
        return Err(format!(
            "{s:?} is not a MAC address (six two-digit hex octets, e.g. 52:54:00:12:34:56)"
        ));
    }
    let first = u8::from_str_radix(octets[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(format!(
            "{s:?} is a multicast address; a NIC needs a unicast one"
        ));
    }
    if octets.iter().all(|o| *o == "00") {
        return Err(format!("{s:?} is the all-zero address"));
    }
    Ok(())
}

/// A name made of letters, digits, '-', '_' and '.', 1 to `max` bytes, not starting with '.'
/// (so never `.` or `..` where it becomes part of a path).
pub fn plain_name(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{s:?}: between 1 and {max} characters"));
    }
    if s.starts_with('.')
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{s:?}: use letters, digits, '-', '_' or '.' (not first)"
        ));
    }
    Ok(())
}

/// A network interface name QEMU and the kernel both take: at most 15 bytes (IFNAMSIZ - 1).
pub fn interface(s: &str) -> Result<(), String> {
    plain_name(s, 15)
}

/// The backup's address: an IP literal, or a DNS host name (labels of letters, digits and
/// '-', not starting or ending with '-', at most 253 characters).
pub fn host(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || s.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is neither an IP address nor a host name (no port: the ports are separate keys)"
        ));
    }
    Ok(())
}

/// A path that goes into a QEMU option string (or a daemon's argument): no comma (QEMU's
/// separator), no control character, not empty.
pub fn qemu_path(p: &Path) -> Result<(), String> {
    let s = p.to_string_lossy();
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    if s.contains(',') {
        return Err(format!(
            "{s:?} contains a comma, which QEMU would read as the start of another option"
        ));
    }
    plain_text(&s)
}

/// Any text that becomes one command-line argument: no NUL (it cannot be passed at all) and no
/// other control character (a newline in an argument is never meant).
pub fn plain_text(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("{s:?} contains the control character {c:?}")),
        None => Ok(()),
    }
}

/// A Unix socket path the kernel can bind.
pub fn socket_path(p: &Path) -> Result<(), String> {
    qemu_path(p)?;
    let n = p.as_os_str().len();
    if n > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is {n} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH}",
            p.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn macs() {
        assert!(mac("52:54:00:12:34:56").is_ok());
        assert!(mac("52:54:00:AB:cd:ef").is_ok());
        for bad in [
            "a:b:c:d:e:f",
            "a:b:c:d:e:f,romfile=/x",
            "52:54:00:12:34:56,romfile=/x",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "",
        ] {
            assert!(mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_hosts_and_paths() {
        assert!(interface("tap0").is_ok());
        assert!(interface("tap0,script=/bin/evil").is_err());
        assert!(interface("sixteen-chars-xx").is_err());
        assert!(plain_name("..", 64).is_err());
        assert!(plain_name("web-1.prod_a", 64).is_ok());
        assert!(host("10.99.0.2").is_ok());
        assert!(host("fd00::2").is_ok());
        assert!(host("backup-1.example.org").is_ok());
        assert!(host("backup.example.org.").is_ok());
        for bad in [
            "",
            "a b",
            "-x.org",
            "x..org",
            "10.0.0.2:7791",
            "h,ost",
            "[fd00::2]",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
        assert!(qemu_path(Path::new("/dev/shm/vm-ram")).is_ok());
        assert!(qemu_path(Path::new("/dev/shm/x,share=off")).is_err());
        assert!(qemu_path(Path::new("/tmp/a\nb")).is_err());
        assert!(socket_path(&Path::new("/run").join("x".repeat(120))).is_err());
    }

    proptest! {
        /// Whatever passes these checks holds no character that QEMU's option parser or a
        /// command line would treat specially.
        #[test]
        fn accepted_values_carry_no_separator(s in "\\PC{0,40}") {
            for ok in [mac(&s).is_ok(), interface(&s).is_ok(), host(&s).is_ok(),
                       qemu_path(Path::new(&s)).is_ok(), plain_name(&s, 64).is_ok()] {
                if ok {
                    prop_assert!(!s.contains(','), "{:?}", s);
                    prop_assert!(!s.chars().any(|c| c.is_control()), "{:?}", s);
                }
            }
        }
    }
}
