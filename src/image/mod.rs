//! Prepared images: the format, writing one, capturing a disk into one
//! (`imagecreate`) and checking or converting one (`imagescan`).

pub mod create;
pub mod format;
mod plan;
pub mod scan;
mod writer;

pub use create::{CreateOptions, CreateReport, create};
pub use scan::{ScanOptions, scan};
