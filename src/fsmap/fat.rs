//! FAT12/16/32: used clusters from the file allocation table.
//!
//! Layout (Microsoft FAT specification 1.03): reserved sectors (boot sector with the BPB,
//! FAT32's FSInfo and backup boot sector), BPB_NumFATs copies of the FAT, the fixed root
//! directory (FAT12/16 only), then the data region of clusters 2.. . A cluster is in use
//! exactly when its FAT entry is non-zero (allocated, end-of-chain or bad). Sectors after
//! the last whole cluster belong to no cluster and are never used.

use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Result, bail};

use super::{FsMap, FsType, le16, le32, push_range, read_fs};

// BPB field offsets in the boot sector.
const BS_JMP_BOOT: usize = 0;
const BS_OEM_NAME: usize = 3;
const BPB_BYTS_PER_SEC: usize = 11;
const BPB_SEC_PER_CLUS: usize = 13;
const BPB_RSVD_SEC_CNT: usize = 14;
const BPB_NUM_FATS: usize = 16;
const BPB_ROOT_ENT_CNT: usize = 17;
const BPB_TOT_SEC16: usize = 19;
const BPB_MEDIA: usize = 21;
const BPB_FAT_SZ16: usize = 22;
const BPB_TOT_SEC32: usize = 32;
const BPB_FAT_SZ32: usize = 36;
const BPB_EXT_FLAGS: usize = 40;
const BPB_ROOT_CLUS: usize = 44;
const SIGNATURE: usize = 510;

/// BPB_ExtFlags bit 7: FAT mirroring disabled, only the FAT numbered in bits 0-3 is active.
const EXT_FLAGS_NO_MIRROR: u16 = 0x80;

/// FAT entries handled per read; a multiple of 2 so FAT12 chunks start on a byte boundary.
const CHUNK_ENTRIES: u64 = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fat12 => "fat12",
            Kind::Fat16 => "fat16",
            Kind::Fat32 => "fat32",
        }
    }

    /// Bytes needed to hold `n` entries starting at an even entry index.
    fn bytes_for(self, n: u64) -> u64 {
        match self {
            Kind::Fat12 => (n * 3).div_ceil(2),
            Kind::Fat16 => n * 2,
            Kind::Fat32 => n * 4,
        }
    }

    /// Entry `i` of a FAT slice that starts at an even entry; 0 (free) when out of range,
    /// which cannot happen for slices sized with `bytes_for`.
    fn entry(self, fat: &[u8], i: usize) -> u32 {
        match self {
            Kind::Fat12 => {
                let v = le16(fat, i + i / 2);
                u32::from(if i.is_multiple_of(2) {
                    v & 0xFFF
                } else {
                    v >> 4
                })
            }
            Kind::Fat16 => u32::from(le16(fat, i * 2)),
            // The top 4 bits of a FAT32 entry are reserved.
            Kind::Fat32 => le32(fat, i * 4) & 0x0FFF_FFFF,
        }
    }
}

/// Validated BPB geometry, in sectors unless noted.
struct Geometry {
    kind: Kind,
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    /// First sector of the FAT whose entries are read (the first, or the active one when
    /// mirroring is off).
    fat_start: u64,
    /// First sector of the data region (cluster 2).
    data_start: u64,
    cluster_count: u64,
}

/// Probes for a FAT12/16/32 filesystem at [offset, offset+len) of `dev`.
pub fn probe(dev: &impl FileExt, offset: u64, len: u64) -> Result<Option<FsMap>> {
    if len < 512 {
        return Ok(None);
    }
    let mut bs = [0u8; 512];
    read_fs(dev, offset, len, 0, &mut bs)?;
    let Some(geo) = Geometry::parse(&bs, len)? else {
        return Ok(None);
    };
    let used = geo.used(dev, offset, len)?;
    Ok(Some(FsMap {
        fs: FsType::Fat,
        used,
    }))
}

