//! The structure of a UDIF disk image (.dmg), parsed from bytes with every
//! length and count bounded: the 512-byte `koly` trailer, the XML property
//! list it points at, and the `mish` block tables ("blkx") inside it.
//! Nothing here reads a file; `super` fetches the bytes.
//!
//! All integers are big-endian. Layout as hdiutil (and libdmg-hfsplus)
//! write it: compressed runs back to back in the data fork, then the
//! property list, then the trailer.

use std::io::Cursor;

use anyhow::{Context, Result, anyhow, bail};
use plist::Value;

/// UDIF sectors are always 512 bytes, whatever the original disk had.
pub const SECTOR: u64 = 512;
pub const TRAILER_LEN: u64 = 512;
/// Largest property list read: a 2 TiB image in 1 MiB runs needs ~110 MiB.
pub const MAX_XML: u64 = 160 << 20;
/// Largest run decoded into memory at once (hdiutil uses 1 MiB or less).
pub const MAX_RUN_BYTES: u64 = 64 << 20;
/// More partitions than any real disk; bounds the work per blkx entry.
const MAX_BLKX: usize = 4096;
/// 8 EiB: sector numbers beyond this overflow byte offsets.
const MAX_SECTORS: u64 = u64::MAX / SECTOR;
/// Size of a mish header before its run entries, and of one run entry.
const MISH_HEADER: usize = 204;
const RUN_ENTRY: usize = 40;
/// Deepest dict/array nesting accepted in the property list (a real one
/// nests 4 deep); deeper is hostile and would recurse when dropped.
const MAX_NESTING: usize = 32;
/// Checksum type of CRC32, the one UDIF checksum reimage checks.
const CHECKSUM_CRC32: u32 = 2;

/// What the trailer says. Offsets are absolute within the file.
#[derive(Debug, Clone)]
pub struct Koly {
    pub data_fork: std::ops::Range<u64>,
    pub xml: std::ops::Range<u64>,
    /// CRC32 of the whole data fork, when the image has one.
    pub data_crc: Option<u32>,
    /// CRC32 over the blkx checksums, when the image has one.
    pub master_crc: Option<u32>,
    /// 1: a device image (with a partition map); 2: a partition image.
    pub variant: u32,
    pub sector_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Zero-filled sectors: nothing stored, nothing written.
    Zero,
    /// Free space ("ignore"): nothing stored, nothing written.
    Free,
    Raw,
    Adc,
    Zlib,
    Bzip2,
    Lzfse,
    Lzma,
}

impl RunKind {
    fn from_code(code: u32) -> Option<Option<RunKind>> {
        // Some(None): an entry that carries no sectors (comment, end).
        Some(Some(match code {
            0x0000_0000 => RunKind::Zero,
            0x0000_0001 => RunKind::Raw,
            0x0000_0002 => RunKind::Free,
            0x8000_0004 => RunKind::Adc,
            0x8000_0005 => RunKind::Zlib,
            0x8000_0006 => RunKind::Bzip2,
            0x8000_0007 => RunKind::Lzfse,
            0x8000_0008 => RunKind::Lzma,
            0x7fff_fffe | 0xffff_ffff => return Some(None),
            _ => return None,
        }))
    }

    /// True for runs that store bytes in the data fork.
    pub fn stored(self) -> bool {
        !matches!(self, RunKind::Zero | RunKind::Free)
    }

    pub fn name(self) -> &'static str {
        match self {
            RunKind::Zero => "zero-fill",
            RunKind::Free => "free",
            RunKind::Raw => "raw",
            RunKind::Adc => "ADC",
            RunKind::Zlib => "zlib",
            RunKind::Bzip2 => "bzip2",
            RunKind::Lzfse => "LZFSE",
            RunKind::Lzma => "LZMA",
        }
    }
}

/// One run of sectors, absolute on the disk and in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub kind: RunKind,
    pub sector: u64,
    pub sectors: u64,
    pub offset: u64,
    pub len: u64,
}

