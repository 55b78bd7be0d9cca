//! Used-block maps read from filesystem allocation structures.
//!
//! An imaging tool only has to copy the bytes a filesystem actually uses. This module finds
//! them by reading the filesystem's own allocation structures (ext block bitmaps, the FAT),
//! never by guessing from content. Every on-disk number is validated against the length of
//! the region being probed before it is used for a read, a loop bound or an allocation, so a
//! damaged or hostile filesystem yields an error (the caller then copies everything) rather
//! than a panic or a huge allocation.

pub mod ext;
pub mod fat;

use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Context, anyhow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext,
    Fat,
}

/// Used byte ranges of one filesystem, relative to the filesystem's first byte,
/// sorted, non-overlapping, adjacent ranges merged, each clipped to the filesystem length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsMap {
    pub fs: FsType,
    pub used: Vec<Range<u64>>,
}

impl FsMap {
    /// Total number of used bytes.
    pub fn used_bytes(&self) -> u64 {
        self.used.iter().map(|r| r.end - r.start).sum()
    }
}

/// Probes the filesystem occupying [offset, offset+len) of `dev` (any FileExt: a File of a
/// disk image, block device or partition). Returns Ok(None) when no supported filesystem
/// is recognised there; Ok(Some(map)) with its used ranges; Err only on I/O errors or when
/// the filesystem is recognised but its structures are inconsistent.
pub fn probe(dev: &impl FileExt, offset: u64, len: u64) -> anyhow::Result<Option<FsMap>> {
    // Both probes always run so that a region carrying both signatures is noticed.
    let ext = ext::probe(dev, offset, len);
    let fat = fat::probe(dev, offset, len);
    match (ext, fat) {
        (Ok(Some(_)), Ok(Some(_))) => Err(anyhow!(
            "both a valid ext superblock and a valid fat boot sector are present; refusing to guess"
        )),
        (Ok(Some(map)), _) => Ok(Some(map)),
        // mkfs.vfat overwrites bytes 1024..2048 (reserved sectors or the first FAT), so an ext
        // "superblock" that fails validation under a valid FAT boot sector is FAT data that
        // happens to contain 0xEF53 at s_magic; the FAT is what is really there. The reverse
        // cannot happen by accident: mke2fs zeroes sector 0.
        (Err(_), Ok(Some(map))) => Ok(Some(map)),
        (Err(e), _) => Err(e),
        (Ok(None), fat) => fat,
    }
}

/// Reads `buf.len()` bytes at byte `pos` of the filesystem that starts at `offset` of `dev`,
/// refusing to read outside the `len` bytes that belong to it.
fn read_fs(
    dev: &impl FileExt,
    offset: u64,
    len: u64,
    pos: u64,
    buf: &mut [u8],
) -> anyhow::Result<()> {
    let n = buf.len() as u64;
    if pos.checked_add(n).is_none_or(|end| end > len) {
        return Err(anyhow!(
            "read of {n} bytes at byte {pos} is past the end of the {len}-byte filesystem"
        ));
    }
    let abs = offset
        .checked_add(pos)
        .ok_or_else(|| anyhow!("byte {pos} of a filesystem at offset {offset} overflows u64"))?;
    dev.read_exact_at(buf, abs)
        .with_context(|| format!("reading {n} bytes at device byte {abs}"))
}

/// Clips `ranges` to `len` and puts them in the canonical form promised by
/// [`FsMap::used`].
fn normalize(ranges: Vec<Range<u64>>, len: u64) -> Vec<Range<u64>> {
    crate::ranges::normalize(
        ranges
            .into_iter()
            .map(|r| r.start..r.end.min(len))
            .collect(),
    )
}

