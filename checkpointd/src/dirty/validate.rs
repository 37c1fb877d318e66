//! `--validate-dirty`: runs a full comparison next to the tracker at every checkpoint and fails
//! the checkpoint if the tracker missed a page that changed. For testing a tracker against the
//! real kernel mechanism (the pause then includes the comparison).

use super::compare::ComparingTracker;
use super::{DirtyPage, DirtyTracker};
use std::collections::HashSet;
use std::io;

pub struct Validating {
    inner: Box<dyn DirtyTracker>,
    reference: ComparingTracker,
    found: Vec<DirtyPage>,
    /// Checkpoints checked, and pages the reference found changed over them.
    pub checked: u64,
    pub changed_pages: u64,
}

impl Validating {
    pub fn new(inner: Box<dyn DirtyTracker>, ram_len: usize) -> Self {
        Validating {
            inner,
            reference: ComparingTracker::new(ram_len, 2, false),
            found: Vec::new(),
            checked: 0,
            changed_pages: 0,
        }
    }
}

impl DirtyTracker for Validating {
    fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>) -> io::Result<()> {
        let first = out.len();
        self.inner.collect(ram, out)?;
        let reported: HashSet<u64> = out[first..].iter().map(|p| p.idx).collect();
        self.found.clear();
        self.reference.collect(ram, &mut self.found)?;
        let missed: Vec<u64> = self
            .found
            .iter()
            .map(|p| p.idx)
            .filter(|i| !reported.contains(i))
            .collect();
        if !missed.is_empty() {
            return Err(io::Error::other(format!(
                "dirty tracker validation: {} changed pages not reported (first {:?}) of {} changed",
                missed.len(),
                &missed[..missed.len().min(8)],
                self.found.len()
            )));
        }
        self.checked += 1;
        self.changed_pages += self.found.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirty::PAGE;

    /// Reports nothing after the first pass.
    struct Blind(bool);
    impl DirtyTracker for Blind {
        fn collect(&mut self, ram: &[u8], out: &mut Vec<DirtyPage>) -> io::Result<()> {
            if !self.0 {
                self.0 = true;
                ComparingTracker::new(ram.len(), 1, false).collect(ram, out)?;
            }
            Ok(())
        }
    }

    #[test]
    fn a_missed_page_fails_the_checkpoint() {
        let mut ram = vec![0u8; 8 * PAGE];
        ram[0] = 1;
        let mut v = Validating::new(Box::new(Blind(false)), ram.len());
        let mut out = Vec::new();
        v.collect(&ram, &mut out).unwrap();
        assert_eq!(v.checked, 1);
        ram[3 * PAGE] = 1;
        let e = v.collect(&ram, &mut out).unwrap_err();
        assert!(
            e.to_string()
                .contains("1 changed pages not reported (first [3])"),
            "{e}"
        );
    }
}
