//! Where restore bytes come from. Every source hands back what is known
//! about the image (`ImageInfo`) and then fills pooled buffers with pieces,
//! in whatever order it reads them; the pipeline writes positionally, so
//! order never matters for correctness.

mod dmg;
mod http;
mod prepared;
mod raw;
mod resolve;

use std::fmt::Display;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::image::format::{self, Codec, Content, Digest, ImageHead, Manifest};
use crate::io::{AlignedBuf, DirectReader, open_read_direct};
use crate::progress::ProgressSink;

pub use http::{HttpOptions, fetch_small};
pub use prepared::PreparedSource;
pub(crate) use prepared::prepared_info;
pub use raw::{Compression, RawSource, RawSpec};
pub(crate) use resolve::lookup_ipv4;

/// Size of the blocks the sequential readers fetch, in bytes: large enough
/// that O_DIRECT reads run at device speed.
pub const READ_BLOCK: usize = 4 << 20;

/// One pooled buffer pair: compressed input and the aligned output that is
/// written to the target.
pub struct Slot {
    pub input: Vec<u8>,
    pub data: AlignedBuf,
}

impl Slot {
    pub fn new(data_len: usize) -> Slot {
        Slot {
            input: Vec::new(),
            data: AlignedBuf::new(data_len),
        }
    }
}

/// What a source put into a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Payload of manifest extent `i`: compressed bytes in `input`, or the
    /// bytes themselves in `data` for stored extents.
    Extent(usize),
    /// Extent `i` already unpacked into `data` by the source and checked
    /// against its digest (`unpack_extent`).
    Checked(usize),
    /// `len` bytes of raw image for target offset `offset`, in `data`.
    Raw { offset: u64, len: usize },
}

/// What is known about an image before any of it is restored.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Restored size in bytes, when known up front.
    pub size: Option<u64>,
    pub sector_size: u32,
    pub content: Content,
    /// Header and manifest of a prepared image.
    pub head: Option<ImageHead>,
    /// Bytes the source will read in all (for progress when `size` is not
    /// known, as with a gzip stream).
    pub source_len: Option<u64>,
    /// The image's signature, when the source brings it along (multicast).
    pub signature: Option<String>,
    /// Bytes the pieces cover, when less than `size` (a .dmg's free space
    /// is never written); progress counts against it.
    pub stored: Option<u64>,
}

pub trait ChunkSource: Display + Send {
    fn info(&self) -> &ImageInfo;
    /// Fills `slot` with the next piece, or returns None at the end.
    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>>;
    /// Bytes of the source consumed so far.
    fn position(&self) -> u64;
    /// Live reception figures, for sources that stream (multicast).
    fn stream_status(&self) -> Option<Arc<dyn StreamStatus>> {
        None
    }
    /// Reads the whole source once to check it before anything is written,
    /// for formats whose checksums cover more than one piece (UDIF).
    fn check_before_writing(&mut self, _progress: &dyn ProgressSink) -> Result<()> {
        Ok(())
    }
}

/// How a streamed source is receiving, read while the restore runs.
pub trait StreamStatus: Send + Sync {
    /// Datagrams lost so far, in percent of those sent to us.
    fn loss_percent(&self) -> f64;
    /// Passes of the stream seen so far.
    fn passes(&self) -> u32;
}

/// Formats recognised by their first bytes, not their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Prepared,
    Compressed(Compression),
    Raw,
}

pub fn sniff(head: &[u8]) -> Sniffed {
    if head.starts_with(&format::MAGIC) {
        Sniffed::Prepared
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Sniffed::Compressed(Compression::Gzip)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Sniffed::Compressed(Compression::Xz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Sniffed::Compressed(Compression::Zstd)
    } else {
        Sniffed::Raw
    }
}

/// How sources are opened: what raw pieces look like and how the network
/// is used.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Size of the pieces raw streams are cut into (`--buffersize`).
    pub piece_len: usize,
    pub http: HttpOptions,
    /// Multicast: give up after this long without data (None: never).
    pub timeout: Option<std::time::Duration>,
    /// `--sourcevolume`: restore only this volume of a .dmg.
    pub volume: Option<String>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            piece_len: 1 << 20,
            http: HttpOptions::default(),
            timeout: None,
            volume: None,
        }
    }
}

