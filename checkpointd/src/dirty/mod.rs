//! Finding the guest RAM pages that changed since the last checkpoint, in time proportional to
//! what the guest wrote rather than to its RAM size where the kernel allows it.
//!
//! Three trackers implement [`DirtyTracker`]:
//! * [`uffd`]: a userfaultfd in QEMU's process, write-protecting the guest RAM mapping
//!   asynchronously (`UFFD_FEATURE_WP_ASYNC`), read and re-armed by one `PAGEMAP_SCAN` ioctl per
//!   checkpoint (Linux ≥ 6.7). The uffd must be created inside QEMU (a uffd only acts on the
//!   memory of the process that made it): by the preload shim (`remus-uffd-shim`) when remus
//!   starts QEMU, or by a syscall injected with ptrace ([`crate::inject`]) when attaching.
//!   checkpointd takes its own copy with `pidfd_getfd`.
//! * [`soft_dirty`]: `/proc/PID/clear_refs` (4) and bit 55 of `/proc/PID/pagemap`, for kernels
//!   with CONFIG_MEM_SOFT_DIRTY (Debian 12's 6.1). Reads 8 bytes per page instead of 4096.
//! * [`compare`]: every page against its copy at the previous checkpoint; needs nothing from
//!   the kernel, costs O(RAM).
//!
//! [`select`] picks one (`auto`: the first that works, in that order) and says why. The first
//! two only see writes through QEMU's own mapping of the RAM file; [`qemu_ram`] refuses them
//! when another process maps the file (a vhost-user back end), and the comparing tracker,
//! which sees every write, is used instead.

pub mod build;
pub mod compare;
pub mod indexed;
pub mod qemu_ram;
pub mod soft_dirty;
pub mod uffd;
pub mod validate;

use std::fmt;
use std::io;

pub const PAGE: usize = 4096;

/// A page that changed since the previous checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyPage {
    pub idx: u64,
    pub new: Box<[u8]>,
    /// Its contents at the previous checkpoint, when the tracker keeps them (compression).
    pub old: Option<Box<[u8]>>,
}

/// Finds changed pages. Called while the guest is paused.
pub trait DirtyTracker: Send {
    /// Appends every page changed since the last call (the first call: every page that is not
    /// zero, since the backup's image starts zeroed).
    fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>) -> io::Result<()>;
}

/// Which tracker to use (`--dirty-tracker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The first that works here: uffd, soft-dirty, compare.
    #[default]
    Auto,
    /// userfaultfd write-protect (WP_ASYNC) and PAGEMAP_SCAN: O(pages written); Linux >= 6.7.
    Uffd,
    /// clear_refs and the pagemap soft-dirty bit: 8 bytes read per guest page.
    SoftDirty,
    /// Every page against its copy at the previous checkpoint: 4 KiB per guest page.
    Compare,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Auto => "auto",
            Kind::Uffd => "uffd",
            Kind::SoftDirty => "soft-dirty",
            Kind::Compare => "compare",
        })
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "auto" => Ok(Kind::Auto),
            "uffd" => Ok(Kind::Uffd),
            "soft-dirty" => Ok(Kind::SoftDirty),
            "compare" => Ok(Kind::Compare),
            _ => Err(format!(
                "dirty tracker {s:?}: auto, uffd, soft-dirty or compare"
            )),
        }
    }
}

/// The trackers `auto` tries, best first.
pub const AUTO_ORDER: [Kind; 3] = [Kind::Uffd, Kind::SoftDirty, Kind::Compare];

/// The tracker in use and why it was chosen.
pub struct Selected<T> {
    pub tracker: T,
    pub kind: Kind,
    pub reason: String,
}

/// Picks a tracker: the requested one, or with `Auto` the first of [`AUTO_ORDER`] that `setup`
/// manages to set up. `setup` returns the tracker and a sentence on how it was set up, or why
/// it cannot be. A requested tracker that cannot be set up is an error (no silent fallback:
/// the operator asked for it).
pub fn select<T>(
    requested: Kind,
    mut setup: impl FnMut(Kind) -> Result<(T, String), String>,
) -> Result<Selected<T>, String> {
    if requested != Kind::Auto {
        return setup(requested)
            .map(|(tracker, how)| Selected {
                tracker,
                kind: requested,
                reason: format!("requested (--dirty-tracker {requested}); {how}"),
            })
            .map_err(|why| format!("--dirty-tracker {requested}: {why}"));
    }
    let mut passed_over = Vec::new();
    for kind in AUTO_ORDER {
        match setup(kind) {
            Ok((tracker, how)) => {
                let mut reason = format!("auto: {how}");
                if !passed_over.is_empty() {
                    reason.push_str(&format!(" (not {})", passed_over.join("; not ")));
                }
                return Ok(Selected {
                    tracker,
                    kind,
                    reason,
                });
            }
            Err(why) => passed_over.push(format!("{kind}: {why}")),
        }
    }
    Err(format!(
        "no dirty tracker works here: {}",
        passed_over.join("; ")
    ))
}

/// Whether a page is all zeroes (the backup's image starts zeroed, so those need not be sent).
pub fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
        && words.remainder().iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_first_that_works_and_says_what_it_passed_over() {
        let mut tried = Vec::new();
        let s = select(Kind::Auto, |k| {
            tried.push(k);
            match k {
                Kind::Uffd => Err("kernel has no PAGEMAP_SCAN".to_string()),
                Kind::SoftDirty => Ok((2, "clear_refs works".to_string())),
                _ => Ok((3, "always".to_string())),
            }
        })
        .unwrap();
        assert_eq!(tried, vec![Kind::Uffd, Kind::SoftDirty]);
        assert_eq!((s.tracker, s.kind), (2, Kind::SoftDirty));
        assert!(s.reason.contains("clear_refs works"), "{}", s.reason);
        assert!(
            s.reason.contains("not uffd: kernel has no PAGEMAP_SCAN"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn a_requested_tracker_is_never_replaced_by_another() {
        let mut tried = Vec::new();
        let e = select::<u8>(Kind::Uffd, |k| {
            tried.push(k);
            Err("no uffd in QEMU and ptrace refused".into())
        })
        .err()
        .unwrap();
        assert_eq!(tried, vec![Kind::Uffd]);
        assert!(e.contains("--dirty-tracker uffd: no uffd"), "{e}");
        let s = select(Kind::Compare, |k| Ok((k, "x".into()))).unwrap();
        assert_eq!(s.kind, Kind::Compare);
        assert!(s.reason.starts_with("requested"), "{}", s.reason);
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in [Kind::Auto, Kind::Uffd, Kind::SoftDirty, Kind::Compare] {
            assert_eq!(k.to_string().parse::<Kind>(), Ok(k));
        }
        assert!("softdirty".parse::<Kind>().is_err());
    }

    #[test]
    fn zero_pages_are_recognised() {
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        p[PAGE - 1] = 1;
        assert!(!is_zero(&p));
        assert!(!is_zero(&p[1..]));
    }
}
