//! Block-device ioctls and sysfs facts, in one private place.
//!
//! Numbers are from linux/fs.h and linux/blkpg.h; nix's macros compute the
//! request codes so the direction and size bits match the kernel's.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod ioctl {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_none!(blkflsbuf, 0x12, 97);
    nix::ioctl_write_ptr!(blkzeroout, 0x12, 127, [u64; 2]);
    nix::ioctl_write_ptr_bad!(
        blkpg,
        nix::request_code_none!(0x12, 105),
        super::BlkpgIoctlArg
    );
}

/// Size of a block device in bytes (BLKGETSIZE64).
pub fn size_bytes(f: &File) -> Result<u64> {
    let mut size = 0u64;
    // SAFETY: the fd is open for the lifetime of `f`; the kernel writes one u64.
    unsafe { ioctl::blkgetsize64(f.as_raw_fd(), &mut size) }.context("BLKGETSIZE64")?;
    Ok(size)
}

/// Logical sector size in bytes (BLKSSZGET): the unit of O_DIRECT alignment
/// and of partition table LBAs.
pub fn logical_sector_size(f: &File) -> Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: the fd is open; the kernel writes one int.
    unsafe { ioctl::blksszget(f.as_raw_fd(), &mut size) }.context("BLKSSZGET")?;
    u32::try_from(size).context("BLKSSZGET returned a negative size")
}

/// Zeroes a byte range on the device (BLKZEROOUT), which devices and loop
/// files can do without transferring the zeros. Offset and length must be
/// multiples of the logical sector size.
pub fn zero_out(f: &File, offset: u64, len: u64) -> nix::Result<()> {
    let range = [offset, len];
    // SAFETY: the fd is open; the kernel reads two u64s from `range`.
    unsafe { ioctl::blkzeroout(f.as_raw_fd(), &range) }.map(drop)
}

/// Drops the device's buffer cache (BLKFLSBUF) so later buffered readers
/// (blkid, the kernel's partition scan) see what O_DIRECT wrote.
pub fn flush_buffers(f: &File) -> Result<()> {
    // SAFETY: the fd is open; the ioctl takes no argument.
    unsafe { ioctl::blkflsbuf(f.as_raw_fd()) }.context("BLKFLSBUF")?;
    Ok(())
}

/// Asks the kernel to re-read the partition table (BLKRRPART). The kernel
/// answers EBUSY while something (udev's probe, a late close) still holds a
/// partition, so retry a few times before naming the errno.
pub fn reread_partitions(f: &File) -> Result<()> {
    let mut last = nix::errno::Errno::UnknownErrno;
    for attempt in 0..10 {
        // SAFETY: the fd is open; the ioctl takes no argument.
        match unsafe { ioctl::blkrrpart(f.as_raw_fd()) } {
            Ok(_) => return Ok(()),
            // Not a partitionable device (e.g. loop without -P): nothing to do.
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(100 << attempt.min(3)));
    }
    bail!("re-reading the partition table failed: {last} (is a partition still in use?)")
}

/// struct blkpg_partition from linux/blkpg.h.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// struct blkpg_ioctl_arg from linux/blkpg.h.
#[repr(C)]
pub struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

/// Tells the kernel partition `number` of the disk open as `disk` now spans
/// `start..start+len` bytes (BLKPG_RESIZE_PARTITION). Unlike BLKRRPART this
/// works while the partition itself is held open, which restoreexact needs.
pub fn resize_partition(disk: &File, number: u32, start: u64, len: u64) -> Result<()> {
    let mut part = BlkpgPartition {
        start: i64::try_from(start)?,
        length: i64::try_from(len)?,
        pno: i32::try_from(number)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&raw mut part).cast(),
    };
    // SAFETY: the fd is open; `arg` points at a live blkpg_partition of the
    // size given in datalen for the duration of the call.
    unsafe { ioctl::blkpg(disk.as_raw_fd(), &arg) }.context("BLKPG resize partition")?;
    Ok(())
}

/// What sysfs says about one block device.
#[derive(Debug, Clone)]
pub struct SysBlock {
    /// /sys/class/block/NAME (canonical path).
    pub sys: PathBuf,
    pub name: String,
    /// "MAJ:MIN".
    pub dev: String,
    /// Partition number when this is a partition.
    pub partition: Option<u32>,
}