/// Bytes sniffed from the start of a source: enough for every magic and for
/// a zstd frame header with its content size (at most 18 bytes).
const SNIFF_LEN: usize = 18;

/// Opens a source named on the command line: a path, a block device, or an
/// http(s):// or mcast:// URL.
pub fn open(spec: &str, opts: &SourceOptions) -> Result<Box<dyn ChunkSource>> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return http::open(spec, opts);
    }
    if spec.starts_with("mcast://") {
        return crate::mcast::client::open(spec, opts);
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        bail!("{scheme}:// sources are not supported by this version of reimage");
    }
    let path = Path::new(spec);
    let meta = std::fs::metadata(path).with_context(|| format!("opening source {spec}"))?;
    if meta.file_type().is_block_device() {
        return Ok(Box::new(RawSource::block_device(path, opts.piece_len)?));
    }
    if !meta.is_file() {
        bail!("source {spec} is neither a file nor a block device");
    }
    let (mut file, head, trailer) = probe_file(path)?;
    if let Some(trailer) = trailer {
        let path = path.to_owned();
        let opener = Box::new(move || direct_stream(&path));
        let volume = opts.volume.as_deref();
        let src = dmg::DmgSource::open(
            spec.to_owned(),
            &trailer,
            &mut file,
            meta.len(),
            opener,
            volume,
        )?;
        return Ok(Box::new(src));
    }
    let reader = direct_stream(path).with_context(|| format!("opening source {spec}"))?;
    from_stream(spec.to_owned(), &head, reader, Some(meta.len()), opts)
}

/// A local file opened, its first bytes, and its UDIF trailer if it has
/// one.
fn probe_file(path: &Path) -> Result<(File, Vec<u8>, Option<Vec<u8>>)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = vec![0u8; SNIFF_LEN];
    let n = crate::io::read_full(&mut file, &mut head)?;
    head.truncate(n);
    let len = file.metadata()?.len();
    let trailer = udif_trailer(&head, &mut file, len)?;
    Ok((file, head, trailer))
}

/// The UDIF trailer of a `len`-byte source whose first bytes are `head`.
/// A .dmg's data fork may begin with any run, even an xz stream, so the
/// trailer decides before the first bytes do; only a prepared image's
/// magic is trusted first.
fn udif_trailer(head: &[u8], tail: &mut dyn dmg::TailReader, len: u64) -> Result<Option<Vec<u8>>> {
    if sniff(head) == Sniffed::Prepared {
        return Ok(None);
    }
    dmg::read_trailer(tail, len)
}

/// A local file read front to back with O_DIRECT where it works.
fn direct_stream(path: &Path) -> Result<Box<dyn crate::io::SeqRead>> {
    let (file, direct) = open_read_direct(path)?;
    Ok(Box::new(DirectReader::new(file, direct, READ_BLOCK)))
}

impl dmg::TailReader for File {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.read_exact_at(buf, offset)
            .context("the image ends early; it is truncated")
    }
}

/// The detached signature beside a source (`SOURCE.minisig`), or None when
/// there is none.
pub fn fetch_signature(spec: &str, opts: &SourceOptions) -> Result<Option<String>> {
    let name = format!("{spec}.minisig");
    if spec.starts_with("http://") || spec.starts_with("https://") {
        // A minisign signature is a few hundred bytes.
        return http::fetch_small(&name, &opts.http, 64 << 10);
    }
    match std::fs::read_to_string(&name) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {name}"))),
    }
}

