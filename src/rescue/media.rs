//! The boot stick's filesystems: found by label (`disks::boot_disk`),
//! mounted read-only for the menu's image list and for
//! `reimage.source=stick:PATH`.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use nix::mount::MsFlags;

use super::disks::{self, Disk};
use crate::blockdev::Mount;

/// Where rescue mode mounts the boot stick's filesystems, one directory
/// per partition name.
pub const MEDIA_DIR: &str = "/run/reimage/media";

/// The devices that may hold images: the partitions, or the disk itself
/// when it has none (a stick formatted without a table). Not the boot
/// stick's REIMAGEBOOT partition: it holds the rescue system's own kernel
/// and initramfs (which look like a compressed raw image), never images.
/// Labels must have been probed (`disks::probe_labels`).
fn device_names(disk: &Disk) -> Vec<String> {
    if disk.partitions.is_empty() {
        return vec![disk.name.clone()];
    }
    disk.partitions
        .iter()
        .filter(|p| p.label.as_deref() != Some(disks::BOOT_LABEL))
        .map(|p| p.name.clone())
        .collect()
}

/// A block device's "MAJ:MIN", as mountinfo names what is mounted.
pub fn dev_number(node: &Path) -> Option<String> {
    let meta = std::fs::metadata(node).ok()?;
    let rdev = meta.rdev();
    meta.file_type()
        .is_block_device()
        .then(|| format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// Rescue mode: mounts each filesystem of the boot stick not mounted yet
/// under [`MEDIA_DIR`]. Read-only, so nothing on the stick changes and
/// pulling it out loses nothing. Returns what went wrong, a line each.
pub fn mount_stick(stick: &Disk, mounts: &[Mount]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in device_names(stick) {
        let dev = Path::new("/dev").join(&name);
        let Some(number) = dev_number(&dev) else {
            continue;
        };
        if mounts.iter().any(|m| m.dev == number) {
            continue;
        }
        let Some(fstype) = fs_type(&dev) else {
            continue;
        };
        let dir = Path::new(MEDIA_DIR).join(&name);
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mounted = std::fs::create_dir_all(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                nix::mount::mount(Some(&dev), &dir, Some(fstype), flags, None::<&str>)
                    .map_err(anyhow::Error::from)
            });
        if let Err(e) = mounted {
            problems.push(format!(
                "mounting {} ({fstype}) on {}: {e}",
                dev.display(),
                dir.display()
            ));
        }
    }
    problems
}

/// Bytes [`fs_type_of`] looks at: the ext superblock ends within them.
const FS_PROBE: usize = 2048;

/// The filesystem on a device, as mount(2) names it; see [`fs_type_of`].
fn fs_type(dev: &Path) -> Option<&'static str> {
    let mut head = [0u8; FS_PROBE];
    std::fs::File::open(dev).ok()?.read_exact(&mut head).ok()?;
    fs_type_of(&head)
}

/// The data-partition filesystems rescue mode mounts, told by their
/// superblocks so nothing else is ever handed to the kernel to mount:
/// ext2/3/4 (magic 0xEF53 at 1080; the ext4 driver mounts all three),
/// exFAT (its name at 3), FAT (boot signature at 510 and the type string
/// of the FAT12/16 or FAT32 boot sector).
fn fs_type_of(head: &[u8; FS_PROBE]) -> Option<&'static str> {
    if head[1080..1082] == 0xEF53u16.to_le_bytes() {
        Some("ext4")
    } else if &head[3..11] == b"EXFAT   " {
        Some("exfat")
    } else if head[510..512] == [0x55, 0xAA]
        && (&head[54..57] == b"FAT" || &head[82..87] == b"FAT32")
    {
        Some("vfat")
    } else {
        None
    }
}

/// Where `disk`'s filesystems are mounted (any of its devices, anywhere).
pub fn mount_points(disk: &Disk, mounts: &[Mount]) -> Vec<PathBuf> {
    let mut points = Vec::new();
    for dev in device_names(disk) {
        let Some(number) = dev_number(&Path::new("/dev").join(&dev)) else {
            continue;
        };
        for m in mounts.iter().filter(|m| m.dev == number) {
            let point = PathBuf::from(&m.point);
            if !points.contains(&point) {
                points.push(point);
            }
        }
    }
    points
}

