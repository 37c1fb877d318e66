//! The backup's side of the disk lineage. The metadata must never claim more than the image
//! holds: the claim is forgotten (durably, before the first byte changes) when a resync or an
//! epoch of a lineage other than the recorded one is about to touch the image; once the image
//! is consistent again the primary's lineage is adopted ("some epoch from E on", E brought
//! forward at most once a second, since each write costs two fsyncs); and activation records
//! exactly the committed epoch before the image is served.

use super::backup::{Backup, State};
use crate::lineage::claim::{Claim, ClaimKind, LineageId};
use crate::lineage::meta::MetaRole;
use crate::lineage::plan::LineageView;
use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::Epoch;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How often a committing backup brings its recorded epoch forward.
const EPOCH_RECORD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct BackupLineageStatus {
    /// What the image holds, in words ("none: why" if unknown).
    pub claim: String,
    /// The primary lineage this image follows, once adopted.
    pub adopted: Option<LineageId>,
    pub path: String,
}

impl Backup {
    /// What this image says about itself in HELLO_ACK. While consistent in an adopted lineage,
    /// the committed epoch known in memory (newer than the one recorded).
    pub(super) fn lineage_view(&self, st: &State) -> LineageView {
        if let (Some(l), Some(c), true, None) = (
            st.adopted,
            st.committed_through,
            st.consistent,
            st.failure.as_ref(),
        ) {
            return LineageView {
                claim: Some(Claim {
                    lineage: l,
                    kind: ClaimKind::Unknown,
                    epoch: c.0,
                }),
                suspect: Vec::new(),
                note: String::new(),
            };
        }
        self.keeper.view()
    }

    /// Durably drops the claim before the image changes in a way it does not describe.
    pub(super) async fn forget_claim(&self, st: &mut State, why: &str) -> std::io::Result<()> {
        if self.keeper.claim().is_none() {
            return Ok(());
        }
        let turn = self.keeper.turn().await;
        let mut m = self.keeper.snapshot();
        m.forget(why);
        self.keeper.replace(&turn, m).await?;
        st.adopted = None;
        tracing::info!("lineage: the image no longer holds a recorded state ({why})");
        Ok(())
    }

    /// After a successful commit of `n`: adopt the primary's lineage once consistent, and
    /// bring the recorded epoch forward now and then. A failure here only leaves an older
    /// (still true) record, so it is logged, not fatal.
    pub(super) async fn committed_lineage(&self, st: &mut State, n: Epoch) {
        let Some(l) = st.primary_lineage else { return };
        if !st.consistent || st.failure.is_some() {
            return;
        }
        let adopting = st.adopted != Some(l);
        if !adopting
            && st
                .meta_written
                .is_some_and(|t| t.elapsed() < EPOCH_RECORD_INTERVAL)
        {
            return;
        }
        let turn = self.keeper.turn().await;
        let mut m = self.keeper.snapshot();
        if adopting {
            m.enter(l, MetaRole::Backup);
        }
        m.claim = Some(Claim {
            lineage: l,
            kind: ClaimKind::Unknown,
            epoch: n.0,
        });
        m.note.clear();
        m.suspect.clear();
        match self.keeper.replace(&turn, m).await {
            Ok(()) => {
                if adopting {
                    tracing::info!("lineage: following {l} from epoch {n}");
                }
                st.adopted = Some(l);
                st.meta_written = Some(Instant::now());
            }
            Err(e) => tracing::warn!(
                "cannot record the lineage in {}: {e}",
                self.keeper.path().display()
            ),
        }
    }

    /// Activation: a new lineage, starting from exactly the committed epoch (or from nothing
    /// known, for a forced activation of an inconsistent image), recorded before anything is
    /// served.
    pub(super) async fn activation_lineage(
        &self,
        st: &State,
        fence: Option<u64>,
    ) -> Result<LineageId, ControlError> {
        let claim = match (st.adopted, st.committed_through) {
            (Some(l), Some(c)) if st.consistent && st.failure.is_none() => Some(Claim {
                lineage: l,
                kind: ClaimKind::Exact,
                epoch: c.0,
            }),
            _ => None,
        };
        let lineage = LineageId::fresh(fence);
        let note = if st.consistent {
            "activated before the lineage was recorded"
        } else {
            "activated while inconsistent (forced)"
        };
        self.keeper
            .enter(lineage, MetaRole::Activated, claim, note)
            .await
            .map_err(|e| {
                ControlError::new(
                    ErrorCode::Backend,
                    format!(
                        "not activated: cannot record the lineage in {}: {e}",
                        self.keeper.path().display()
                    ),
                )
            })?;
        match &claim {
            Some(c) => tracing::info!("activated: new lineage {lineage}, the image holds {c}"),
            None => tracing::warn!(
                "activated: new lineage {lineage}; the image's state is unknown ({note}), so \
                 re-protection will be a full sync"
            ),
        }
        Ok(lineage)
    }

    pub(super) fn lineage_status(&self, _st: &State) -> BackupLineageStatus {
        let m = self.keeper.snapshot();
        BackupLineageStatus {
            claim: match &m.claim {
                Some(c) => c.to_string(),
                None => format!("none: {}", m.note),
            },
            adopted: m
                .current
                .filter(|_| m.role == MetaRole::Backup && m.claim.is_some()),
            path: self.keeper.path().display().to_string(),
        }
    }
}
