//! Partition tables (GPT and MBR) of disks and disk images: reading them, and
//! the few edits a restore needs afterwards (an empty GPT on a failed target,
//! the backup GPT moved to the end of a larger disk, one partition resized).
//!
//! Every function takes the device (anything with positional I/O, i.e. the
//! `std::fs::File` of an image or a block device), its size in bytes and its
//! logical sector size. Nothing read from the disk is trusted: every LBA,
//! length and count is checked against the device and against fixed bounds
//! before it is used, so garbage or a hostile table ends in an error, never a
//! panic or a large allocation. The edits validate the whole table first and
//! write nothing when they refuse.
//!
//! Callers own durability: after a write, `fsync` the file and, on a block
//! device, ask the kernel to re-read the table (BLKRRPART).

pub mod gpt;
pub mod mbr;

use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail, ensure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them: the GPT entry index + 1; MBR slots
    /// 1–4, then logical partitions 5, 6, … in the order of their chain.
    pub number: u32,
    /// Offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// A short name of the type ("EFI system", "Linux filesystem"), the type
    /// GUID when it is not a well-known one, or the MBR type byte ("0x83").
    pub type_name: String,
    /// The GPT partition name; "" on MBR.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTable {
    pub kind: TableKind,
    pub sector_size: u32,
    /// Sorted by number. An MBR extended partition is listed too (as
    /// `sfdisk -d` does); its `type_name` is 0x05, 0x0f or 0x85.
    pub partitions: Vec<Partition>,
    /// Byte ranges holding the table itself (MBR sector; GPT: protective MBR,
    /// primary header+entries, backup entries+header; MBR extended: every EBR
    /// sector) — an imager must copy these. Sorted, adjacent ranges merged.
    /// On MBR disks the gap between LBA 0 and the first partition often holds
    /// a boot loader (GRUB's core.img); that is not table metadata and is not
    /// listed here.
    pub metadata: Vec<Range<u64>>,
    /// Problems that did not stop the read: a damaged primary GPT (the backup
    /// was used), a damaged, mismatched or misplaced backup, a missing
    /// protective MBR, overlapping GPT partitions, an EBR chain cut short.
    pub warnings: Vec<String>,
}

/// Reads the table. `Ok(None)` if the disk has no partition table (blank, or
/// a filesystem written straight onto the disk). A GPT is used when LBA 0
/// holds a protective or hybrid MBR (type 0xEE, UEFI 2.10 §5.2.3), or when
/// LBA 0 holds no MBR at all but a valid GPT exists; a plain MBR wins over a
/// stale GPT, as in Linux. A protective MBR whose GPT is unusable (both
/// copies damaged) is an error, not "no table": the disk is not blank.
pub fn read(dev: &impl FileExt, size: u64, sector: u32) -> Result<Option<PartTable>> {
    let disk = Disk::new(dev, size, sector)?;
    Ok(match detect(&disk)? {
        Found::Nothing => None,
        Found::Mbr(table) => Some(table),
        Found::Gpt(gpt) => Some(gpt.table(&disk)),
    })
}

/// Writes a fresh, valid, empty GPT (protective MBR, primary header + zeroed
/// 128-entry array, backup array + header at the disk end, random disk GUID)
/// after zeroing LBA 0..34 and the last 33 sectors. Used to leave a failed
/// restore target in a "valid empty" state.
pub fn write_empty_gpt(dev: &impl FileExt, size: u64, sector: u32) -> Result<()> {
    gpt::write_empty(&Disk::new(dev, size, sector)?)
}

/// After a GPT disk image was written onto a larger disk: moves the backup
/// entries+header to the end of the disk and updates the primary header's
/// alternate LBA and last usable LBA, as `sgdisk -e` does (also rewriting a
/// damaged backup, and growing a pure protective MBR to the new size).
/// `Ok(false)` when nothing needed doing: no GPT, or the backup is intact and
/// already at the end. Errors if the GPT is invalid or its primary copy is
/// damaged.
pub fn relocate_backup_gpt(dev: &impl FileExt, size: u64, sector: u32) -> Result<bool> {
    let disk = Disk::new(dev, size, sector)?;
    match detect(&disk)? {
        Found::Gpt(gpt) => gpt.relocate_backup(&disk),
        Found::Nothing | Found::Mbr(_) => Ok(false),
    }
}

