//! Test support for remus: real network namespaces and veths that clean up after themselves,
//! tagged test frames, a capture helper, a LAN watcher (which host's port the guest's frames
//! come in on), small tmpfs mounts, and the guest image builder's driver.

pub mod capture;
pub mod diskrep_rig;
pub mod fence_bed;
pub mod frames;
pub mod guest;
pub mod hostile;
pub mod lan;
pub mod nbd_client;
pub mod netns;
pub mod pacemaker;
pub mod scrape;
pub mod tmpfs;
pub mod topo;
