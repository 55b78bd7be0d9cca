//! Deciding what `imagecreate` stores: the partition table's own sectors
//! and the blocks each filesystem marks used are copied exactly; a known
//! filesystem's free blocks are skipped because its bitmaps say nobody
//! reads them; everything else (unknown filesystems, gaps between
//! partitions, boot loader areas) is scanned and only non-zero blocks kept.

use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::Result;

use super::format::{Content, FsKind, TableKind};
use crate::fsmap::{self, FsType};
use crate::parttable;
use crate::ranges::normalize;

/// Granularity of stored ranges (bytes): the page size, which every
/// filesystem block and sector size in use divides or equals, and the
/// alignment O_DIRECT restores need.
pub const BLOCK: u64 = 4096;
/// Free gaps up to this many bytes between used ranges are copied rather
/// than split around: fewer, larger extents restore faster than many
/// small ones, and zstd squeezes the free bytes to almost nothing.
const MERGE_GAP: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    pub offset: u64,
    pub len: u32,
    /// True: the filesystem or table says these bytes are in use, store
    /// them. False: unknown contents, store only what is not all zeros.
    pub exact: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub content: Content,
    pub table: TableKind,
    pub fs: FsKind,
    pub chunks: Vec<PlannedChunk>,
    /// One line per decision worth telling the user about.
    pub notes: Vec<String>,
}

fn fs_kind(t: FsType) -> FsKind {
    match t {
        FsType::Ext => FsKind::Ext,
        FsType::Fat => FsKind::Fat,
    }
}

fn fs_name(t: FsType) -> &'static str {
    match t {
        FsType::Ext => "ext2/3/4",
        FsType::Fat => "FAT",
    }
}

/// Plans a capture of the `size` bytes of `dev`. `is_partition` says the
/// source is a partition device, so a missing filesystem still means
/// "one partition" rather than "a raw disk".
pub fn plan(
    dev: &impl FileExt,
    size: u64,
    sector: u32,
    chunk_size: u32,
    is_partition: bool,
) -> Result<Plan> {
    let mut notes = Vec::new();
    let mut exact: Vec<Range<u64>> = Vec::new();
    let mut free: Vec<Range<u64>> = Vec::new();
    let (content, table, mut fs) = match parttable::read(dev, size, sector)? {
        Some(t) => {
            exact.extend(t.metadata.iter().cloned());
            // An MBR extended partition only contains logical partitions
            // (listed on their own) and EBRs (in `metadata`).
            for p in t
                .partitions
                .iter()
                .filter(|p| !matches!(p.type_name.as_str(), "0x05" | "0x0f" | "0x85"))
            {
                let what = format!("partition {} ({})", p.number, p.type_name);
                match fsmap::probe(dev, p.start, p.len) {
                    Ok(Some(map)) => {
                        notes.push(format!(
                            "{what}: {} filesystem, {} used",
                            fs_name(map.fs),
                            used_share(map.used_bytes(), p.len)
                        ));
                        free.push(p.start..p.start + p.len);
                        exact.extend(map.used.iter().map(|r| p.start + r.start..p.start + r.end));
                    }
                    Ok(None) => notes.push(format!(
                        "{what}: unknown filesystem, storing its non-zero blocks"
                    )),
                    Err(e) => notes.push(format!("{what}: {e:#}; storing its non-zero blocks")),
                }
            }
            let kind = match t.kind {
                parttable::TableKind::Gpt => TableKind::Gpt,
                parttable::TableKind::Mbr => TableKind::Mbr,
            };
            (Content::Disk, kind, FsKind::Unknown)
        }
        None => match fsmap::probe(dev, 0, size) {
            Ok(Some(map)) => {
                notes.push(format!(
                    "{} filesystem, {} used",
                    fs_name(map.fs),
                    used_share(map.used_bytes(), size)
                ));
                free.push(0..size);
                exact = map.used;
                (Content::Partition, TableKind::None, fs_kind(map.fs))
            }
            other => {
                if let Err(e) = other {
                    notes.push(format!("{e:#}; storing non-zero blocks"));
                } else {
                    notes.push(
                        "no partition table or known filesystem: storing non-zero blocks".into(),
                    );
                }
                let content = if is_partition {
                    Content::Partition
                } else {
                    Content::Raw
                };
                (content, TableKind::None, FsKind::Unknown)
            }
        },
    };
    if content == Content::Disk {
        fs = FsKind::Unknown;
    }
    let exact = merge_close(align_out(normalize(exact), size), MERGE_GAP);
    // Everything that is neither used by a known filesystem nor its free
    // space gets scanned for non-zero blocks.
    let known = normalize(exact.iter().cloned().chain(free).collect());
    let scan = align_out(subtract(std::slice::from_ref(&(0..size)), &known), size);
    let scan = subtract(&scan, &exact);
    let mut regions: Vec<(Range<u64>, bool)> = exact
        .into_iter()
        .map(|r| (r, true))
        .chain(scan.into_iter().map(|r| (r, false)))
        .collect();
    regions.sort_by_key(|(r, _)| r.start);
    let chunks = regions
        .iter()
        .flat_map(|(r, ex)| {
            split(r.clone(), u64::from(chunk_size)).map(move |c| PlannedChunk {
                offset: c.start,
                len: (c.end - c.start) as u32,
                exact: *ex,
            })
        })
        .collect();
    Ok(Plan {
        content,
        table,
        fs,
        chunks,
        notes,
    })
}

