//! A tracker built on a source that names the written pages (uffd, soft-dirty): only those
//! pages are read, so the pause grows with what the guest wrote, not with its RAM.
//!
//! With a shadow copy (needed for compression, which XORs against the previous contents) a
//! reported page whose contents did not change is dropped; without one, every reported page is
//! shipped and no second copy of guest RAM is kept.

use super::{is_zero, DirtyPage, DirtyTracker, PAGE};
use std::io;
use std::ops::Range;

/// Names the pages of the guest RAM file written since its last call, and re-arms tracking for
/// them. Called with the guest paused.
pub trait PageSource: Send {
    fn written(&mut self, out: &mut Vec<u64>) -> io::Result<()>;
}

pub struct IndexedTracker<S> {
    source: S,
    /// The RAM file: the first, full pass reads only the parts that hold data (holes are zero;
    /// not reading them keeps a big guest's untouched RAM from being faulted in). Asked at that
    /// pass, with the guest paused: data written before then must not be missed.
    file: Option<std::fs::File>,
    shadow: Option<Vec<u8>>,
    keep_old: bool,
    armed: bool,
    scratch: Vec<u64>,
}

impl<S: PageSource> IndexedTracker<S> {
    /// `file`: the RAM file, whose holes the first pass skips (without it, it reads all);
    /// `shadow_len`: keep a copy of guest RAM to drop unchanged pages and to give compression
    /// the previous contents (`keep_old`).
    pub fn new(
        source: S,
        file: Option<std::fs::File>,
        shadow_len: Option<usize>,
        keep_old: bool,
    ) -> Self {
        IndexedTracker {
            source,
            file,
            shadow: shadow_len.map(|n| vec![0u8; n]),
            keep_old,
            armed: false,
            scratch: Vec::new(),
        }
    }

    /// Records page `idx` if it changed (shadow) or is to be sent anyway; `full`: first pass,
    /// where zero pages are skipped (the backup's image starts zeroed).
    fn take(&mut self, ram: &[u8], idx: usize, full: bool, out: &mut Vec<DirtyPage>) {
        let cur = &ram[idx * PAGE..(idx + 1) * PAGE];
        let old = match self.shadow.as_mut() {
            Some(sh) => {
                let old = &mut sh[idx * PAGE..(idx + 1) * PAGE];
                if cur == &old[..] {
                    return;
                }
                let prev = self.keep_old.then(|| Box::from(&old[..]));
                old.copy_from_slice(cur);
                prev
            }
            None => {
                if full && is_zero(cur) {
                    return;
                }
                None
            }
        };
        out.push(DirtyPage {
            idx: idx as u64,
            new: Box::from(cur),
            old,
        });
    }
}

impl<S: PageSource> DirtyTracker for IndexedTracker<S> {
    fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>) -> io::Result<()> {
        let pages = ram.len() / PAGE;
        self.scratch.clear();
        let mut written = std::mem::take(&mut self.scratch);
        let r = self.source.written(&mut written);
        if let Err(e) = r {
            self.scratch = written;
            return Err(e);
        }
        if !self.armed {
            // Tracking starts now (the scan above armed it); this checkpoint carries
            // everything, as a comparison against a zeroed copy would.
            self.armed = true;
            let extents = match self.file.take() {
                Some(f) => data_extents(&f, ram.len()),
                None => std::iter::once(0..pages).collect(),
            };
            for r in extents {
                for idx in r.start..r.end.min(pages) {
                    self.take(ram, idx, true, out);
                }
            }
        } else {
            written.sort_unstable();
            written.dedup();
            if let Some(bad) = written.iter().copied().find(|i| *i as usize >= pages) {
                self.scratch = written;
                return Err(io::Error::other(format!(
                    "the tracker named page {bad}, beyond the guest's {pages} pages"
                )));
            }
            for &idx in &written {
                self.take(ram, idx as usize, false, out);
            }
        }
        self.scratch = written;
        Ok(())
    }
}