/// True for a file in one of Apple's disk image formats (UDIF, or an
/// encrypted or sparse image, which `open` refuses with a clear message).
pub fn is_apple_image(path: &Path) -> Result<bool> {
    let (_, head, trailer) = probe_file(path)?;
    Ok(trailer.is_some() || dmg::unsupported_kind(&head).is_some())
}

/// A source over one sequential stream whose first bytes are `head`.
fn from_stream(
    name: String,
    head: &[u8],
    reader: Box<dyn crate::io::SeqRead>,
    stream_len: Option<u64>,
    opts: &SourceOptions,
) -> Result<Box<dyn ChunkSource>> {
    if let Some(kind) = dmg::unsupported_kind(head) {
        bail!("{name} is {kind}");
    }
    // Restoring a damaged .dmg as a raw image would write garbage.
    let path = name.split(['?', '#']).next().unwrap_or_default();
    if sniff(head) == Sniffed::Raw && path.to_ascii_lowercase().ends_with(".dmg") {
        bail!(
            "{name} has no UDIF trailer (\"koly\") at its end: the file is truncated, or the server does not answer Range requests"
        );
    }
    if let Some(v) = &opts.volume {
        bail!(
            "--sourcevolume {v}: {name} is not a .dmg; only UDIF images hold volumes to pick from"
        );
    }
    let piece_len = opts.piece_len;
    let spec = |size, compression| RawSpec {
        name: name.clone(),
        size,
        stream_len,
        sector_size: 512,
        compression,
    };
    Ok(match sniff(head) {
        Sniffed::Prepared => Box::new(PreparedSource::new(name, reader)?),
        Sniffed::Compressed(c) => {
            let size = if c == Compression::Zstd {
                raw::zstd_content_size(head)
            } else {
                None
            };
            Box::new(RawSource::new(spec(size, Some(c)), reader, piece_len)?)
        }
        Sniffed::Raw => Box::new(RawSource::new(spec(stream_len, None), reader, piece_len)?),
    })
}

/// Decodes extent `i` of `m` in `slot`: decompresses a zstd payload from
/// `input` into `data` (a stored extent is already in `data`), hashes the
/// bytes and checks the digest. Nothing unchecked leaves this function.
pub fn unpack_extent(
    m: &Manifest,
    i: usize,
    slot: &mut Slot,
    dctx: &mut zstd::bulk::Decompressor<'_>,
) -> Result<Digest> {
    let e = &m.extents[i];
    let len = e.length as usize;
    let at = e.target_offset;
    if e.codec == Codec::Zstd {
        let Slot { input, data } = slot;
        let n = dctx
            .decompress_to_buffer(&input[..], &mut data[..len])
            .map_err(|err| anyhow::anyhow!("extent {i} at byte {at}: payload does not decompress ({err}); the image is corrupt"))?;
        if n != len {
            bail!(
                "extent {i} at byte {at}: payload decompresses to {n} bytes, expected {len}; the image is corrupt"
            );
        }
    }
    let digest = *blake3::hash(&slot.data[..len]).as_bytes();
    if digest != e.digest {
        bail!("extent {i} at byte {at}: digest mismatch; the image is corrupt");
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff(&format::MAGIC), Sniffed::Prepared);
        assert_eq!(
            sniff(&[0x1f, 0x8b, 8]),
            Sniffed::Compressed(Compression::Gzip)
        );
        assert_eq!(sniff(b"\xfd7zXZ\0"), Sniffed::Compressed(Compression::Xz));
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Sniffed::Compressed(Compression::Zstd)
        );
        assert_eq!(sniff(b"\0\0\0\0"), Sniffed::Raw);
        assert_eq!(sniff(b""), Sniffed::Raw);
    }

    #[test]
    fn unknown_schemes_get_a_clear_error() {
        let err = open("ftp://example.invalid/x.rimg", &SourceOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ftp:// sources are not supported"), "{err}");
    }
}
