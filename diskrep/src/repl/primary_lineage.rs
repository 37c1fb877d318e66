//! The primary's side of the disk lineage: the activity log on the write path (a region is
//! recorded durably before a write to it is issued; cold regions leave it lazily), what this
//! image says about itself to a backup that connects, and `replicate` (re-protection: a
//! standalone server, e.g. an activated backup, starts replicating to a new backup).

use super::primary::{LinkState, Replicator, State};
use crate::lineage::activity_log::Begin;
use crate::lineage::claim::{Claim, ClaimKind};
use crate::lineage::meta::to_runs;
use crate::lineage::plan::{self, LineageView, Plan};
use crate::lineage::LineageId;
use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::Epoch;
use serde::Serialize;
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

/// The lineage part of the primary's status.
#[derive(Debug, Serialize)]
pub struct LineageStatus {
    pub current: LineageId,
    /// What the image holds outside the activity log, in words ("none: why" if unknown).
    pub claim: String,
    pub activity_log_regions: usize,
    pub activity_log_capacity: usize,
    pub metadata_writes: u64,
    /// The last resync decision: "partial resync: ..." or "full sync: why".
    pub plan: String,
    pub path: String,
}

impl Replicator {
    /// `replicate ADDR`: a standalone server (an activated backup, or a primary started without
    /// `--backup`) starts protecting its image: connects to a backup at ADDR and resyncs it.
    /// Returns false when it already replicates to ADDR: the link reconnects by itself (and
    /// resyncs what changed), so asking again, e.g. `remus protect --attach` after a planned
    /// stop, is answered as done. Another address is refused.
    pub async fn replicate_to(self: &Arc<Self>, addr: String) -> Result<bool, ControlError> {
        {
            let mut b = self.backup_addr.lock().unwrap_or_else(|p| p.into_inner());
            match b.as_ref() {
                Some(old) if *old == addr => return Ok(false),
                Some(old) => {
                    return Err(ControlError::new(
                        ErrorCode::State,
                        format!("already replicating to {old}"),
                    ))
                }
                None => *b = Some(addr.clone()),
            }
        }
        self.state.lock().await.link = LinkState::Connecting;
        let me = self.clone();
        tokio::spawn(async move { me.sender_loop(addr).await });
        Ok(true)
    }

    fn regions(&self, offset: u64, len: u64) -> Range<u64> {
        let rs = self.keeper.region_size();
        if len == 0 {
            return 0..0;
        }
        offset / rs..(offset + len - 1) / rs + 1
    }

    /// Called before a write (or zeroing) of [offset, offset+len) is issued: returns once every
    /// region it touches is in the activity log on disk. An error means the metadata could not
    /// be written: the write must not be issued (the client gets EIO).
    pub async fn begin_write(&self, offset: u64, len: u64) -> std::io::Result<Range<u64>> {
        let range = self.regions(offset, len);
        let missing = match self.keeper.al().begin(range.clone()) {
            Begin::Recorded => return Ok(range),
            Begin::Missing(m) => m,
        };
        let turn = self.keeper.turn().await;
        let prepared = {
            let st = self.state.lock().await;
            // Cold: acknowledged by a backup that holds this lineage (so the claim, written
            // along, covers it). Before that, nothing leaves the log.
            let live = st.live;
            let set = self
                .keeper
                .al()
                .prepare(&missing, |r| live && st.dirty.is_clean(r as usize));
            if let Some(set) = &set {
                let claim = st.claim;
                self.keeper.update(&turn, |m| {
                    m.claim = claim;
                    m.set_suspect(set);
                });
            }
            set.is_some()
        };
        if prepared {
            if let Err(e) = self.keeper.write(&turn).await {
                self.keeper.al().end(range);
                tracing::error!(
                    "cannot record the activity log in {}: {e}; the write is refused",
                    self.keeper.path().display()
                );
                return Err(e);
            }
            self.keeper.al().recorded(&missing);
        }
        Ok(range)
    }

