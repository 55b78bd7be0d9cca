//! The text menu of the rescue system.
pub mod app;
pub mod render;
pub mod run;
pub use app::*;
pub use render::render;
pub use run::{ChannelProgress, MenuOptions, run};
