use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{ChunkSource, ImageInfo, Piece, Slot};
use crate::image::format::Content;
use crate::io::{DirectReader, open_read_direct};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// A raw disk image, read as one stream: a plain file, a block device
/// (volume clone), or a gzip/xz/zstd-compressed file decoded on the fly.
/// It is cut into `piece_len` pieces; their digests are computed as they
/// pass so verification can still compare what the device holds.
pub struct RawSource {
    what: String,
    path: PathBuf,
    reader: Box<dyn Read + Send>,
    /// Counts compressed bytes consumed, shared with the decoder's input.
    consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    info: ImageInfo,
    offset: u64,
    piece_len: usize,
}

/// A DirectReader that publishes its position for progress while a decoder
/// owns it.
struct CountingReader {
    inner: DirectReader,
    consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed
            .store(self.inner.position(), std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl RawSource {
    fn build(
        what: String,
        path: &Path,
        reader: DirectReader,
        info: ImageInfo,
        piece_len: usize,
        wrap: impl FnOnce(CountingReader) -> Result<Box<dyn Read + Send>>,
    ) -> Result<RawSource> {
        let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = wrap(CountingReader {
            inner: reader,
            consumed: consumed.clone(),
        })?;
        Ok(RawSource {
            what,
            path: path.to_owned(),
            reader,
            consumed,
            info,
            offset: 0,
            piece_len,
        })
    }

    fn raw_info(size: Option<u64>, len: u64, sector: u32) -> ImageInfo {
        ImageInfo {
            size,
            sector_size: sector,
            content: Content::Raw,
            head: None,
            source_len: Some(len),
        }
    }

    pub fn file(path: &Path, reader: DirectReader, len: u64, piece_len: usize) -> RawSource {
        Self::build(
            "raw image".into(),
            path,
            reader,
            Self::raw_info(Some(len), len, 512),
            piece_len,
            |r| Ok(Box::new(r)),
        )
        .expect("plain reader construction cannot fail")
    }

    pub fn block_device(path: &Path, piece_len: usize) -> Result<RawSource> {
        let (file, direct) =
            open_read_direct(path).with_context(|| format!("opening source {}", path.display()))?;
        let size = crate::blockdev::size_bytes(&file)?;
        let sector = crate::blockdev::logical_sector_size(&file)?;
        let reader = DirectReader::new(file, direct, super::READ_BLOCK);
        Self::build(
            "block device".into(),
            path,
            reader,
            Self::raw_info(Some(size), size, sector),
            piece_len,
            |r| Ok(Box::new(r)),
        )
    }

    pub fn compressed(
        path: &Path,
        reader: DirectReader,
        c: Compression,
        len: u64,
        piece_len: usize,
    ) -> Result<RawSource> {
        let size = match c {
            Compression::Zstd => zstd_content_size(path),
            _ => None,
        };
        let info = Self::raw_info(size, len, 512);
        Self::build(
            format!("{}-compressed raw image", c.name()),
            path,
            reader,
            info,
            piece_len,
            |r| {
                Ok(match c {
                    // MultiGzDecoder: `cat a.gz b.gz` and pigz output are
                    // several members, all of which belong to the image.
                    Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
                    Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
                    Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
                })
            },
        )
    }
}

/// Uncompressed size recorded in a zstd file's first frame header, when the
/// file is a single frame (what `zstd FILE` writes). Used only for preflight
/// and progress; the stream itself decides where the image ends.
fn zstd_content_size(path: &Path) -> Option<u64> {
    let mut head = vec![0u8; 18];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    match zstd::zstd_safe::get_frame_content_size(&head[..n]) {
        Ok(Some(size)) => Some(size),
        _ => None,
    }
}

impl fmt::Display for RawSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.what)
    }
}

impl ChunkSource for RawSource {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>> {
        let len = crate::io::read_full(&mut self.reader, &mut slot.data[..self.piece_len])
            .with_context(|| {
                format!("reading {} at offset {}", self.path.display(), self.offset)
            })?;
        if len == 0 {
            return Ok(None);
        }
        let offset = self.offset;
        self.offset += len as u64;
        Ok(Some(Piece::Raw { offset, len }))
    }

    fn position(&self) -> u64 {
        self.consumed.load(std::sync::atomic::Ordering::Relaxed)
    }
}
