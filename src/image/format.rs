//! The prepared image format (`.rimg`), version 1. `docs/FORMAT.md` is the
//! normative description; this module is its reference implementation.
//!
//! Layout: a 64-byte header, the manifest, then the chunk payloads. Every
//! integer is little-endian. The decoder bounds every length and count before
//! it allocates, so a hostile file costs at most `MAX_MANIFEST_LEN` bytes of
//! memory and ends in a `FormatError`, never a panic.

use std::io::Read;

/// First 8 bytes of every prepared image. The CR LF / SUB / LF tail catches
/// text-mode transfers that mangle line endings, as PNG's signature does.
pub const MAGIC: [u8; 8] = *b"RIMG\r\n\x1a\n";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
pub const HEADER_LEN: usize = 64;
/// Fixed size of one extent record in the manifest, in bytes.
pub const EXTENT_RECORD_LEN: usize = 8 + 4 + 8 + 4 + 1 + 32;
/// Fixed part of the manifest before the name, in bytes.
const MANIFEST_FIXED_LEN: usize = 8 + 4 + 4 + 4 + 8;
/// Largest manifest a reader accepts (bytes): 4 M extents, i.e. far more
/// than a 16 TiB disk in 4 MiB chunks needs.
pub const MAX_MANIFEST_LEN: u64 = 256 << 20;
/// Most padding allowed between the manifest and the payload area (bytes).
/// Writers reserve room for the manifest before they know its final size.
pub const MAX_PADDING: u64 = MAX_MANIFEST_LEN;
/// Largest uncompressed chunk (bytes). Bounds reader memory per buffer.
pub const MAX_CHUNK_LEN: u32 = 16 << 20;
/// Largest name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

pub type Digest = [u8; 32];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a prepared image (bad magic)")]
    BadMagic,
    #[error("prepared image version {0}.{1} is not supported (this reimage reads 1.x)")]
    Version(u16, u16),
    #[error("corrupt image header: {0}")]
    Header(String),
    #[error("corrupt manifest: {0}")]
    Manifest(String),
    #[error("manifest digest mismatch: the image header or manifest is damaged")]
    ManifestDigest,
}

fn manifest_err(msg: impl Into<String>) -> FormatError {
    FormatError::Manifest(msg.into())
}

/// What the image holds, so restore can pick the right post-processing
/// (GPT backup relocation for disks, signature wiping for partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Bytes of unknown structure (a raw file).
    Raw = 0,
    /// A whole disk with a partition table.
    Disk = 1,
    /// One partition or bare filesystem.
    Partition = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    None = 0,
    Gpt = 1,
    Mbr = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Unknown = 0,
    Ext = 1,
    Fat = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Stored = 0,
    Zstd = 1,
}

/// One stored run of bytes: where it goes, where its payload is, and the
/// BLAKE3 digest of its uncompressed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub target_offset: u64,
    pub length: u32,
    /// Offset of the payload relative to the start of the payload area.
    pub payload_offset: u64,
    pub payload_len: u32,
    pub codec: Codec,
    pub digest: Digest,
}

impl Extent {
    pub fn target_end(&self) -> u64 {
        self.target_offset + u64::from(self.length)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Size of the restored image in bytes (the smallest target it fits).
    pub logical_size: u64,
    /// Logical sector size of the source the image was taken from.
    pub sector_size: u32,
    /// Largest uncompressed extent length this image uses.
    pub chunk_size: u32,
    pub content: Content,
    pub table: TableKind,
    pub fs: FsKind,
    /// Capture time, seconds since the Unix epoch.
    pub created: u64,
    pub name: String,
    /// Absolute file offset of the payload area.
    pub payload_area: u64,
    pub extents: Vec<Extent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version_minor: u16,
    pub manifest_len: u64,
    pub manifest_digest: Digest,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&self.version_minor.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&(HEADER_LEN as u64).to_le_bytes());
        b[24..32].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.manifest_digest);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, FormatError> {
        if b.len() < 8 || b[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if b.len() < HEADER_LEN {
            return Err(FormatError::Header("truncated".into()));
        }
        let mut c = Cursor::new(&b[8..HEADER_LEN]);
        let (major, minor) = (c.u16()?, c.u16()?);
        if major != VERSION_MAJOR {
            return Err(FormatError::Version(major, minor));
        }
        let header_len = c.u32()?;
        let manifest_offset = c.u64()?;
        let manifest_len = c.u64()?;
        if header_len as usize != HEADER_LEN || manifest_offset != HEADER_LEN as u64 {
            return Err(FormatError::Header(format!(
                "header length {header_len} / manifest offset {manifest_offset}, expected {HEADER_LEN}"
            )));
        }
        if manifest_len < MANIFEST_FIXED_LEN as u64 || manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::Header(format!(
                "manifest length {manifest_len} out of range"
            )));
        }
        let manifest_digest = c.array()?;
        Ok(Header {
            version_minor: minor,
            manifest_len,
            manifest_digest,
        })
    }
}

/// Bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| manifest_err("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl Manifest {
    /// The canonical encoding. The image digest is BLAKE3 of these bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut b = Vec::with_capacity(
            MANIFEST_FIXED_LEN
                + 8
                + 2
                + name.len()
                + 8
                + 4
                + self.extents.len() * EXTENT_RECORD_LEN,
        );
        b.extend_from_slice(&self.logical_size.to_le_bytes());
        b.extend_from_slice(&self.sector_size.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&[self.content as u8, self.table as u8, self.fs as u8, 0]);
        b.extend_from_slice(&self.created.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&self.payload_area.to_le_bytes());
        b.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            b.extend_from_slice(&e.target_offset.to_le_bytes());
            b.extend_from_slice(&e.length.to_le_bytes());
            b.extend_from_slice(&e.payload_offset.to_le_bytes());
            b.extend_from_slice(&e.payload_len.to_le_bytes());
            b.push(e.codec as u8);
            b.extend_from_slice(&e.digest);
        }
        b
    }

    /// Decodes and validates a manifest: every field in range, extents in
    /// ascending target order without overlap and inside the logical size,
    /// payloads inside the payload area without overlap.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let mut c = Cursor::new(bytes);
        let logical_size = c.u64()?;
        let sector_size = c.u32()?;
        if !sector_size.is_power_of_two() || !(512..=65536).contains(&sector_size) {
            return Err(manifest_err(format!(
                "sector size {sector_size} is not a power of two in 512..65536"
            )));
        }
        let chunk_size = c.u32()?;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_LEN {
            return Err(manifest_err(format!(
                "chunk size {chunk_size} out of range"
            )));
        }
        let [content, table, fs, reserved] = c.array()?;
        let content = match content {
            0 => Content::Raw,
            1 => Content::Disk,
            2 => Content::Partition,
            v => return Err(manifest_err(format!("unknown content kind {v}"))),
        };
        let table = match table {
            0 => TableKind::None,
            1 => TableKind::Gpt,
            2 => TableKind::Mbr,
            v => return Err(manifest_err(format!("unknown partition table kind {v}"))),
        };
        let fs = match fs {
            0 => FsKind::Unknown,
            1 => FsKind::Ext,
            2 => FsKind::Fat,
            v => return Err(manifest_err(format!("unknown filesystem kind {v}"))),
        };
        if reserved != 0 {
            return Err(manifest_err("reserved byte is not zero"));
        }
        let created = c.u64()?;
        let name_len = usize::from(c.u16()?);
        if name_len > MAX_NAME_LEN {
            return Err(manifest_err(format!(
                "name of {name_len} bytes is too long"
            )));
        }
        let name = std::str::from_utf8(c.take(name_len)?)
            .map_err(|_| manifest_err("name is not UTF-8"))?
            .to_owned();
        let payload_area = c.u64()?;
        let count = c.u32()? as usize;
        // Bound the count by the bytes actually present before allocating.
        if c.remaining() != count.saturating_mul(EXTENT_RECORD_LEN) {
            return Err(manifest_err(format!(
                "{count} extents need {} bytes, {} present",
                count.saturating_mul(EXTENT_RECORD_LEN),
                c.remaining()
            )));
        }
        let mut extents = Vec::with_capacity(count);
        for i in 0..count {
            let target_offset = c.u64()?;
            let length = c.u32()?;
            let payload_offset = c.u64()?;
            let payload_len = c.u32()?;
            let codec = match c.u8()? {
                0 => Codec::Stored,
                1 => Codec::Zstd,
                v => return Err(manifest_err(format!("extent {i}: unknown codec {v}"))),
            };
            let digest = c.array()?;
            extents.push(Extent {
                target_offset,
                length,
                payload_offset,
                payload_len,
                codec,
                digest,
            });
        }
        let m = Manifest {
            logical_size,
            sector_size,
            chunk_size,
            content,
            table,
            fs,
            created,
            name,
            payload_area,
            extents,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), FormatError> {
        let mut prev_end = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.length == 0 || e.length > self.chunk_size {
                return Err(manifest_err(format!(
                    "extent {i}: length {} out of range",
                    e.length
                )));
            }
            let end = e.target_offset.checked_add(u64::from(e.length));
            if e.target_offset < prev_end || end.is_none_or(|end| end > self.logical_size) {
                return Err(manifest_err(format!(
                    "extent {i} at {} overlaps its predecessor or runs past the image end",
                    e.target_offset
                )));
            }
            prev_end = e.target_offset + u64::from(e.length);
            let bad_payload = match e.codec {
                Codec::Stored => e.payload_len != e.length,
                Codec::Zstd => {
                    e.payload_len == 0
                        || e.payload_len as usize
                            > zstd::zstd_safe::compress_bound(e.length as usize)
                }
            };
            if bad_payload {
                return Err(manifest_err(format!(
                    "extent {i}: payload length {} impossible",
                    e.payload_len
                )));
            }
            if e.payload_offset
                .checked_add(u64::from(e.payload_len))
                .is_none()
            {
                return Err(manifest_err(format!(
                    "extent {i}: payload offset overflows"
                )));
            }
        }
        // Payloads may be stored in any order, but must not share bytes.
        let mut spans: Vec<(u64, u64)> = self
            .extents
            .iter()
            .map(|e| {
                (
                    e.payload_offset,
                    e.payload_offset + u64::from(e.payload_len),
                )
            })
            .collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(manifest_err("two payloads overlap"));
        }
        Ok(())
    }

    /// True when payloads follow each other in target order with no gaps,
    /// so a sequential reader never has to seek (see `imagescan`).
    pub fn is_streaming_order(&self) -> bool {
        let mut next = 0u64;
        self.extents.iter().all(|e| {
            let ok = e.payload_offset == next;
            next += u64::from(e.payload_len);
            ok
        })
    }

    /// Bytes the extents cover once restored.
    pub fn stored_bytes(&self) -> u64 {
        self.extents.iter().map(|e| u64::from(e.length)).sum()
    }

    /// Bytes of payload after the manifest.
    pub fn payload_bytes(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| e.payload_offset + u64::from(e.payload_len))
            .max()
            .unwrap_or(0)
    }
}

