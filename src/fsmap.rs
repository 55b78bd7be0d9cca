// TEMPORARY STUB until the real module lands.
use std::ops::Range;
use std::os::unix::fs::FileExt;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType { Ext, Fat }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsMap { pub fs: FsType, pub used: Vec<Range<u64>> }
pub fn probe(_dev: &impl FileExt, _offset: u64, _len: u64) -> anyhow::Result<Option<FsMap>> { Ok(None) }
