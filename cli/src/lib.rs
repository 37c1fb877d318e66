//! The remus front end as a library: the pieces `remus` is made of, usable by other tools.
//!
//! - `config`: one VM's set-up (TOML + flags) and every daemon's command line (pure).
//! - `validate`: the forms of the values that reach a command line (pure).
//! - `preflight`: checks before anything starts (root, packages, interfaces, ports).
//! - `supervise`: starting, watching and stopping the daemons.
//! - `progress`: the initial sync as one line (pure).
//! - `protect` / `receive`: the primary's and the backup's side.
//! - `status`: one view over the daemons' control sockets; planned failover.
//! - `stop`: ending a `protect` or `receive` run.
//! - `metrics`: the Prometheus endpoint of `protect` / `receive` (`--metrics ADDR`).
//! - `notify`: systemd's readiness protocol (`Type=notify`).
//! - `ocf`: the Pacemaker resource agent `ocf:remus:vm` (`remus ocf ACTION`).

pub mod attach;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod notify;
pub mod ocf;
pub mod preflight;
pub mod progress;
pub mod protect;
pub mod receive;
pub mod status;
pub mod stop;
pub mod supervise;
pub mod validate;
