//! Master Boot Record tables (UEFI 2.10 §5.2.1), the chain of extended boot
//! records (EBRs) behind a DOS extended partition, read the way Linux's
//! `block/partitions/msdos.c` reads it, and the protective MBR of a GPT disk
//! (§5.2.3).
//!
//! The MBR is always the first 512 bytes of LBA 0, whatever the sector size;
//! its LBAs count logical sectors.

use std::os::unix::fs::FileExt;

use anyhow::{Result, bail, ensure};

use super::{Disk, PartTable, Partition, TableKind};
use crate::ranges::normalize as merge;

/// Offset of the four 16-byte partition records (§5.2.1 Table 5.2).
const TABLE_OFFSET: usize = 446;
/// OSType of the protective-MBR record that covers a GPT (§5.2.3).
const GPT_PROTECTIVE: u8 = 0xEE;
/// Longest EBR chain followed. Linux gives up after 100 links and allows 256
/// partitions per disk in all; no partitioning tool makes chains this long.
const MAX_EBRS: usize = 128;

#[derive(Clone, Copy, Debug)]
struct Record {
    boot: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

impl Record {
    fn decode(b: &[u8]) -> Record {
        Record {
            boot: b[0],
            kind: b[4],
            start: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            sectors: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    fn used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }

    /// DOS, Windows (LBA) and Linux extended partition types.
    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0F | 0x85)
    }

    fn partition(&self, disk_sector: u64, number: u32, start_lba: u64) -> Partition {
        Partition {
            number,
            start: start_lba * disk_sector,
            len: u64::from(self.sectors) * disk_sector,
            type_name: format!("0x{:02x}", self.kind),
            name: String::new(),
        }
    }
}

/// The four records of an MBR or EBR sector, or None without the 0x55AA
/// signature at byte 510.
fn records(sector: &[u8]) -> Option<[Record; 4]> {
    if sector.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return None;
    }
    Some(std::array::from_fn(|i| {
        Record::decode(&sector[TABLE_OFFSET + 16 * i..][..16])
    }))
}

/// True when the sector is the boot sector of a FAT, exFAT or NTFS filesystem
/// (their signature strings at their fixed offsets): such a sector also ends
/// in 0x55AA, and its record bytes are often zero, or one fake record starting
/// at LBA 0 (as newer mkfs.fat writes).
fn is_filesystem_boot_sector(s: &[u8]) -> bool {
    &s[3..11] == b"NTFS    "
        || &s[3..11] == b"EXFAT   "
        || &s[0x36..0x39] == b"FAT"
        || &s[0x52..0x57] == b"FAT32"
}

/// The MBR in LBA 0.
pub(crate) struct Mbr {
    records: [Record; 4],
}

impl Mbr {
    /// None when LBA 0 holds no MBR: no signature, or a boot indicator other
    /// than 0x00/0x80 (§5.2.1 Table 5.2), which is how Linux tells a
    /// filesystem's boot sector from a partition table.
    pub(crate) fn parse(lba0: &[u8]) -> Option<Mbr> {
        let records = records(lba0)?;
        if records.iter().any(|r| r.boot != 0 && r.boot != 0x80) {
            return None;
        }
        Some(Mbr { records })
    }

    /// A protective (or hybrid) MBR: the disk is GPT (§5.2.3).
    pub(crate) fn has_gpt_entry(&self) -> bool {
        self.records.iter().any(|r| r.kind == GPT_PROTECTIVE)
    }