    /// Writes the in-memory claim to the metadata (the activity log unchanged: it still holds
    /// every region written since the older claim, so the newer one is as true). A failure
    /// only leaves the older, still true, record.
    pub(super) async fn record_claim(&self) {
        let turn = self.keeper.turn().await;
        let claim = self.state.lock().await.claim;
        self.keeper.update(&turn, |m| m.claim = claim);
        match self.keeper.write(&turn).await {
            Ok(()) => tracing::info!(?claim, "lineage: the backup holds this lineage; recorded"),
            Err(e) => tracing::warn!(
                "lineage: cannot record the claim in {}: {e}",
                self.keeper.path().display()
            ),
        }
    }

    /// The write begun with [`Self::begin_write`] is reported (or failed and marked).
    pub fn end_write(&self, regions: Range<u64>) {
        self.keeper.al().end(regions);
    }

    /// A write that failed may have changed part of its range: resync it whatever happens.
    pub async fn write_failed(&self, offset: u64, len: u64) {
        let mut st = self.state.lock().await;
        let e = st.epoch;
        st.dirty.note_written(offset, len, e);
        st.dirty.mark(offset, len, None);
    }

    /// What this image says about itself to a backup whose claim is `peer`. When the dirty map
    /// knows every write of this process' lineage (`live`) and the backup holds some epoch E of
    /// it, exactly the regions written after E (and those it never got) differ; otherwise the
    /// claim and the activity log as recorded.
    pub(super) fn view_for(&self, st: &State, peer: Option<&Claim>) -> LineageView {
        let rs = self.keeper.region_size();
        let to_bytes = |regions: &BTreeSet<u64>| -> Vec<(u64, u64)> {
            let v: Vec<u64> = regions.iter().copied().collect();
            to_runs(&v)
                .into_iter()
                .map(|(first, n)| (first * rs, n * rs))
                .collect()
        };
        if let Some(p) = peer {
            let same = p.lineage.id == self.lineage.id;
            if st.live && same && matches!(p.kind, ClaimKind::Unknown | ClaimKind::Exact) {
                let mut regions: BTreeSet<u64> = st
                    .dirty
                    .written_after(Epoch(p.epoch))
                    .map(|i| i as u64)
                    .collect();
                regions.extend(st.dirty.not_clean().map(|i| i as u64));
                return LineageView {
                    claim: Some(Claim {
                        lineage: self.lineage,
                        kind: ClaimKind::From,
                        epoch: p.epoch,
                    }),
                    suspect: to_bytes(&regions),
                    note: String::new(),
                };
            }
        }
        let regions: BTreeSet<u64> = self.keeper.al().regions().into_iter().collect();
        LineageView {
            claim: st.claim,
            suspect: to_bytes(&regions),
            note: self.keeper.snapshot().note,
        }
    }

    /// On connection: the resync this backup needs, from the two lineages; sets the dirty map
    /// to exactly that (or everything) and says which, in the log and in status.
    pub(super) fn decide_resync(&self, st: &mut State, peer: Option<&LineageView>, addr: &str) {
        let ours = self.view_for(st, peer.and_then(|p| p.claim.as_ref()));
        let rs = self.keeper.region_size();
        let decision = plan::decide(&ours, peer, rs, self.disk_size());
        match &decision {
            Plan::Partial { regions, .. } => st.dirty.resync_exactly(regions),
            Plan::Full { .. } => st.dirty.mark_all(),
        }
        st.plan = decision.describe(rs, st.dirty.regions() as u64);
        match decision {
            Plan::Partial { .. } => tracing::info!(backup = addr, "{}", st.plan),
            Plan::Full { .. } => tracing::warn!(backup = addr, "{}", st.plan),
        }
    }

    pub(super) fn lineage_status(&self, st: &State) -> LineageStatus {
        let al = self.keeper.al();
        LineageStatus {
            current: self.lineage,
            claim: match &st.claim {
                Some(c) => c.to_string(),
                None => format!("none: {}", self.keeper.snapshot().note),
            },
            activity_log_regions: al.len(),
            activity_log_capacity: al.capacity(),
            metadata_writes: al.metadata_writes(),
            plan: st.plan.clone(),
            path: self.keeper.path().display().to_string(),
        }
    }
}
