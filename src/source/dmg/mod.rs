//! Apple UDIF disk images (.dmg) as a restore source.
//!
//! The trailer and property list are read first (from the file's end, with
//! Range requests over HTTP). The data fork is then streamed front to back:
//! stored runs are decoded in file order, so a local file is read
//! sequentially and an HTTP image is one GET. Zero-fill runs are written
//! as zeros first; free runs are never written, like the free space of a
//! prepared image.
//!
//! Checksums: the master checksum is checked when the tables are read; the
//! data fork's CRC32 and each blkx's CRC32 (over its decoded bytes) need the
//! whole image, so `check_before_writing` reads it once before the first
//! write, and the restore pass checks them all again as it goes (a file
//! changed between the passes fails the restore, which erases the target).

mod codec;
mod udif;

use std::fmt;

use anyhow::{Context, Result, bail};

pub use udif::unsupported_kind;
use udif::{Blkx, Koly, Run, RunKind, SECTOR, TRAILER_LEN};

use super::{ChunkSource, ImageInfo, Piece, Slot};
use crate::image::format::Content;
use crate::io::SeqRead;

/// Opens a fresh stream over the image from byte 0 (twice per restore: the
/// check pass and the restore pass).
pub type StreamOpener = Box<dyn FnMut() -> Result<Box<dyn SeqRead>> + Send>;

/// The image's tail, read before anything else: trailer and property list.
pub trait TailReader {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// The last 512 bytes of a `len`-byte file when they are a UDIF trailer
/// (read once: recognising a .dmg and parsing it use the same bytes).
pub fn read_trailer(tail: &mut dyn TailReader, len: u64) -> Result<Option<Vec<u8>>> {
    if len < TRAILER_LEN {
        return Ok(None);
    }
    let mut t = vec![0u8; TRAILER_LEN as usize];
    tail.read_at(&mut t, len - TRAILER_LEN)?;
    Ok(t.starts_with(b"koly").then_some(t))
}

/// A parsed image: what to restore, in what order.
struct Layout {
    koly: Koly,
    tables: Vec<Blkx>,
    /// The volume `--sourcevolume` picked; None for the whole image.
    picked: Option<usize>,
    /// Stored runs in file order, as (table, run) indices.
    order: Vec<(usize, usize)>,
    /// Target byte ranges of zero-fill runs. They are written (as zeros,
    /// which the pipeline turns into BLKZEROOUT): unlike free space they
    /// may lie inside files. Free runs are not written at all.
    zeros: Vec<std::ops::Range<u64>>,
}

impl Layout {
    fn read(
        trailer: &[u8],
        tail: &mut dyn TailReader,
        len: u64,
        volume: Option<&str>,
        name: &str,
    ) -> Result<Self> {
        let koly = udif::parse_koly(trailer, len)?;
        let mut xml = vec![0u8; (koly.xml.end - koly.xml.start) as usize];
        tail.read_at(&mut xml, koly.xml.start)?;
        let tables = udif::parse_blkx(&xml, &koly)?;
        let picked = volume.map(|v| pick_volume(&tables, v, name)).transpose()?;
        let chosen = chosen(picked, tables.len());
        let base = picked.map_or(0, |t| tables[t].first);
        let mut order: Vec<(usize, usize)> = chosen
            .clone()
            .flat_map(|t| {
                let runs = &tables[t].runs;
                (0..runs.len())
                    .filter(move |&r| runs[r].kind.stored())
                    .map(move |r| (t, r))
            })
            .collect();
        order.sort_by_key(|&(t, r)| tables[t].runs[r].offset);
        for w in order.windows(2) {
            let (a, b) = (&tables[w[0].0].runs[w[0].1], &tables[w[1].0].runs[w[1].1]);
            if a.offset + a.len > b.offset {
                bail!(
                    "two runs share the data fork bytes at {} ({:?} and {:?}); the image is damaged",
                    b.offset,
                    tables[w[0].0].name,
                    tables[w[1].0].name
                );
            }
        }
        let zeros = chosen
            .flat_map(|t| &tables[t].runs)
            .filter(|run| run.kind == RunKind::Zero)
            .map(|run| {
                let at = (run.sector - base) * SECTOR;
                at..at + run.bytes()
            })
            .collect();
        Ok(Layout {
            koly,
            tables,
            picked,
            order,
            zeros,
        })
    }

    /// Indices into `tables` being restored.
    fn chosen(&self) -> std::ops::Range<usize> {
        chosen(self.picked, self.tables.len())
    }

