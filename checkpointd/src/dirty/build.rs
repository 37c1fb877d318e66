//! Sets up a tracker of a given kind for a running QEMU.

use super::compare::ComparingTracker;
use super::indexed::IndexedTracker;
use super::soft_dirty::SoftDirtySource;
use super::uffd::UffdSource;
use super::{qemu_ram, DirtyTracker, Kind};
use std::path::Path;

/// What a tracker needs to know about the guest.
pub struct Guest<'a> {
    /// QEMU's process.
    pub pid: i32,
    /// The guest RAM file (QEMU's memory-backend-file).
    pub ram: &'a Path,
    pub ram_len: usize,
    /// Keep the previous contents of changed pages (compression XORs against them).
    pub keep_old: bool,
    /// May a uffd be created in QEMU with ptrace when it has none (attaching to a QEMU started
    /// without the preload shim)?
    pub inject: bool,
}

/// Sets up a tracker of `kind` (not `Auto`) and says how, or why it cannot be.
pub fn build(kind: Kind, g: &Guest) -> Result<(Box<dyn DirtyTracker>, String), String> {
    if kind == Kind::Compare {
        return Ok((
            Box::new(ComparingTracker::new(g.ram_len, 2, g.keep_old)),
            "compares every page with its copy at the previous checkpoint".into(),
        ));
    }
    if kind == Kind::Auto {
        return Err("auto is not a tracker".into());
    }
    let segments = qemu_ram::locate(g.pid, g.ram, g.ram_len as u64)?;
    let me = std::process::id() as i32;
    let others = qemu_ram::other_writers(g.ram, &[g.pid, me])?;
    if !others.is_empty() {
        return Err(format!(
            "another process can write the guest RAM past QEMU's mapping (vhost-user?), and \
             those writes would be missed: {}",
            others.join(", ")
        ));
    }
    let file = std::fs::File::open(g.ram).map_err(|e| format!("{}: {e}", g.ram.display()))?;
    // The shadow copy drops pages written without change; compression needs it anyway.
    let shadow = g.keep_old.then_some(g.ram_len);
    match kind {
        Kind::Uffd => {
            let (src, how) = UffdSource::setup(g.pid, segments, g.inject)?;
            Ok((
                Box::new(IndexedTracker::new(src, Some(file), shadow, g.keep_old)),
                format!("PAGEMAP_SCAN of {how}"),
            ))
        }
        _ => {
            let (src, how) = SoftDirtySource::setup(g.pid, segments)?;
            Ok((
                Box::new(IndexedTracker::new(src, Some(file), shadow, g.keep_old)),
                how,
            ))
        }
    }
}