/// Sets the length of GPT partition `number` to exactly `new_len` bytes (a
/// multiple of the sector size), keeping its start, and rewrites both GPT
/// copies with correct CRCs. Refuses, writing nothing, when the partition
/// would overlap another one or run past the last usable LBA, when `number`
/// does not exist, or when the table is not a GPT.
pub fn resize_partition(
    dev: &impl FileExt,
    size: u64,
    sector: u32,
    number: u32,
    new_len: u64,
) -> Result<()> {
    let disk = Disk::new(dev, size, sector)?;
    let gpt = gpt_to_edit(&disk)?;
    let entries = gpt.plan_resize(&disk, number, new_len)?;
    gpt.write_entries(&disk, &entries)
}

/// Checks, without writing, whether [`resize_partition`] would succeed; the
/// error messages are the same. Meant for a restore's preflight.
pub fn check_resize(
    dev: &impl FileExt,
    size: u64,
    sector: u32,
    number: u32,
    new_len: u64,
) -> Result<()> {
    let disk = Disk::new(dev, size, sector)?;
    gpt_to_edit(&disk)?.plan_resize(&disk, number, new_len)?;
    Ok(())
}

fn gpt_to_edit<F: FileExt>(disk: &Disk<F>) -> Result<gpt::Gpt> {
    match detect(disk)? {
        Found::Gpt(gpt) => Ok(gpt),
        Found::Mbr(_) => bail!("cannot resize partitions of an MBR table, only of a GPT"),
        Found::Nothing => bail!("the disk has no partition table"),
    }
}

enum Found {
    Nothing,
    Mbr(PartTable),
    Gpt(gpt::Gpt),
}

/// Decides which table the disk holds; see [`read`] for the rules.
fn detect<F: FileExt>(disk: &Disk<F>) -> Result<Found> {
    if disk.lbas == 0 {
        return Ok(Found::Nothing);
    }
    let lba0 = disk.read(0, 1)?;
    match mbr::Mbr::parse(&lba0) {
        Some(m) if m.has_gpt_entry() => match gpt::Gpt::load(disk)? {
            Ok(gpt) => Ok(Found::Gpt(gpt)),
            Err(why) => bail!("LBA 0 holds a protective MBR but there is no valid GPT: {why}"),
        },
        Some(m) => Ok(m.table(disk, &lba0)?.map_or(Found::Nothing, Found::Mbr)),
        None => Ok(match gpt::Gpt::load(disk)? {
            Ok(mut gpt) => {
                gpt.warn(
                    "LBA 0 holds no protective MBR, so firmware and Linux may not see this GPT"
                        .into(),
                );
                Found::Gpt(gpt)
            }
            Err(_) => Found::Nothing,
        }),
    }
}

/// Largest single read or write this module makes, in bytes: a GPT entries
/// array (at most 1 MiB, see `gpt`) rounded up to whole sectors, or
/// the 34 zeroed sectors of `write_empty_gpt` at 4 KiB each.
const MAX_IO: u64 = 2 << 20;

/// The device as an array of logical blocks. All I/O of this module goes
/// through it, so every access is checked against the device end and
/// `MAX_IO` before a buffer is allocated.
pub(crate) struct Disk<'a, F> {
    dev: &'a F,
    /// Logical sector size in bytes.
    sector: u64,
    /// Number of whole sectors on the device; a partial last sector is not
    /// addressable.
    lbas: u64,
}

impl<'a, F: FileExt> Disk<'a, F> {
    fn new(dev: &'a F, size: u64, sector: u32) -> Result<Self> {
        // 512 and 4096 are the logical sector sizes of real disks; the sizes
        // in between (optical media, some RAID volumes) cost nothing more.
        ensure!(
            sector.is_power_of_two() && (512..=4096).contains(&sector),
            "unsupported logical sector size {sector} (expected 512, 1024, 2048 or 4096)"
        );
        let sector = u64::from(sector);
        Ok(Disk {
            dev,
            sector,
            lbas: size / sector,
        })
    }

