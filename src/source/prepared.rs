use std::fmt;
use std::io::Read;

use anyhow::{Context, Result, bail};

use super::{ChunkSource, ImageInfo, Piece, Slot};
use crate::image::format::{self, Codec, ImageHead};
use crate::io::SeqRead;

/// A prepared image read as one stream: a local file, or an HTTP body from
/// a server without Range support. Payloads are read in file order, which
/// is target order for images in streaming order; any other valid order is
/// still read front to back, never seeking backwards.
pub struct PreparedSource {
    name: String,
    reader: Box<dyn SeqRead>,
    info: ImageInfo,
    /// Extent indices in payload order.
    order: Vec<usize>,
    next: usize,
}

/// What every prepared source knows once it has the head.
pub(crate) fn prepared_info(head: ImageHead) -> ImageInfo {
    let m = &head.manifest;
    ImageInfo {
        size: Some(m.logical_size),
        sector_size: m.sector_size,
        content: m.content,
        source_len: Some(m.payload_area + m.payload_bytes()),
        head: Some(head),
        signature: None,
        stored: None,
    }
}

/// Extent indices sorted by where their payloads are stored.
pub(super) fn payload_order(head: &ImageHead) -> Vec<usize> {
    let extents = &head.manifest.extents;
    let mut order: Vec<usize> = (0..extents.len()).collect();
    order.sort_by_key(|&i| extents[i].payload_offset);
    order
}

impl PreparedSource {
    /// `name` is how the user named the image (path or URL).
    pub fn new(name: String, mut reader: Box<dyn SeqRead>) -> Result<PreparedSource> {
        let head = format::read_head(&mut reader).with_context(|| format!("reading {name}"))?;
        let order = payload_order(&head);
        Ok(PreparedSource {
            name,
            reader,
            info: prepared_info(head),
            order,
            next: 0,
        })
    }
}

/// "NAME (prepared image 0123abcd…)", naming the image by its digest.
pub(super) fn describe_prepared(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    info: &ImageInfo,
) -> fmt::Result {
    let digest = info
        .head
        .as_ref()
        .map(|h| format::hex(&h.digest()))
        .unwrap_or_default();
    write!(
        f,
        "{name} (prepared image {})",
        &digest[..16.min(digest.len())]
    )
}

impl fmt::Display for PreparedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe_prepared(f, &self.name, &self.info)
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
        self.reader
            .skip_to(at)
            .with_context(|| format!("reading {}", self.name))?;
        let len = e.payload_len as usize;
        let dest = match e.codec {
            Codec::Zstd => {
                slot.input.resize(len, 0);
                &mut slot.input[..]
            }
            Codec::Stored => &mut slot.data[..len],
        };
        let got = crate::io::read_full(&mut (&mut self.reader).take(len as u64), dest)
            .with_context(|| format!("reading {}", self.name))?;
        if got < len {
            bail!(
                "{} is truncated: extent {i} needs bytes up to {} but the image ends at {}",
                self.name,
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
