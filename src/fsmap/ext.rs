//! ext2/ext3/ext4: used blocks from the group descriptors and block bitmaps.
//!
//! Layout (all little-endian): the superblock is at byte 1024; the block group descriptor
//! table follows the superblock's block; every group has a block bitmap (one block, one bit
//! per block or, with bigalloc, per cluster), an inode bitmap and an inode table, whose
//! locations the group descriptor gives (with flex_bg they may live in another group).
//! Groups flagged BLOCK_UNINIT have no valid bitmap on disk; their used blocks are only the
//! superblock/descriptor backups they carry, exactly as e2fsprogs' ext2fs_super_and_bgd_loc2
//! and the kernel's ext4_init_block_bitmap compute them.

use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Result, bail};

use super::{FsMap, FsType, le16, le32, normalize, push_range, read_fs};

/// The primary superblock always starts 1024 bytes into the filesystem.
const SB_OFFSET: u64 = 1024;
const SB_SIZE: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;

// Superblock field offsets (struct ext4_super_block).
const S_INODES_COUNT: usize = 0x00;
const S_BLOCKS_COUNT_LO: usize = 0x04;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_LOG_CLUSTER_SIZE: usize = 0x1C;
const S_BLOCKS_PER_GROUP: usize = 0x20;
const S_CLUSTERS_PER_GROUP: usize = 0x24;
const S_INODES_PER_GROUP: usize = 0x28;
const S_MAGIC: usize = 0x38;
const S_STATE: usize = 0x3A;
const S_REV_LEVEL: usize = 0x4C;
const S_INODE_SIZE: usize = 0x58;
const S_FEATURE_COMPAT: usize = 0x5C;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_RESERVED_GDT_BLOCKS: usize = 0xCE;
const S_DESC_SIZE: usize = 0xFE;
const S_FIRST_META_BG: usize = 0x104;
const S_BLOCKS_COUNT_HI: usize = 0x150;
const S_BACKUP_BGS: usize = 0x24C;

// s_state bits.
const STATE_VALID_FS: u16 = 0x1;
const STATE_ERROR_FS: u16 = 0x2;

// s_feature_compat bits.
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

// s_feature_incompat bits.
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
/// Every incompat feature defined by e2fsprogs 1.47 (compression, filetype, recover,
/// journal_dev, meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
/// largedir, inline_data, encrypt, casefold). Only meta_bg, 64bit and journal_dev change
/// where allocation metadata lives; an unknown bit might too, so it is refused.
const INCOMPAT_KNOWN: u32 = 0x3_F7DF;

// s_feature_ro_compat bits.
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// ro_compat features only ext4 knows (huge_file, gdt_csum, dir_nlink, extra_isize,
/// bigalloc, metadata_csum); used only to name the filesystem in messages.
const RO_COMPAT_EXT4_ONLY: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x200 | 0x400;

// Group descriptor field offsets (struct ext4_group_desc).
const BG_BLOCK_BITMAP_LO: usize = 0x00;
const BG_INODE_BITMAP_LO: usize = 0x04;
const BG_INODE_TABLE_LO: usize = 0x08;
const BG_FLAGS: usize = 0x12;
const BG_BLOCK_BITMAP_HI: usize = 0x20;
const BG_INODE_BITMAP_HI: usize = 0x24;
const BG_INODE_TABLE_HI: usize = 0x28;
/// bg_flags EXT4_BG_BLOCK_UNINIT: the block bitmap was never written; trusted only with
/// group descriptor checksums (gdt_csum or metadata_csum), as in the kernel and e2fsprogs.
/// (0x1 is EXT4_BG_INODE_UNINIT, which says nothing about blocks.)
const BG_BLOCK_UNINIT: u16 = 0x2;

/// Validated superblock geometry. All block numbers are in filesystem blocks.
struct Geometry {
    /// Filesystem name for messages: "ext2", "ext3" or "ext4".
    name: &'static str,
    block_size: u64,
    blocks_count: u64,
    first_data_block: u64,
    /// Block holding the primary superblock: 1 with 1 KiB blocks, else 0.
    sb_block: u64,
    blocks_per_group: u64,
    /// Blocks per bitmap bit: 1, or the bigalloc cluster size in blocks.
    cluster_ratio: u64,
    group_count: u64,
    inode_table_blocks: u64,
    desc_size: u64,
    desc_per_block: u64,
    desc_blocks: u64,
    reserved_gdt_blocks: u64,
    /// s_first_meta_bg when META_BG is set.
    first_meta_bg: Option<u64>,
    sparse_super: bool,
    /// s_backup_bgs when SPARSE_SUPER2 is set.
    backup_bgs: Option<[u64; 2]>,
    /// Group descriptor checksums present, so BLOCK_UNINIT can be trusted.
    gdt_csum: bool,
    is_64bit: bool,
}