impl Geometry {
    /// Ok(None) when the sector is not a FAT boot sector at all; Err when it is one but its
    /// sizes contradict each other or the partition.
    fn parse(bs: &[u8], len: u64) -> Result<Option<Self>> {
        // Recognition: boot sector signature, an x86 jump (BS_jmpBoot is EB xx or E9 xx xx)
        // and the BPB fields that every FAT volume must have in range. exFAT and NTFS share
        // the jump and signature but not the BPB.
        if bs[SIGNATURE] != 0x55 || bs[SIGNATURE + 1] != 0xAA {
            return Ok(None);
        }
        if bs[BS_JMP_BOOT] != 0xEB && bs[BS_JMP_BOOT] != 0xE9 {
            return Ok(None);
        }
        let oem = &bs[BS_OEM_NAME..BS_OEM_NAME + 8];
        if oem == b"EXFAT   " || oem == b"NTFS    " {
            return Ok(None);
        }
        let bytes_per_sector = u64::from(le16(bs, BPB_BYTS_PER_SEC));
        let sectors_per_cluster = u64::from(bs[BPB_SEC_PER_CLUS]);
        let reserved = u64::from(le16(bs, BPB_RSVD_SEC_CNT));
        let num_fats = u64::from(bs[BPB_NUM_FATS]);
        let media = bs[BPB_MEDIA];
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
            || sectors_per_cluster == 0
            || !sectors_per_cluster.is_power_of_two()
            || reserved == 0
            || !(1..=4).contains(&num_fats)
            || !(media == 0xF0 || media >= 0xF8)
        {
            return Ok(None);
        }

        let root_entries = u64::from(le16(bs, BPB_ROOT_ENT_CNT));
        let fat_sz16 = u64::from(le16(bs, BPB_FAT_SZ16));
        let fat_size = if fat_sz16 != 0 {
            fat_sz16
        } else {
            u64::from(le32(bs, BPB_FAT_SZ32))
        };
        let tot16 = u64::from(le16(bs, BPB_TOT_SEC16));
        let total_sectors = if tot16 != 0 {
            tot16
        } else {
            u64::from(le32(bs, BPB_TOT_SEC32))
        };
        if fat_size == 0 {
            bail!("fat: BPB_FATSz16 and BPB_FATSz32 are both 0");
        }
        if total_sectors == 0 {
            bail!("fat: BPB_TotSec16 and BPB_TotSec32 are both 0");
        }
        // Sector counts are at most 32 bits and sectors at most 4 KiB, so none of this
        // arithmetic can overflow u64.
        if total_sectors * bytes_per_sector > len {
            bail!(
                "fat: BPB_TotSec {total_sectors} sectors of {bytes_per_sector} bytes exceed the {len}-byte partition"
            );
        }
        let root_dir_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let data_start = reserved + num_fats * fat_size + root_dir_sectors;
        if data_start >= total_sectors {
            bail!(
                "fat: reserved, fat and root directory sectors ({data_start}) fill the whole {total_sectors}-sector volume"
            );
        }
        let cluster_count = (total_sectors - data_start) / sectors_per_cluster;
        if cluster_count == 0 {
            bail!("fat: no data clusters");
        }
        // The FAT type is decided by the cluster count alone (FAT spec, section 3.5).
        let kind = if cluster_count < 4085 {
            Kind::Fat12
        } else if cluster_count < 65525 {
            Kind::Fat16
        } else {
            Kind::Fat32
        };
        let name = kind.name();
        // The FAT32 BPB layout (BPB_FATSz16 = 0, no fixed root directory) must agree with
        // the type the cluster count implies, or the volume means different things to
        // different drivers.
        let fat32_layout = fat_sz16 == 0;
        if fat32_layout != (kind == Kind::Fat32) {
            bail!("fat: {cluster_count} clusters make it {name} but BPB_FATSz16 is {fat_sz16}");
        }
        if kind == Kind::Fat32 && root_entries != 0 {
            bail!("fat32: BPB_RootEntCnt is {root_entries}, not 0");
        }
        // Entries 0 and 1 are reserved; clusters are numbered 2..cluster_count+2.
        let fat_bytes = kind.bytes_for(cluster_count + 2);
        if fat_bytes > fat_size * bytes_per_sector {
            bail!(
                "{name}: BPB_FATSz {fat_size} sectors cannot hold {} entries",
                cluster_count + 2
            );
        }
        let mut active_fat = 0;
        if kind == Kind::Fat32 {
            let flags = le16(bs, BPB_EXT_FLAGS);
            if flags & EXT_FLAGS_NO_MIRROR != 0 {
                active_fat = u64::from(flags & 0xF);
                if active_fat >= num_fats {
                    bail!(
                        "fat32: BPB_ExtFlags active fat {active_fat} but BPB_NumFATs is {num_fats}"
                    );
                }
            }
            let root = u64::from(le32(bs, BPB_ROOT_CLUS));
            if root < 2 || root >= cluster_count + 2 {
                bail!("fat32: BPB_RootClus {root} is not a data cluster");
            }
        }
        Ok(Some(Geometry {
            kind,
            bytes_per_sector,
            sectors_per_cluster,
            fat_start: reserved + active_fat * fat_size,
            data_start,
            cluster_count,
        }))
    }