    /// The disk sector that is the target's byte 0 (the picked volume's
    /// first).
    fn base(&self) -> u64 {
        self.picked.map_or(0, |t| self.tables[t].first)
    }

    /// Bytes restored: the picked volume, or the whole disk (the tables
    /// never cover more than the trailer's sector count).
    fn size(&self) -> u64 {
        match self.picked {
            Some(t) => self.tables[t].sectors * SECTOR,
            None => self.koly.sector_count * SECTOR,
        }
    }

    fn whole(&self) -> bool {
        self.picked.is_none()
    }
}

/// The tables restored: all, or the one picked.
fn chosen(picked: Option<usize>, tables: usize) -> std::ops::Range<usize> {
    picked.map_or(0..tables, |t| t..t + 1)
}

/// `--sourcevolume`: a volume by its number in the list of volumes (from 1)
/// or by its name.
fn pick_volume(tables: &[Blkx], want: &str, name: &str) -> Result<usize> {
    let volumes: Vec<usize> = (0..tables.len())
        .filter(|&i| tables[i].is_volume())
        .collect();
    let by_number = want
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|n| volumes.get(n).copied());
    let by_name = || {
        let hits: Vec<usize> = volumes
            .iter()
            .copied()
            .filter(|&i| tables[i].label() == want || tables[i].name == want)
            .collect();
        (hits.len() == 1).then(|| hits[0])
    };
    by_number.or_else(by_name).with_context(|| {
        let list: Vec<String> = volumes
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "{} \"{}\" ({})",
                    n + 1,
                    tables[i].label(),
                    crate::util::human_size(tables[i].sectors * SECTOR)
                )
            })
            .collect();
        format!(
            "--sourcevolume {want}: {name} has no such volume (one of: {})",
            list.join(", ")
        )
    })
}

/// Checksums gathered while the image is read, compared at the end of each
/// blkx and of the data fork.
struct Checks {
    /// CRC32 and length of the bytes each run adds to its table's
    /// checksum, per table, once known.
    run_crcs: Vec<Vec<Option<(u32, u64)>>>,
    /// Stored runs of each table not yet decoded.
    left: Vec<usize>,
}

impl Checks {
    fn new(layout: &Layout) -> Result<Checks> {
        let mut checks = Checks {
            run_crcs: layout
                .tables
                .iter()
                .map(|b| vec![None; b.runs.len()])
                .collect(),
            left: vec![0; layout.tables.len()],
        };
        for t in layout.chosen() {
            for (r, run) in layout.tables[t].runs.iter().enumerate() {
                checks.run_crcs[t][r] = match run.kind {
                    RunKind::Zero => Some((zeros_crc(run.bytes()), run.bytes())),
                    // Free space is not part of the checksum (as 7-Zip and
                    // hdiutil's own free-space tables, whose CRC is 0, have it).
                    RunKind::Free => Some((0, 0)),
                    _ => {
                        checks.left[t] += 1;
                        None
                    }
                };
            }
            // A table without stored data is complete already.
            if checks.left[t] == 0 {
                checks.finish_table(&layout.tables, t)?;
            }
        }
        Ok(checks)
    }

    fn run_done(&mut self, tables: &[Blkx], t: usize, r: usize, data: &[u8]) -> Result<()> {
        self.run_crcs[t][r] = Some((crc32fast::hash(data), data.len() as u64));
        self.left[t] -= 1;
        if self.left[t] == 0 {
            return self.finish_table(tables, t);
        }
        Ok(())
    }

    /// Joins the table's run CRCs in sector order and compares the result
    /// with the CRC the table stores.
    fn finish_table(&self, tables: &[Blkx], t: usize) -> Result<()> {
        let b = &tables[t];
        let Some(want) = b.crc else { return Ok(()) };
        let mut h = crc32fast::Hasher::new();
        for part in &self.run_crcs[t] {
            let (crc, len) = part.expect("every run of a finished table has its CRC");
            h.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
        }
        let got = h.finalize();
        if got != want {
            bail!(
                "checksum mismatch in {:?}: its data gives CRC32 {got:08x}, the image says {want:08x}; the image is damaged",
                b.name
            );
        }
        Ok(())
    }
}

