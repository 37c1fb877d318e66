//! The lineage metadata of one image in a running diskrep: the record in memory, its activity
//! log, and the writes of the record to its file (serialised: one at a time, each writing the
//! record as it is then, so that a later write never puts back an older state). I/O shell.

use super::activity_log::ActivityLog;
use super::claim::{Claim, LineageId};
use super::meta::{DiskMeta, MetaRole};
use super::plan::{regions_of, LineageView};
use super::store::{self, Loaded};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Keeper {
    path: PathBuf,
    region_size: u64,
    meta: Mutex<DiskMeta>,
    pub al: Mutex<ActivityLog>,
    io: tokio::sync::Mutex<()>,
}

/// Held while a metadata write is prepared and done.
pub struct IoTurn<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

impl Keeper {
    /// Reads the metadata of an image of `size` bytes (tracked in regions of `region_size`).
    /// A missing, damaged or mismatched file gives an image with no claim (a full sync when it
    /// next meets a peer), and the reason is logged and kept for status and the peer.
    pub fn open(
        path: &Path,
        size: u64,
        region_size: u64,
        al_capacity: usize,
        role: MetaRole,
    ) -> std::io::Result<Keeper> {
        let fresh = |note: String| {
            let mut m = DiskMeta::new(size, region_size, role);
            m.note = note;
            m
        };
        let meta = match store::load(path)? {
            Loaded::Found(m) if m.size != size => fresh(format!(
                "{} is for a disk of {} bytes, this one has {size}",
                path.display(),
                m.size
            )),
            // A backup keeps its record's regions as they are (they only describe the image to
            // a primary, in bytes); a primary's activity log runs at this run's region size.
            Loaded::Found(mut m) => {
                if m.region_size != region_size && role == MetaRole::Primary {
                    // Same suspect bytes, at this run's region size (a superset).
                    let regions: Vec<u64> = regions_of(&m.suspect_bytes(), region_size, size)
                        .into_iter()
                        .collect();
                    m.region_size = region_size;
                    m.set_suspect(&regions);
                }
                m
            }
            Loaded::Missing => fresh(format!("no lineage metadata at {}", path.display())),
            Loaded::Damaged(why) => {
                tracing::warn!("lineage metadata unusable, the next sync is a full one: {why}");
                fresh(why)
            }
        };
        if let Some(c) = &meta.claim {
            tracing::info!(path = %path.display(), "lineage: the image holds {c}");
        } else {
            tracing::info!(path = %path.display(), "lineage unknown: {}", meta.note);
        }
        let initial = match role {
            MetaRole::Primary => meta.suspect_regions().unwrap_or_default(),
            _ => Vec::new(),
        };
        let al = ActivityLog::new(al_capacity, initial);
        Ok(Keeper {
            path: path.to_path_buf(),
            region_size,
            meta: Mutex::new(meta),
            al: Mutex::new(al),
            io: tokio::sync::Mutex::new(()),
        })
    }

    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, DiskMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn al(&self) -> std::sync::MutexGuard<'_, ActivityLog> {
        self.al.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> DiskMeta {
        self.meta().clone()
    }

    pub fn claim(&self) -> Option<Claim> {
        self.meta().claim
    }

    /// What this image says about itself in the handshake.
    pub fn view(&self) -> LineageView {
        let m = self.meta();
        LineageView {
            claim: m.claim,
            suspect: if m.claim.is_some() {
                m.suspect_bytes()
            } else {
                Vec::new()
            },
            note: m.note.clone(),
        }
    }

    pub async fn turn(&self) -> IoTurn<'_> {
        IoTurn(self.io.lock().await)
    }

    /// Changes the record in memory (write it with [`Self::write`] in the same turn).
    pub fn update(&self, _turn: &IoTurn<'_>, f: impl FnOnce(&mut DiskMeta)) {
        f(&mut self.meta())
    }

    /// Writes the record as it is now, durably.
    pub async fn write(&self, _turn: &IoTurn<'_>) -> std::io::Result<()> {
        let snapshot = self.snapshot();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || store::store(&path, &snapshot))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Replaces the record, durably; on failure the record in memory is left as it was.
    pub async fn replace(&self, turn: &IoTurn<'_>, new: DiskMeta) -> std::io::Result<()> {
        let path = self.path.clone();
        let n = new.clone();
        tokio::task::spawn_blocking(move || store::store(&path, &n))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.update(turn, |m| *m = new);
        Ok(())
    }

    /// Starts a new lineage on this image (a primary starting, a backup activated), durably.
    pub async fn enter(
        &self,
        lineage: LineageId,
        role: MetaRole,
        claim: Option<Claim>,
        note: &str,
    ) -> std::io::Result<()> {
        let turn = self.turn().await;
        let mut m = self.snapshot();
        if claim.is_some() || role != MetaRole::Primary {
            m.claim = claim;
        }
        if m.claim.is_none() {
            m.note = note.into();
        }
        if role == MetaRole::Activated {
            // An activated backup's image is exactly its claim; what it writes from now on
            // is recorded from here, at this run's region size.
            m.suspect.clear();
            m.region_size = self.region_size;
        }
        m.enter(lineage, role);
        self.replace(&turn, m).await?;
        if role == MetaRole::Activated {
            let mut al = self.al();
            *al = ActivityLog::new(al.capacity(), []);
        }
        Ok(())
    }
}