impl SysBlock {
    /// Looks up a block device node in sysfs by its device number.
    pub fn of_node(node: &Path) -> Result<SysBlock> {
        let meta = std::fs::metadata(node)?;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", node.display());
        }
        let rdev = meta.rdev();
        let dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        let sys = std::fs::canonicalize(format!("/sys/dev/block/{dev}"))
            .with_context(|| format!("finding {dev} in /sys/dev/block"))?;
        Ok(Self::at(sys, dev))
    }

    fn at(sys: PathBuf, dev: String) -> SysBlock {
        let name = sys
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partition = read_trimmed(&sys.join("partition")).and_then(|s| s.parse().ok());
        SysBlock {
            sys,
            name,
            dev,
            partition,
        }
    }

    /// The whole disk a partition belongs to.
    pub fn parent(&self) -> Option<SysBlock> {
        self.partition?;
        let parent = self.sys.parent()?.to_path_buf();
        let dev = read_trimmed(&parent.join("dev"))?;
        Some(Self::at(parent, dev))
    }

    /// Partitions of a whole disk (empty for a partition).
    pub fn partitions(&self) -> Vec<SysBlock> {
        let Ok(rd) = std::fs::read_dir(&self.sys) else {
            return Vec::new();
        };
        let mut parts: Vec<SysBlock> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("partition").exists())
            .filter_map(|p| {
                let dev = read_trimmed(&p.join("dev"))?;
                Some(Self::at(p, dev))
            })
            .collect();
        parts.sort_by_key(|p| p.partition);
        parts
    }

    /// Names of the devices stacked on this one (dm, md, bcache...).
    pub fn holders(&self) -> Vec<String> {
        std::fs::read_dir(self.sys.join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A short human description: model and size, as the erase prompt shows.
    pub fn model(&self) -> Option<String> {
        let disk = self.parent().unwrap_or_else(|| self.clone());
        read_trimmed(&disk.sys.join("device/model"))
            .filter(|m| !m.is_empty())
            .or_else(|| {
                read_trimmed(&disk.sys.join("loop/backing_file")).map(|b| format!("loop of {b}"))
            })
    }
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// One line of /proc/self/mountinfo, as far as reimage cares.
#[derive(Debug, Clone)]
pub struct Mount {
    /// "MAJ:MIN" of the mounted filesystem's device.
    pub dev: String,
    pub point: String,
    pub read_only: bool,
    /// What was mounted (`/dev/sda1`, `proc`, `tmpfs`), from after the
    /// ` - ` separator.
    pub source: String,
}

/// Everything mounted in this mount namespace.
pub fn mounts() -> Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// Field 3 is the st_dev "major:minor", field 5 the mount point and field
/// 6 the per-mount options; after the optional fields and a lone `-` come
/// the filesystem type and the source (proc(5)).
fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let (dev, point, opts) = (fields.get(2)?, fields.get(4)?, fields.get(5)?);
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    Some(Mount {
        dev: (*dev).to_owned(),
        point: unescape_mount(point),
        read_only: opts.split(',').any(|o| o == "ro"),
        source: unescape_mount(fields.get(sep + 2)?),
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_lines() {
        let m = super::parse_mountinfo_line(
            "36 35 7:1 / /mnt/my\\040disk ro,relatime shared:1 - ext4 /dev/loop1 ro",
        )
        .unwrap();
        assert_eq!(
            (m.dev.as_str(), m.point.as_str(), m.read_only),
            ("7:1", "/mnt/my disk", true)
        );
        assert_eq!(m.source, "/dev/loop1");
        let m = super::parse_mountinfo_line("1 0 8:2 / / rw,noatime - ext4 /dev/sda2 rw").unwrap();
        assert!(!m.read_only);
        assert_eq!(m.source, "/dev/sda2");
        // No separator: not a mountinfo line.
        assert!(super::parse_mountinfo_line("1 0 8:2 / / rw ext4 /dev/sda2 rw").is_none());
        assert!(super::parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(super::unescape_mount("/plain"), "/plain");
        assert_eq!(super::unescape_mount("/end\\04"), "/end\\04");
    }
}