/// CRC32 of `len` zero bytes, in O(log len) CRC combinations (a free run
/// can span terabytes).
fn zeros_crc(len: u64) -> u32 {
    let mut piece = crc32fast::hash(&[0u8; SECTOR as usize]);
    let mut piece_len = SECTOR;
    let mut acc = crc32fast::Hasher::new();
    let mut n = len / SECTOR;
    while n > 0 {
        let h = crc32fast::Hasher::new_with_initial_len(piece, piece_len);
        if n & 1 == 1 {
            acc.combine(&h);
        }
        n >>= 1;
        if n > 0 {
            let mut twice = h.clone();
            twice.combine(&h);
            piece = twice.finalize();
            piece_len *= 2;
        }
    }
    acc.finalize()
}

/// One front-to-back read of the data fork, decoding stored runs.
struct Pass {
    stream: Box<dyn SeqRead>,
    checks: Checks,
    /// CRC32 of the data fork so far (whole-image restores only: a single
    /// volume skips the other volumes' data).
    fork: Option<crc32fast::Hasher>,
    next: usize,
    input: Vec<u8>,
    /// The last decoded run, its target offset, and how much of it has
    /// been handed out.
    out: Vec<u8>,
    out_offset: u64,
    out_pos: usize,
}

impl Pass {
    fn new(layout: &Layout, stream: Box<dyn SeqRead>) -> Result<Pass> {
        Ok(Pass {
            stream,
            checks: Checks::new(layout)?,
            fork: layout.whole().then(crc32fast::Hasher::new),
            next: 0,
            input: Vec::new(),
            out: Vec::new(),
            out_offset: 0,
            out_pos: 0,
        })
    }

    /// Moves the stream to `offset`, hashing the data-fork bytes passed
    /// over when the fork's CRC is being computed.
    fn advance_to(&mut self, offset: u64, fork_start: u64) -> Result<()> {
        let here = self.stream.position();
        if here < fork_start {
            self.stream.skip_to(fork_start.min(offset))?;
        }
        if self.fork.is_none() {
            self.stream.skip_to(offset.max(self.stream.position()))?;
            return Ok(());
        }
        let mut gap = offset.saturating_sub(self.stream.position());
        let mut buf = vec![0u8; gap.min(1 << 20) as usize];
        while gap > 0 {
            let n = gap.min(buf.len() as u64) as usize;
            read_hashed(&mut self.stream, &mut self.fork, &mut buf[..n])?;
            gap -= n as u64;
        }
        Ok(())
    }

    /// Decodes the next stored run into `out`; false at the end, once the
    /// data fork's checksum has been compared.
    fn decode_next(&mut self, layout: &Layout) -> Result<bool> {
        let fork = &layout.koly.data_fork;
        let Some(&(t, r)) = layout.order.get(self.next) else {
            if self.fork.is_some() {
                // Bytes after the last run are part of the fork too.
                self.advance_to(fork.end, fork.start)?;
                let got = self.fork.take().map(|h| h.finalize());
                if let (Some(got), Some(want)) = (got, layout.koly.data_crc)
                    && got != want
                {
                    bail!(
                        "data fork checksum mismatch (CRC32 {got:08x}, the image says {want:08x}); the image is damaged"
                    );
                }
            }
            return Ok(false);
        };
        self.next += 1;
        let run: &Run = &layout.tables[t].runs[r];
        self.advance_to(run.offset, fork.start)?;
        self.input.resize(run.len as usize, 0);
        read_hashed(&mut self.stream, &mut self.fork, &mut self.input)?;
        self.out.resize(run.bytes() as usize, 0);
        codec::decode(run, &self.input, &mut self.out).with_context(|| {
            format!(
                "{:?}, the run at sector {}",
                layout.tables[t].name, run.sector
            )
        })?;
        self.checks.run_done(&layout.tables, t, r, &self.out)?;
        self.out_offset = (run.sector - layout.base()) * SECTOR;
        self.out_pos = 0;
        Ok(true)
    }
}

/// Fills `buf` from `stream`, adding the bytes to `fork` when it is the
/// data fork's CRC being computed.
fn read_hashed(
    stream: &mut Box<dyn SeqRead>,
    fork: &mut Option<crc32fast::Hasher>,
    buf: &mut [u8],
) -> Result<()> {
    let got = crate::io::read_full(stream, buf)?;
    if got < buf.len() {
        bail!("the image ends early; it is truncated");
    }
    if let Some(h) = fork {
        h.update(buf);
    }
    Ok(())
}

/// A .dmg being restored.
pub struct DmgSource {
    name: String,
    layout: Layout,
    info: ImageInfo,
    opener: StreamOpener,
    pass: Option<Pass>,
    /// The zero-fill range being handed out, and how far into it.
    zero_next: usize,
    zero_pos: u64,
}