/// Probes for an ext2/3/4 filesystem at [offset, offset+len) of `dev`.
pub fn probe(dev: &impl FileExt, offset: u64, len: u64) -> Result<Option<FsMap>> {
    if len < SB_OFFSET + SB_SIZE as u64 {
        return Ok(None);
    }
    let mut sb = [0u8; SB_SIZE];
    read_fs(dev, offset, len, SB_OFFSET, &mut sb)?;
    if le16(&sb, S_MAGIC) != EXT_MAGIC {
        return Ok(None);
    }
    let geo = Geometry::parse(&sb, len)?;
    let used = geo.used_blocks(dev, offset, len)?;
    Ok(Some(FsMap {
        fs: FsType::Ext,
        used,
    }))
}

impl Geometry {
    fn parse(sb: &[u8], len: u64) -> Result<Self> {
        let compat = le32(sb, S_FEATURE_COMPAT);
        let incompat = le32(sb, S_FEATURE_INCOMPAT);
        let ro_compat = le32(sb, S_FEATURE_RO_COMPAT);
        let name = if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0
            || ro_compat & RO_COMPAT_EXT4_ONLY != 0
        {
            "ext4"
        } else if compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        };

        if incompat & !INCOMPAT_KNOWN != 0 {
            bail!(
                "{name}: unknown incompatible features 0x{:x} in s_feature_incompat",
                incompat & !INCOMPAT_KNOWN
            );
        }
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            bail!("{name}: external journal device (journal_dev) has no block bitmaps");
        }
        // With a journal awaiting replay the on-disk bitmaps may be older than the blocks the
        // journal is about to claim; only a full copy is safe.
        if incompat & INCOMPAT_RECOVER != 0 {
            bail!("{name}: journal needs recovery (mounted or not cleanly unmounted)");
        }
        // Like partclone: an unclean or errored filesystem may have stale bitmaps.
        let state = le16(sb, S_STATE);
        if state & STATE_VALID_FS == 0 || state & STATE_ERROR_FS != 0 {
            bail!("{name}: s_state 0x{state:x} is not clean; run e2fsck first");
        }

        let log_block = le32(sb, S_LOG_BLOCK_SIZE);
        // s_log_block_size: block size is 1024 << n, 1 KiB..64 KiB.
        if log_block > 6 {
            bail!("{name}: s_log_block_size {log_block} is out of range (block size > 64 KiB)");
        }
        let block_size = 1024u64 << log_block;
        let is_64bit = incompat & INCOMPAT_64BIT != 0;

        let mut blocks_count = u64::from(le32(sb, S_BLOCKS_COUNT_LO));
        if is_64bit {
            blocks_count |= u64::from(le32(sb, S_BLOCKS_COUNT_HI)) << 32;
        }
        // The filesystem must fit in the region it was found in.
        let fs_bytes = blocks_count.checked_mul(block_size);
        if fs_bytes.is_none_or(|b| b > len) {
            bail!(
                "{name}: s_blocks_count {blocks_count} of {block_size} bytes exceeds the {len}-byte partition"
            );
        }

        let first_data_block = u64::from(le32(sb, S_FIRST_DATA_BLOCK));
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        // s_first_data_block is the block holding the superblock: 1 with 1 KiB blocks (0 is
        // allowed there with bigalloc), else 0.
        let fdb_ok = match block_size {
            1024 => first_data_block == 1 || (first_data_block == 0 && bigalloc),
            _ => first_data_block == 0,
        };
        if !fdb_ok {
            bail!(
                "{name}: s_first_data_block {first_data_block} is invalid for {block_size}-byte blocks"
            );
        }
        let sb_block = SB_OFFSET / block_size;
        if blocks_count <= sb_block + 1 {
            bail!("{name}: s_blocks_count {blocks_count} is too small");
        }

        let blocks_per_group = u64::from(le32(sb, S_BLOCKS_PER_GROUP));
        let bits_per_bitmap = block_size * 8;
        // A group's block bitmap is one block, so it covers at most 8 * block_size clusters.
        let cluster_ratio = if bigalloc {
            let log_cluster = le32(sb, S_LOG_CLUSTER_SIZE);
            if log_cluster < log_block || log_cluster - log_block > 16 {
                bail!(
                    "{name}: s_log_cluster_size {log_cluster} is invalid for s_log_block_size {log_block}"
                );
            }
            let ratio = 1u64 << (log_cluster - log_block);
            let clusters_per_group = u64::from(le32(sb, S_CLUSTERS_PER_GROUP));
            if clusters_per_group == 0 || clusters_per_group > bits_per_bitmap {
                bail!("{name}: s_clusters_per_group {clusters_per_group} is out of range");
            }
            if blocks_per_group != clusters_per_group * ratio {
                bail!(
                    "{name}: s_blocks_per_group {blocks_per_group} is not s_clusters_per_group {clusters_per_group} * cluster ratio {ratio}"
                );
            }
            ratio
        } else {
            if blocks_per_group == 0 || blocks_per_group > bits_per_bitmap {
                bail!("{name}: s_blocks_per_group {blocks_per_group} is out of range");
            }
            1
        };

        // Groups cover s_first_data_block..s_blocks_count; the last may be short.
        let group_count = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if group_count > u64::from(u32::MAX) {
            bail!("{name}: {group_count} block groups is more than a u32 group number allows");
        }

        let inodes_per_group = u64::from(le32(sb, S_INODES_PER_GROUP));
        if inodes_per_group == 0 || inodes_per_group > bits_per_bitmap {
            bail!("{name}: s_inodes_per_group {inodes_per_group} is out of range");
        }
        let inodes_count = u64::from(le32(sb, S_INODES_COUNT));
        if inodes_count != inodes_per_group * group_count {
            bail!(
                "{name}: s_inodes_count {inodes_count} is not s_inodes_per_group {inodes_per_group} * {group_count} groups"
            );
        }
        // Revision 0 has fixed 128-byte inodes; later ones store s_inode_size.
        let inode_size = if le32(sb, S_REV_LEVEL) == 0 {
            128
        } else {
            u64::from(le16(sb, S_INODE_SIZE))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            bail!("{name}: s_inode_size {inode_size} is invalid");
        }
        let inode_table_blocks = (inodes_per_group * inode_size).div_ceil(block_size);

        // s_desc_size only counts with the 64bit feature; otherwise descriptors are 32 bytes.
        let desc_size = if is_64bit {
            let d = u64::from(le16(sb, S_DESC_SIZE));
            if !(64..=1024).contains(&d) || !d.is_power_of_two() {
                bail!("{name}: s_desc_size {d} is invalid with the 64bit feature");
            }
            d
        } else {
            32
        };
        let desc_per_block = block_size / desc_size;
        let desc_blocks = group_count.div_ceil(desc_per_block);

        // The kernel refuses more reserved GDT blocks than one indirect block can map.
        let reserved_gdt_blocks = u64::from(le16(sb, S_RESERVED_GDT_BLOCKS));
        if reserved_gdt_blocks > block_size / 4 {
            bail!("{name}: s_reserved_gdt_blocks {reserved_gdt_blocks} is insanely large");
        }

        let first_meta_bg = if incompat & INCOMPAT_META_BG != 0 {
            let f = u64::from(le32(sb, S_FIRST_META_BG));
            if f > desc_blocks {
                bail!("{name}: s_first_meta_bg {f} is beyond the {desc_blocks} descriptor blocks");
            }
            Some(f)
        } else {
            None
        };

        let backup_bgs = (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| {
            [
                u64::from(le32(sb, S_BACKUP_BGS)),
                u64::from(le32(sb, S_BACKUP_BGS + 4)),
            ]
        });

        let geo = Geometry {
            name,
            block_size,
            blocks_count,
            first_data_block,
            sb_block,
            blocks_per_group,
            cluster_ratio,
            group_count,
            inode_table_blocks,
            desc_size,
            desc_per_block,
            desc_blocks,
            reserved_gdt_blocks,
            first_meta_bg,
            sparse_super: ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
            backup_bgs,
            gdt_csum: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
            is_64bit,
        };

        // Group 0's superblock, old-style descriptor table and reserved GDT blocks must fit
        // inside group 0.
        let group0_end = geo.group_end(0);
        let old_desc_end = sb_block + 1 + geo.old_desc_blocks();
        if old_desc_end > group0_end {
            bail!(
                "{name}: group descriptor table ({} blocks) does not fit in group 0 ({group0_end} blocks)",
                geo.old_desc_blocks()
            );
        }
        Ok(geo)
    }

    fn group_first_block(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    /// One past the last block of group `g`; the last group may be short.
    fn group_end(&self, g: u64) -> u64 {
        (self.group_first_block(g) + self.blocks_per_group).min(self.blocks_count)
    }

    /// Blocks that follow a superblock copy in the old (non-meta_bg) layout: the whole
    /// descriptor table, or with meta_bg its first s_first_meta_bg blocks, plus
    /// s_reserved_gdt_blocks (as the kernel's ext4_num_base_meta_blocks counts them).
    fn old_desc_blocks(&self) -> u64 {
        self.first_meta_bg.unwrap_or(self.desc_blocks) + self.reserved_gdt_blocks
    }

    /// Whether group `g` holds a superblock backup (ext2fs_bg_has_super).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(bgs) = self.backup_bgs {
            return g == bgs[0] || g == bgs[1];
        }
        if g <= 1 || !self.sparse_super {
            return true;
        }
        if g & 1 == 0 {
            return false;
        }
        is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }

    /// Block of the superblock (copy) in group `g`.
    fn super_block_of(&self, g: u64) -> u64 {
        if g == 0 {
            self.sb_block
        } else {
            self.group_first_block(g)
        }
    }

    /// Location of group descriptor block `i` (the kernel's descriptor_loc): right after
    /// the primary superblock, or with meta_bg in the first group of meta group `i`, after
    /// its superblock backup if any.
    fn desc_block_loc(&self, i: u64) -> u64 {
        match self.first_meta_bg {
            Some(first) if i >= first => {
                let g = i * self.desc_per_block;
                if self.has_super(g) {
                    self.super_block_of(g) + 1
                } else {
                    self.group_first_block(g)
                }
            }
            _ => self.sb_block + 1 + i,
        }
    }

    /// Superblock backup and descriptor blocks that group `g` carries
    /// (ext2fs_super_and_bgd_loc2 / the kernel's ext4_num_base_meta_blocks).
    fn super_and_bgd(&self, g: u64, out: &mut Vec<Range<u64>>) {
        let has_super = self.has_super(g);
        let sb = self.super_block_of(g);
        if has_super {
            out.push(sb..sb + 1);
        }
        let meta_group = g / self.desc_per_block;
        match self.first_meta_bg {
            Some(first) if meta_group >= first => {
                let r = g % self.desc_per_block;
                if r == 0 || r == 1 || r == self.desc_per_block - 1 {
                    let b = if has_super {
                        sb + 1
                    } else {
                        self.group_first_block(g)
                    };
                    out.push(b..b + 1);
                }
            }
            _ => {
                if has_super {
                    out.push(sb + 1..sb + 1 + self.old_desc_blocks());
                }
            }
        }
    }

    /// Checks that `[blk, blk+n)` is a valid metadata location: past the primary
    /// superblock and inside the filesystem.
    fn check_meta(&self, g: u64, what: &str, blk: u64, n: u64) -> Result<()> {
        if blk <= self.sb_block || blk.checked_add(n).is_none_or(|e| e > self.blocks_count) {
            bail!(
                "{} group descriptor {g}: {what} at {blk} is outside the filesystem",
                self.name
            );
        }
        Ok(())
    }

    /// Walks every group descriptor and collects the used byte ranges.
    fn used_blocks(&self, dev: &impl FileExt, offset: u64, len: u64) -> Result<Vec<Range<u64>>> {
        // Block sizes are at most 64 KiB (validated), so these buffers are small.
        let bs = self.block_size as usize;
        let mut desc_buf = vec![0u8; bs];
        let mut bitmap = vec![0u8; bs];
        // Bitmap-derived runs arrive in ascending order and merge as they are pushed;
        // metadata ranges (flex_bg puts them anywhere) are kept apart and sorted at the end.
        let mut data: Vec<Range<u64>> = Vec::new();
        let mut meta: Vec<Range<u64>> = Vec::new();
        // Everything before s_first_data_block plus the superblock's block(s): the boot
        // area (first 1024 bytes) is not part of any group.
        meta.push(0..self.first_data_block.max(self.sb_block + 1));

        for i in 0..self.desc_blocks {
            let loc = self.desc_block_loc(i);
            if loc <= self.sb_block || loc >= self.blocks_count {
                bail!(
                    "{}: group descriptor block {i} at {loc} is outside the filesystem",
                    self.name
                );
            }
            meta.push(loc..loc + 1);
            read_fs(dev, offset, len, loc * self.block_size, &mut desc_buf)?;
            let first_group = i * self.desc_per_block;
            let groups = (self.group_count - first_group).min(self.desc_per_block);
            for j in 0..groups {
                let at = (j * self.desc_size) as usize;
                let d = &desc_buf[at..at + self.desc_size as usize];
                self.group(
                    dev,
                    offset,
                    len,
                    first_group + j,
                    d,
                    &mut bitmap,
                    &mut data,
                    &mut meta,
                )?;
            }
        }

        let bs = self.block_size;
        let mut all: Vec<Range<u64>> = data
            .into_iter()
            .chain(meta)
            .map(|r| r.start * bs..r.end.min(self.blocks_count) * bs)
            .collect();
        // The boot area and primary superblock, in bytes (they share block 0 with 2 KiB+
        // blocks, and with 1 KiB blocks block 0 is outside every group).
        all.push(0..SB_OFFSET + SB_SIZE as u64);
        Ok(normalize(all, len))
    }

    /// Collects the used blocks of group `g` whose descriptor is `d`.
    #[allow(clippy::too_many_arguments)]
    fn group(
        &self,
        dev: &impl FileExt,
        offset: u64,
        len: u64,
        g: u64,
        d: &[u8],
        bitmap: &mut [u8],
        data: &mut Vec<Range<u64>>,
        meta: &mut Vec<Range<u64>>,
    ) -> Result<()> {
        let hi = |at: usize| {
            if self.is_64bit {
                u64::from(le32(d, at)) << 32
            } else {
                0
            }
        };
        let block_bitmap = u64::from(le32(d, BG_BLOCK_BITMAP_LO)) | hi(BG_BLOCK_BITMAP_HI);
        let inode_bitmap = u64::from(le32(d, BG_INODE_BITMAP_LO)) | hi(BG_INODE_BITMAP_HI);
        let inode_table = u64::from(le32(d, BG_INODE_TABLE_LO)) | hi(BG_INODE_TABLE_HI);
        let flags = le16(d, BG_FLAGS);

        self.check_meta(g, "block bitmap", block_bitmap, 1)?;
        self.check_meta(g, "inode bitmap", inode_bitmap, 1)?;
        self.check_meta(g, "inode table", inode_table, self.inode_table_blocks)?;
        // Always used, whatever the bitmaps say: with flex_bg these live in another group,
        // possibly one whose bitmap is BLOCK_UNINIT.
        meta.push(block_bitmap..block_bitmap + 1);
        meta.push(inode_bitmap..inode_bitmap + 1);
        meta.push(inode_table..inode_table + self.inode_table_blocks);
        // Superblock and descriptor backups are reserved even when the bitmap is valid;
        // marking them again costs nothing and guards against a stale bitmap.
        self.super_and_bgd(g, meta);

        if self.gdt_csum && flags & BG_BLOCK_UNINIT != 0 {
            // No bitmap on disk: the group holds nothing but what super_and_bgd added.
            return Ok(());
        }

        read_fs(dev, offset, len, block_bitmap * self.block_size, bitmap)?;
        let first = self.group_first_block(g);
        let end = self.group_end(g);
        // Bits past the group's last cluster (short last group) are padding, often set.
        let clusters = (end - first).div_ceil(self.cluster_ratio);
        let ratio = self.cluster_ratio;
        for_each_set_run(bitmap, clusters, |a, b| {
            push_range(data, first + a * ratio..(first + b * ratio).min(end));
        });
        Ok(())
    }
}