    /// The MBR table with its logical partitions; None when LBA 0 is really
    /// the boot sector of a filesystem that fills the whole disk.
    pub(crate) fn table<F: FileExt>(
        &self,
        disk: &Disk<F>,
        lba0: &[u8],
    ) -> Result<Option<PartTable>> {
        if is_filesystem_boot_sector(lba0) && !self.records.iter().any(|r| r.used() && r.start != 0)
        {
            return Ok(None);
        }
        let mut chain = Chain {
            partitions: Vec::new(),
            metadata: vec![disk.bytes(0..1)],
            warnings: Vec::new(),
            next_logical: 5,
        };
        let used = (1..).zip(self.records).filter(|(_, r)| r.used());
        for (number, r) in used.clone() {
            let start = u64::from(r.start);
            ensure!(
                r.start != 0,
                "MBR partition {number} starts at LBA 0, on top of the MBR"
            );
            ensure!(
                start + u64::from(r.sectors) <= disk.lbas,
                "MBR partition {number} (LBA {start}, {} sectors) runs past the end of the disk ({} sectors)",
                r.sectors,
                disk.lbas
            );
            chain
                .partitions
                .push(r.partition(disk.sector, number, start));
        }
        // Linux follows every extended record of the MBR and numbers the
        // logical partitions of all of them 5, 6, … in that order.
        for (number, r) in used.filter(|(_, r)| r.is_extended()) {
            chain.follow(disk, number, &r)?;
        }
        Ok(Some(PartTable {
            kind: TableKind::Mbr,
            sector_size: disk.sector as u32,
            partitions: chain.partitions,
            metadata: merge(chain.metadata),
            warnings: chain.warnings,
        }))
    }
}

/// What reading the MBR and its EBR chains collects.
struct Chain {
    partitions: Vec<Partition>,
    metadata: Vec<std::ops::Range<u64>>,
    warnings: Vec<String>,
    next_logical: u32,
}

impl Chain {
    /// Reads the EBR chain of extended partition `number` (`ext`, already
    /// checked to lie on the disk). Each EBR holds a data record relative to
    /// the EBR itself and a link record relative to the start of the
    /// extended partition.
    fn follow<F: FileExt>(&mut self, disk: &Disk<F>, number: u32, ext: &Record) -> Result<()> {
        let ext_start = u64::from(ext.start);
        let ext_end = ext_start + u64::from(ext.sectors);
        let mut ebr = ext_start;
        let mut seen = Vec::new();
        while seen.len() < MAX_EBRS {
            ensure!(
                !seen.contains(&ebr),
                "the chain of extended boot records in partition {number} loops back to LBA {ebr}"
            );
            seen.push(ebr);
            let sector = disk.read(ebr, 1)?;
            self.metadata.push(disk.bytes(ebr..ebr + 1));
            let Some(records) = records(&sector) else {
                // Linux ends the chain here too. A zeroed first EBR is just an
                // extended partition without logical partitions.
                if ebr != ext_start || sector.iter().any(|&b| b != 0) {
                    self.warnings.push(format!(
                        "the extended boot record at LBA {ebr} has no 0x55AA signature; \
                         logical partitions after it are ignored"
                    ));
                }
                return Ok(());
            };
            for (i, r) in records.iter().enumerate() {
                if !r.used() || r.is_extended() {
                    continue;
                }
                let start = ebr + u64::from(r.start);
                let end = start + u64::from(r.sectors);
                if r.start == 0 || end > ext_end {
                    // Linux skips records 3 and 4 of an EBR that point
                    // outside it as "random garbage" (msdos.c).
                    if i >= 2 {
                        continue;
                    }
                    bail!(
                        "logical partition {} (LBA {start}, {} sectors) lies outside its \
                         extended partition {number} (LBA {ext_start}..{ext_end})",
                        self.next_logical,
                        r.sectors
                    );
                }
                self.partitions
                    .push(r.partition(disk.sector, self.next_logical, start));
                self.next_logical += 1;
            }
            let Some(link) = records.iter().find(|r| r.used() && r.is_extended()) else {
                return Ok(());
            };
            ebr = ext_start + u64::from(link.start);
            ensure!(
                ebr < ext_end,
                "the chain of extended boot records leaves extended partition {number} \
                 (next EBR at LBA {ebr})"
            );
        }
        bail!(
            "more than {MAX_EBRS} extended boot records in partition {number}: the chain is corrupt"
        )
    }
}

/// CHS address of `lba` in the 255-head, 63-sector geometry of LBA-era BIOSes
/// (what sgdisk writes too), or 0xFFFFFF past cylinder 1023 (§5.2.3 Table 5.4).
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFF; 3];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        sector as u8 | ((cylinder >> 2) as u8 & 0xC0),
        cylinder as u8,
    ]
}