impl DmgSource {
    /// Parses `trailer` (from `read_trailer`) and the tables of the
    /// `len`-byte image, read through `tail`; `opener` streams it from
    /// byte 0. `volume` picks one volume.
    pub fn open(
        name: String,
        trailer: &[u8],
        tail: &mut dyn TailReader,
        len: u64,
        opener: StreamOpener,
        volume: Option<&str>,
    ) -> Result<DmgSource> {
        let layout = Layout::read(trailer, tail, len, volume, &name)
            .with_context(|| format!("reading {name}"))?;
        let content = if layout.picked.is_some() {
            Content::Partition
        } else if layout.koly.variant == 1 || layout.tables.iter().any(|b| !b.is_volume()) {
            Content::Disk
        } else {
            Content::Raw
        };
        let stored: u64 = layout
            .order
            .iter()
            .map(|&(t, r)| layout.tables[t].runs[r].bytes())
            .chain(layout.zeros.iter().map(|z| z.end - z.start))
            .sum();
        let info = ImageInfo {
            size: Some(layout.size()),
            sector_size: SECTOR as u32,
            content,
            head: None,
            source_len: Some(len),
            signature: None,
            stored: Some(stored),
        };
        Ok(DmgSource {
            name,
            layout,
            info,
            opener,
            pass: None,
            zero_next: 0,
            zero_pos: 0,
        })
    }

    fn new_pass(&mut self) -> Result<Pass> {
        let stream = (self.opener)().with_context(|| format!("reading {}", self.name))?;
        Pass::new(&self.layout, stream).with_context(|| format!("reading {}", self.name))
    }

    /// The next piece of zero-fill runs, while any are left.
    fn next_zeros(&mut self, slot: &mut Slot) -> Option<Piece> {
        let z = self.layout.zeros.get(self.zero_next)?;
        let offset = z.start + self.zero_pos;
        let n = (z.end - offset).min(slot.data.len() as u64) as usize;
        slot.data[..n].fill(0);
        self.zero_pos += n as u64;
        if offset + n as u64 == z.end {
            self.zero_next += 1;
            self.zero_pos = 0;
        }
        Some(Piece::Raw { offset, len: n })
    }
}

impl fmt::Display for DmgSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let volumes = self.layout.tables.iter().filter(|b| b.is_volume()).count();
        write!(f, "{} (UDIF disk image", self.name)?;
        match self.layout.picked {
            Some(t) => write!(f, ", volume \"{}\")", self.layout.tables[t].label()),
            None => write!(
                f,
                ", {volumes} volume{})",
                if volumes == 1 { "" } else { "s" }
            ),
        }
    }
}

impl ChunkSource for DmgSource {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>> {
        if let Some(piece) = self.next_zeros(slot) {
            return Ok(Some(piece));
        }
        if self.pass.is_none() {
            self.pass = Some(self.new_pass()?);
        }
        let pass = self.pass.as_mut().expect("pass was just set");
        if pass.out_pos == pass.out.len() {
            let more = pass
                .decode_next(&self.layout)
                .with_context(|| format!("reading {}", self.name))?;
            if !more {
                return Ok(None);
            }
        }
        let n = (pass.out.len() - pass.out_pos).min(slot.data.len());
        slot.data[..n].copy_from_slice(&pass.out[pass.out_pos..pass.out_pos + n]);
        let offset = pass.out_offset + pass.out_pos as u64;
        pass.out_pos += n;
        Ok(Some(Piece::Raw { offset, len: n }))
    }

    fn position(&self) -> u64 {
        self.pass.as_ref().map_or(0, |p| p.stream.position())
    }

    fn check_before_writing(&mut self, progress: &dyn crate::progress::ProgressSink) -> Result<()> {
        progress.detail(&format!(
            "{}: checking every checksum before the first write",
            self.name
        ));
        let mut pass = self.new_pass()?;
        while pass
            .decode_next(&self.layout)
            .with_context(|| format!("checking {}", self.name))?
        {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_crc_matches_hashing_zeros() {
        for sectors in [0u64, 1, 2, 3, 7, 64, 1000] {
            let len = sectors * SECTOR;
            assert_eq!(
                zeros_crc(len),
                crc32fast::hash(&vec![0u8; len as usize]),
                "{sectors} sectors"
            );
        }
        // The largest free run a table can describe, without overflow.
        let _ = zeros_crc(u64::MAX / SECTOR * SECTOR);
    }
}