/// Whether `n` is a power of `base` (n >= 1).
fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// Calls `emit(start, end)` for every run of set bits among the first `nbits` bits of
/// `bitmap` (bit i is bit i%8 of byte i/8, as in ext bitmaps), in ascending order.
fn for_each_set_run(bitmap: &[u8], nbits: u64, mut emit: impl FnMut(u64, u64)) {
    let nbits = nbits.min(bitmap.len() as u64 * 8);
    let mut run_start: Option<u64> = None;
    for (w, chunk) in bitmap.chunks(8).enumerate() {
        let base = w as u64 * 64;
        if base >= nbits {
            break;
        }
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let mut word = u64::from_le_bytes(bytes);
        if nbits - base < 64 {
            word &= (1u64 << (nbits - base)) - 1;
        }
        // Fast paths for the common all-free and all-used words.
        if word == 0 {
            if let Some(s) = run_start.take() {
                emit(s, base);
            }
            continue;
        }
        if word == u64::MAX {
            run_start.get_or_insert(base);
            continue;
        }
        let mut pos = 0u32;
        while pos < 64 {
            let rest = word >> pos;
            if run_start.is_some() {
                pos += rest.trailing_ones();
                if pos < 64
                    && let Some(s) = run_start.take()
                {
                    emit(s, base + u64::from(pos));
                }
            } else {
                if rest == 0 {
                    break;
                }
                pos += rest.trailing_zeros();
                run_start = Some(base + u64::from(pos));
            }
        }
    }
    if let Some(s) = run_start {
        emit(s, nbits);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::fs::File;
    use std::path::Path;
    use std::time::Instant;

    #[test]
    fn set_runs() {
        let mut runs = Vec::new();
        let bm = [0b1011_0001u8, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0x80, 0xFF];
        for_each_set_run(&bm, 80, |a, b| runs.push(a..b));
        assert_eq!(runs, vec![0..1, 4..6, 7..24, 71..80]);
        runs.clear();
        for_each_set_run(&bm, 75, |a, b| runs.push(a..b));
        assert_eq!(runs, vec![0..1, 4..6, 7..24, 71..75]);
        runs.clear();
        for_each_set_run(&[0xFF; 16], 128, |a, b| runs.push(a..b));
        assert_eq!(runs, vec![0..128]);
        runs.clear();
        for_each_set_run(&[0xFF; 16], 1000, |a, b| runs.push(a..b));
        assert_eq!(runs, vec![0..128]);
    }

    #[test]
    fn powers() {
        let sparse: Vec<u64> = (0..400)
            .filter(|&g| {
                g <= 1
                    || (g & 1 == 1 && (is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)))
            })
            .collect();
        assert_eq!(
            sparse,
            vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]
        );
    }

    /// Superblock field values as dumpe2fs -h prints them.
    fn dumpe2fs_field(img: &Path, field: &str) -> u64 {
        let out = run_ok("dumpe2fs", &["-h", img.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
                return v.trim().parse().unwrap();
            }
        }
        panic!("{field} not in dumpe2fs output");
    }

    fn mkfs(prog: &str, img: &Path, size: u64, opts: &[&str]) {
        sparse_file(img, size);
        let mut args = vec!["-q", "-F"];
        args.extend_from_slice(opts);
        args.push(img.to_str().unwrap());
        run_ok(prog, &args);
    }

    fn map_of(img: &Path) -> FsMap {
        let f = File::open(img).unwrap();
        let len = f.metadata().unwrap().len();
        let map = probe(&f, 0, len).unwrap().expect("ext not recognised");
        assert_eq!(map.fs, FsType::Ext);
        assert_canonical(&map, len);
        // The generic probe must agree.
        assert_eq!(
            super::super::probe(&f, 0, len).unwrap().as_ref(),
            Some(&map)
        );
        map
    }

    /// Used blocks according to the superblock's free count, in bytes.
    fn used_per_superblock(img: &Path) -> u64 {
        let bs = dumpe2fs_field(img, "Block size");
        let blocks = dumpe2fs_field(img, "Block count");
        let free = dumpe2fs_field(img, "Free blocks");
        (blocks - free) * bs
    }

    /// Copies the map over garbage and runs e2fsck -fn on the copy.
    fn fsck_copy(img: &Path, map: &FsMap, dir: &Path) -> std::path::PathBuf {
        let len = std::fs::metadata(img).unwrap().len();
        let copy = dir.join(format!(
            "{}.copy",
            img.file_name().unwrap().to_string_lossy()
        ));
        copy_used_over_garbage(img, 0, len, map, &copy);
        let out = run("e2fsck", &["-fn", copy.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "e2fsck -fn on the copy of {} failed ({}):\n{}{}",
            img.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        copy
    }

    /// Reads `path` out of the ext image with debugfs.
    fn debugfs_cat(img: &Path, path: &str) -> Vec<u8> {
        let out = run_ok(
            "debugfs",
            &["-R", &format!("cat /{path}"), img.to_str().unwrap()],
        );
        out.stdout
    }

    fn check_files(copy: &Path, src_dir: &Path, names: &[String]) {
        assert!(!names.is_empty());
        for name in names {
            let want = slurp(&src_dir.join(name));
            let got = debugfs_cat(copy, name);
            assert!(
                got == want,
                "{name} differs in the copy ({} vs {} bytes)",
                got.len(),
                want.len()
            );
        }
    }

    /// Maps a fresh fs made with `prog opts`, checks the used size against the superblock's
    /// free block count and that a garbage-backed copy passes e2fsck.
    fn fresh(prog: &str, size: u64, opts: &[&str]) -> FsMap {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        mkfs(prog, &img, size, opts);
        let map = map_of(&img);
        assert_eq!(
            map.used_bytes(),
            used_per_superblock(&img),
            "{prog} {opts:?}: map disagrees with s_free_blocks_count"
        );
        fsck_copy(&img, &map, dir.path());
        map
    }

    #[test]
    fn ext4_default() {
        // 512 MiB is the smallest size mke2fs formats with its real defaults (4 KiB blocks);
        // below that it applies the "small" profile (1 KiB blocks, 4 KiB per inode).
        let size = 512 << 20;
        let map = fresh("mkfs.ext4", size, &[]);
        let frac = map.used_bytes() as f64 / size as f64;
        assert!(frac < 0.10, "empty 512 MiB ext4 uses {:.1}%", frac * 100.0);
        // A fresh fs is mostly free: the journal and inode tables dominate.
        assert!(map.used.len() > 3);
    }

    #[test]
    fn ext4_1k_blocks() {
        let size = 128 << 20;
        let map = fresh("mkfs.ext4", size, &["-b", "1024"]);
        assert!(map.used_bytes() < size / 8);
    }

    #[test]
    fn ext4_256mib_small_profile() {
        // mke2fs's "small" profile: 1 KiB blocks, 16 KiB-per-group inode tables, 8 MiB
        // journal; about 10% of the space is metadata.
        let size = 256 << 20;
        let map = fresh("mkfs.ext4", size, &[]);
        assert!(map.used_bytes() < size / 8);
    }

    #[test]
    fn ext2_plain() {
        let map = fresh("mkfs.ext2", 64 << 20, &[]);
        assert!(map.used_bytes() < 8 << 20);
    }

    #[test]
    fn ext2_no_sparse_super() {
        fresh(
            "mkfs.ext2",
            64 << 20,
            &["-b", "1024", "-O", "^sparse_super,^resize_inode"],
        );
    }

    #[test]
    fn ext3_1k() {
        fresh("mkfs.ext3", 96 << 20, &["-b", "1024"]);
    }

    #[test]
    fn ext4_meta_bg() {
        // 1 KiB blocks and 64-byte descriptors: 16 descriptors per block, so 64 groups make
        // four meta groups whose descriptor blocks live in groups 0/1/15, 16/17/31, ...
        fresh(
            "mkfs.ext4",
            512 << 20,
            &["-b", "1024", "-O", "meta_bg,^resize_inode"],
        );
        fresh(
            "mkfs.ext4",
            256 << 20,
            &["-O", "meta_bg,^resize_inode,^flex_bg"],
        );
    }

    #[test]
    fn ext4_sparse_super2() {
        fresh(
            "mkfs.ext4",
            256 << 20,
            &["-b", "1024", "-O", "sparse_super2", "-E", "num_backup_sb=2"],
        );
    }

    #[test]
    fn ext4_bigalloc() {
        fresh("mkfs.ext4", 256 << 20, &["-O", "bigalloc", "-C", "65536"]);
    }

    #[test]
    fn ext4_no_flex_bg_32bit() {
        fresh(
            "mkfs.ext4",
            128 << 20,
            &["-O", "^flex_bg,^64bit,^metadata_csum,uninit_bg"],
        );
    }

    #[test]
    fn ext4_mmp_and_no_journal() {
        fresh("mkfs.ext4", 128 << 20, &["-O", "mmp,^has_journal"]);
    }

    #[test]
    fn ext4_populated_with_d() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let names = populate(&src, 4 << 20, 20 << 20, 42);
        let size = 256u64 << 20;

        let empty = dir.path().join("empty.img");
        mkfs("mkfs.ext4", &empty, size, &[]);
        let empty_used = map_of(&empty).used_bytes();

        let img = dir.path().join("full.img");
        mkfs("mkfs.ext4", &img, size, &["-d", src.to_str().unwrap()]);
        let map = map_of(&img);
        assert_eq!(map.used_bytes(), used_per_superblock(&img));
        let grown = map.used_bytes() - empty_used;
        let added: u64 = names
            .iter()
            .map(|n| std::fs::metadata(src.join(n)).unwrap().len())
            .sum();
        assert!(
            grown >= added && grown < added + added / 10 + (1 << 20),
            "map grew by {grown} bytes for {added} bytes of files"
        );
        let copy = fsck_copy(&img, &map, dir.path());
        check_files(&copy, &src, &names);
    }

    #[test]
    fn ext4_files_written_after_mkfs_1k() {
        // debugfs -w allocates like libext2fs does after mkfs, clearing BLOCK_UNINIT.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let names = populate(&src, 1 << 20, 12 << 20, 7);
        let img = dir.path().join("fs.img");
        mkfs("mkfs.ext4", &img, 128 << 20, &["-b", "1024"]);
        let before = map_of(&img).used_bytes();
        let mut cmds = String::from("mkdir doc\nmkdir rnd\n");
        for n in &names {
            cmds.push_str(&format!("write {} {n}\n", src.join(n).display()));
        }
        let script = dir.path().join("cmds");
        std::fs::write(&script, cmds).unwrap();
        run_ok(
            "debugfs",
            &["-w", "-f", script.to_str().unwrap(), img.to_str().unwrap()],
        );
        let map = map_of(&img);
        assert_eq!(map.used_bytes(), used_per_superblock(&img));
        assert!(map.used_bytes() > before + (12 << 20));
        let copy = fsck_copy(&img, &map, dir.path());
        check_files(&copy, &src, &names);
    }

    #[test]
    fn ext4_at_offset_in_disk_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let fs_len = 64u64 << 20;
        mkfs("mkfs.ext4", &img, fs_len, &[]);
        let plain = map_of(&img);
        // A "disk": 1 MiB of garbage, the filesystem, 1 MiB of garbage.
        let disk = dir.path().join("disk.img");
        let mut bytes = vec![0u8; 1 << 20];
        Rng(5).fill(&mut bytes);
        let mut all = bytes.clone();
        all.extend_from_slice(&slurp(&img));
        all.extend_from_slice(&bytes);
        std::fs::write(&disk, &all).unwrap();
        let f = File::open(&disk).unwrap();
        let map = probe(&f, 1 << 20, fs_len).unwrap().unwrap();
        assert_eq!(map, plain);
        // The filesystem does not fit in a region shorter than s_blocks_count.
        assert!(probe(&f, 1 << 20, fs_len - 4096).is_err());
    }

    #[test]
    fn ext4_4gib_is_fast() {
        let dir = tempfile::tempdir().unwrap();
        for opts in [&[][..], &["-b", "1024"][..]] {
            let img = dir.path().join("big.img");
            mkfs("mkfs.ext4", &img, 4 << 30, opts);
            let f = File::open(&img).unwrap();
            let t = Instant::now();
            let map = probe(&f, 0, 4 << 30).unwrap().unwrap();
            let took = t.elapsed();
            eprintln!(
                "4 GiB ext4 {opts:?}: mapped in {took:?}, {} ranges, {} MiB used",
                map.used.len(),
                map.used_bytes() >> 20
            );
            assert_eq!(map.used_bytes(), used_per_superblock(&img));
            assert!(took.as_secs_f64() < 1.0, "mapping took {took:?}");
            std::fs::remove_file(&img).unwrap();
        }
    }

    /// A small real 1 KiB-block filesystem of two groups, in memory.
    fn small_fs() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        mkfs("mkfs.ext4", &img, 16 << 20, &["-b", "1024", "-N", "1024"]);
        slurp(&img)
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn err_of(img: Vec<u8>) -> String {
        let len = img.len() as u64;
        match probe(&MemDev(img), 0, len) {
            Err(e) => format!("{e:#}"),
            Ok(m) => panic!("expected an error, got {m:?}"),
        }
    }

    #[test]
    fn hostile_superblocks() {
        let base = small_fs();
        let len = base.len() as u64;
        assert!(probe(&MemDev(base.clone()), 0, len).unwrap().is_some());
        let sb = 1024;
        let cases: Vec<(usize, u32, &str)> = vec![
            (S_BLOCKS_COUNT_LO, u32::MAX, "exceeds"),
            (S_BLOCKS_COUNT_LO, 1, "too small"),
            (S_BLOCKS_PER_GROUP, 0, "s_blocks_per_group"),
            (S_BLOCKS_PER_GROUP, 1 << 20, "s_blocks_per_group"),
            (S_BLOCKS_PER_GROUP, 8, "s_inodes_count"),
            (S_LOG_BLOCK_SIZE, 20, "s_log_block_size"),
            (S_LOG_BLOCK_SIZE, 2, "exceeds"),
            (S_INODES_PER_GROUP, 0, "s_inodes_per_group"),
            (S_INODES_PER_GROUP, u32::MAX, "s_inodes_per_group"),
            (S_INODES_COUNT, 12345, "s_inodes_count"),
            (S_FIRST_DATA_BLOCK, 7, "s_first_data_block"),
            (
                S_FEATURE_INCOMPAT,
                0x8000_0000 | 0x2c2,
                "unknown incompatible",
            ),
        ];
        for (field, value, want) in cases {
            let mut img = base.clone();
            put32(&mut img, sb + field, value);
            let e = err_of(img);
            assert!(e.contains(want), "field 0x{field:x}={value}: {e}");
        }
        // s_desc_size of 48 with 64bit.
        let mut img = base.clone();
        img[sb + S_DESC_SIZE..sb + S_DESC_SIZE + 2].copy_from_slice(&48u16.to_le_bytes());
        assert!(err_of(img).contains("s_desc_size"));
        // Not cleanly unmounted.
        let mut img = base.clone();
        img[sb + S_STATE] = 0;
        assert!(err_of(img).contains("s_state"));
        // Needs journal recovery.
        let mut img = base.clone();
        let inc = le32(&img, sb + S_FEATURE_INCOMPAT) | INCOMPAT_RECOVER;
        put32(&mut img, sb + S_FEATURE_INCOMPAT, inc);
        assert!(err_of(img).contains("recovery"));
        // meta_bg with s_first_meta_bg past the descriptor table.
        let mut img = base.clone();
        let inc = le32(&img, sb + S_FEATURE_INCOMPAT) | INCOMPAT_META_BG;
        put32(&mut img, sb + S_FEATURE_INCOMPAT, inc);
        put32(&mut img, sb + S_FIRST_META_BG, 1000);
        assert!(err_of(img).contains("s_first_meta_bg"));
        // Group descriptor 0's block bitmap pointing past the end (GDT is block 2).
        let mut img = base.clone();
        put32(&mut img, 2048 + BG_BLOCK_BITMAP_LO, 0x7FFF_FFFF);
        let e = err_of(img);
        assert!(
            e.contains("group descriptor 0: block bitmap at 2147483647 is outside the filesystem"),
            "{e}"
        );
        let mut img = base.clone();
        put32(&mut img, 2048 + 64 + BG_INODE_TABLE_LO, 16300);
        assert!(err_of(img).contains("group descriptor 1: inode table"));
    }

    #[test]
    fn truncated_image() {
        let base = small_fs();
        let len = base.len() as u64;
        for cut in [1500usize, 2048, 3000, 4096, 100_000, base.len() / 2] {
            let dev = MemDev(base[..cut].to_vec());
            // Claimed length intact, data missing: an I/O error as soon as a superblock,
            // descriptor or bitmap read hits the end; cuts past the metadata are fine.
            if cut <= 4096 {
                assert!(probe(&dev, 0, len).is_err(), "cut at {cut}");
            } else if let Ok(Some(m)) = probe(&dev, 0, len) {
                assert_canonical(&m, len);
            }
            // Length honest but too short for s_blocks_count: an error or nothing.
            assert!(
                !matches!(probe(&dev, 0, cut as u64), Ok(Some(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn fuzz_metadata_never_panics() {
        let base = small_fs();
        let len = base.len() as u64;
        let mut dev = MemDev(base.clone());
        let mut rng = Rng(0xDEAD_BEEF);
        let mut outcomes = [0usize; 3];
        // Superblock and descriptor table.
        let region = 1024..3072;
        for iter in 0..4000 {
            // Restore the region, then mutate a few fields, sometimes to extreme values.
            dev.0[region.clone()].copy_from_slice(&base[region.clone()]);
            let n = 1 + rng.below(6);
            for _ in 0..n {
                let at = (region.start + rng.below(2048) as usize) & !3;
                let v = match rng.below(4) {
                    0 => rng.next_u64() as u32,
                    1 => u32::MAX,
                    2 => 0,
                    _ => le32(&dev.0, at) ^ (1 << rng.below(32)),
                };
                put32(&mut dev.0, at, v);
            }
            // Keep the magic most of the time so the parser gets exercised.
            if iter % 8 != 0 {
                dev.0[1024 + S_MAGIC..1024 + S_MAGIC + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
            }
            match probe(&dev, 0, len) {
                Ok(Some(m)) => {
                    assert_canonical(&m, len);
                    outcomes[0] += 1
                }
                Ok(None) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
        }
        eprintln!("fuzz: some/none/err = {outcomes:?}");
        assert!(outcomes[0] > 100 && outcomes[2] > 100);
    }
}
