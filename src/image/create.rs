//! `imagecreate`: capture a disk, partition or image file into a prepared
//! image, storing only used blocks, compressing chunks on every core.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use crossbeam_channel::bounded;

use super::format::{Codec, Digest, Manifest, hex};
use super::plan::{BLOCK, PlannedChunk, plan};
use super::writer::ImageWriter;
use crate::io::{AlignedBuf, is_zero, open_read_direct};
use crate::progress::{Phase, ProgressSink};

#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Largest uncompressed chunk, bytes (multiple of 4096).
    pub chunk_size: u32,
    /// zstd level; 3 keeps capture fast and restore write-bound.
    pub level: i32,
    /// Name recorded in the manifest (default: the image file's stem).
    pub name: Option<String>,
    /// Replace an existing image file.
    pub force: bool,
    /// Compression threads; 0 means one per CPU.
    pub workers: usize,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunk_size: 1 << 20,
            level: 3,
            name: None,
            force: false,
            workers: 0,
        }
    }
}

#[derive(Debug)]
pub struct CreateReport {
    pub digest: Digest,
    pub logical_size: u64,
    pub stored: u64,
    pub payload: u64,
    pub extents: usize,
    pub notes: Vec<String>,
}

impl std::fmt::Display for CreateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::util::human_size;
        write!(
            f,
            "{} extents, {} of {} stored in {}\nimage digest {}",
            self.extents,
            human_size(self.stored),
            human_size(self.logical_size),
            human_size(self.payload),
            hex(&self.digest)
        )
    }
}

/// One chunk after compression.
struct Packed {
    offset: u64,
    len: u32,
    codec: Codec,
    digest: Digest,
    /// Payload bytes (compressed, or stored copy).
    payload: Vec<u8>,
}