/// `reimage.source=stick:PATH`: the file PATH (relative to a filesystem's
/// root) on the boot stick, whose filesystems are mounted read-only first.
/// `sys` is /sys.
pub fn stick_file(sys: &Path, rel: &str) -> Result<PathBuf> {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        bail!("stick:{rel}: give the image's path on the stick, e.g. stick:images/lab.rimg");
    }
    let mut all = disks::list(sys)?;
    disks::probe_labels(&mut all, Path::new("/dev"));
    let Some(stick) = disks::boot_disk(&all) else {
        bail!(
            "stick:{rel}: no boot stick found (no partition labelled {})",
            disks::STICK_LABELS.join(" or ")
        );
    };
    let problems = mount_stick(stick, &crate::blockdev::mounts()?);
    let points = mount_points(stick, &crate::blockdev::mounts()?);
    if let Some(found) = points.iter().map(|p| p.join(rel)).find(|f| f.is_file()) {
        return Ok(found);
    }
    let searched: Vec<String> = points.iter().map(|p| p.display().to_string()).collect();
    let mut msg = format!(
        "stick:{rel}: not on the boot stick /dev/{} (searched {})",
        stick.name,
        if searched.is_empty() {
            "nothing mounted".to_owned()
        } else {
            searched.join(", ")
        }
    );
    if !problems.is_empty() {
        msg.push_str(&format!("; {}", problems.join("; ")));
    }
    bail!("{msg}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rescue::disks::{Partition, Transport};

    #[test]
    fn the_boot_partition_is_never_searched_for_images() {
        let part = |n: u32, label: Option<&str>| Partition {
            name: format!("sda{n}"),
            number: n,
            start: u64::from(n) << 20,
            size: 1 << 20,
            label: label.map(str::to_owned),
        };
        let mut stick = Disk {
            name: "sda".into(),
            path: "/dev/sda".into(),
            size: 8 << 30,
            model: None,
            serial: None,
            transport: Transport::Usb,
            removable: true,
            read_only: false,
            rotational: false,
            partitions: vec![part(1, Some("REIMAGEBOOT")), part(2, Some("REIMAGEDATA"))],
        };
        assert_eq!(device_names(&stick), ["sda2"]);
        stick.partitions[0].label = Some("EFI".into());
        assert_eq!(device_names(&stick), ["sda1", "sda2"]);
        stick.partitions.clear();
        assert_eq!(device_names(&stick), ["sda"]);
    }

    #[test]
    fn filesystems_are_told_by_their_superblocks() {
        let mut head = [0u8; FS_PROBE];
        assert_eq!(fs_type_of(&head), None);
        head[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(fs_type_of(&head), Some("ext4"));
        let mut head = [0u8; FS_PROBE];
        head[3..11].copy_from_slice(b"EXFAT   ");
        assert_eq!(fs_type_of(&head), Some("exfat"));
        let mut head = [0u8; FS_PROBE];
        head[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(fs_type_of(&head), None, "an MBR is not a filesystem");
        head[54..59].copy_from_slice(b"FAT16");
        assert_eq!(fs_type_of(&head), Some("vfat"));
        let mut head = [0u8; FS_PROBE];
        head[510..512].copy_from_slice(&[0x55, 0xAA]);
        head[82..87].copy_from_slice(b"FAT32");
        assert_eq!(fs_type_of(&head), Some("vfat"));

        // And on real filesystems, where the tools are installed.
        let t = tempfile::tempdir().unwrap();
        for (tool, args, want) in [
            ("mkfs.ext4", &["-q", "-F"][..], "ext4"),
            ("mkfs.vfat", &[][..], "vfat"),
            ("mkfs.vfat", &["-F", "32"][..], "vfat"),
        ] {
            let image = t.path().join("fs");
            std::fs::File::create(&image)
                .unwrap()
                .set_len(40 << 20)
                .unwrap();
            let made = std::process::Command::new(tool)
                .args(args)
                .arg(&image)
                .output();
            if made.is_ok_and(|o| o.status.success()) {
                assert_eq!(fs_type(&image), Some(want), "{tool} {args:?}");
            }
        }
    }
}
