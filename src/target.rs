//! Restore targets: a block device or a regular file. Everything that
//! decides whether writing is allowed (preflight) lives here, as does the
//! erase to a valid empty state after a failed restore.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::blockdev::{self, SysBlock};
use crate::image::format::Content;
use crate::io::{AlignedBuf, IO_ALIGN};
use crate::util::human_size;

/// Bytes at the start of a target that hold partition tables and boot code.
/// Restores write them last and wipe them first, so a restore that dies
/// midway never leaves a disk that looks bootable.
pub const BOOT_AREA: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub enum TargetKind {
    Disk(SysBlock),
    Partition { part: SysBlock, disk: SysBlock },
    File,
}

pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
    /// Open read-write; O_EXCL for block devices; O_DIRECT when allowed.
    file: File,
    direct: bool,
    /// A second, buffered descriptor for pieces O_DIRECT cannot take
    /// (lengths that are not a multiple of the sector size).
    buffered: OnceLock<File>,
    /// Advisory lock held on a file target for the target's lifetime.
    _lock: Option<nix::fcntl::Flock<File>>,
    /// "MAJ:MIN" of the device and the devices overlapping it.
    related: Vec<String>,
    /// The target is a file that `open` created.
    created: bool,
    pub size: u64,
    pub sector_size: u32,
}

/// Why a target was refused; callers (the menu) show different advice.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0} is mounted at {1}; unmount it first")]
    Mounted(String, String),
    #[error("{0} is in use by {1}")]
    Held(String, String),
    #[error("{0} is in use (another program has it open exclusively)")]
    Busy(String),
    #[error("There is not enough space on {path} ({have}) to restore {need}")]
    TooSmall {
        path: String,
        have: String,
        need: String,
    },
}

