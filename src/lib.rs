//! reimage: block-copy disk images onto disks, as Apple's asr does, from
//! local files today and from HTTP and multicast as the project grows.
//! `main.rs` only parses and dispatches; everything testable lives here.

mod blockdev;
pub mod catalog;
pub mod cli;
pub mod fsmap;
pub mod image;
pub mod io;
pub mod mcast;
pub mod menu;
pub mod parttable;
pub mod progress;
mod ranges;
pub mod rescue;
pub mod restore;
pub mod serve;
mod signals;
pub mod signature;
pub mod source;
pub mod target;
pub mod util;