    /// Used byte ranges: everything before the data region, plus clusters whose FAT entry is
    /// non-zero.
    fn used(&self, dev: &impl FileExt, offset: u64, len: u64) -> Result<Vec<Range<u64>>> {
        let bps = self.bytes_per_sector;
        let cluster_bytes = self.sectors_per_cluster * bps;
        let data_byte = self.data_start * bps;
        // Reserved sectors (boot sector, FSInfo, backup boot sector), every FAT copy and the
        // FAT12/16 root directory are contiguous and always used.
        let mut used = Vec::new();
        push_range(&mut used, 0..data_byte);
        let fat_byte = self.fat_start * bps;
        let last = self.cluster_count + 2;
        let mut buf = Vec::new();
        let mut first = 0u64;
        while first < last {
            let n = (last - first).min(CHUNK_ENTRIES);
            // Bounded by CHUNK_ENTRIES * 4 bytes, whatever the BPB says.
            buf.resize(self.kind.bytes_for(n) as usize, 0);
            read_fs(
                dev,
                offset,
                len,
                fat_byte + self.kind.bytes_for(first),
                &mut buf,
            )?;
            for i in 0..n {
                let cluster = first + i;
                if cluster < 2 || self.kind.entry(&buf, i as usize) == 0 {
                    continue;
                }
                let start = data_byte + (cluster - 2) * cluster_bytes;
                push_range(&mut used, start..start + cluster_bytes);
            }
            first += n;
        }
        // Ranges were produced in ascending order and merged on the way; clip the tail.
        for r in &mut used {
            r.end = r.end.min(len);
        }
        used.retain(|r| r.start < r.end);
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::fs::File;
    use std::path::Path;

    fn mkfs(img: &Path, size: u64, opts: &[&str]) {
        sparse_file(img, size);
        let mut args = opts.to_vec();
        args.push(img.to_str().unwrap());
        run_ok("mkfs.vfat", &args);
    }

    fn map_of(img: &Path) -> FsMap {
        let f = File::open(img).unwrap();
        let len = f.metadata().unwrap().len();
        let map = probe(&f, 0, len).unwrap().expect("fat not recognised");
        assert_eq!(map.fs, FsType::Fat);
        assert_canonical(&map, len);
        assert_eq!(
            super::super::probe(&f, 0, len).unwrap().as_ref(),
            Some(&map)
        );
        map
    }

    fn kind_of(img: &Path) -> Kind {
        let mut bs = [0u8; 512];
        File::open(img).unwrap().read_exact_at(&mut bs, 0).unwrap();
        let len = std::fs::metadata(img).unwrap().len();
        Geometry::parse(&bs, len).unwrap().unwrap().kind
    }

    /// Copies `src_dir`'s files into the image with mtools, creating directories first.
    fn mcopy_in(img: &Path, src_dir: &Path, names: &[String]) {
        let i = img.to_str().unwrap();
        let mut dirs: Vec<&str> = names
            .iter()
            .filter_map(|n| n.rsplit_once('/'))
            .map(|(d, _)| d)
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            // May already exist from an earlier call; mcopy below fails loudly if not.
            run("mmd", &["-i", i, &format!("::/{d}")]);
        }
        for n in names {
            run_ok(
                "mcopy",
                &[
                    "-i",
                    i,
                    "-o",
                    src_dir.join(n).to_str().unwrap(),
                    &format!("::/{n}"),
                ],
            );
        }
    }

