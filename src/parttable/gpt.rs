//! GUID Partition Table (UEFI 2.10 §5.3): reading with CRC checks and backup
//! fallback, and the edits a restore needs (write an empty table, move the
//! backup to the end of a larger disk, resize one partition).
//!
//! Layout (§5.3.1): LBA 0 protective MBR, LBA 1 primary header, then the
//! primary partition entry array; the backup entry array and, in the last
//! LBA, the backup header mirror them at the end of the disk.

use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::{Disk, PartTable, Partition, TableKind, mbr};
use crate::ranges::normalize as merge;

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Revision 1.0, the only one defined (§5.3.2 Table 5.5).
const REVISION_1_0: u32 = 0x0001_0000;
/// Size of the defined header fields (§5.3.2 Table 5.5).
const HEADER_LEN: u32 = 92;
/// Size of the defined entry fields (§5.3.3 Table 5.6), the size every tool
/// writes.
const ENTRY_LEN: u32 = 128;
/// Largest entry size accepted. §5.3.2 allows 128 × 2ⁿ; nobody writes more
/// than 128, and an entry larger than a 4 KiB sector would be absurd.
const MAX_ENTRY_LEN: u32 = 4096;
/// Largest entry array accepted, in bytes: 64 times the usual 16 KiB (128
/// entries of 128 bytes, the minimum §5.3.2 reserves) and the bound on what a
/// hostile header can make us allocate.
const MAX_ARRAY_LEN: u64 = 1 << 20;
/// Entries in a table written by `write_empty`, as sgdisk and fdisk write.
const DEFAULT_ENTRIES: u32 = 128;
/// Sectors zeroed at the start and end of the disk by `write_empty`: the
/// footprint of a GPT with 512-byte sectors (pMBR, header, 32 sectors of
/// entries), which also covers the structures of a 4 KiB-sector GPT.
const ZERO_HEAD: u64 = 34;
const ZERO_TAIL: u64 = 33;

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// A GPT header (§5.3.2 Table 5.5), minus the signature and its own CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    revision: u32,
    header_len: u32,
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: [u8; 16],
    entries_lba: u64,
    num_entries: u32,
    entry_len: u32,
    entries_crc: u32,
}

/// CRC32 of a header's first HeaderSize bytes with the HeaderCRC32 field
/// (bytes 16..20) taken as zero (§5.3.2).
fn header_crc(bytes: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..16]);
    crc.update(&[0; 4]);
    crc.update(&bytes[20..]);
    crc.finalize()
}