/// The one 32-byte value that names an image: BLAKE3 of the manifest bytes.
pub fn manifest_digest(manifest_bytes: &[u8]) -> Digest {
    *blake3::hash(manifest_bytes).as_bytes()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed image head: header, manifest and the manifest's exact bytes
/// (which a signature covers). Reading it leaves a stream at the payload area.
#[derive(Debug, Clone)]
pub struct ImageHead {
    pub header: Header,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
}

impl ImageHead {
    pub fn digest(&self) -> Digest {
        self.header.manifest_digest
    }
}

/// Reads and checks header and manifest from the start of a stream. Leaves
/// the reader at the start of the payload area.
pub fn read_head(r: &mut impl Read) -> anyhow::Result<ImageHead> {
    let mut hb = [0u8; HEADER_LEN];
    read_header_bytes(r, &mut hb)?;
    let header = Header::decode(&hb)?;
    let mut manifest_bytes = Vec::new();
    r.take(header.manifest_len)
        .read_to_end(&mut manifest_bytes)?;
    let head = parse_head(header, manifest_bytes)?;
    // Skip the padding so the reader sits at the payload area.
    let padding = head.manifest.payload_area - HEADER_LEN as u64 - head.header.manifest_len;
    if std::io::copy(&mut r.take(padding), &mut std::io::sink())? != padding {
        return Err(manifest_err("truncated before the payload area").into());
    }
    Ok(head)
}

/// Checks a manifest against its header: length, digest, contents, and
/// where the payload area starts.
pub fn parse_head(header: Header, manifest_bytes: Vec<u8>) -> Result<ImageHead, FormatError> {
    if manifest_bytes.len() as u64 != header.manifest_len {
        return Err(FormatError::Manifest("truncated".into()));
    }
    if manifest_digest(&manifest_bytes) != header.manifest_digest {
        return Err(FormatError::ManifestDigest);
    }
    let manifest = Manifest::decode(&manifest_bytes)?;
    let head_end = HEADER_LEN as u64 + header.manifest_len;
    let padding = manifest.payload_area.checked_sub(head_end);
    if padding.is_none_or(|p| p > MAX_PADDING) {
        return Err(manifest_err(format!(
            "payload area at {} does not follow the manifest",
            manifest.payload_area
        )));
    }
    Ok(ImageHead {
        header,
        manifest,
        manifest_bytes,
    })
}

/// `read_exact` that reports a short file as a format problem, not an I/O one.
fn read_header_bytes(r: &mut impl Read, buf: &mut [u8]) -> anyhow::Result<()> {
    let got = crate::io::read_full(r, buf)?;
    if got < 8 || buf[..8] != MAGIC {
        return Err(FormatError::BadMagic.into());
    }
    if got < buf.len() {
        return Err(FormatError::Header("truncated".into()).into());
    }
    Ok(())
}

/// Serializes a complete head for a manifest whose `payload_area` is set.
pub fn encode_head(manifest: &Manifest) -> Vec<u8> {
    let mb = manifest.encode();
    let header = Header {
        version_minor: VERSION_MINOR,
        manifest_len: mb.len() as u64,
        manifest_digest: manifest_digest(&mb),
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&mb);
    out
}

/// Length of the head (header + manifest) for a manifest with `extents`
/// extents and a name of `name_len` bytes; lets writers place the payload
/// area before the extents are known.
pub fn head_len(name_len: usize, extents: usize) -> u64 {
    (HEADER_LEN + MANIFEST_FIXED_LEN + 2 + name_len + 8 + 4 + extents * EXTENT_RECORD_LEN) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest {
            logical_size: 1 << 20,
            sector_size: 512,
            chunk_size: 65536,
            content: Content::Disk,
            table: TableKind::Gpt,
            fs: FsKind::Unknown,
            created: 1_700_000_000,
            name: "lab".into(),
            payload_area: 0,
            extents: vec![
                Extent {
                    target_offset: 0,
                    length: 4096,
                    payload_offset: 0,
                    payload_len: 4096,
                    codec: Codec::Stored,
                    digest: [1; 32],
                },
                Extent {
                    target_offset: 65536,
                    length: 65536,
                    payload_offset: 4096,
                    payload_len: 100,
                    codec: Codec::Zstd,
                    digest: [2; 32],
                },
            ],
        };
        m.payload_area = head_len(m.name.len(), m.extents.len());
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let head = encode_head(&m);
        assert_eq!(head.len() as u64, m.payload_area);
        let parsed = read_head(&mut &head[..]).unwrap();
        assert_eq!(parsed.manifest, m);
        assert!(m.is_streaming_order());
        assert_eq!(m.stored_bytes(), 4096 + 65536);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let head = encode_head(&sample());
        for n in 0..head.len() {
            assert!(
                read_head(&mut &head[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
    }

    #[test]
    fn every_single_byte_corruption_is_caught() {
        let head = encode_head(&sample());
        // Bytes 10..12 are the minor version: readers accept any 1.x.
        for i in (0..head.len()).filter(|i| !(10..12).contains(i)) {
            let mut bad = head.clone();
            bad[i] ^= 0x5a;
            assert!(
                read_head(&mut &bad[..]).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    fn decode_err(m: &Manifest) -> String {
        Manifest::decode(&m.encode()).unwrap_err().to_string()
    }

    #[test]
    fn hostile_manifests_are_rejected() {
        let mut m = sample();
        m.extents[1].target_offset = 2048;
        assert!(decode_err(&m).contains("overlaps"));
        let mut m = sample();
        m.extents[1].target_offset = u64::MAX - 10;
        assert!(decode_err(&m).contains("past the image end"));
        let mut m = sample();
        m.extents[1].payload_offset = 0;
        assert!(decode_err(&m).contains("overlap"));
        let mut m = sample();
        m.extents[0].payload_len = 5;
        assert!(decode_err(&m).contains("impossible"));
        let mut m = sample();
        m.extents[1].length = 1 << 20;
        assert!(decode_err(&m).contains("out of range"));
        let mut m = sample();
        m.sector_size = 1000;
        assert!(decode_err(&m).contains("sector size"));
        // An extent count far beyond the bytes present must not allocate.
        let mut bytes = sample().encode();
        let count_at = bytes.len() - 2 * EXTENT_RECORD_LEN - 4;
        bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            Manifest::decode(&bytes)
                .unwrap_err()
                .to_string()
                .contains("extents need")
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic generator; cargo-fuzz style coverage is not
        // needed for a format this small, but every length path is hit.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..2000usize {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Manifest::decode(&buf);
            if buf.len() >= 8 {
                buf[..8].copy_from_slice(&MAGIC);
            }
            let _ = read_head(&mut &buf[..]);
        }
    }

    #[test]
    fn other_major_versions_are_refused() {
        let mut head = encode_head(&sample());
        head[8] = 2;
        assert_eq!(
            read_head(&mut &head[..])
                .unwrap_err()
                .downcast::<FormatError>()
                .unwrap(),
            FormatError::Version(2, 0)
        );
    }
}