    /// Copies the map over garbage, checks fsck.fat -n and reads every file back.
    fn verify_copy(img: &Path, map: &FsMap, src_dir: &Path, names: &[String]) {
        let len = std::fs::metadata(img).unwrap().len();
        let copy = img.with_extension("copy");
        copy_used_over_garbage(img, 0, len, map, &copy);
        let c = copy.to_str().unwrap();
        let out = run("fsck.vfat", &["-n", c]);
        assert!(
            out.status.success(),
            "fsck.vfat -n on the copy of {} failed ({}):\n{}{}",
            img.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for n in names {
            let got = run_ok("mtype", &["-i", c, &format!("::/{n}")]).stdout;
            let want = slurp(&src_dir.join(n));
            assert!(
                got == want,
                "{n} differs in the copy ({} vs {} bytes)",
                got.len(),
                want.len()
            );
        }
    }

    fn populated(size: u64, opts: &[&str], want: Kind, doc: u64, rnd: usize) -> (FsMap, FsMap) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        mkfs(&img, size, opts);
        assert_eq!(kind_of(&img), want);
        let empty = map_of(&img);
        // An empty copy must be a valid filesystem too.
        verify_copy(&img, &empty, dir.path(), &[]);
        let src = dir.path().join("src");
        let names = populate(&src, doc, rnd, size);
        mcopy_in(&img, &src, &names);
        // Delete every third file and add another so the FAT has holes and fragments.
        let i = img.to_str().unwrap();
        let mut kept = Vec::new();
        for (k, n) in names.iter().enumerate() {
            if k % 3 == 1 {
                run_ok("mdel", &["-i", i, &format!("::/{n}")]);
            } else {
                kept.push(n.clone());
            }
        }
        let extra = "rnd/late.bin".to_string();
        random_file(&src.join(&extra), rnd / 4 + 12345, 99);
        mcopy_in(&img, &src, std::slice::from_ref(&extra));
        kept.push(extra);
        let map = map_of(&img);
        verify_copy(&img, &map, &src, &kept);
        let added: u64 = kept
            .iter()
            .map(|n| std::fs::metadata(src.join(n)).unwrap().len())
            .sum();
        let grown = map.used_bytes() - empty.used_bytes();
        assert!(
            grown >= added && grown < added + added / 5 + (256 << 10),
            "map grew by {grown} bytes for {added} bytes of files"
        );
        (empty, map)
    }

    #[test]
    fn fat12_4mib() {
        let (empty, _) = populated(4 << 20, &["-F", "12"], Kind::Fat12, 200 << 10, 2 << 20);
        assert!(empty.used_bytes() < 64 << 10);
    }

    #[test]
    fn fat16_64mib() {
        let (empty, _) = populated(64 << 20, &["-F", "16"], Kind::Fat16, 2 << 20, 12 << 20);
        assert!(empty.used_bytes() < 1 << 20);
    }

    #[test]
    fn fat16_big_sectors() {
        populated(
            64 << 20,
            &["-F", "16", "-S", "4096", "-s", "1"],
            Kind::Fat16,
            1 << 20,
            4 << 20,
        );
    }

    #[test]
    fn fat32_300mib() {
        let (empty, full) = populated(300 << 20, &["-F", "32"], Kind::Fat32, 4 << 20, 24 << 20);
        let size = 300u64 << 20;
        assert!(
            empty.used_bytes() < size / 50,
            "empty fat32 uses {}",
            empty.used_bytes()
        );
        assert!(full.used_bytes() > 20 << 20);
    }

