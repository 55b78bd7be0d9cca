use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{ChunkSource, ImageInfo, Piece, Slot};
use crate::image::format::{self, Codec, ImageHead};
use crate::io::DirectReader;

/// A prepared image in a local file. Payloads are read in file order, which
/// is target order for images in streaming order; any other valid order is
/// still read front to back, never seeking backwards.
pub struct PreparedSource {
    path: PathBuf,
    reader: DirectReader,
    info: ImageInfo,
    /// Extent indices in payload order.
    order: Vec<usize>,
    next: usize,
}

impl PreparedSource {
    pub fn new(path: &Path, mut reader: DirectReader) -> Result<PreparedSource> {
        let head = format::read_head(&mut reader)
            .with_context(|| format!("reading {}", path.display()))?;
        let m = &head.manifest;
        let mut order: Vec<usize> = (0..m.extents.len()).collect();
        order.sort_by_key(|&i| m.extents[i].payload_offset);
        let info = ImageInfo {
            size: Some(m.logical_size),
            sector_size: m.sector_size,
            content: m.content,
            source_len: Some(m.payload_area + m.payload_bytes()),
            head: None,
        };
        let mut src = PreparedSource {
            path: path.to_owned(),
            reader,
            info,
            order,
            next: 0,
        };
        src.info.head = Some(head);
        Ok(src)
    }

    fn head(&self) -> &ImageHead {
        self.info
            .head
            .as_ref()
            .expect("prepared source always has a head")
    }
}

impl fmt::Display for PreparedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (prepared image {})",
            self.path.display(),
            &format::hex(&self.head().digest())[..16]
        )
    }
}

impl ChunkSource for PreparedSource {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>> {
        let Some(&i) = self.order.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let head = self
            .info
            .head
            .as_ref()
            .expect("prepared source always has a head");
        let e = &head.manifest.extents[i];
        let at = head.manifest.payload_area + e.payload_offset;
        self.reader.skip_to(at)?;
        let len = e.payload_len as usize;
        let dest = match e.codec {
            Codec::Zstd => {
                slot.input.resize(len, 0);
                &mut slot.input[..]
            }
            Codec::Stored => &mut slot.data[..len],
        };
        let got = crate::io::read_full(&mut (&mut self.reader).take(len as u64), dest)?;
        if got < len {
            bail!(
                "{} is truncated: extent {i} needs bytes up to {} but the file ends at {}",
                self.path.display(),
                at + len as u64,
                at + got as u64
            );
        }
        Ok(Some(Piece::Extent(i)))
    }

    fn position(&self) -> u64 {
        self.reader.position()
    }
}