fn used_share(bytes: u64, len: u64) -> String {
    format!(
        "{} of {}",
        crate::util::human_size(bytes),
        crate::util::human_size(len)
    )
}

/// Widens every range to BLOCK boundaries (clipped to `size`) and merges.
fn align_out(v: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    normalize(
        v.into_iter()
            .map(|r| r.start / BLOCK * BLOCK..r.end.next_multiple_of(BLOCK).min(size))
            .collect(),
    )
}

/// Merges ranges separated by at most `gap` bytes. Input is normalized.
fn merge_close(v: Vec<Range<u64>>, gap: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start - last.end <= gap => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// `a` minus `b`; both normalized.
fn subtract(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut start = r.start;
        while j < b.len() && b[j].end <= start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].start < r.end {
            if b[k].start > start {
                out.push(start..b[k].start);
            }
            start = start.max(b[k].end);
            k += 1;
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

/// Cuts a range at absolute multiples of `chunk`, so chunks of images of
/// the same disk line up.
fn split(r: Range<u64>, chunk: u64) -> impl Iterator<Item = Range<u64>> {
    let mut at = r.start;
    std::iter::from_fn(move || {
        if at >= r.end {
            return None;
        }
        let end = ((at / chunk + 1) * chunk).min(r.end);
        let c = at..end;
        at = end;
        Some(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn interval_helpers() {
        assert_eq!(
            subtract(&[0..100], &[10..20, 30..40, 90..120]),
            vec![0..10, 20..30, 40..90]
        );
        assert_eq!(subtract(&[0..10, 20..30], &[5..25]), vec![0..5, 25..30]);
        assert_eq!(align_out(vec![100..5000], 6000), vec![0..6000]);
        assert_eq!(
            merge_close(vec![0..10, 15..20, 100..110], 5),
            vec![0..20, 100..110]
        );
        assert_eq!(
            split(100..350, 100).collect::<Vec<_>>(),
            vec![100..200, 200..300, 300..350]
        );
        assert_eq!(split(0..0, 100).count(), 0);
    }

    #[test]
    fn unknown_content_is_scanned_whole() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(3 << 20).unwrap();
        let p = plan(&tmp, 3 << 20, 512, 1 << 20, false).unwrap();
        assert_eq!(p.content, Content::Raw);
        assert_eq!(p.chunks.len(), 3);
        assert!(p.chunks.iter().all(|c| !c.exact && c.len == 1 << 20));
    }
}