    #[test]
    fn fat32_at_offset() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        let fs_len = 300u64 << 20;
        mkfs(&img, fs_len, &["-F", "32"]);
        let plain = map_of(&img);
        let disk = dir.path().join("disk.img");
        let mut all = vec![0xA5u8; 1 << 20];
        all.extend_from_slice(&slurp(&img));
        std::fs::write(&disk, &all).unwrap();
        let f = File::open(&disk).unwrap();
        assert_eq!(probe(&f, 1 << 20, fs_len).unwrap().unwrap(), plain);
        assert!(probe(&f, 1 << 20, fs_len / 2).is_err());
    }

    #[test]
    fn stray_ext_magic_inside_fat() {
        // 0xEF53 where an ext superblock's s_magic would be, inside FAT's reserved sectors:
        // the ext probe fails validation and the generic probe still finds the FAT.
        let mut img = small_fat16();
        assert!(le16(&img, BPB_RSVD_SEC_CNT) >= 4);
        img[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
        let len = img.len() as u64;
        let dev = MemDev(img);
        assert!(super::super::ext::probe(&dev, 0, len).is_err());
        let map = super::super::probe(&dev, 0, len).unwrap().unwrap();
        assert_eq!(map.fs, FsType::Fat);
    }

    fn small_fat16() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        mkfs(&img, 16 << 20, &["-F", "16"]);
        slurp(&img)
    }

    fn small_fat32() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        // 40 MiB with 512-byte clusters is 80k clusters: FAT32 by count.
        mkfs(&img, 40 << 20, &["-F", "32", "-s", "1"]);
        slurp(&img)
    }

    fn outcome(img: Vec<u8>) -> Result<Option<FsMap>> {
        let len = img.len() as u64;
        probe(&MemDev(img), 0, len)
    }

    #[test]
    fn hostile_boot_sectors() {
        for base in [small_fat16(), small_fat32()] {
            assert!(outcome(base.clone()).unwrap().is_some());
            let set16 = |at: usize, v: u16| {
                let mut b = base.clone();
                b[at..at + 2].copy_from_slice(&v.to_le_bytes());
                b
            };
            // Not FAT at all: None.
            assert!(outcome(set16(BPB_BYTS_PER_SEC, 513)).unwrap().is_none());
            assert!(outcome(set16(BPB_RSVD_SEC_CNT, 0)).unwrap().is_none());
            assert!(outcome(set16(SIGNATURE, 0)).unwrap().is_none());
            let mut b = base.clone();
            b[BPB_SEC_PER_CLUS] = 3;
            assert!(outcome(b).unwrap().is_none());
            let mut b = base.clone();
            b[BPB_NUM_FATS] = 9;
            assert!(outcome(b).unwrap().is_none());
            // FAT, but inconsistent: Err.
            let mut b = base.clone();
            b[BPB_TOT_SEC32..BPB_TOT_SEC32 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            b[BPB_TOT_SEC16..BPB_TOT_SEC16 + 2].copy_from_slice(&0u16.to_le_bytes());
            let e = format!("{:#}", outcome(b).unwrap_err());
            assert!(e.contains("exceed the"), "{e}");
            let e = format!(
                "{:#}",
                outcome(set16(BPB_RSVD_SEC_CNT, 0xFFFF)).unwrap_err()
            );
            // Depending on the volume this shows up as the metadata filling the volume or as
            // a cluster count that no longer matches the BPB layout; either way an error.
            assert!(e.starts_with("fat"), "{e}");
            let mut b = base.clone();
            b[BPB_FAT_SZ16..BPB_FAT_SZ16 + 2].copy_from_slice(&0u16.to_le_bytes());
            b[BPB_FAT_SZ32..BPB_FAT_SZ32 + 4].copy_from_slice(&0u32.to_le_bytes());
            assert!(outcome(b).is_err());
            // Truncated: claimed length intact, data missing.
            for cut in [600usize, 3000, 10_000] {
                let dev = MemDev(base[..cut].to_vec());
                assert!(probe(&dev, 0, base.len() as u64).is_err(), "cut at {cut}");
                assert!(!matches!(probe(&dev, 0, cut as u64), Ok(Some(_))));
            }
        }
        // More clusters than the FAT has entries for.
        let mut b = small_fat16();
        b[BPB_SEC_PER_CLUS] = 1;
        let e = format!("{:#}", outcome(b).unwrap_err());
        assert!(e.contains("cannot hold"), "{e}");
        // FAT32 layout whose cluster count says FAT12.
        let mut b = small_fat32();
        b[BPB_SEC_PER_CLUS] = 128;
        let e = format!("{:#}", outcome(b).unwrap_err());
        assert!(
            e.contains("clusters make it fat12 but BPB_FATSz16 is 0"),
            "{e}"
        );
        // FAT32 with a root cluster outside the data region.
        let mut b = small_fat32();
        b[BPB_ROOT_CLUS..BPB_ROOT_CLUS + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(format!("{:#}", outcome(b).unwrap_err()).contains("BPB_RootClus"));
    }

    #[test]
    fn fuzz_boot_sector_never_panics() {
        let mut rng = Rng(0x5EED);
        let mut devs = [MemDev(small_fat16()), MemDev(small_fat32())];
        let mut outcomes = [0usize; 3];
        for iter in 0..6000 {
            // Mutate in place and restore afterwards: cloning 40 MiB per round is slow.
            let dev = &mut devs[iter % 2];
            let len = dev.0.len() as u64;
            let mut saved = Vec::new();
            for _ in 0..1 + rng.below(4) {
                // Mostly BPB bytes, sometimes the first FAT sectors.
                let at = if rng.below(4) == 0 {
                    rng.below(64 << 10) as usize
                } else {
                    rng.below(64) as usize
                };
                saved.push((at, dev.0[at]));
                dev.0[at] = match rng.below(3) {
                    0 => rng.next_u64() as u8,
                    1 => 0xFF,
                    _ => 0,
                };
            }
            match probe(&*dev, 0, len) {
                Ok(Some(m)) => {
                    assert_canonical(&m, len);
                    outcomes[0] += 1
                }
                Ok(None) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
            for (at, v) in saved.into_iter().rev() {
                dev.0[at] = v;
            }
        }
        eprintln!("fuzz: some/none/err = {outcomes:?}");
        assert!(outcomes[2] > 100 && outcomes[0] > 100);
    }
}
