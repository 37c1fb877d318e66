//! The single place per hypervisor that knows QEMU or Xen. The daemons' loops
//! ([`crate::engine`]) drive the pure cores and know only these two traits.
//!
//! * Primary ([`PrimaryHv`]): `pause`, `capture` the closed epoch into staging (while paused),
//!   `resume`; later `ship` the staged checkpoint as remus-proto frames. The engine puts the
//!   netbuf and diskrep barriers between `pause` and `capture`, and measures the pause.
//! * Backup ([`BackupHv`]): `stage` each content frame of the open checkpoint, `finish` it at
//!   its END (every check that can void it), `apply` a committed checkpoint to the restore
//!   point, `activate` the restore point on failover.

pub mod qemu;
pub mod qemu_backup;
#[cfg(feature = "xen")]
pub mod xen;

use crate::heartbeat::SharedWriter;
use crate::wire::Msg;
use anyhow::Result;
use remus_proto::Epoch;
use std::time::Duration;

/// What the HELLO says about the guest.
pub struct Guest {
    /// "qemu" or "xen": a backup refuses a stream its hypervisor cannot restore.
    pub driver: &'static str,
    pub ram_size: u64,
}

/// A captured checkpoint's size, for the stats log and `status`.
pub trait Staged {
    fn epoch(&self) -> Epoch;
    /// Dirty pages (or libxc records) it carries.
    fn pages(&self) -> usize;
    /// Its size before any compression.
    fn raw_bytes(&self) -> usize;
}

/// What shipping a checkpoint cost.
pub struct Sent {
    pub wire_bytes: usize,
    pub compress: Duration,
}

/// A hypervisor as the primary's loop sees it.
pub trait PrimaryHv {
    type Checkpoint: Staged;

    fn guest(&self) -> Guest;
    /// Refuses a pipeline depth this hypervisor's capture cannot support.
    fn check_depth(&self, depth: usize) -> Result<()>;
    /// Fills in what `status` says about this hypervisor (set once, at the start).
    fn describe(&self, st: &mut crate::status::Status);
    /// Whether each checkpoint's dirty set was checked against a full comparison.
    fn validates(&self) -> bool {
        false
    }
    /// Stops the guest at an epoch boundary: nothing it does from here belongs to the epoch
    /// being closed. Returns when the stop began (the pause is measured from there: Xen's
    /// first checkpoint waits for libxenguest's live pre-copy before it can suspend).
    fn pause(&mut self) -> Result<std::time::Instant>;
    /// Copies epoch `close`'s state into local staging. The guest is paused; nothing may touch
    /// the network here (the pause covers capture only).
    fn capture(&mut self, close: Epoch) -> Result<Self::Checkpoint>;
    /// Lets the guest run again after `capture`.
    fn resume(&mut self) -> Result<()>;
    /// Sends a staged checkpoint, BEGIN to END, taking the writer's lock per frame so that
    /// heartbeats get in between.
    fn ship(&mut self, out: &SharedWriter, c: &Self::Checkpoint) -> std::io::Result<Sent>;
    /// `c` was shipped whole (a later one may be sent as a delta against it).
    fn shipped(&mut self, c: Self::Checkpoint);
    /// Stops the guest outside a checkpoint (fencing, a full netbuf with the claim unresolved).
    fn halt(&mut self) -> Result<()>;
    /// Undoes [`PrimaryHv::halt`].
    fn unhalt(&mut self) -> Result<()>;
}

/// A hypervisor as the backup's loop sees it. One value serves one primary's stream.
pub trait BackupHv {
    /// A checkpoint being received, then staged whole until it is committed.
    type Staging: Default;
    /// The VM running here after a failover.
    type Running;

    /// One content frame of the open checkpoint `open` (BEGIN and END are the engine's). An
    /// error voids the checkpoint; the text says why.
    fn stage(&mut self, open: Option<(Epoch, &mut Self::Staging)>, m: Msg) -> Result<(), String>;
    /// The checkpoint's END: checks it is whole and decodes what needs the restore point. Its
    /// error is the whole reason the checkpoint is void.
    fn finish(
        &mut self,
        epoch: Epoch,
        s: &mut Self::Staging,
        pages: u64,
        device_bytes: u64,
    ) -> Result<(), String>;
    /// Makes committed checkpoint `epoch` the restore point; returns (pages, bytes) applied.
    fn apply(&mut self, epoch: Epoch, s: Self::Staging) -> Result<(u64, u64)>;
    /// Failover: runs the VM from the restore point (diskrep is already active).
    fn activate(&mut self, epoch: Epoch) -> Result<Self::Running>;
}