impl Header {
    /// Parses and validates the header in `block` (one sector, read from
    /// `lba` of a disk of `lbas` sectors). Err says why it is unusable.
    fn parse(block: &[u8], lba: u64, lbas: u64) -> Result<Header, String> {
        let sector = block.len() as u64;
        if &block[..8] != SIGNATURE {
            return Err("no \"EFI PART\" signature".into());
        }
        let header_len = u32_at(block, 12);
        if !(u64::from(HEADER_LEN)..=sector).contains(&u64::from(header_len)) {
            return Err(format!(
                "header size {header_len} is outside {HEADER_LEN}..={sector}"
            ));
        }
        let (stored, computed) = (u32_at(block, 16), header_crc(&block[..header_len as usize]));
        if stored != computed {
            return Err(format!(
                "header CRC32 is {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let mut header = Header {
            revision: u32_at(block, 8),
            header_len,
            my_lba: u64_at(block, 24),
            alternate_lba: u64_at(block, 32),
            first_usable: u64_at(block, 40),
            last_usable: u64_at(block, 48),
            disk_guid: [0; 16],
            entries_lba: u64_at(block, 72),
            num_entries: u32_at(block, 80),
            entry_len: u32_at(block, 84),
            entries_crc: u32_at(block, 88),
        };
        header.disk_guid.copy_from_slice(&block[56..72]);
        header.validate(lba, lbas, sector)?;
        Ok(header)
    }

    /// The checks of §5.3.2 beyond the CRC, plus everything this module
    /// relies on: sizes within bounds, every LBA on the disk, and the
    /// headers and entry array outside the usable area.
    fn validate(&self, lba: u64, lbas: u64, sector: u64) -> Result<(), String> {
        if self.my_lba != lba {
            return Err(format!(
                "MyLBA is {}, but the header was read from LBA {lba}",
                self.my_lba
            ));
        }
        if !(ENTRY_LEN..=MAX_ENTRY_LEN).contains(&self.entry_len)
            || !self.entry_len.is_multiple_of(8)
        {
            return Err(format!(
                "partition entry size {} is not a multiple of 8 in {ENTRY_LEN}..={MAX_ENTRY_LEN}",
                self.entry_len
            ));
        }
        if self.array_len() > MAX_ARRAY_LEN {
            return Err(format!(
                "{} partition entries of {} bytes exceed the {MAX_ARRAY_LEN}-byte limit",
                self.num_entries, self.entry_len
            ));
        }
        for (field, value) in [
            ("AlternateLBA", self.alternate_lba),
            ("FirstUsableLBA", self.first_usable),
            ("LastUsableLBA", self.last_usable),
        ] {
            if value >= lbas {
                return Err(format!(
                    "{field} {value} lies beyond the end of the disk (last LBA {}); \
                     was a larger disk's image written here?",
                    lbas.saturating_sub(1)
                ));
            }
        }
        let array = self.array_range(sector);
        if array.end > lbas {
            return Err(format!(
                "the partition entry array (LBA {}..{}) runs past the end of the disk",
                array.start, array.end
            ));
        }
        if self.first_usable > self.last_usable {
            return Err(format!(
                "FirstUsableLBA {} is after LastUsableLBA {}",
                self.first_usable, self.last_usable
            ));
        }
        if self.alternate_lba == 0 || self.alternate_lba == self.my_lba {
            return Err(format!(
                "AlternateLBA {} is the protective MBR or the header itself",
                self.alternate_lba
            ));
        }
        // LBA 0 holds the protective MBR (§5.3.1); headers and entry arrays
        // live outside the usable area, and the array overlaps no header.
        let usable = self.first_usable..self.last_usable + 1;
        let reserved = [0, self.my_lba, self.alternate_lba];
        if reserved.iter().any(|lba| usable.contains(lba)) {
            return Err(format!(
                "the usable area (LBA {}..={}) covers LBA 0 or a GPT header",
                self.first_usable, self.last_usable
            ));
        }
        if overlaps(&array, &usable) || reserved.iter().any(|lba| array.contains(lba)) {
            return Err(format!(
                "the partition entry array (LBA {}..{}) overlaps the usable area or a header",
                array.start, array.end
            ));
        }
        Ok(())
    }

    fn array_len(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_len)
    }

    fn array_lbas(&self, sector: u64) -> u64 {
        self.array_len().div_ceil(sector)
    }

    /// The sectors of the entry array; saturates instead of overflowing, so
    /// a hostile EntriesLBA just lands past the disk end.
    fn array_range(&self, sector: u64) -> Range<u64> {
        self.entries_lba..self.entries_lba.saturating_add(self.array_lbas(sector))
    }

    /// The other copy's header: the same table seen from the other end.
    fn mirrored(&self, entries_lba: u64) -> Header {
        Header {
            my_lba: self.alternate_lba,
            alternate_lba: self.my_lba,
            entries_lba,
            ..self.clone()
        }
    }

    /// One sector holding the header, with its CRC; the reserved rest of
    /// the sector is zero (§5.3.2).
    fn encode(&self, sector: u64) -> Vec<u8> {
        let mut b = vec![0; sector as usize];
        b[..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&self.revision.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid);
        b[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
        b[84..88].copy_from_slice(&self.entry_len.to_le_bytes());
        b[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = header_crc(&b[..self.header_len as usize]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// Fields of one partition entry (§5.3.3 Table 5.6).
fn entry_first(e: &[u8]) -> u64 {
    u64_at(e, 32)
}

fn entry_last(e: &[u8]) -> u64 {
    u64_at(e, 40)
}

/// The UTF-16LE name, up to its first NUL; unpaired surrogates become U+FFFD.
fn entry_name(e: &[u8]) -> String {
    let units = e[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// A GUID in its usual text form: the first three fields are stored
/// little-endian, the last two as plain bytes (UEFI 2.10 Appendix A).
fn guid_text(g: &[u8]) -> String {
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut s = String::with_capacity(36);
    for (i, &at) in order.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{:02X}", g[at]));
    }
    s
}

/// Well-known partition type GUIDs (UEFI 2.10 §5.3.3 Table 5.7, the Discoverable
/// Partitions Specification, Microsoft's and Apple's documentation).
const TYPE_NAMES: &[(&str, &str)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI system"),
    (
        "024DEE41-33E7-11D3-9D69-0008C781F39F",
        "MBR partition scheme",
    ),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux x86-64 root"),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux ARM64 root"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux x86 root"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    (
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        "Linux extended boot",
    ),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    (
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "Microsoft basic data",
    ),
    ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery"),
    ("48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS+"),
    ("7C3457EF-0000-11AA-AA11-00306543ECAC", "Apple APFS"),
    ("6A898CC3-1DD2-11B2-99A6-080020736631", "ZFS"),
];

fn type_name(guid: &[u8]) -> String {
    let text = guid_text(guid);
    TYPE_NAMES
        .iter()
        .find(|(g, _)| *g == text)
        .map_or(text, |(_, name)| (*name).to_string())
}

/// One valid copy of the table: a header and its entry array.
struct GptCopy {
    header: Header,
    /// Whole sectors; the CRC covers the first `header.array_len()` bytes.
    entries: Vec<u8>,
}

impl GptCopy {
    /// The copy whose header is at `lba`: the outer Err is an I/O error, the
    /// inner one says why the copy is unusable.
    fn load<F: FileExt>(disk: &Disk<F>, lba: u64) -> Result<Result<GptCopy, String>> {
        let header = match Header::parse(&disk.read(lba, 1)?, lba, disk.lbas) {
            Ok(header) => header,
            Err(why) => return Ok(Err(why)),
        };
        let entries = disk.read(header.entries_lba, header.array_lbas(disk.sector))?;
        let copy = GptCopy { header, entries };
        Ok(copy.check_entries().map(|()| copy))
    }

    fn array(&self) -> &[u8] {
        &self.entries[..self.header.array_len() as usize]
    }

    /// The used entries (type GUID not zero, §5.3.3) with their numbers.
    fn used(&self) -> impl Iterator<Item = (u32, &[u8])> {
        (1..)
            .zip(self.array().chunks_exact(self.header.entry_len as usize))
            .filter(|(_, e)| e[..16] != [0; 16])
    }

    /// The array CRC (§5.3.2), and each used entry inside the usable area.
    fn check_entries(&self) -> Result<(), String> {
        let (stored, computed) = (self.header.entries_crc, crc32fast::hash(self.array()));
        if stored != computed {
            return Err(format!(
                "partition entry array CRC32 is {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let h = &self.header;
        for (number, e) in self.used() {
            let (first, last) = (entry_first(e), entry_last(e));
            if first > last || first < h.first_usable || last > h.last_usable {
                return Err(format!(
                    "partition {number} (LBA {first}..={last}) is not inside the usable area \
                     (LBA {}..={})",
                    h.first_usable, h.last_usable
                ));
            }
        }
        Ok(())
    }

    /// Overlapping partitions break no CRC and Linux accepts them, but they
    /// are a corrupt table to sgdisk and to anyone copying partitions.
    fn overlap_warning(&self) -> Option<String> {
        let mut spans: Vec<(u64, u64, u32)> = self
            .used()
            .map(|(n, e)| (entry_first(e), entry_last(e), n))
            .collect();
        spans.sort_unstable();
        spans
            .windows(2)
            .find(|w| w[1].0 <= w[0].1)
            .map(|w| format!("partitions {} and {} overlap", w[0].2, w[1].2))
    }
}

/// A GPT found on a disk.
pub(crate) struct Gpt {
    /// The primary copy, or the backup when the primary is damaged.
    copy: GptCopy,
    from_backup: bool,
    /// When the primary is in use: where the backup's entry array belongs.
    /// The backup header's own field when that copy is intact, else the
    /// usual place right before the backup header; None when that place
    /// collides with the usable area or the primary array.
    backup_entries_lba: Option<u64>,
    /// The backup at the primary's AlternateLBA is valid and matches it.
    backup_intact: bool,
    warnings: Vec<String>,
}

impl Gpt {
    /// Finds the GPT: the outer Err is an I/O error, the inner one says why
    /// neither copy is usable.
    pub(crate) fn load<F: FileExt>(disk: &Disk<F>) -> Result<Result<Gpt, String>> {
        if disk.lbas < 3 {
            return Ok(Err(format!(
                "a disk of {} sectors cannot hold a GPT",
                disk.lbas
            )));
        }
        let primary = match GptCopy::load(disk, 1)? {
            Ok(copy) => copy,
            Err(primary_why) => {
                // §5.3.2: with the primary invalid, the backup is looked for
                // in the last LBA of the disk.
                let last = disk.lbas - 1;
                return Ok(match GptCopy::load(disk, last)? {
                    Ok(copy) => Ok(Gpt {
                        warnings: std::iter::once(format!(
                            "the primary GPT is damaged ({primary_why}); using the backup at LBA {last}"
                        ))
                        .chain(copy.overlap_warning())
                        .collect(),
                        copy,
                        from_backup: true,
                        backup_entries_lba: None,
                        backup_intact: false,
                    }),
                    Err(backup_why) => Err(format!(
                        "primary GPT at LBA 1: {primary_why}; backup GPT at LBA {last}: {backup_why}"
                    )),
                });
            }
        };
        let h = &primary.header;
        let mut warnings: Vec<String> = primary.overlap_warning().into_iter().collect();
        let (backup_entries_lba, backup_intact) = match GptCopy::load(disk, h.alternate_lba)? {
            Ok(backup)
                if backup.header == h.mirrored(backup.header.entries_lba)
                    && backup.array() == primary.array() =>
            {
                (Some(backup.header.entries_lba), true)
            }
            other => {
                warnings.push(match other {
                    Ok(_) => format!(
                        "the backup GPT at LBA {} does not match the primary",
                        h.alternate_lba
                    ),
                    Err(why) => format!(
                        "the backup GPT at LBA {} is damaged ({why})",
                        h.alternate_lba
                    ),
                });
                let lbas = h.array_lbas(disk.sector);
                let usual = h.alternate_lba.checked_sub(lbas).filter(|&lba| {
                    lba > h.last_usable
                        && !overlaps(&(lba..lba + lbas), &h.array_range(disk.sector))
                });
                (usual, false)
            }
        };
        if h.alternate_lba != disk.lbas - 1 {
            warnings.push(format!(
                "the backup GPT is at LBA {}, not at the end of the disk (LBA {}): \
                 the disk is larger than the one the table was made for",
                h.alternate_lba,
                disk.lbas - 1
            ));
        }
        Ok(Ok(Gpt {
            copy: primary,
            from_backup: false,
            backup_entries_lba,
            backup_intact,
            warnings,
        }))
    }

    pub(crate) fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    pub(crate) fn table<F: FileExt>(self, disk: &Disk<F>) -> PartTable {
        let h = &self.copy.header;
        let s = disk.sector;
        let array_lbas = h.array_lbas(s);
        // LBA 0 (protective MBR) and LBA 1 (primary header) in any case.
        let mut lbas = Vec::with_capacity(4);
        lbas.push(0..2);
        if self.from_backup {
            // The damaged primary header can't say where its array was;
            // every tool puts it right after the header (§5.3.1).
            lbas.push(2..(2 + array_lbas).min(disk.lbas));
            lbas.push(h.array_range(s));
            lbas.push(h.my_lba..h.my_lba + 1);
        } else {
            lbas.push(h.array_range(s));
            if let Some(lba) = self.backup_entries_lba {
                lbas.push(lba..lba + array_lbas);
            }
            lbas.push(h.alternate_lba..h.alternate_lba + 1);
        }
        let partitions = self
            .copy
            .used()
            .map(|(number, e)| Partition {
                number,
                start: entry_first(e) * s,
                len: (entry_last(e) - entry_first(e) + 1) * s,
                type_name: type_name(&e[..16]),
                name: entry_name(e),
            })
            .collect();
        PartTable {
            kind: TableKind::Gpt,
            sector_size: s as u32,
            partitions,
            metadata: merge(lbas.into_iter().map(|r| disk.bytes(r)).collect()),
            warnings: self.warnings,
        }
    }

    fn ensure_primary(&self, what: &str) -> Result<()> {
        ensure!(
            !self.from_backup,
            "the primary GPT is damaged; repair the table (e.g. with gdisk's recovery menu) before {what}"
        );
        Ok(())
    }

    /// Moves the backup to the end of the disk (or rewrites a damaged one in
    /// place), as `sgdisk -e` does; see `relocate_backup_gpt`.
    pub(crate) fn relocate_backup<F: FileExt>(&self, disk: &Disk<F>) -> Result<bool> {
        self.ensure_primary("moving its backup")?;
        let h = &self.copy.header;
        let s = disk.sector;
        let end = disk.lbas - 1;
        let mut lba0 = disk.read(0, 1)?;
        let pmbr_changed = mbr::fit_protective(&mut lba0, disk.lbas);
        if h.alternate_lba == end && self.backup_intact {
            if pmbr_changed {
                disk.write(0, &lba0)?;
            }
            return Ok(pmbr_changed);
        }
        let entries_lba = end
            .checked_sub(h.array_lbas(s))
            .context("no room for the backup GPT")?;
        let mut primary = h.clone();
        primary.alternate_lba = end;
        if h.alternate_lba != end {
            // sgdisk mirrors FirstUsableLBA at the end (LastUsableLBA =
            // disk size - FirstUsableLBA); never shrink the usable area and
            // never reach into the backup array.
            primary.last_usable = (disk.lbas - h.first_usable)
                .max(h.last_usable)
                .min(entries_lba.saturating_sub(1));
        }
        let highest = self.copy.used().map(|(_, e)| entry_last(e)).max();
        ensure!(
            entries_lba > primary.last_usable
                && highest.is_none_or(|last| last <= primary.last_usable)
                && !overlaps(&(entries_lba..end), &h.array_range(s)),
            "no room for the backup GPT at the end of the disk (LBA {entries_lba}..={end})"
        );
        primary
            .validate(1, disk.lbas, s)
            .map_err(|why| anyhow!("internal error: relocated GPT header is invalid: {why}"))?;
        let backup = primary.mirrored(entries_lba);
        // The new backup first: until the primary points at it, readers
        // still find the old, consistent pair.
        disk.write(entries_lba, &self.copy.entries)?;
        disk.write(end, &backup.encode(s))?;
        disk.write(1, &primary.encode(s))?;
        if pmbr_changed {
            disk.write(0, &lba0)?;
        }
        Ok(true)
    }

    /// The entry array with partition `number` resized to `new_len` bytes,
    /// or the reason that can't be done; writes nothing.
    pub(crate) fn plan_resize<F: FileExt>(
        &self,
        disk: &Disk<F>,
        number: u32,
        new_len: u64,
    ) -> Result<Vec<u8>> {
        self.ensure_primary("resizing partitions")?;
        let s = disk.sector;
        let h = &self.copy.header;
        ensure!(
            new_len > 0 && new_len.is_multiple_of(s),
            "cannot resize partition {number} to {new_len} bytes: not a positive multiple of the \
             {s}-byte sector size"
        );
        let (_, entry) = self
            .copy
            .used()
            .find(|&(n, _)| n == number)
            .with_context(|| format!("partition {number} does not exist"))?;
        let first = entry_first(entry);
        let last = first + new_len / s - 1;
        if last > h.last_usable {
            let hint = if h.alternate_lba != disk.lbas - 1 {
                "; move the backup GPT to the end of the disk first"
            } else {
                ""
            };
            bail!(
                "cannot resize partition {number} to {new_len} bytes: it would end at byte {}, \
                 past the last usable byte {} of the disk{hint}",
                (first * s).saturating_add(new_len),
                (h.last_usable + 1) * s
            );
        }
        if let Some((other, e)) = self
            .copy
            .used()
            .find(|&(n, e)| n != number && entry_first(e) <= last && entry_last(e) >= first)
        {
            bail!(
                "cannot resize partition {number} to {new_len} bytes: it would overlap \
                 partition {other} (bytes {}..{})",
                entry_first(e) * s,
                (entry_last(e) + 1) * s
            );
        }
        ensure!(
            self.backup_entries_lba.is_some(),
            "cannot rewrite the backup GPT: its entry array has no room before its header at LBA {}",
            h.alternate_lba
        );
        let mut entries = self.copy.entries.clone();
        let at = (number as usize - 1) * h.entry_len as usize + 40;
        entries[at..at + 8].copy_from_slice(&last.to_le_bytes());
        Ok(entries)
    }

    /// Writes both copies of the table with `entries` as the entry array.
    pub(crate) fn write_entries<F: FileExt>(&self, disk: &Disk<F>, entries: &[u8]) -> Result<()> {
        let s = disk.sector;
        let mut primary = self.copy.header.clone();
        primary.entries_crc = crc32fast::hash(&entries[..primary.array_len() as usize]);
        let backup_lba = self
            .backup_entries_lba
            .context("no room for the backup GPT entry array")?;
        let backup = primary.mirrored(backup_lba);
        // Backup first, as in `relocate_backup`.
        disk.write(backup_lba, entries)?;
        disk.write(backup.my_lba, &backup.encode(s))?;
        disk.write(primary.entries_lba, entries)?;
        disk.write(primary.my_lba, &primary.encode(s))
    }
}

/// A random (version 4, RFC 9562) GUID in GPT byte order: the version is the
/// high nibble of the little-endian third field, i.e. of byte 7.
fn random_guid() -> Result<[u8; 16]> {
    let mut g = [0; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut g))
        .context("reading /dev/urandom for a disk GUID")?;
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    Ok(g)
}

/// See `write_empty_gpt`.
pub(crate) fn write_empty<F: FileExt>(disk: &Disk<F>) -> Result<()> {
    let (n, s) = (disk.lbas, disk.sector);
    ensure!(
        n > ZERO_HEAD + ZERO_TAIL,
        "a disk of {n} sectors is too small for a GPT (it needs more than {})",
        ZERO_HEAD + ZERO_TAIL
    );
    let array = vec![0; (DEFAULT_ENTRIES * ENTRY_LEN) as usize];
    let mut primary = Header {
        revision: REVISION_1_0,
        header_len: HEADER_LEN,
        my_lba: 1,
        alternate_lba: n - 1,
        first_usable: 0,
        last_usable: 0,
        disk_guid: random_guid()?,
        entries_lba: 2,
        num_entries: DEFAULT_ENTRIES,
        entry_len: ENTRY_LEN,
        entries_crc: crc32fast::hash(&array),
    };
    let array_lbas = primary.array_lbas(s);
    // The usual layout (§5.3.1), as sgdisk and fdisk write it: the arrays
    // right after the primary header and right before the backup header,
    // the usable area everything between.
    primary.first_usable = 2 + array_lbas;
    primary.last_usable = n - 2 - array_lbas;
    primary
        .validate(1, n, s)
        .map_err(|why| anyhow!("internal error: new GPT header is invalid: {why}"))?;
    let backup = primary.mirrored(n - 1 - array_lbas);
    // The zeroed ranges contain both entry arrays (at most 32 sectors each).
    disk.write(0, &vec![0; (ZERO_HEAD * s) as usize])?;
    disk.write(n - ZERO_TAIL, &vec![0; (ZERO_TAIL * s) as usize])?;
    disk.write(n - 1, &backup.encode(s))?;
    disk.write(1, &primary.encode(s))?;
    disk.write(0, &mbr::protective(n, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parttable::testutil::{copy_ranges, image, noise, open, run, size_of};
    use crate::parttable::{
        check_resize, read, relocate_backup_gpt, resize_partition, write_empty_gpt,
    };
    use std::fs::File;
    use std::path::Path;

    const MIB: u64 = 1 << 20;

    fn sgdisk(args: &[&str], path: &Path) -> String {
        let mut all = args.to_vec();
        all.push(path.to_str().unwrap());
        run("sgdisk", &all, None)
    }

    fn assert_sgdisk_clean(path: &Path) {
        let text = sgdisk(&["-v"], path);
        assert!(text.contains("No problems found"), "{text}");
    }

    /// `sgdisk -i N`: (first sector, last sector, name, type GUID).
    fn sgdisk_info(path: &Path, n: u32) -> (u64, u64, String, String) {
        let text = sgdisk(&[&format!("-i{n}")], path);
        let field = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .trim()
                .to_string()
        };
        let number = |prefix: &str| field(prefix).split(' ').next().unwrap().parse().unwrap();
        let name = field("Partition name:");
        (
            number("First sector:"),
            number("Last sector:"),
            name.trim_matches('\'').to_string(),
            field("Partition GUID code:")
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        )
    }

    /// 64 MiB: EFI system 1 (10 MiB), root 2 (20 MiB), data 3 (10 MiB), free
    /// space after it.
    fn sgdisk_image() -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, path) = image(64 * MIB);
        sgdisk(
            &[
                "-n1:0:+10M",
                "-t1:ef00",
                "-c1:EFI",
                "-n2:0:+20M",
                "-c2:root",
                "-n3:0:+10M",
                "-c3:data ü",
            ],
            &path,
        );
        (dir, path)
    }

    fn contents(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    fn gpt_of(f: &File, size: u64, sector: u32) -> PartTable {
        let t = read(f, size, sector).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        t
    }

    #[test]
    fn reads_what_sgdisk_wrote() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let t = gpt_of(&open(&path), size, 512);
        assert_eq!(t.sector_size, 512);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(
            t.partitions.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for p in &t.partitions {
            let (first, last, name, guid) = sgdisk_info(&path, p.number);
            assert_eq!(p.start, first * 512);
            assert_eq!(p.len, (last - first + 1) * 512);
            assert_eq!(p.name, name);
            assert_eq!(p.type_name, type_name(&guid_bytes(&guid)));
        }
        assert_eq!(t.partitions[0].type_name, "EFI system");
        assert_eq!(t.partitions[1].type_name, "Linux filesystem");
        assert_eq!(t.partitions[2].name, "data ü");
        assert_eq!(t.metadata, [0..34 * 512, size - 33 * 512..size]);
    }

    /// The inverse of `guid_text`, for comparing with sgdisk's output.
    fn guid_bytes(text: &str) -> Vec<u8> {
        let hex: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&text.replace('-', "")[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15]
            .iter()
            .map(|&i| hex[i])
            .collect()
    }

    #[test]
    fn metadata_ranges_carry_the_whole_table() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let t = gpt_of(&open(&path), size, 512);
        let (_dir2, copy) = image(size);
        let (src, dst) = (open(&path), open(&copy));
        copy_ranges(&src, &dst, &t.metadata);
        let strip = |text: String| text.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(sgdisk(&["-p"], &copy)), strip(sgdisk(&["-p"], &path)));
        assert_sgdisk_clean(&copy);
        assert_eq!(gpt_of(&dst, size, 512), t);
    }

    #[test]
    fn write_empty_gpt_satisfies_sgdisk() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        write_empty_gpt(&f, size, 512).unwrap();
        assert_sgdisk_clean(&path);
        let text = sgdisk(&["-p"], &path);
        assert!(text.contains("Total free space is"), "{text}");
        let rows = text.lines().skip_while(|l| !l.starts_with("Number"));
        assert_eq!(
            rows.skip(1).filter(|l| !l.trim().is_empty()).count(),
            0,
            "{text}"
        );
        let t = gpt_of(&f, size, 512);
        assert!(t.partitions.is_empty() && t.warnings.is_empty(), "{t:?}");
        // LBA 0..34 and the last 33 sectors hold nothing but the new table.
        let bytes = contents(&path);
        let (first, last) = (2 * 512, size as usize - 33 * 512);
        assert!(bytes[first..34 * 512].iter().all(|&b| b == 0));
        assert!(bytes[last..size as usize - 512].iter().all(|&b| b == 0));
        // The disk GUID is fresh each time.
        write_empty_gpt(&f, size, 512).unwrap();
        assert_ne!(contents(&path)[512..1024], bytes[512..1024]);
    }

    #[test]
    fn relocate_backup_does_what_sgdisk_e_does() {
        let (_dir, path) = sgdisk_image();
        let before = gpt_of(&open(&path), 64 * MIB, 512);
        let size = 128 * MIB;
        open(&path).set_len(size).unwrap();
        let ours = open(&path);
        let moved = gpt_of(&ours, size, 512);
        assert_eq!(moved.partitions, before.partitions);
        assert!(
            moved.warnings.iter().any(|w| w.contains("not at the end")),
            "{:?}",
            moved.warnings
        );
        let (_dir2, theirs) = image(0);
        std::fs::copy(&path, &theirs).unwrap();
        sgdisk(&["-e"], &theirs);

        assert!(relocate_backup_gpt(&ours, size, 512).unwrap());
        assert!(
            contents(&path) == contents(&theirs),
            "differs from sgdisk -e"
        );
        assert_sgdisk_clean(&path);
        let after = gpt_of(&ours, size, 512);
        assert_eq!(after.partitions, before.partitions);
        assert!(after.warnings.is_empty(), "{:?}", after.warnings);
        assert!(!relocate_backup_gpt(&ours, size, 512).unwrap());
    }

    #[test]
    fn relocate_rewrites_a_damaged_backup_and_ignores_mbr() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        f.write_all_at(b"junk", size - 512 + 40).unwrap();
        let t = gpt_of(&f, size, 512);
        assert!(
            t.warnings.iter().any(|w| w.contains("backup GPT at LBA")),
            "{:?}",
            t.warnings
        );
        assert!(relocate_backup_gpt(&f, size, 512).unwrap());
        assert_sgdisk_clean(&path);
        assert!(gpt_of(&f, size, 512).warnings.is_empty());

        let (_dir, path) = image(64 * MIB);
        run(
            "sfdisk",
            &[path.to_str().unwrap()],
            Some("label: dos\n,10M,83\n"),
        );
        let bytes = contents(&path);
        assert!(!relocate_backup_gpt(&open(&path), 64 * MIB, 512).unwrap());
        assert!(contents(&path) == bytes);
    }

    #[test]
    fn resize_grows_and_shrinks() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        let t = gpt_of(&f, size, 512);
        let p3 = &t.partitions[2];
        // Grow 3 to the last usable sector (size - 34 sectors).
        let grown = size - 33 * 512 - p3.start;
        check_resize(&f, size, 512, 3, grown).unwrap();
        resize_partition(&f, size, 512, 3, grown).unwrap();
        assert_sgdisk_clean(&path);
        let (first, last, ..) = sgdisk_info(&path, 3);
        assert_eq!((first * 512, (last - first + 1) * 512), (p3.start, grown));
        // Shrink 1 to 4 MiB.
        resize_partition(&f, size, 512, 1, 4 * MIB).unwrap();
        assert_sgdisk_clean(&path);
        let (first, last, name, _) = sgdisk_info(&path, 1);
        assert_eq!(((last - first + 1) * 512, name.as_str()), (4 * MIB, "EFI"));
        let after = gpt_of(&f, size, 512);
        assert!(after.warnings.is_empty(), "{:?}", after.warnings);
        assert_eq!(after.partitions[1], t.partitions[1]);
    }

    #[test]
    fn resize_refusals_write_nothing() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        let t = gpt_of(&f, size, 512);
        let bytes = contents(&path);
        let cases = [
            (1, 11 * MIB, "overlap partition 2"),
            (3, 40 * MIB, "past the last usable byte"),
            (4, MIB, "partition 4 does not exist"),
            (0, MIB, "partition 0 does not exist"),
            (200, MIB, "partition 200 does not exist"),
            (1, MIB + 100, "not a positive multiple"),
            (1, 0, "not a positive multiple"),
            (3, u64::MAX - 511, "past the last usable byte"),
        ];
        for (number, len, message) in cases {
            let checked = check_resize(&f, size, 512, number, len).unwrap_err();
            let resized = resize_partition(&f, size, 512, number, len).unwrap_err();
            assert_eq!(format!("{checked:#}"), format!("{resized:#}"));
            assert!(format!("{checked:#}").contains(message), "{checked:#}");
            assert!(!format!("{checked:#}").contains('\n'));
            assert!(contents(&path) == bytes, "case {number} {len} wrote");
        }
        assert_eq!(gpt_of(&f, size, 512), t);
        // Past the end of a grown disk whose backup has not been moved: the
        // message says what to do.
        open(&path).set_len(2 * size).unwrap();
        let err = check_resize(&f, 2 * size, 512, 3, 40 * MIB).unwrap_err();
        assert!(format!("{err}").contains("move the backup GPT"), "{err}");
        // MBR disks are refused.
        let (_dir, mbr) = image(64 * MIB);
        run(
            "sfdisk",
            &[mbr.to_str().unwrap()],
            Some("label: dos\n,10M,83\n"),
        );
        let err = check_resize(&open(&mbr), 64 * MIB, 512, 1, 20 * MIB).unwrap_err();
        assert!(format!("{err}").contains("MBR"), "{err}");
    }

    #[test]
    fn damaged_primary_falls_back_to_backup() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        let good = gpt_of(&f, size, 512);
        // A flipped byte in the primary header, then in the primary array.
        for offset in [512 + 40, 2 * 512 + 56] {
            let flip = || {
                let mut byte = [0];
                f.read_exact_at(&mut byte, offset).unwrap();
                f.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
            };
            flip();
            let t = gpt_of(&f, size, 512);
            assert_eq!(t.partitions, good.partitions);
            assert_eq!(t.metadata, good.metadata);
            assert!(
                t.warnings.len() == 1 && t.warnings[0].contains("primary GPT is damaged"),
                "{:?}",
                t.warnings
            );
            let bytes = contents(&path);
            for err in [
                relocate_backup_gpt(&f, size, 512).unwrap_err(),
                resize_partition(&f, size, 512, 3, MIB).unwrap_err(),
            ] {
                assert!(format!("{err}").contains("primary GPT is damaged"), "{err}");
            }
            assert!(contents(&path) == bytes);
            flip();
            assert_eq!(gpt_of(&f, size, 512), good);
        }
        // Both copies damaged: the protective MBR says GPT, so it's an error.
        f.write_all_at(b"junk", 512 + 40).unwrap();
        f.write_all_at(b"junk", size - 512 + 40).unwrap();
        let err = read(&f, size, 512).unwrap_err();
        assert!(format!("{err}").contains("no valid GPT"), "{err}");
    }

    #[test]
    fn gpt_without_protective_mbr_is_found_with_a_warning() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        f.write_all_at(&[0; 512], 0).unwrap();
        let t = gpt_of(&f, size, 512);
        assert_eq!(t.partitions.len(), 3);
        assert!(
            t.warnings[0].contains("no protective MBR"),
            "{:?}",
            t.warnings
        );
    }