impl Target {
    /// Opens a target for writing after checking that it may be written:
    /// a block device that nothing has mounted, stacked on or opened
    /// exclusively, or a regular file (created when missing). Writes nothing.
    pub fn open(path: &Path) -> Result<Target> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("examining {}", path.display())),
        };
        match meta {
            Some(m) if m.file_type().is_block_device() => Self::open_block(path),
            Some(m) if m.is_file() => Self::open_file(path, false),
            Some(_) => bail!(
                "{} is neither a block device nor a regular file",
                path.display()
            ),
            None => {
                if path.starts_with("/dev") {
                    bail!("{} does not exist", path.display());
                }
                Self::open_file(path, true)
            }
        }
    }

    fn open_block(path: &Path) -> Result<Target> {
        let sys = SysBlock::of_node(path)?;
        let disk = sys.parent();
        let display = path.display().to_string();
        // Everything whose use would clash with writing the device: itself,
        // its partitions (whole disk) or its disk (partition).
        let mut related = vec![sys.clone()];
        related.extend(sys.partitions());
        related.extend(disk.clone());
        check_not_mounted(&display, &related)?;
        for dev in &related {
            let holders = dev.holders();
            if !holders.is_empty() {
                return Err(PreflightError::Held(
                    display,
                    format!("{} (via {})", holders.join(", "), dev.name),
                )
                .into());
            }
        }
        // O_EXCL on a block device claims it: the kernel refuses it while a
        // filesystem, md/dm or another exclusive opener holds the device.
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            o.custom_flags(libc::O_EXCL | if direct { libc::O_DIRECT } else { 0 });
            o.open(path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(false)?, false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(PreflightError::Busy(display).into());
            }
            Err(e) => return Err(e).with_context(|| format!("opening {display}")),
        };
        let related = related.into_iter().map(|d| d.dev).collect();
        let size = blockdev::size_bytes(&file)?;
        let sector_size = blockdev::logical_sector_size(&file)?;
        let kind = match disk {
            Some(disk) => TargetKind::Partition { part: sys, disk },
            None => TargetKind::Disk(sys),
        };
        Ok(Target {
            path: path.to_owned(),
            kind,
            file,
            direct,
            buffered: OnceLock::new(),
            _lock: None,
            related,
            created: false,
            size,
            sector_size,
        })
    }

    fn open_file(path: &Path, create: bool) -> Result<Target> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(create);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(false)?, false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        // Two restores into one file would interleave; an advisory lock
        // stands in for the O_EXCL claim block devices get.
        let lock = nix::fcntl::Flock::lock(
            file.try_clone()?,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .map_err(|_| PreflightError::Busy(path.display().to_string()))?;
        let size = file.metadata()?.len();
        Ok(Target {
            path: path.to_owned(),
            kind: TargetKind::File,
            file,
            direct,
            buffered: OnceLock::new(),
            _lock: Some(lock),
            related: Vec::new(),
            created: create,
            size,
            sector_size: 512,
        })
    }

    /// True when writing the target would overwrite `source` while it is
    /// being read: the same file, the same device, a partition of it or
    /// its disk, or a file on a filesystem on it.
    pub fn overlaps(&self, source: &Path) -> Result<bool> {
        let src = std::fs::metadata(source)?;
        let dev_of = |d: u64| format!("{}:{}", libc::major(d), libc::minor(d));
        if self.is_file() {
            let me = self.file.metadata()?;
            return Ok(src.dev() == me.dev() && src.ino() == me.ino());
        }
        let src_dev = if src.file_type().is_block_device() {
            src.rdev()
        } else {
            src.dev()
        };
        Ok(self.related.contains(&dev_of(src_dev)))
    }

    /// Removes a file target that `open` created, after a preflight
    /// refusal: nothing was restored, so nothing should be left behind.
    pub fn remove_if_created(&self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Whether writes bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    pub fn is_file(&self) -> bool {
        matches!(self.kind, TargetKind::File)
    }

    /// "/dev/sdb (SAMSUNG MZ7, 476.9 GiB)", as the erase prompt names it.
    pub fn describe(&self) -> String {
        let model = match &self.kind {
            TargetKind::Disk(s) | TargetKind::Partition { part: s, .. } => s.model(),
            TargetKind::File => return format!("{} (file)", self.path.display()),
        };
        match model {
            Some(m) => format!("{} ({m}, {})", self.path.display(), human_size(self.size)),
            None => format!("{} ({})", self.path.display(), human_size(self.size)),
        }
    }

    /// Checks that an image of `need` bytes taken with `image_sector`-byte
    /// sectors fits and can be addressed. Files grow, so only devices can be
    /// too small.
    pub fn check_fits(&self, need: u64, image_sector: u32, content: Content) -> Result<()> {
        if !self.is_file() && need > self.size {
            return Err(PreflightError::TooSmall {
                path: self.path.display().to_string(),
                have: human_size(self.size),
                need: human_size(need),
            }
            .into());
        }
        // A partition table records LBAs in the sectors it was made with.
        if content == Content::Disk && !self.is_file() && image_sector != self.sector_size {
            bail!(
                "the image is a disk with {image_sector}-byte sectors but {} has {}-byte sectors",
                self.path.display(),
                self.sector_size
            );
        }
        Ok(())
    }

    /// Asks `Erase contents of … ? [ny]:` on the controlling terminal.
    pub fn confirm_erase(&self) -> Result<()> {
        let tty = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|_| {
                anyhow::anyhow!(
                    "no terminal to confirm erasing {}; pass --noprompt to erase without asking",
                    self.path.display()
                )
            })?;
        let mut w = &tty;
        write!(w, "Erase contents of {}? [ny]: ", self.describe())?;
        w.flush()?;
        let mut answer = String::new();
        std::io::BufReader::new(&tty).read_line(&mut answer)?;
        match answer.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => Ok(()),
            _ => bail!("not erasing {}: not confirmed", self.path.display()),
        }
    }

    /// The first write of a restore: makes the target look empty before any
    /// image data lands (boot area wiped; a file emptied so ranges the image
    /// leaves free read as zeros), then sizes a file target.
    pub fn begin(&mut self, image_size: u64) -> Result<()> {
        if self.is_file() {
            self.file.set_len(0)?;
            self.file.set_len(image_size)?;
            self.size = image_size;
            return Ok(());
        }
        self.wipe_ends()
    }

    /// Zeroes the first and last MiB, where partition tables (GPT keeps a
    /// backup at the end) and nearly all filesystem and RAID signatures live.
    fn wipe_ends(&self) -> Result<()> {
        let span = BOOT_AREA.min(self.size);
        let zeros = AlignedBuf::new(span as usize);
        self.write_at(&zeros[..span as usize], 0)?;
        let tail = self.size.saturating_sub(BOOT_AREA).max(span) / u64::from(self.sector_size)
            * u64::from(self.sector_size);
        let tail_len = (self.size - tail) as usize;
        if tail_len > 0 {
            self.write_at(&zeros[..tail_len], tail)?;
        }
        Ok(())
    }

    /// Writes `buf` at byte `offset`: O_DIRECT when offset, length and memory
    /// are aligned, else through the buffered descriptor.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let sector = u64::from(self.sector_size);
        let aligned = offset.is_multiple_of(sector)
            && (buf.len() as u64).is_multiple_of(sector)
            && (buf.as_ptr() as usize).is_multiple_of(IO_ALIGN);
        let file = if self.direct && !aligned {
            self.buffered()?
        } else {
            &self.file
        };
        file.write_all_at(buf, offset).with_context(|| {
            format!(
                "writing {} bytes at offset {offset} of {}",
                buf.len(),
                self.path.display()
            )
        })
    }

    fn buffered(&self) -> Result<&File> {
        if let Some(f) = self.buffered.get() {
            return Ok(f);
        }
        // Not O_EXCL: our own descriptor already holds the claim.
        let f = OpenOptions::new().read(true).write(true).open(&self.path)?;
        Ok(self.buffered.get_or_init(|| f))
    }

    /// Makes `offset..offset+len` read as zeros. Files were emptied by
    /// `begin` and only need to reach that length; on devices BLKZEROOUT
    /// lets the device (or the loop driver's fallocate) zero without
    /// moving the bytes.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.is_file() {
            // Writing the range's last bytes extends the file; set_len could
            // race with a concurrent write further out and cut it off.
            let tail = len.min(IO_ALIGN as u64);
            let zeros = AlignedBuf::new(tail as usize);
            return self.write_at(&zeros[..tail as usize], offset + len - tail);
        }
        let sector = u64::from(self.sector_size);
        if offset.is_multiple_of(sector)
            && len.is_multiple_of(sector)
            && blockdev::zero_out(&self.file, offset, len).is_ok()
        {
            return Ok(());
        }
        let zeros = AlignedBuf::new(len.min(1 << 20) as usize);
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Flushes everything written to stable storage.
    pub fn sync(&self) -> Result<()> {
        if let Some(b) = self.buffered.get() {
            b.sync_data()?;
        }
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))
    }

    /// A separate O_DIRECT read descriptor for verification, so reads come
    /// from the device and not the page cache.
    pub fn open_verify_reader(&self) -> Result<(File, bool)> {
        Ok(crate::io::open_read_direct(&self.path)?)
    }

    /// After the data is on disk: move a GPT's backup to the end of a larger
    /// disk, drop stale cached blocks, and have the kernel re-read the table.
    pub fn finish_disk(&self) -> Result<()> {
        if let TargetKind::Disk(_) = self.kind {
            // Table code does small unaligned I/O: the buffered descriptor.
            if crate::parttable::relocate_backup_gpt(self.buffered()?, self.size, self.sector_size)?
            {
                self.sync()?;
            }
            blockdev::flush_buffers(&self.file)?;
            blockdev::reread_partitions(&self.file)?;
        } else if let TargetKind::Partition { .. } = self.kind {
            blockdev::flush_buffers(&self.file)?;
        }
        Ok(())
    }

    /// Leaves the target in a valid empty state after a failed restore: a
    /// disk gets a fresh empty GPT, a partition loses every filesystem
    /// signature at its ends, a file becomes all zeros (with an empty GPT if
    /// it held a disk image).
    pub fn erase_to_empty(&mut self, content: Content) -> Result<()> {
        match self.kind {
            TargetKind::File => {
                // A stream of unknown size may have grown the file.
                self.size = self.size.max(self.file.metadata()?.len());
                self.file.set_len(0)?;
                self.file.set_len(self.size)?;
                if content == Content::Disk {
                    crate::parttable::write_empty_gpt(
                        self.buffered()?,
                        self.size,
                        self.sector_size,
                    )?;
                }
            }
            TargetKind::Disk(_) => {
                self.wipe_ends()?;
                crate::parttable::write_empty_gpt(self.buffered()?, self.size, self.sector_size)?;
            }
            TargetKind::Partition { .. } => self.wipe_ends()?,
        }
        self.sync()?;
        self.finish_disk()
    }

    /// restoreexact: checks, without writing, that the target partition can
    /// be resized to exactly `len` bytes in its disk's GPT.
    pub fn check_exact(&self, len: u64) -> Result<()> {
        let (part, disk) = self.partition_and_disk()?;
        let (f, size, sector) = open_disk_readonly(&disk)?;
        crate::parttable::check_resize(&f, size, sector, part.partition.unwrap_or(0), len)
    }

    /// restoreexact: resizes the target partition to `len` bytes in the GPT
    /// and tells the kernel, then adopts the new size.
    pub fn resize_exact(&mut self, len: u64) -> Result<()> {
        let (part, disk) = self.partition_and_disk()?;
        let number = part.partition.unwrap_or(0);
        let node = Path::new("/dev").join(&disk.name);
        // Not O_EXCL: the kernel counts our claim on the partition as a claim
        // on the disk; the GPT is edited through a plain descriptor.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&node)
            .with_context(|| format!("opening {}", node.display()))?;
        let size = blockdev::size_bytes(&f)?;
        let sector = blockdev::logical_sector_size(&f)?;
        crate::parttable::resize_partition(&f, size, sector, number, len)?;
        f.sync_data()?;
        let start: u64 = std::fs::read_to_string(part.sys.join("start"))?
            .trim()
            .parse::<u64>()?
            * 512;
        blockdev::resize_partition(&f, number, start, len).with_context(|| {
            format!(
                "telling the kernel {} is now {}",
                self.path.display(),
                human_size(len)
            )
        })?;
        self.size = blockdev::size_bytes(&self.file)?;
        if self.size != len {
            bail!(
                "{} is {} after resizing, expected {}",
                self.path.display(),
                self.size,
                len
            );
        }
        Ok(())
    }

    fn partition_and_disk(&self) -> Result<(SysBlock, SysBlock)> {
        match &self.kind {
            TargetKind::Partition { part, disk } => Ok((part.clone(), disk.clone())),
            _ => bail!(
                "restoreexact needs a partition as target; {} is not one",
                self.path.display()
            ),
        }
    }
}

fn open_disk_readonly(disk: &SysBlock) -> Result<(File, u64, u32)> {
    let node = Path::new("/dev").join(&disk.name);
    let f = File::open(&node).with_context(|| format!("opening {}", node.display()))?;
    let size = blockdev::size_bytes(&f)?;
    let sector = blockdev::logical_sector_size(&f)?;
    Ok((f, size, sector))
}

/// Refuses when any of `devs` is mounted or is an active swap area.
fn check_not_mounted(display: &str, devs: &[SysBlock]) -> Result<()> {
    if let Some(m) = blockdev::mounts()?
        .into_iter()
        .find(|m| devs.iter().any(|d| d.dev == m.dev))
    {
        return Err(PreflightError::Mounted(display.into(), m.point).into());
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for name in swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        if let Ok(m) = std::fs::metadata(name)
            && m.file_type().is_block_device()
        {
            let dev = format!("{}:{}", libc::major(m.rdev()), libc::minor(m.rdev()));
            if devs.iter().any(|d| d.dev == dev) {
                return Err(PreflightError::Held(display.into(), "swap".into()).into());
            }
        }
    }
    Ok(())
}
