//! Disk lineage (DRBD's generation identifiers and activity log, tied to remus' fencing
//! generation): what an image is known to hold, kept durably beside it, so that a host that
//! rejoins after a failover is resynchronised from only the regions that may differ.
//!
//! The idea in one sentence: every image carries a **claim** "outside the regions in my
//! suspect set, I hold the state of lineage L at epoch M", where M is one exact epoch, every
//! epoch from e on (a primary: whatever it wrote after e is in its suspect set), or one
//! unknown epoch from e on (a backup that commits without rewriting its metadata each time).
//! Two images whose claims can name a common (L, M) differ at most in the union of their
//! suspect sets; anything else is a full sync.
//!
//! - [`claim`]: lineage identifiers and claims.
//! - [`plan`]: the resync decision (partial set or full sync, with the reason in words).
//! - [`activity_log`]: the bounded, LRU-ordered set of regions recorded durably before a write
//!   to them is issued (DRBD's al-extents): metadata is written only when a write touches a
//!   region not already in it.
//! - [`meta`]: the metadata record and its checksummed text form.
//! - [`keeper`]: the record of a running diskrep and its writes (serialised). I/O shell.
//! - [`store`]: reading and writing the metadata file crash-safely (temporary file, fsync,
//!   rename, fsync of the directory). The only I/O here.

pub mod activity_log;
pub mod claim;
pub mod keeper;
pub mod meta;
pub mod plan;
pub mod store;

pub use claim::{Claim, ClaimKind, LineageId};
