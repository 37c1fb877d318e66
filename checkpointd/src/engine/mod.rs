//! The daemons' loops, one per role and the same for every hypervisor: they drive the pure
//! cores ([`crate::core`]) with real time, the network, netbuf, diskrep and the witness, and
//! reach the hypervisor only through [`crate::hv`].

pub mod backup;
pub mod primary;