/// Appends `r` to `v`, extending the last range instead when `r` continues it. Callers that
/// emit ranges in ascending order keep the vector short this way.
fn push_range(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the ext and fat tests: external tools, garbage-filled copies,
    //! an in-memory device for fuzzing.

    use super::FsMap;
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::{Command, Output};

    /// Runs `prog args` and returns its output; panics with the tool's stderr when it cannot
    /// be started (missing package) so the failure says what to install.
    pub fn run(prog: &str, args: &[&str]) -> Output {
        Command::new(prog)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {prog} ({e}); install e2fsprogs, dosfstools and mtools")
            })
    }

    /// Like [`run`] but asserts exit status 0.
    pub fn run_ok(prog: &str, args: &[&str]) -> Output {
        let out = run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?} failed with {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// xorshift64* pseudo-random generator: fast, deterministic garbage.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let v = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n.max(1)
        }
    }

    /// Creates a sparse file of `size` bytes.
    pub fn sparse_file(path: &Path, size: u64) {
        File::create(path).unwrap().set_len(size).unwrap();
    }

    /// Writes a file of `size` pseudo-random bytes.
    pub fn random_file(path: &Path, size: usize, seed: u64) {
        let mut buf = vec![0u8; size];
        Rng(seed | 1).fill(&mut buf);
        std::fs::write(path, buf).unwrap();
    }

    /// Copies only `map.used` of the filesystem at `src_off` of `src` into a new file `dst`
    /// whose other bytes are pseudo-random garbage, so a later fsck proves that nothing
    /// outside the map is needed.
    pub fn copy_used_over_garbage(src: &Path, src_off: u64, len: u64, map: &FsMap, dst: &Path) {
        let src = File::open(src).unwrap();
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dst)
            .unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ len);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            out.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        for r in &map.used {
            assert!(r.end <= len, "range {r:?} beyond {len}");
            let mut pos = r.start;
            while pos < r.end {
                let n = (r.end - pos).min(buf.len() as u64) as usize;
                src.read_exact_at(&mut buf[..n], src_off + pos).unwrap();
                out.write_all_at(&buf[..n], pos).unwrap();
                pos += n as u64;
            }
        }
        out.sync_all().unwrap();
    }

    /// Asserts the canonical form of a map: sorted, non-empty, non-adjacent, within `len`.
    pub fn assert_canonical(map: &FsMap, len: u64) {
        let mut prev_end: Option<u64> = None;
        for r in &map.used {
            assert!(r.start < r.end, "empty range {r:?}");
            assert!(r.end <= len, "range {r:?} beyond {len}");
            if let Some(p) = prev_end {
                assert!(r.start > p, "ranges not sorted/merged at {r:?}");
            }
            prev_end = Some(r.end);
        }
    }

    /// Reads a whole file.
    pub fn slurp(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    /// Fills `dir` with a few real documents from /usr/share/doc (up to `doc_bytes`) and
    /// pseudo-random files totalling `random_bytes`. Returns the relative paths written.
    pub fn populate(dir: &Path, doc_bytes: u64, random_bytes: usize, seed: u64) -> Vec<String> {
        let mut names = Vec::new();
        std::fs::create_dir_all(dir.join("doc")).unwrap();
        let mut total = 0u64;
        let mut entries: Vec<_> = std::fs::read_dir("/usr/share/doc")
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        'outer: for pkg in entries {
            let Ok(rd) = std::fs::read_dir(&pkg) else {
                continue;
            };
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let Ok(md) = std::fs::symlink_metadata(&f) else {
                    continue;
                };
                if !md.is_file() || md.len() == 0 {
                    continue;
                }
                if total >= doc_bytes {
                    break 'outer;
                }
                let fname = f
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace(['+', ' '], "_");
                // Short 8.3-friendly-ish names keep mtools from prompting about mangling.
                let name = format!("doc/d{}_{}", names.len(), &fname[..fname.len().min(20)]);
                std::fs::copy(&f, dir.join(&name)).unwrap();
                total += md.len();
                names.push(name);
            }
        }
        std::fs::create_dir_all(dir.join("rnd")).unwrap();
        let mut left = random_bytes;
        let mut i = 0u64;
        while left > 0 {
            // Sizes vary (tiny, odd, large) so partial blocks and long extents both occur.
            let sz = match i % 4 {
                0 => 1_000_003,
                1 => 4097,
                2 => 3_333_333,
                _ => 65_536 * 7 + 11,
            }
            .min(left);
            let name = format!("rnd/r{i}.bin");
            random_file(&dir.join(&name), sz, seed.wrapping_add(i));
            names.push(name);
            left -= sz;
            i += 1;
        }
        names
    }

    /// In-memory device for fast fuzzing.
    pub struct MemDev(pub Vec<u8>);

    impl FileExt for MemDev {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let Ok(off) = usize::try_from(offset) else {
                return Ok(0);
            };
            if off >= self.0.len() {
                return Ok(0);
            }
            let n = buf.len().min(self.0.len() - off);
            buf[..n].copy_from_slice(&self.0[off..off + n]);
            Ok(n)
        }

        fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<usize> {
            Err(io::Error::other("read-only"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn normalize_sorts_merges_clips() {
        let v = vec![10..20, 0..5, 5..7, 15..30, 40..40, 50..100, 90..95];
        assert_eq!(normalize(v, 60), vec![0..7, 10..30, 50..60]);
        assert!(normalize(vec![70..80, 80..90], 60).is_empty());
    }

    #[test]
    fn random_bytes_are_not_a_filesystem() {
        for seed in 1..200u64 {
            let mut buf = vec![0u8; 256 << 10];
            Rng(seed).fill(&mut buf);
            let len = buf.len() as u64;
            let dev = MemDev(buf);
            // Random bytes may hit a signature by chance; then an error is fine, a panic not.
            if let Ok(Some(m)) = probe(&dev, 0, len) {
                panic!("random data recognised as {:?}", m.fs);
            }
        }
        let dev = MemDev(vec![0u8; 4096]);
        assert!(probe(&dev, 0, 4096).unwrap().is_none());
        assert!(probe(&dev, 0, 0).unwrap().is_none());
        // Offsets that overflow are an error (or nothing), never a panic.
        assert!(!matches!(probe(&dev, u64::MAX - 10, 4096), Ok(Some(_))));
    }
}
