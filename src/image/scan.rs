//! `imagescan`: check every checksum of a prepared image and put it in
//! streaming order; or turn a raw (optionally compressed) image into a
//! prepared one beside it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::create::{CreateOptions, create};
use super::format::{Digest, ImageHead};
use super::writer::ImageWriter;
use crate::io::{DirectReader, is_zero, open_read_direct};
use crate::progress::{Phase, ProgressSink};
use crate::source::{ChunkSource, Piece, PreparedSource, Slot, Sniffed, sniff, unpack_extent};

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Where to write the prepared image made from a raw one.
    pub output: Option<PathBuf>,
    /// Where to write the manifest bytes, for signing.
    pub manifest_out: Option<PathBuf>,
    pub create: CreateOptions,
}

#[derive(Debug)]
pub struct ScanReport {
    pub digest: Digest,
    /// The prepared image that was checked or written.
    pub image: PathBuf,
    /// It had to be rewritten into streaming order.
    pub reordered: bool,
}

pub fn scan(path: &Path, opts: &ScanOptions, progress: &dyn ProgressSink) -> Result<ScanReport> {
    let report = scan_or_convert(path, opts, progress)?;
    if let Some(out) = &opts.manifest_out {
        // The exact bytes a signature must cover (see docs/FORMAT.md).
        let head = super::format::read_head(&mut File::open(&report.image)?)?;
        std::fs::write(out, &head.manifest_bytes)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

fn scan_or_convert(
    path: &Path,
    opts: &ScanOptions,
    progress: &dyn ProgressSink,
) -> Result<ScanReport> {
    let mut magic = [0u8; 8];
    let n = File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read(&mut magic)?;
    match sniff(&magic[..n]) {
        Sniffed::Prepared => scan_prepared(path, progress),
        kind => {
            let out = match &opts.output {
                Some(o) => o.clone(),
                None => default_output(path),
            };
            if out == path {
                bail!("--output must differ from the source image");
            }
            // A .dmg (or an encrypted or sparse image, which the source
            // refuses clearly) goes through the source like a compressed one.
            let digest = if kind == Sniffed::Raw && !crate::source::is_apple_image(path)? {
                create(path, &out, &opts.create, progress)?.digest
            } else {
                convert_compressed(path, &out, opts, progress)?
            };
            Ok(ScanReport {
                digest,
                image: out,
                reordered: false,
            })
        }
    }
}

/// `disk.img.gz` → `disk.rimg`, `disk.raw` → `disk.rimg`.
fn default_output(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".gz", ".xz", ".zst", ".img", ".raw", ".dmg"] {
        if let Some(s) = name.strip_suffix(ext) {
            name = s.to_owned();
        }
    }
    path.with_file_name(format!("{name}.rimg"))
}

/// Decompresses (or decodes a .dmg) into a sparse scratch file beside the
/// output (zero blocks and a .dmg's free space become holes), then
/// captures that like any raw disk, so the prepared image gets the
/// filesystem-aware block map too.
fn convert_compressed(
    path: &Path,
    out: &Path,
    opts: &ScanOptions,
    progress: &dyn ProgressSink,
) -> Result<Digest> {
    let mut scratch = out.as_os_str().to_owned();
    scratch.push(".raw.partial");
    let scratch = PathBuf::from(scratch);
    let result = (|| {
        let mut src = crate::source::open(
            &path.to_string_lossy(),
            &crate::source::SourceOptions::default(),
        )?;
        let len = src.info().source_len.unwrap_or(0);
        let file =
            File::create(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        progress.start(Phase::Scan, len);
        let mut slot = crate::source::Slot::new(1 << 20);
        let mut end = 0u64;
        while let Some(piece) = src.next_piece(&mut slot)? {
            let crate::source::Piece::Raw { offset, len: n } = piece else {
                bail!("internal: compressed source gave an extent")
            };
            if !is_zero(&slot.data[..n]) {
                file.write_all_at(&slot.data[..n], offset)?;
            }
            end = offset + n as u64;
            progress.update(Phase::Scan, src.position(), len);
        }
        file.set_len(end)?;
        progress.finish(Phase::Scan);
        Ok(create(&scratch, out, &opts.create, progress)?.digest)
    })();
    let _ = std::fs::remove_file(&scratch);
    result
}

/// Decompresses and hashes every extent; rewrites the file in streaming
/// order when its payloads are out of target order.
fn scan_prepared(path: &Path, progress: &dyn ProgressSink) -> Result<ScanReport> {
    let (file, direct) = open_read_direct(path)?;
    let reader = DirectReader::new(file, direct, crate::source::READ_BLOCK);
    let mut src = PreparedSource::new(path.display().to_string(), Box::new(reader))?;
    let head = src.info().head.clone().expect("prepared source has a head");
    let m = &head.manifest;
    let total = m.payload_bytes();
    progress.start(Phase::Scan, total);
    let mut dctx = zstd::bulk::Decompressor::new()?;
    let mut slot = Slot::new(m.chunk_size as usize);
    while let Some(piece) = src.next_piece(&mut slot)? {
        let Piece::Extent(i) = piece else {
            bail!("internal: prepared source gave raw bytes")
        };
        unpack_extent(m, i, &mut slot, &mut dctx)?;
        progress.update(Phase::Scan, src.position() - m.payload_area, total);
    }
    progress.finish(Phase::Scan);
    if m.is_streaming_order() {
        return Ok(ScanReport {
            digest: head.digest(),
            image: path.to_owned(),
            reordered: false,
        });
    }
    let digest = rewrite_in_order(path, &head)?;
    Ok(ScanReport {
        digest,
        image: path.to_owned(),
        reordered: true,
    })
}

/// Copies payloads into a new file in target order and renames it over
/// the original.
fn rewrite_in_order(path: &Path, head: &ImageHead) -> Result<Digest> {
    let m = &head.manifest;
    let src = File::open(path)?;
    let mut w = ImageWriter::create(path, m.extents.len(), m.name.len(), true)?;
    let mut payload = Vec::new();
    for e in &m.extents {
        payload.resize(e.payload_len as usize, 0);
        src.read_exact_at(&mut payload, m.payload_area + e.payload_offset)?;
        w.push(e.target_offset, e.length, e.codec, e.digest, &payload)?;
    }
    w.finish(m.clone())
}