pub fn create(
    source: &Path,
    image: &Path,
    opts: &CreateOptions,
    progress: &dyn ProgressSink,
) -> Result<CreateReport> {
    if opts.chunk_size == 0
        || !opts.chunk_size.is_multiple_of(BLOCK as u32)
        || opts.chunk_size > super::format::MAX_CHUNK_LEN
    {
        bail!("chunk size must be a multiple of 4 KiB up to 16 MiB");
    }
    let meta =
        std::fs::metadata(source).with_context(|| format!("opening {}", source.display()))?;
    let (file, _) =
        open_read_direct(source).with_context(|| format!("opening {}", source.display()))?;
    let (size, sector, is_partition) = if meta.file_type().is_block_device() {
        let sys = crate::blockdev::SysBlock::of_node(source)?;
        check_not_mounted_rw(source, &sys)?;
        (
            crate::blockdev::size_bytes(&file)?,
            crate::blockdev::logical_sector_size(&file)?,
            sys.partition.is_some(),
        )
    } else if meta.is_file() {
        (meta.len(), 512, false)
    } else {
        bail!("{} is neither a block device nor a file", source.display());
    };
    if size == 0 {
        bail!("{} is empty", source.display());
    }
    // Filesystem structures are read in small unaligned pieces, which
    // O_DIRECT refuses: plan through a second, buffered descriptor.
    let buffered =
        std::fs::File::open(source).with_context(|| format!("opening {}", source.display()))?;
    let plan = plan(&buffered, size, sector, opts.chunk_size, is_partition)?;
    for n in &plan.notes {
        progress.detail(n);
    }
    let name = opts.name.clone().unwrap_or_else(|| default_name(image));
    let mut writer = ImageWriter::create(image, plan.chunks.len(), name.len(), opts.force)?;
    let total: u64 = plan.chunks.iter().map(|c| u64::from(c.len)).sum();
    progress.start(Phase::Create, total);

    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    // Slots in flight bound memory: each holds one chunk and its payload.
    let slots = workers * 3;
    let (free_tx, free_rx) = bounded::<AlignedBuf>(slots);
    for _ in 0..slots {
        free_tx
            .send(AlignedBuf::new(opts.chunk_size as usize))
            .expect("pool has room");
    }
    let (work_tx, work_rx) = bounded::<(usize, PlannedChunk, AlignedBuf)>(slots);
    let (done_tx, done_rx) = bounded::<Result<(usize, Option<Packed>, AlignedBuf)>>(slots + 1);
    let file = &file;
    let level = opts.level;

    let stored = std::thread::scope(|s| -> Result<u64> {
        let chunks = &plan.chunks;
        let reader_done = done_tx.clone();
        s.spawn(move || {
            for (seq, c) in chunks.iter().enumerate() {
                let Ok(mut buf) = free_rx.recv() else { return };
                let len = c.len as usize;
                if let Err(e) = read_exact_direct(file, &mut buf, c.offset, len) {
                    let _ = reader_done.send(Err(e.into()));
                    return;
                }
                if work_tx.send((seq, c.clone(), buf)).is_err() {
                    return;
                }
            }
        });
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            s.spawn(move || {
                let mut cctx = match zstd::bulk::Compressor::new(level) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = done_tx.send(Err(e.into()));
                        return;
                    }
                };
                for (seq, c, buf) in work_rx {
                    let r = pack(&c, &buf, &mut cctx).map(|p| (seq, p, buf));
                    if done_tx.send(r).is_err() {
                        return;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);

        // Workers finish out of order; payloads must be appended in target
        // order, so hold early arrivals until their turn.
        let mut pending: BTreeMap<usize, Option<Packed>> = BTreeMap::new();
        let mut next = 0usize;
        let (mut done, mut stored) = (0u64, 0u64);
        for r in &done_rx {
            let (seq, packed, buf) = r?;
            done += u64::from(plan.chunks[seq].len);
            progress.update(Phase::Create, done, total);
            pending.insert(seq, packed);
            let _ = free_tx.send(buf);
            while let Some(p) = pending.remove(&next) {
                if let Some(p) = p {
                    stored += u64::from(p.len);
                    writer.push(p.offset, p.len, p.codec, p.digest, &p.payload)?;
                }
                next += 1;
            }
        }
        if next != plan.chunks.len() {
            bail!(
                "internal: {} of {} chunks were packed",
                next,
                plan.chunks.len()
            );
        }
        Ok(stored)
    })?;
    progress.finish(Phase::Create);

    let manifest = Manifest {
        logical_size: size,
        sector_size: sector,
        chunk_size: opts.chunk_size,
        content: plan.content,
        table: plan.table,
        fs: plan.fs,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        name,
        payload_area: 0,
        extents: Vec::new(),
    };
    let (extents, payload) = (writer.extent_count(), writer.payload_len());
    let digest = writer.finish(manifest)?;
    Ok(CreateReport {
        digest,
        logical_size: size,
        stored,
        payload,
        extents,
        notes: plan.notes,
    })
}

/// A filesystem mounted read-write changes while it is read: its image
/// would be inconsistent (and its bitmaps cannot be trusted), so refuse.
fn check_not_mounted_rw(source: &Path, sys: &crate::blockdev::SysBlock) -> Result<()> {
    let mut devs = vec![sys.dev.clone()];
    devs.extend(sys.partitions().into_iter().map(|p| p.dev));
    devs.extend(sys.parent().map(|p| p.dev));
    let mounts = crate::blockdev::mounts()?;
    if let Some(m) = mounts
        .iter()
        .find(|m| !m.read_only && devs.contains(&m.dev))
    {
        bail!(
            "{} is mounted read-write at {}; unmount it or remount it read-only first",
            source.display(),
            m.point
        );
    }
    Ok(())
}

/// The image file's name without `.rimg`, as the manifest's default name.
fn default_name(image: &Path) -> String {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.chars().take(super::format::MAX_NAME_LEN / 4).collect()
}

/// Reads `len` bytes at `offset` into the aligned `buf`. Reads past the
/// source's end are an error: the plan only covers bytes that exist.
fn read_exact_direct(
    file: &std::fs::File,
    buf: &mut AlignedBuf,
    offset: u64,
    len: usize,
) -> std::io::Result<()> {
    let mut got = 0;
    // O_DIRECT wants sector-multiple lengths; the last chunk of an odd-sized
    // file reads short, which is fine as long as `len` bytes arrive.
    let want = len.next_multiple_of(512).min(buf.len());
    while got < len {
        match file.read_at(&mut buf[got..want], offset + got as u64) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("source ends before byte {}", offset + len as u64),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Compresses one chunk. Scanned (non-exact) chunks are trimmed to their
/// first and last non-zero block, or dropped when all zero.
fn pack(
    c: &PlannedChunk,
    buf: &[u8],
    cctx: &mut zstd::bulk::Compressor<'_>,
) -> Result<Option<Packed>> {
    let mut data = &buf[..c.len as usize];
    let mut offset = c.offset;
    if !c.exact {
        let block = BLOCK as usize;
        let nonzero = |i: &usize| !is_zero(&data[i * block..((i + 1) * block).min(data.len())]);
        let blocks = data.len().div_ceil(block);
        let Some(first) = (0..blocks).find(nonzero) else {
            return Ok(None);
        };
        let last = (0..blocks).rev().find(nonzero).unwrap_or(first);
        data = &data[first * block..((last + 1) * block).min(data.len())];
        offset += (first * block) as u64;
    }
    let digest = *blake3::hash(data).as_bytes();
    let compressed = cctx.compress(data)?;
    let (codec, payload) = if compressed.len() < data.len() {
        (Codec::Zstd, compressed)
    } else {
        (Codec::Stored, data.to_vec())
    };
    Ok(Some(Packed {
        offset,
        len: data.len() as u32,
        codec,
        digest,
        payload,
    }))
}
