//! Multicast imaging: `reimage server` streams a prepared image to a LAN
//! group in a loop, RaptorQ-coded; `restore --source mcast://` joins it.
//! The protocol is specified in docs/MULTICAST.md.

pub mod client;
pub mod config;
pub mod dnssd;
pub mod fec;
pub mod server;
pub mod wire;
