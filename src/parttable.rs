// TEMPORARY STUB until the real module lands.
use std::os::unix::fs::FileExt;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub len: u64,
    pub type_name: String,
    pub name: String,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTable {
    pub kind: TableKind,
    pub sector_size: u32,
    pub partitions: Vec<Partition>,
    pub metadata: Vec<std::ops::Range<u64>>,
}
pub fn read(_dev: &impl FileExt, _size: u64, _sector: u32) -> anyhow::Result<Option<PartTable>> {
    Ok(None)
}
pub fn write_empty_gpt(_dev: &impl FileExt, _size: u64, _sector: u32) -> anyhow::Result<()> {
    Ok(())
}
pub fn relocate_backup_gpt(_dev: &impl FileExt, _size: u64, _sector: u32) -> anyhow::Result<bool> {
    Ok(false)
}
pub fn resize_partition(
    _dev: &impl FileExt,
    _size: u64,
    _sector: u32,
    _number: u32,
    _new_len: u64,
) -> anyhow::Result<()> {
    Ok(())
}
pub fn check_resize(
    _dev: &impl FileExt,
    _size: u64,
    _sector: u32,
    _number: u32,
    _new_len: u64,
) -> anyhow::Result<()> {
    Ok(())
}