    /// A loop device over an image file, detached on drop (also when a
    /// test panics).
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// sgdisk only sees 4 KiB sectors on a block device, so this test needs a
    /// loop device (root); where there is none it says so and passes.
    #[test]
    fn four_k_sectors_with_sgdisk_on_a_loop_device() {
        let (_dir, path) = image(64 * MIB);
        let attach = std::process::Command::new("losetup")
            .args(["-b", "4096", "-f", "--show", path.to_str().unwrap()])
            .output();
        let dev = match attach {
            Ok(out) if out.status.success() => {
                Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
            }
            _ => {
                eprintln!("skipped: no loop device with 4 KiB sectors could be attached");
                return;
            }
        };
        let node = Path::new(&dev.0);
        sgdisk(&["-n1:0:+8M", "-c1:one", "-n2:0:+16M"], node);
        let f = open(node);
        let t = gpt_of(&f, 64 * MIB, 4096);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        for p in &t.partitions {
            let (first, last, name, _) = sgdisk_info(node, p.number);
            assert_eq!((p.start, p.len), (first * 4096, (last - first + 1) * 4096));
            assert_eq!(p.name, name);
        }
        // Grow the device, then move the backup and grow partition 2.
        let size = 128 * MIB;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(size)
            .unwrap();
        run("losetup", &["-c", &dev.0], None);
        assert!(relocate_backup_gpt(&f, size, 4096).unwrap());
        assert_sgdisk_clean(node);
        resize_partition(&f, size, 4096, 2, 100 * MIB).unwrap();
        assert_sgdisk_clean(node);
        let (first, last, ..) = sgdisk_info(node, 2);
        assert_eq!((last - first + 1) * 4096, 100 * MIB);
        write_empty_gpt(&f, size, 4096).unwrap();
        assert_sgdisk_clean(node);
        assert!(gpt_of(&f, size, 4096).partitions.is_empty());
    }

