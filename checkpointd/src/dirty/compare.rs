//! The fallback tracker: compares every page with its copy from the previous checkpoint (two
//! threads), copying changed pages into both that copy and the checkpoint. Needs nothing from
//! the kernel and sees every write, whatever mapping it came through; costs O(RAM) per pause.

use super::{DirtyPage, DirtyTracker, PAGE};

pub struct ComparingTracker {
    last: Vec<u8>,
    threads: usize,
    keep_old: bool,
}

impl ComparingTracker {
    /// `last` starts zeroed: the first checkpoint carries every non-zero page (initial sync),
    /// and the backup's RAM image starts as a zero-filled file.
    pub fn new(len: usize, threads: usize, keep_old: bool) -> Self {
        ComparingTracker {
            last: vec![0u8; len],
            threads: threads.max(1),
            keep_old,
        }
    }
}

impl DirtyTracker for ComparingTracker {
    fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>) -> std::io::Result<()> {
        if ram.len() != self.last.len() {
            return Err(std::io::Error::other(format!(
                "guest RAM is {} bytes, the tracker's copy {}",
                ram.len(),
                self.last.len()
            )));
        }
        let keep_old = self.keep_old;
        let pages = ram.len() / PAGE;
        let per = pages.div_ceil(self.threads).max(1);
        let chunks: Vec<(usize, &mut [u8])> = self
            .last
            .chunks_mut(per * PAGE)
            .enumerate()
            .map(|(i, c)| (i * per, c))
            .collect();
        let found: Vec<Vec<DirtyPage>> = std::thread::scope(|s| {
            let hs: Vec<_> = chunks
                .into_iter()
                .map(|(first, last)| {
                    s.spawn(move || {
                        let mut v = Vec::new();
                        for (k, old) in last.chunks_mut(PAGE).enumerate() {
                            let idx = first + k;
                            let cur = &ram[idx * PAGE..(idx + 1) * PAGE];
                            if cur != &old[..] {
                                let prev = keep_old.then(|| Box::from(&old[..]));
                                old.copy_from_slice(cur);
                                v.push(DirtyPage {
                                    idx: idx as u64,
                                    new: Box::from(cur),
                                    old: prev,
                                });
                            }
                        }
                        v
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for v in found {
            out.extend(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_changed_pages() {
        let mut ram = vec![0u8; 64 * PAGE];
        let mut t = ComparingTracker::new(ram.len(), 3, true);
        let mut out = Vec::new();
        t.collect(&ram, &mut out).unwrap();
        assert!(out.is_empty(), "zero RAM: nothing to send");
        ram[5 * PAGE + 7] = 1;
        ram[63 * PAGE] = 2;
        t.collect(&ram, &mut out).unwrap();
        let idx: Vec<u64> = out.iter().map(|p| p.idx).collect();
        assert_eq!(idx, vec![5, 63]);
        assert_eq!(out[0].new[7], 1);
        assert_eq!(
            out[0].old.as_deref().map(|o| o[7]),
            Some(0),
            "previous contents kept"
        );
        out.clear();
        t.collect(&ram, &mut out).unwrap();
        assert!(out.is_empty(), "unchanged since last time");
    }
}