/// Fills `record` as the protective record of a disk of `lbas` sectors:
/// StartingLBA 1, SizeInLBA the rest of the disk capped at 32 bits
/// (§5.2.3 Table 5.4).
fn set_protective_record(record: &mut [u8], lbas: u64) {
    let size = u32::try_from(lbas - 1).unwrap_or(u32::MAX);
    record[0] = 0;
    record[1..4].copy_from_slice(&chs(1));
    record[4] = GPT_PROTECTIVE;
    record[5..8].copy_from_slice(&chs(u64::from(size)));
    record[8..12].copy_from_slice(&1u32.to_le_bytes());
    record[12..16].copy_from_slice(&size.to_le_bytes());
}

/// A protective MBR for a disk of `lbas` (≥ 2) sectors, as a zeroed
/// `sector`-byte block: no boot code, one 0xEE record.
pub(crate) fn protective(lbas: u64, sector: u64) -> Vec<u8> {
    let mut block = vec![0; sector as usize];
    set_protective_record(&mut block[TABLE_OFFSET..TABLE_OFFSET + 16], lbas);
    block[510] = 0x55;
    block[511] = 0xAA;
    block
}

/// Makes the 0xEE record of a pure protective MBR (its only record) cover a
/// disk of `lbas` sectors again, keeping the boot code; true if that changed
/// `lba0`. A hybrid MBR is left alone: its other records describe real
/// partitions that only a person can decide about.
pub(crate) fn fit_protective(lba0: &mut [u8], lbas: u64) -> bool {
    let Some(records) = records(lba0) else {
        return false;
    };
    let mut used = records.iter().enumerate().filter(|(_, r)| r.used());
    let slot = match (used.next(), used.next()) {
        (Some((slot, r)), None) if r.kind == GPT_PROTECTIVE && r.start == 1 => slot,
        _ => return false,
    };
    let record = &mut lba0[TABLE_OFFSET + 16 * slot..][..16];
    let before = record.to_vec();
    set_protective_record(record, lbas);
    record[0] = before[0];
    *record != before[..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parttable::testutil::{copy_ranges, image, noise, open, run, size_of};
    use crate::parttable::{read, write_empty_gpt};
    use std::path::Path;

    const MIB: u64 = 1 << 20;

    /// `sfdisk -d` as (number, start sector, size in sectors, type byte).
    fn sfdisk_dump(path: &Path) -> Vec<(u32, u64, u64, u8)> {
        let text = run("sfdisk", &["-d", path.to_str().unwrap()], None);
        let mut out = Vec::new();
        for line in text.lines() {
            let Some((node, fields)) = line.split_once(" : ") else {
                continue;
            };
            let digits = node.trim().trim_start_matches(path.to_str().unwrap());
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.trim().strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap()
            };
            out.push((
                digits.parse().unwrap(),
                field("start=").parse().unwrap(),
                field("size=").parse().unwrap(),
                u8::from_str_radix(&field("type="), 16).unwrap(),
            ));
        }
        out
    }

    /// Primaries 1, 3, 4; extended 2 holding logicals 5 and 6.
    fn sfdisk_image() -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, path) = image(64 * MIB);
        run(
            "sfdisk",
            &[path.to_str().unwrap()],
            Some("label: dos\n,10M,83\n,30M,5\n,10M,83\n,5M,83\n,5M,82\n,,7\n"),
        );
        (dir, path)
    }

    fn as_tuples(t: &PartTable) -> Vec<(u32, u64, u64, u8)> {
        t.partitions
            .iter()
            .map(|p| {
                let kind = u8::from_str_radix(p.type_name.trim_start_matches("0x"), 16).unwrap();
                (p.number, p.start / 512, p.len / 512, kind)
            })
            .collect()
    }

    #[test]
    fn reads_sfdisk_extended_partitions() {
        let (_dir, path) = sfdisk_image();
        let size = size_of(&path);
        let t = read(&open(&path), size, 512).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.sector_size, 512);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let expected = sfdisk_dump(&path);
        assert_eq!(
            expected.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(as_tuples(&t), expected);
        assert!(t.partitions.iter().all(|p| p.name.is_empty()));
        // LBA 0 and two EBRs: one at the start of the extended partition and
        // one just before logical partition 6.
        assert_eq!(t.metadata.len(), 3);
        assert_eq!(t.metadata[0], 0..512);
        assert!(t.metadata.iter().all(|r| r.end - r.start == 512));

        // The metadata alone, on a zero disk, is the whole table again.
        let (_dir2, copy) = image(size);
        let (src, dst) = (open(&path), open(&copy));
        copy_ranges(&src, &dst, &t.metadata);
        assert_eq!(sfdisk_dump(&copy), expected);
        assert_eq!(read(&dst, size, 512).unwrap().unwrap(), t);
    }

    /// Writes a synthetic record into a sector buffer.
    fn put(sector: &mut [u8], slot: usize, kind: u8, start: u32, sectors: u32) {
        let r = &mut sector[TABLE_OFFSET + 16 * slot..][..16];
        r[4] = kind;
        r[8..12].copy_from_slice(&start.to_le_bytes());
        r[12..16].copy_from_slice(&sectors.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    fn write_sector(f: &std::fs::File, lba: u64, sector: &[u8]) {
        f.write_all_at(sector, lba * 512).unwrap();
    }

    #[test]
    fn ebr_cycles_and_overlong_chains_are_errors() {
        let (_dir, path) = image(4 * MIB);
        let f = open(&path);
        let mut mbr = vec![0; 512];
        put(&mut mbr, 0, 0x05, 100, 4000);
        write_sector(&f, 0, &mbr);
        // EBR at 100: a logical partition, then a link back to itself.
        let mut ebr = vec![0; 512];
        put(&mut ebr, 0, 0x83, 1, 10);
        put(&mut ebr, 1, 0x05, 0, 20);
        write_sector(&f, 100, &ebr);
        let err = read(&f, 4 * MIB, 512).unwrap_err();
        assert!(format!("{err:#}").contains("loops back"), "{err:#}");

        // A 200-long chain of EBRs, each 2 sectors after the previous one.
        for i in 0..200u32 {
            let mut ebr = vec![0; 512];
            put(&mut ebr, 0, 0x83, 1, 1);
            put(&mut ebr, 1, 0x05, 2 * (i + 1), 2);
            write_sector(&f, 100 + 2 * u64::from(i), &ebr);
        }
        let err = read(&f, 4 * MIB, 512).unwrap_err();
        assert!(format!("{err:#}").contains("more than 128"), "{err:#}");

        // A link out of the extended partition.
        put(&mut ebr, 1, 0x05, 5000, 2);
        write_sector(&f, 100, &ebr);
        let err = read(&f, 4 * MIB, 512).unwrap_err();
        assert!(format!("{err:#}").contains("leaves extended"), "{err:#}");
    }

    #[test]
    fn bad_records_and_filesystems() {
        let (_dir, path) = image(MIB);
        let f = open(&path);
        let lbas = (MIB / 512) as u32;
        // A zero disk has no table.
        assert_eq!(read(&f, MIB, 512).unwrap(), None);
        // An MBR without partitions is an empty table.
        let mut mbr = vec![0; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        write_sector(&f, 0, &mbr);
        let t = read(&f, MIB, 512).unwrap().unwrap();
        assert_eq!((t.kind, t.partitions.len()), (TableKind::Mbr, 0));
        // A partition past the end of the disk.
        put(&mut mbr, 1, 0x83, 2048, lbas);
        write_sector(&f, 0, &mbr);
        let err = read(&f, MIB, 512).unwrap_err();
        assert!(format!("{err:#}").contains("past the end"), "{err:#}");
        // A partition on top of the MBR.
        put(&mut mbr, 1, 0x83, 0, 10);
        write_sector(&f, 0, &mbr);
        assert!(read(&f, MIB, 512).is_err());
        // A boot indicator that is neither 0 nor 0x80: not an MBR.
        mbr[TABLE_OFFSET + 16] = 0x12;
        write_sector(&f, 0, &mbr);
        assert_eq!(read(&f, MIB, 512).unwrap(), None);
        // A FAT32 boot sector with a mkfs.fat-style fake record at LBA 0.
        let mut fat = vec![0; 512];
        fat[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
        fat[0x52..0x5A].copy_from_slice(b"FAT32   ");
        put(&mut fat, 0, 0x0C, 0, lbas);
        write_sector(&f, 0, &fat);
        assert_eq!(read(&f, MIB, 512).unwrap(), None);
        // An extended partition whose first EBR is zero: no logicals, no warning.
        put(&mut mbr, 1, 0x05, 100, 100);
        mbr[TABLE_OFFSET + 16] = 0;
        write_sector(&f, 0, &mbr);
        let t = read(&f, MIB, 512).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 1);
        assert!(t.warnings.is_empty());
        assert_eq!(t.metadata, [0..512, 100 * 512..101 * 512]);
    }

    #[test]
    fn random_mbrs_and_ebrs_do_not_panic() {
        let (_dir, path) = image(MIB);
        let f = open(&path);
        for seed in 0..300 {
            let mut mbr = noise(seed, 512);
            mbr[510] = 0x55;
            mbr[511] = 0xAA;
            for slot in 0..4 {
                mbr[TABLE_OFFSET + 16 * slot] &= 0x80;
            }
            // Half the time, aim an extended record at random EBRs.
            if seed % 2 == 0 {
                put(&mut mbr, 0, 0x0F, 1, 2000);
                for lba in 1..64 {
                    let mut ebr = noise(seed * 1000 + lba, 512);
                    ebr[510] = 0x55;
                    ebr[511] = 0xAA;
                    ebr[TABLE_OFFSET + 16 + 8..][..4]
                        .copy_from_slice(&((lba as u32 * 7) % 70).to_le_bytes());
                    ebr[TABLE_OFFSET + 16 + 4] = 0x05;
                    write_sector(&f, lba, &ebr);
                }
            }
            write_sector(&f, 0, &mbr);
            let _ = read(&f, MIB, 512);
        }
    }

    #[test]
    fn chs_matches_sgdisk() {
        // Values sgdisk wrote into protective MBRs of 64 MiB and 128 MiB disks.
        assert_eq!(chs(1), [0x00, 0x02, 0x00]);
        assert_eq!(chs(131_071), [0x28, 0x20, 0x08]);
        assert_eq!(chs(262_143), [0x51, 0x01, 0x10]);
        assert_eq!(chs(20 << 21), [0xFF; 3]);
    }

    #[test]
    fn fit_protective_only_touches_pure_protective_mbrs() {
        let mut block = protective(1000, 512);
        block[..4].copy_from_slice(b"boot");
        assert!(fit_protective(&mut block, 2000));
        assert_eq!(&block[..4], b"boot", "boot code kept");
        assert_eq!(Record::decode(&block[TABLE_OFFSET..]).sectors, 1999);
        assert!(!fit_protective(&mut block, 2000));
        // Hybrid: a second record.
        put(&mut block, 1, 0x0C, 2048, 100);
        assert!(!fit_protective(&mut block, 4000));
        // Capped at 32 bits on big disks.
        let big = protective(1 << 40, 512);
        assert_eq!(Record::decode(&big[TABLE_OFFSET..]).sectors, u32::MAX);
    }

    #[test]
    fn write_empty_gpt_replaces_an_mbr() {
        let (_dir, path) = sfdisk_image();
        let size = size_of(&path);
        let f = open(&path);
        write_empty_gpt(&f, size, 512).unwrap();
        let t = read(&f, size, 512).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        assert!(t.partitions.is_empty());
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let text = run("sgdisk", &["-v", path.to_str().unwrap()], None);
        assert!(text.contains("No problems found"), "{text}");
    }
}