    #[test]
    fn four_k_sectors_with_fdisk() {
        let (_dir, path) = image(64 * MIB);
        let p = path.to_str().unwrap();
        run(
            "fdisk",
            &["-b", "4096", p],
            Some("g\nn\n1\n\n+8M\nn\n2\n\n+16M\nx\nn\n2\nsecond\nr\nw\n"),
        );
        let f = open(&path);
        let t = gpt_of(&f, 64 * MIB, 4096);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        // fdisk aligns to 1 MiB: 256 sectors of 4 KiB.
        let listing = run(
            "fdisk",
            &["-b", "4096", "-l", "-o", "Device,Start,End", p],
            None,
        );
        let rows: Vec<(u64, u64)> = listing
            .lines()
            .filter(|l| l.starts_with(p))
            .map(|l| {
                let v: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap())
                    .collect();
                (v[0], v[1])
            })
            .collect();
        let ours: Vec<(u64, u64)> = t
            .partitions
            .iter()
            .map(|p| (p.start / 4096, (p.start + p.len) / 4096 - 1))
            .collect();
        assert_eq!(ours, rows);
        assert_eq!(t.partitions[1].name, "second");
        assert_eq!(t.partitions[0].start, MIB);
        let fdisk_verify = |p: &str| run("fdisk", &["-b", "4096", p], Some("v\nq\n"));