/// The page ranges of `file` that hold data (SEEK_DATA/SEEK_HOLE); the whole file when the
/// file system cannot tell.
pub fn data_extents(file: &std::fs::File, len: usize) -> Vec<Range<usize>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut v = Vec::new();
    let mut pos: libc::off_t = 0;
    while (pos as usize) < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole from here to the end
            }
            return std::iter::once(0..len.div_ceil(PAGE)).collect();
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len as libc::off_t } else { hole };
        v.push(data as usize / PAGE..(hole as usize).div_ceil(PAGE));
        pos = hole;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names exactly the pages the test says were written.
    struct Told(Vec<u64>);
    impl PageSource for Told {
        fn written(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
            out.append(&mut self.0);
            Ok(())
        }
    }

    fn idx(v: &[DirtyPage]) -> Vec<u64> {
        v.iter().map(|p| p.idx).collect()
    }

    #[test]
    fn first_pass_sends_non_zero_data_then_only_named_pages() {
        use std::os::unix::fs::FileExt;
        let mut ram = vec![0u8; 16 * PAGE];
        let file = tempfile::tempfile().unwrap();
        file.set_len(ram.len() as u64).unwrap();
        let mut t = IndexedTracker::new(Told(vec![]), Some(file.try_clone().unwrap()), None, false);
        // Written after the tracker was made, before its first pass: carried.
        for i in [2, 9] {
            ram[i * PAGE] = 1;
            file.write_all_at(&[1], (i * PAGE) as u64).unwrap();
        }
        let mut out = Vec::new();
        t.collect(&ram, &mut out).unwrap();
        assert_eq!(idx(&out), vec![2, 9], "non-zero pages of the data extents");
        out.clear();
        t.source.0 = vec![7, 3, 7];
        t.collect(&ram, &mut out).unwrap();
        assert_eq!(idx(&out), vec![3, 7], "named pages, once each, zero or not");
        t.source.0 = vec![16];
        assert!(t.collect(&ram, &mut out).is_err(), "beyond the RAM");
    }

    #[test]
    fn with_a_shadow_unchanged_pages_are_dropped_and_old_contents_kept() {
        let mut ram = vec![0u8; 8 * PAGE];
        ram[PAGE] = 5;
        let mut t = IndexedTracker::new(Told(vec![]), None, Some(ram.len()), true);
        let mut out = Vec::new();
        t.collect(&ram, &mut out).unwrap();
        assert_eq!(idx(&out), vec![1]);
        out.clear();
        ram[PAGE] = 6;
        t.source.0 = vec![1, 4];
        t.collect(&ram, &mut out).unwrap();
        assert_eq!(idx(&out), vec![1], "page 4 was written with what it had");
        assert_eq!(out[0].old.as_deref().map(|o| o[0]), Some(5));
    }

    proptest::proptest! {
        /// Whatever the writes, and whatever extra pages the source names besides the written
        /// ones, a tracker with a shadow reports exactly the pages a full comparison finds
        /// changed, with the same old and new contents.
        #[test]
        fn with_a_shadow_it_agrees_with_a_full_comparison(
            rounds in proptest::collection::vec(
                (proptest::collection::vec((0usize..32, 0u8..4), 0..20),
                 proptest::collection::vec(0u64..32, 0..6)),
                1..6,
            )
        ) {
            let mut ram = vec![0u8; 32 * PAGE];
            let mut t = IndexedTracker::new(Told(vec![]), None, Some(ram.len()), true);
            let mut reference = crate::dirty::compare::ComparingTracker::new(ram.len(), 2, true);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            t.collect(&ram, &mut a).unwrap();
            reference.collect(&ram, &mut b).unwrap();
            for (writes, extra) in rounds {
                let mut named = extra;
                for (page, v) in writes {
                    ram[page * PAGE + 17] = v;
                    named.push(page as u64);
                }
                t.source.0 = named;
                a.clear();
                b.clear();
                t.collect(&ram, &mut a).unwrap();
                reference.collect(&ram, &mut b).unwrap();
                a.sort_by_key(|p| p.idx);
                b.sort_by_key(|p| p.idx);
                proptest::prop_assert_eq!(&a, &b);
            }
        }
    }

    #[test]
    fn extents_of_a_sparse_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(64 * PAGE as u64).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1], 10 * PAGE as u64).unwrap();
        let e = data_extents(&f, 64 * PAGE);
        assert!(
            e.iter().any(|r| r.contains(&10)),
            "the written page is in a data extent: {e:?}"
        );
        let covered: usize = e.iter().map(|r| r.len()).sum();
        assert!(covered < 64 || (e.len() == 1 && e[0] == (0..64)), "{e:?}");
    }
}
