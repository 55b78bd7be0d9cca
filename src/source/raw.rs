use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

use super::{ChunkSource, ImageInfo, Piece, Slot};
use crate::image::format::Content;
use crate::io::{DirectReader, SeqRead, open_read_direct};

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
/// (volume clone), an HTTP body, any of them gzip/xz/zstd-compressed and
/// decoded on the fly. It is cut into `piece_len` pieces; their digests are
/// computed as they pass so verification can still compare what the device
/// holds.
pub struct RawSource {
    name: String,
    what: String,
    reader: Box<dyn Read + Send>,
    /// Bytes of the underlying stream consumed, shared with the decoder's input.
    consumed: Arc<AtomicU64>,
    info: ImageInfo,
    offset: u64,
    piece_len: usize,
}

/// What is known about a raw stream before reading it.
pub struct RawSpec {
    /// The path or URL, for messages.
    pub name: String,
    /// Decoded size, when known up front.
    pub size: Option<u64>,
    /// Bytes the stream will deliver, when known.
    pub stream_len: Option<u64>,
    pub sector_size: u32,
    pub compression: Option<Compression>,
}

/// Publishes the position of the stream under a decoder, for progress.
struct CountingReader {
    inner: Box<dyn SeqRead>,
    consumed: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed
            .store(self.inner.position(), Ordering::Relaxed);
        Ok(n)
    }
}

impl RawSource {
    pub fn new(spec: RawSpec, reader: Box<dyn SeqRead>, piece_len: usize) -> Result<RawSource> {
        let consumed = Arc::new(AtomicU64::new(0));
        let counting = CountingReader {
            inner: reader,
            consumed: consumed.clone(),
        };
        let (what, reader): (String, Box<dyn Read + Send>) = match spec.compression {
            None => ("raw image".into(), Box::new(counting)),
            Some(c) => (
                format!("{}-compressed raw image", c.name()),
                match c {
                    // MultiGzDecoder: `cat a.gz b.gz` and pigz output are
                    // several members, all of which belong to the image.
                    Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counting)),
                    Compression::Xz => {
                        Box::new(liblzma::read::XzDecoder::new_multi_decoder(counting))
                    }
                    Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(counting)?),
                },
            ),
        };
        let info = ImageInfo {
            size: spec.size,
            sector_size: spec.sector_size,
            content: Content::Raw,
            head: None,
            source_len: spec.stream_len,
            signature: None,
            stored: None,
        };
        Ok(RawSource {
            name: spec.name,
            what,
            reader,
            consumed,
            info,
            offset: 0,
            piece_len,
        })
    }

    /// A block device read whole: a volume clone.
    pub fn block_device(path: &Path, piece_len: usize) -> Result<RawSource> {
        let (file, direct) =
            open_read_direct(path).with_context(|| format!("opening source {}", path.display()))?;
        let size = crate::blockdev::size_bytes(&file)?;
        let sector = crate::blockdev::logical_sector_size(&file)?;
        let mut src = Self::new(
            RawSpec {
                name: path.display().to_string(),
                size: Some(size),
                stream_len: Some(size),
                sector_size: sector,
                compression: None,
            },
            Box::new(DirectReader::new(file, direct, super::READ_BLOCK)),
            piece_len,
        )?;
        src.what = "block device".into();
        Ok(src)
    }
}

/// Uncompressed size recorded in a zstd stream's first frame header, when
/// it is a single frame (what `zstd FILE` writes). Used only for preflight
/// and progress; the stream itself decides where the image ends.
pub fn zstd_content_size(head: &[u8]) -> Option<u64> {
    match zstd::zstd_safe::get_frame_content_size(head) {
        Ok(Some(size)) => Some(size),
        _ => None,
    }
}

impl fmt::Display for RawSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.what)
    }
}

impl ChunkSource for RawSource {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>> {
        let len = crate::io::read_full(&mut self.reader, &mut slot.data[..self.piece_len])
            .with_context(|| format!("reading {} at offset {}", self.name, self.offset))?;
        if len == 0 {
            return Ok(None);
        }
        let offset = self.offset;
        self.offset += len as u64;
        Ok(Some(Piece::Raw { offset, len }))
    }

    fn position(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
}