impl Run {
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// One blkx entry: a partition, a partition-map structure or free space.
#[derive(Debug, Clone)]
pub struct Blkx {
    pub name: String,
    pub first: u64,
    pub sectors: u64,
    /// CRC32 of the blkx's bytes, zero-fill and free runs as zeros.
    pub crc: Option<u32>,
    pub runs: Vec<Run>,
}

impl Blkx {
    /// Partition-map structures and free space, as hdiutil names them;
    /// everything else is a volume one can pick with `--sourcevolume`.
    pub fn is_volume(&self) -> bool {
        const MAP: [&str; 9] = [
            "(MBR",
            "(Primary GPT",
            "(Backup GPT",
            "(Apple_Free",
            "(DDM",
            "(Apple_partition_map",
            "(Apple_Driver",
            "(Apple_Patches",
            "(Apple_Void",
        ];
        !MAP.iter().any(|m| self.name.contains(m))
    }

    /// "Name (Type : 3)" → "Name".
    pub fn label(&self) -> &str {
        self.name
            .rsplit_once(" (")
            .map_or(self.name.as_str(), |(l, _)| l)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A UDIF checksum field (type, bits, 32 words): the CRC32 it holds, if
/// that is its kind. Other kinds (MD5, SHA) are not checked.
fn checksum(b: &[u8], at: usize, what: &str) -> Result<Option<u32>> {
    match be32(b, at) {
        CHECKSUM_CRC32 => {
            if be32(b, at + 4) != 32 {
                bail!("{what}: a CRC32 checksum of {} bits", be32(b, at + 4));
            }
            Ok(Some(be32(b, at + 8)))
        }
        _ => Ok(None),
    }
}

/// Recognises the formats that look like disk images but are not UDIF
/// files reimage reads, from the first bytes of the file.
pub fn unsupported_kind(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"encrcdsa") {
        Some(
            "an encrypted disk image; reimage does not read encrypted images: decrypt it on a Mac with `hdiutil convert -format UDZO`",
        )
    } else if head.starts_with(b"sprs") {
        Some(
            "a sparse image (.sparseimage); convert it on a Mac with `hdiutil convert -format UDZO` first",
        )
    } else {
        None
    }
}

/// Parses the trailer of a file of `file_len` bytes.
pub fn parse_koly(t: &[u8], file_len: u64) -> Result<Koly> {
    if t.len() != TRAILER_LEN as usize || !t.starts_with(b"koly") {
        bail!("no UDIF trailer (\"koly\") in the last 512 bytes: not a .dmg, or truncated");
    }
    if be32(t, 8) != TRAILER_LEN as u32 {
        bail!(
            "UDIF trailer gives a header size of {}, not 512",
            be32(t, 8)
        );
    }
    let body = file_len - TRAILER_LEN;
    let range = |off: u64, len: u64, what: &str| -> Result<std::ops::Range<u64>> {
        match off.checked_add(len) {
            Some(end) if end <= body => Ok(off..end),
            _ => bail!(
                "the {what} (bytes {off}+{len}) lies outside the file's {body} bytes: the image is truncated or damaged"
            ),
        }
    };
    let data_fork = range(be64(t, 24), be64(t, 32), "data fork")?;
    let (segment, segments) = (be32(t, 56), be32(t, 60));
    if segments > 1 {
        bail!(
            "segment {segment} of a {segments}-part segmented image; join the segments on a Mac with `hdiutil convert` first"
        );
    }
    let xml = range(be64(t, 216), be64(t, 224), "property list")?;
    if xml.is_empty() {
        bail!("the UDIF trailer points at no property list");
    }
    if xml.end - xml.start > MAX_XML {
        bail!(
            "the property list is {} bytes; more than the {} reimage reads",
            xml.end - xml.start,
            MAX_XML
        );
    }
    let sector_count = be64(t, 492);
    if sector_count > MAX_SECTORS {
        bail!("the UDIF trailer gives {sector_count} sectors; more than any disk");
    }
    Ok(Koly {
        data_fork,
        xml,
        data_crc: checksum(t, 80, "data fork checksum")?,
        master_crc: checksum(t, 352, "master checksum")?,
        variant: be32(t, 488),
        sector_count,
    })
}

/// Deepest `<dict>`/`<array>` nesting in an XML property list.
fn nesting(xml: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut rest = xml;
    while let Some(i) = rest.iter().position(|&b| b == b'<') {
        rest = &rest[i + 1..];
        let close = rest.first() == Some(&b'/');
        let name = if close { &rest[1..] } else { rest };
        if !(name.starts_with(b"dict") || name.starts_with(b"array")) {
            continue;
        }
        let end = name.iter().position(|&b| b == b'>').unwrap_or(name.len());
        if close {
            depth = depth.saturating_sub(1);
        } else if !name[..end].ends_with(b"/") {
            depth += 1;
            max = max.max(depth);
        }
    }
    max
}

/// Parses the property list and every blkx table in it, and checks that
/// the tables describe one consistent disk.
pub fn parse_blkx(xml: &[u8], koly: &Koly) -> Result<Vec<Blkx>> {
    if nesting(xml) > MAX_NESTING {
        bail!("the property list nests deeper than {MAX_NESTING} levels; the image is damaged");
    }
    let value = Value::from_reader(Cursor::new(xml))
        .map_err(|e| anyhow!("the property list does not parse ({e}); the image is damaged"))?;
    let entries = value
        .as_dictionary()
        .and_then(|d| d.get("resource-fork"))
        .and_then(Value::as_dictionary)
        .and_then(|d| d.get("blkx"))
        .and_then(Value::as_array)
        .context("the property list has no resource-fork/blkx array; the image is damaged")?;
    if entries.is_empty() || entries.len() > MAX_BLKX {
        bail!(
            "the property list has {} blkx entries (1 to {MAX_BLKX} expected)",
            entries.len()
        );
    }
    let mut tables = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let dict = entry
            .as_dictionary()
            .with_context(|| format!("blkx entry {i} is not a dictionary"))?;
        let name = ["Name", "CFName"]
            .iter()
            .find_map(|k| dict.get(k).and_then(Value::as_string))
            .unwrap_or("")
            .to_owned();
        let data = dict
            .get("Data")
            .and_then(Value::as_data)
            .with_context(|| format!("blkx entry {i} ({name}) has no Data"))?;
        let blkx =
            parse_mish(data, name, koly).with_context(|| format!("blkx entry {i} of the image"))?;
        tables.push(blkx);
    }
    check_cover(&mut tables, koly)?;
    if let Some(want) = koly.master_crc {
        let mut h = crc32fast::Hasher::new();
        for crc in tables.iter().filter_map(|b| b.crc) {
            h.update(&crc.to_be_bytes());
        }
        let got = h.finalize();
        if got != want {
            bail!(
                "master checksum mismatch (the trailer says {want:08x}, the blkx tables give {got:08x}); the image is damaged"
            );
        }
    }
    Ok(tables)
}

/// One mish block: header, then run entries that must tile the blkx's
/// sectors in order and point inside the data fork.
fn parse_mish(d: &[u8], name: String, koly: &Koly) -> Result<Blkx> {
    let what = if name.is_empty() {
        "(unnamed)".to_owned()
    } else {
        name.clone()
    };
    if d.len() < MISH_HEADER || !d.starts_with(b"mish") {
        bail!(
            "{what}: not a mish block table ({} bytes); the image is damaged",
            d.len()
        );
    }
    let first = be64(d, 8);
    let sectors = be64(d, 16);
    let data_start = be64(d, 24);
    let crc = checksum(d, 64, &what)?;
    let count = be32(d, 200) as usize;
    if (d.len() - MISH_HEADER) / RUN_ENTRY < count {
        bail!(
            "{what}: the table claims {count} runs but holds {}; the image is damaged",
            (d.len() - MISH_HEADER) / RUN_ENTRY
        );
    }
    if first.checked_add(sectors).is_none_or(|e| e > MAX_SECTORS) {
        bail!("{what}: sectors {first}+{sectors} overflow");
    }
    let mut runs = Vec::new();
    let mut next = 0u64;
    for k in 0..count {
        let e = &d[MISH_HEADER + k * RUN_ENTRY..][..RUN_ENTRY];
        let code = be32(e, 0);
        let kind = RunKind::from_code(code).with_context(|| {
            format!("{what}: run {k} has type {code:#010x}, which reimage does not know")
        })?;
        let Some(kind) = kind else { continue };
        let (rel, n, off, len) = (be64(e, 8), be64(e, 16), be64(e, 24), be64(e, 32));
        if rel != next || n == 0 || n > sectors - next {
            bail!(
                "{what}: run {k} covers sectors {rel}+{n}, but the runs must tile the table's {sectors} sectors in order (next is {next})"
            );
        }
        next += n;
        let run = Run {
            kind,
            sector: first + rel,
            sectors: n,
            offset: koly
                .data_fork
                .start
                .saturating_add(data_start)
                .saturating_add(off),
            len,
        };
        if kind.stored() {
            check_stored(&run, koly).with_context(|| format!("{what}: run {k}"))?;
        }
        runs.push(run);
    }
    if next != sectors {
        bail!("{what}: the runs cover {next} of the table's {sectors} sectors");
    }
    Ok(Blkx {
        name,
        first,
        sectors,
        crc,
        runs,
    })
}

fn check_stored(run: &Run, koly: &Koly) -> Result<()> {
    if run.bytes() > MAX_RUN_BYTES {
        bail!(
            "{} sectors in one run; more than the {MAX_RUN_BYTES} bytes reimage decodes at once",
            run.sectors
        );
    }
    if run.len == 0 || run.len > MAX_RUN_BYTES.max(run.bytes()) {
        bail!("a stored length of {} bytes", run.len);
    }
    if run.kind == RunKind::Raw && run.len != run.bytes() {
        bail!(
            "a raw run of {} sectors stores {} bytes",
            run.sectors,
            run.len
        );
    }
    let fork = &koly.data_fork;
    if run.offset < fork.start || run.offset.saturating_add(run.len) > fork.end {
        bail!(
            "its data (bytes {}+{}) lies outside the data fork ({}..{}); the image is truncated or damaged",
            run.offset,
            run.len,
            fork.start,
            fork.end
        );
    }
    Ok(())
}

/// Sorts the tables by first sector and checks they do not overlap and
/// fit in the sectors the trailer gives.
fn check_cover(tables: &mut [Blkx], koly: &Koly) -> Result<()> {
    tables.sort_by_key(|b| b.first);
    for w in tables.windows(2) {
        if w[0].first + w[0].sectors > w[1].first {
            bail!(
                "blkx tables {:?} and {:?} cover the same sectors; the image is damaged",
                w[0].name,
                w[1].name
            );
        }
    }
    let end = tables.last().map_or(0, |b| b.first + b.sectors);
    if end > koly.sector_count {
        bail!(
            "the blkx tables cover {end} sectors but the trailer says the image has {}; the image is damaged",
            koly.sector_count
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_dicts_and_arrays_but_not_empty_ones() {
        assert_eq!(
            nesting(b"<plist><dict><key>a</key><array><dict/></array></dict></plist>"),
            2
        );
        assert_eq!(nesting(&b"<array>".repeat(100)), 100);
        assert_eq!(nesting(b"<data>AAAA</data>"), 0);
    }

    #[test]
    fn run_types_are_known_or_refused() {
        assert_eq!(RunKind::from_code(0x8000_0005), Some(Some(RunKind::Zlib)));
        assert_eq!(RunKind::from_code(0x7fff_fffe), Some(None));
        assert_eq!(RunKind::from_code(0x8000_0009), None);
    }

    #[test]
    fn volume_names_exclude_partition_map_structures() {
        let b = |name: &str| Blkx {
            name: name.into(),
            first: 0,
            sectors: 1,
            crc: None,
            runs: vec![],
        };
        assert!(!b("Protective Master Boot Record (MBR : 0)").is_volume());
        assert!(!b("GPT Header (Primary GPT Header : 1)").is_volume());
        assert!(!b(" (Apple_Free : 4)").is_volume());
        assert!(b("disk image (Apple_HFS : 3)").is_volume());
        assert_eq!(
            b("EFI System Partition (C12A7328-F81F-11D2-BA4B-00A0C93EC93B : 1)").label(),
            "EFI System Partition"
        );
    }

    #[test]
    fn trailer_bounds_are_checked() {
        let mut t = vec![0u8; 512];
        t[..4].copy_from_slice(b"koly");
        t[8..12].copy_from_slice(&512u32.to_be_bytes());
        t[32..40].copy_from_slice(&1000u64.to_be_bytes()); // data fork length
        t[216..224].copy_from_slice(&1000u64.to_be_bytes()); // xml offset
        t[224..232].copy_from_slice(&100u64.to_be_bytes());
        assert!(parse_koly(&t, 1100 + 512).is_ok());
        let err = parse_koly(&t, 1050 + 512).unwrap_err().to_string();
        assert!(
            err.contains("property list") && err.contains("outside"),
            "{err}"
        );
        t[224..232].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let err = parse_koly(&t, 1100 + 512).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
        t[0] = b'x';
        assert!(parse_koly(&t, 1100 + 512).is_err());
    }
}