        // Grown disk: relocate, then fdisk is content and the last partition
        // can grow into the new space.
        let size = 128 * MIB;
        f.set_len(size).unwrap();
        let listing = run("fdisk", &["-b", "4096", "-l", p], None);
        assert!(
            listing.contains("not on the end of the device"),
            "{listing}"
        );
        assert!(relocate_backup_gpt(&f, size, 4096).unwrap());
        let listing = run("fdisk", &["-b", "4096", "-l", p], None);
        assert!(
            !listing.contains("mismatch") && !listing.contains("not on the end"),
            "{listing}"
        );
        assert!(fdisk_verify(p).contains("No errors detected"));
        resize_partition(&f, size, 4096, 2, 100 * MIB).unwrap();
        assert!(fdisk_verify(p).contains("No errors detected"));
        assert_eq!(gpt_of(&f, size, 4096).partitions[1].len, 100 * MIB);

        write_empty_gpt(&f, size, 4096).unwrap();
        let t = gpt_of(&f, size, 4096);
        assert!(t.partitions.is_empty() && t.warnings.is_empty(), "{t:?}");
        // 4 sectors of entries at each end.
        assert_eq!(t.metadata, [0..6 * 4096, size - 5 * 4096..size]);
        let verify = fdisk_verify(p);
        assert!(verify.contains("No errors detected"), "{verify}");
        assert!(verify.contains("Using 0 out of 128 partitions"), "{verify}");
    }

    /// A disk with an empty GPT whose primary header (and, if `both`, the
    /// backup header) went through `edit`, CRCs fixed up afterwards.
    fn hostile(edit: impl Fn(&mut [u8]), both: bool) -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, path) = image(MIB);
        let f = open(&path);
        write_empty_gpt(&f, MIB, 512).unwrap();
        let headers: &[u64] = if both { &[1, 2047] } else { &[1] };
        for &lba in headers {
            let mut block = vec![0; 512];
            f.read_exact_at(&mut block, lba * 512).unwrap();
            edit(&mut block);
            let len = (u32_at(&block, 12) as usize).clamp(92, 512);
            let crc = header_crc(&block[..len]);
            block[16..20].copy_from_slice(&crc.to_le_bytes());
            f.write_all_at(&block, lba * 512).unwrap();
        }
        (dir, path)
    }

    /// Sets a header field at byte `at`: 4 bytes wide at 8..24 and 80..92,
    /// 8 bytes elsewhere (§5.3.2 Table 5.5).
    fn set_field(block: &mut [u8], at: usize, value: u64) {
        if (8..24).contains(&at) || (80..92).contains(&at) {
            let value = u32::try_from(value).unwrap();
            block[at..at + 4].copy_from_slice(&value.to_le_bytes());
        } else {
            block[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Replaces the entry array of both copies (in the usual 512-byte
    /// layout) and fixes up the CRCs.
    fn put_array(f: &File, size: u64, array: &[u8]) {
        let n = size / 512;
        let crc = crc32fast::hash(array);
        for (header, entries) in [(1, 2), (n - 1, n - 33)] {
            f.write_all_at(array, entries * 512).unwrap();
            let mut block = vec![0; 512];
            f.read_exact_at(&mut block, header * 512).unwrap();
            set_field(&mut block, 88, crc.into());
            let crc = header_crc(&block[..92]);
            block[16..20].copy_from_slice(&crc.to_le_bytes());
            f.write_all_at(&block, header * 512).unwrap();
        }
    }

    #[test]
    fn overlapping_partitions_are_reported() {
        let (_dir, path) = sgdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        let mut array = vec![0; 16384];
        f.read_exact_at(&mut array, 1024).unwrap();
        let end_of_1 = array[40..48].to_vec();
        array[128 + 32..128 + 40].copy_from_slice(&end_of_1);
        put_array(&f, size, &array);
        let t = gpt_of(&f, size, 512);
        assert_eq!(t.warnings, ["partitions 1 and 2 overlap"]);
        let text = sgdisk(&["-v"], &path);
        assert!(text.contains("overlap"), "{text}");
    }

    #[test]
    fn hostile_headers_are_rejected() {
        // Header field (offset; those below 92 hold 4 bytes at 8..24 and 80..92,
        // else 8), the value put there, and what the error must say.
        let cases = [
            (80, u64::from(u32::MAX), "exceed"),
            (80, 8193, "exceed"),
            (84, 0, "entry size"),
            (84, 129, "entry size"),
            (84, 1 << 20, "entry size"),
            (12, 91, "header size"),
            (12, 513, "header size"),
            (12, u64::from(u32::MAX), "header size"),
            (24, 7, "MyLBA"),
            (32, 1 << 40, "AlternateLBA"),
            (32, 0, "AlternateLBA 0"),
            (40, u64::MAX, "FirstUsableLBA"),
            (48, 2048, "LastUsableLBA"),
            (40, 2020, "FirstUsableLBA 2020 is after"),
            (72, u64::MAX - 1, "entry array"),
            (72, 500, "entry array"),
            (72, 0, "entry array"),
            (40, 0, "covers LBA 0"),
            (88, 1, "array CRC32"),
        ];
        for (at, value, message) in cases {
            let edit = |b: &mut [u8]| set_field(b, at, value);
            // Primary only: the backup takes over.
            let (_dir, path) = hostile(edit, false);
            let t = gpt_of(&open(&path), MIB, 512);
            assert!(
                t.warnings[0].contains(message),
                "{message}: {:?}",
                t.warnings
            );
            // Both: an error (the protective MBR says GPT), never a panic.
            let (_dir, path) = hostile(edit, true);
            let f = open(&path);
            let err = read(&f, MIB, 512).unwrap_err();
            assert!(format!("{err:#}").contains(message), "{message}: {err:#}");
            assert!(relocate_backup_gpt(&f, MIB, 512).is_err());
            assert!(check_resize(&f, MIB, 512, 1, 512).is_err());
        }
        // An entry outside the usable area, with correct CRCs everywhere.
        let (_dir, path) = image(MIB);
        let f = open(&path);
        write_empty_gpt(&f, MIB, 512).unwrap();
        let mut array = vec![0; 16384];
        array[0] = 1;
        array[32..40].copy_from_slice(&40u64.to_le_bytes());
        array[40..48].copy_from_slice(&5000u64.to_le_bytes());
        put_array(&f, MIB, &array);
        let err = read(&f, MIB, 512).unwrap_err();
        assert!(
            format!("{err:#}").contains("not inside the usable area"),
            "{err:#}"
        );
    }

    #[test]
    fn random_garbage_does_not_panic() {
        let (_dir, path) = image(64 * 1024);
        let f = open(&path);
        let n = 128;
        for seed in 0..200u64 {
            let mut disk = noise(seed, 64 * 1024);
            if seed % 2 == 0 {
                // A real protective MBR and a header that passes its CRC, so
                // the checks after it run on random fields.
                disk[..512].copy_from_slice(&mbr::protective(n, 512));
                let block = &mut disk[512..1024];
                block[..8].copy_from_slice(SIGNATURE);
                let len = (u32_at(block, 12) % 600) as usize;
                block[12..16].copy_from_slice(&(len as u32).to_le_bytes());
                let crc = header_crc(&block[..len.clamp(92, 512)]);
                block[16..20].copy_from_slice(&crc.to_le_bytes());
                // Small field values, so some land inside the disk.
                for at in [24, 32, 40, 48, 72] {
                    block[at + 1..at + 8].fill(0);
                }
                block[82..84].fill(0);
                block[86..88].fill(0);
            }
            f.write_all_at(&disk, 0).unwrap();
            for sector in [512, 4096] {
                let _ = read(&f, disk.len() as u64, sector);
                let _ = relocate_backup_gpt(&f, disk.len() as u64, sector);
                let _ = check_resize(&f, disk.len() as u64, sector, 1, 4096);
            }
        }
    }

    #[test]
    fn own_writer_and_reader_agree_on_every_sector_size() {
        for sector in [512u32, 1024, 2048, 4096] {
            let size = 4 * MIB + 3 * 1000; // not a whole number of sectors
            let (_dir, path) = image(size);
            let f = open(&path);
            write_empty_gpt(&f, size, sector).unwrap();
            let t = gpt_of(&f, size, sector);
            let s = u64::from(sector);
            let n = size / s;
            let array = (16384 / s).max(1);
            assert!(t.partitions.is_empty() && t.warnings.is_empty(), "{t:?}");
            assert_eq!(
                t.metadata,
                [0..(2 + array) * s, (n - 1 - array) * s..n * s],
                "sector {sector}"
            );
            // Another sector size sees no table (LBA 1 holds no header then).
            let other = if sector == 512 { 4096 } else { 512 };
            let err = read(&f, size, other).unwrap_err();
            assert!(format!("{err}").contains("no valid GPT"), "{err}");
        }
    }

    #[test]
    fn guid_text_and_names() {
        let efi = guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(efi[..4], [0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(type_name(&efi), "EFI system");
        assert_eq!(
            type_name(&[0xAB; 16]),
            "ABABABAB-ABAB-ABAB-ABAB-ABABABABABAB"
        );
        let mut e = [0u8; 128];
        for (i, u) in "hé𝄞".encode_utf16().chain([0xD800, 0, 0x41]).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        assert_eq!(entry_name(&e), "hé𝄞\u{FFFD}");
        let g = random_guid().unwrap();
        assert_eq!(guid_text(&g).as_bytes()[14], b'4');
    }
}