    fn checked_len(&self, lba: u64, count: u64) -> Result<usize> {
        let end = lba.checked_add(count);
        ensure!(
            end.is_some_and(|end| end <= self.lbas),
            "sectors {lba}+{count} lie beyond the end of the disk ({} sectors)",
            self.lbas
        );
        let len = count
            .checked_mul(self.sector)
            .filter(|&len| len <= MAX_IO)
            .with_context(|| format!("refusing a {count}-sector I/O (limit {MAX_IO} bytes)"))?;
        Ok(usize::try_from(len)?)
    }

    /// Reads `count` sectors starting at `lba`.
    fn read(&self, lba: u64, count: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0; self.checked_len(lba, count)?];
        self.dev
            .read_exact_at(&mut buf, lba * self.sector)
            .with_context(|| format!("reading {count} sector(s) at LBA {lba}"))?;
        Ok(buf)
    }

    /// Writes whole sectors starting at `lba`.
    fn write(&self, lba: u64, data: &[u8]) -> Result<()> {
        let count = data.len() as u64 / self.sector;
        ensure!(
            data.len() as u64 == count * self.sector,
            "internal error: a {}-byte write is not whole sectors",
            data.len()
        );
        self.checked_len(lba, count)?;
        self.dev
            .write_all_at(data, lba * self.sector)
            .with_context(|| format!("writing {count} sector(s) at LBA {lba}"))
    }

    /// Byte range of the sectors `lbas`.
    fn bytes(&self, lbas: Range<u64>) -> Range<u64> {
        lbas.start * self.sector..lbas.end * self.sector
    }
}

/// Shared by the tests of `gpt` and `mbr`: scratch images and the real tools.
#[cfg(test)]
pub(crate) mod testutil {
    use std::fs::{File, OpenOptions};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Copies `ranges` of `src` into `dst` at the same offsets.
    pub fn copy_ranges(src: &File, dst: &File, ranges: &[std::ops::Range<u64>]) {
        use std::os::unix::fs::FileExt;
        for r in ranges {
            let mut buf = vec![0; (r.end - r.start) as usize];
            src.read_exact_at(&mut buf, r.start).unwrap();
            dst.write_all_at(&buf, r.start).unwrap();
        }
    }

    /// A sparse zero-filled image of `size` bytes in a fresh temp dir.
    pub fn image(size: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path).unwrap().set_len(size).unwrap();
        (dir, path)
    }

    pub fn open(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    /// Runs a tool and returns stdout+stderr; panics if it cannot start or
    /// fails. These tests need gdisk (sgdisk) and fdisk (fdisk, sfdisk).
    pub fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}); install it: apt-get install -y gdisk fdisk")
        });
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
        text
    }

    pub fn size_of(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    /// Deterministic pseudo-random bytes (xorshift64*), for garbage disks.
    pub fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_and_odd_inputs_do_not_panic() {
        let (_dir, path) = testutil::image(0);
        let f = testutil::open(&path);
        assert_eq!(read(&f, 0, 512).unwrap(), None);
        assert!(read(&f, 0, 1000).is_err(), "odd sector size");
        assert!(read(&f, 0, 8192).is_err(), "sector size too big");
        // A size larger than the file: the read of LBA 0 fails cleanly.
        assert!(read(&f, 1 << 20, 512).is_err());
        assert!(write_empty_gpt(&f, 0, 512).is_err());
        assert!(!relocate_backup_gpt(&f, 0, 512).unwrap());
        assert!(check_resize(&f, 0, 512, 1, 512).is_err());
        for size in [511, 512, 1024, 1536, 4096] {
            let (_d, p) = testutil::image(size);
            let f = testutil::open(&p);
            assert_eq!(read(&f, size, 512).unwrap(), None, "size {size}");
            assert!(write_empty_gpt(&f, size, 512).is_err(), "size {size}");
        }
    }
}
