//! The NBD server: protocol constants, the pure negotiation and request checks, and the tokio
//! connection handler.

pub mod consts;
pub mod handshake;
pub mod request;
pub mod server;
