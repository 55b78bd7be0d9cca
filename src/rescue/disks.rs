//! Disks from sysfs, and the `auto` target choice.
//!
//! Everything here reads a sysfs tree given as a root, never the real
//! /sys behind the caller's back, so tests can build a fake one.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::blockdev::SysBlock;
use crate::util::human_size;

/// sysfs `size` and `start` count 512-byte sectors whatever the device's
/// logical sector size.
const SECTOR: u64 = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// "nvme0n1", "sda", "vda", "mmcblk0".
    pub name: String,
    /// "/dev/nvme0n1".
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub transport: Transport,
    pub removable: bool,
    pub read_only: bool,
    pub rotational: bool,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    Nvme,
    Sata,
    Usb,
    Virtio,
    Mmc,
    Scsi,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// "nvme0n1p1", "sda1".
    pub name: String,
    pub number: u32,
    /// Bytes from the start of the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Filled in by callers with `probe_label`; sysfs doesn't know it.
    pub label: Option<String>,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Nvme => "NVMe",
            Transport::Sata => "SATA",
            Transport::Usb => "USB",
            Transport::Virtio => "virtio",
            Transport::Mmc => "MMC",
            Transport::Scsi => "SCSI",
            Transport::Other => "other",
        })
    }
}

impl Disk {
    /// One line for menus and logs:
    /// "nvme0n1  476.9 GiB  Samsung SSD 980  S64DNF0R  NVMe".
    pub fn describe(&self) -> String {
        let size = human_size(self.size);
        let flags = [(self.removable, "removable"), (self.read_only, "read-only")];
        [Some(self.name.as_str()), Some(size.as_str())]
            .into_iter()
            .chain([self.model.as_deref(), self.serial.as_deref()])
            .flatten()
            .map(str::to_owned)
            .chain([self.transport.to_string()])
            .chain(flags.iter().filter(|f| f.0).map(|f| f.1.to_owned()))
            .collect::<Vec<_>>()
            .join("  ")
    }

    /// Why `auto` must not pick this disk, if it must not.
    fn not_internal(&self, boot: Option<&str>) -> Option<&'static str> {
        if boot == Some(self.name.as_str()) {
            Some("boot disk")
        } else if self.transport == Transport::Usb {
            Some("USB")
        } else if self.removable {
            Some("removable")
        } else if self.read_only {
            Some("read-only")
        } else {
            None
        }
    }

    /// "nvme0n1 (476.9 GiB, Samsung SSD 980)", for one-line error messages.
    fn brief(&self) -> String {
        let model = self.model.as_deref().map(|m| format!(", {m}"));
        let size = human_size(self.size);
        format!("{} ({size}{})", self.name, model.unwrap_or_default())
    }
}

/// Every disk worth offering, sorted by name: not loop, ram, zram, sr
/// (optical), fd, dm-*, md*, nbd, eMMC boot/RPMB areas, and not zero-sized
/// (an empty card reader). Reads attributes only; opens no device.
pub fn list(sys: &Path) -> Result<Vec<Disk>> {
    // Canonical, so the resolved /sys/block links can be made relative to
    // it and a tempdir's own path can't look like a transport.
    let root = std::fs::canonicalize(sys)
        .with_context(|| format!("sysfs root {} is unreadable", sys.display()))?;
    let block = root.join("block");
    let entries =
        std::fs::read_dir(&block).with_context(|| format!("listing {} failed", block.display()))?;
    let mut disks: Vec<Disk> = entries
        .flatten()
        .filter_map(|e| disk(&root, e.file_name().to_str()?))
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

fn worth_offering(name: &str) -> bool {
    const VIRTUAL: [&str; 8] = ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"];
    let mmc_area = name.starts_with("mmcblk") && (name.contains("boot") || name.contains("rpmb"));
    !mmc_area && !VIRTUAL.iter().any(|p| name.starts_with(p))
}

fn disk(root: &Path, name: &str) -> Option<Disk> {
    if !worth_offering(name) {
        return None;
    }
    // /sys/block/NAME links into /sys/devices/...; the bus is in that path.
    let dir = std::fs::canonicalize(root.join("block").join(name)).ok()?;
    let attr = |file: &str| attribute(&dir.join(file));
    let is_set = |file: &str| attr(file).as_deref() == Some("1");
    let size = sectors(&dir.join("size"));
    if size == 0 {
        return None;
    }
    let devpath = dir.strip_prefix(root).unwrap_or(&dir);
    let transport = transport(name, &format!("/{}", devpath.display()), &dir);
    let model = attr("device/model").or_else(|| {
        // MMC cards keep their product name in `name`.
        (transport == Transport::Mmc)
            .then(|| attr("device/name"))
            .flatten()
    });
    // virtio-blk puts `serial` on the disk itself, not its device.
    let serial = attr("device/serial")
        .or_else(|| attr("serial"))
        .or_else(|| attr("device/wwid").as_deref().and_then(wwid_serial));
    let whole = SysBlock {
        sys: dir.clone(),
        name: name.to_owned(),
        dev: attr("dev").unwrap_or_default(),
        partition: None,
    };
    let partitions = whole
        .partitions()
        .into_iter()
        .filter_map(|p| {
            Some(Partition {
                number: p.partition?,
                start: sectors(&p.sys.join("start")),
                size: sectors(&p.sys.join("size")),
                name: p.name,
                label: None,
            })
        })
        .collect();
    Some(Disk {
        name: name.to_owned(),
        path: Path::new("/dev").join(name),
        size,
        model,
        serial,
        transport,
        removable: is_set("removable"),
        read_only: is_set("ro"),
        rotational: is_set("queue/rotational"),
        partitions,
    })
}

/// The bus, from the device path under /sys. USB comes first: a USB stick
/// is a SCSI disk whose path runs through the USB controller.
fn transport(name: &str, devpath: &str, dir: &Path) -> Transport {
    if devpath.contains("/usb") {
        Transport::Usb
    } else if devpath.contains("/nvme/") || name.starts_with("nvme") {
        Transport::Nvme
    } else if devpath.contains("/virtio") {
        Transport::Virtio
    } else if devpath.contains("/mmc_host/") || name.starts_with("mmcblk") {
        Transport::Mmc
    } else if devpath.contains("/ata") {
        Transport::Sata
    } else if dir.join("device/scsi_device").exists() {
        Transport::Scsi
    } else {
        Transport::Other
    }
}

/// The serial from a SCSI `wwid` of the T10 form ("t10.ATA     MODEL
/// SERIAL"), the only form that carries one; NAA and EUI ids are not serials.
fn wwid_serial(wwid: &str) -> Option<String> {
    let words: Vec<&str> = wwid.strip_prefix("t10.")?.split_whitespace().collect();
    match words[..] {
        [_vendor, _, .., serial] => Some(serial.to_owned()),
        _ => None,
    }
}

/// A sysfs text attribute, trimmed (SCSI pads models with spaces); None
/// when missing or blank. Control characters are blanked because device
/// firmware writes these and they end up on the console.
fn attribute(path: &Path) -> Option<String> {
    text(&std::fs::read(path).ok()?)
}

/// A sector-count attribute in bytes; 0 when missing or malformed.
fn sectors(path: &Path) -> u64 {
    attribute(path)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |n| n.saturating_mul(SECTOR))
}

/// Bytes up to the first NUL as printable trimmed text, None if blank.
fn text(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s: String = String::from_utf8_lossy(&bytes[..end])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The `auto` target: the single internal disk (not removable, not USB,
/// not read-only, not `boot`, the disk the rescue system came from, given
/// as a name or /dev path). Refuses when there is none or more than one,
/// naming every candidate, because guessing here erases the wrong disk.
pub fn auto_target<'a>(disks: &'a [Disk], boot: Option<&str>) -> Result<&'a Disk> {
    let boot = boot.map(|b| b.strip_prefix("/dev/").unwrap_or(b));
    let internal: Vec<&Disk> = disks
        .iter()
        .filter(|d| d.not_internal(boot).is_none())
        .collect();
    match internal[..] {
        [one] => Ok(one),
        [] if disks.is_empty() => bail!("reimage.target=auto: no disks found"),
        [] => {
            let seen: Vec<String> = disks
                .iter()
                .map(|d| format!("{}: {}", d.brief(), d.not_internal(boot).unwrap_or("?")))
                .collect();
            bail!(
                "reimage.target=auto: no internal disk, only {}; give reimage.target=/dev/...",
                seen.join(", ")
            )
        }
        _ => {
            let seen: Vec<String> = internal.iter().map(|d| d.brief()).collect();
            bail!(
                "reimage.target=auto: {} internal disks, {}; give reimage.target=/dev/... to choose",
                internal.len(),
                seen.join(", ")
            )
        }
    }
}

/// The filesystem labels the boot stick's partitions carry (image-build
/// makes them; FAT and exFAT labels hold at most 11 characters). A disk
/// with one of them is the rescue system's own medium.
pub const STICK_LABELS: [&str; 2] = [BOOT_LABEL, "REIMAGEDATA"];

/// The stick's EFI system partition: boot loaders, kernel, initramfs.
pub const BOOT_LABEL: &str = "REIMAGEBOOT";

/// Fills in every partition's label by reading its superblock under `dev`
/// (/dev).
pub fn probe_labels(disks: &mut [Disk], dev: &Path) {
    for part in disks.iter_mut().flat_map(|d| d.partitions.iter_mut()) {
        part.label = probe_label(&dev.join(&part.name));
    }
}

/// The disk the rescue system booted from: the one whose partitions carry
/// a [`STICK_LABELS`] label (labels must have been probed). Never offered
/// as a target, never picked by `auto`.
pub fn boot_disk(disks: &[Disk]) -> Option<&Disk> {
    disks.iter().find(|d| {
        d.partitions.iter().any(|p| {
            p.label
                .as_deref()
                .is_some_and(|l| STICK_LABELS.contains(&l))
        })
    })
}

/// How much of a partition `probe_label` reads: all the superblocks it
/// knows sit in the first few KiB.
const PROBE_LEN: u64 = 128 << 10;

/// The filesystem label of a partition (ext2/3/4, FAT12/16/32, exFAT), or
/// None when unreadable, unrecognised or unlabelled.
pub fn probe_label(dev: &Path) -> Option<String> {
    let mut f = File::open(dev).ok()?;
    let mut head = Vec::new();
    (&mut f).take(PROBE_LEN).read_to_end(&mut head).ok()?;
    let label = ext_label(&head)
        .or_else(|| exfat_label(&f, &head))
        .or_else(|| fat_label(&head))?;
    Some(label).filter(|l| l != "NO NAME")
}

fn at<const N: usize>(buf: &[u8], offset: usize) -> Option<[u8; N]> {
    buf.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// ext2/3/4: superblock at 1024, magic 0xEF53 at +56, s_volume_name[16] at +120.
fn ext_label(head: &[u8]) -> Option<String> {
    (at::<2>(head, 1024 + 56)? == 0xEF53u16.to_le_bytes())
        .then(|| text(&at::<16>(head, 1024 + 120)?))
        .flatten()
}

/// FAT: the boot sector's extended BPB holds an 11-byte label after the
/// 0x29 signature; FAT32 (whose 16-bit FAT size is 0) moves it further in.
fn fat_label(head: &[u8]) -> Option<String> {
    if at::<2>(head, 510)? != [0x55, 0xAA] {
        return None;
    }
    let fat32 = at::<2>(head, 0x16)? == [0, 0];
    let (signature, label) = if fat32 { (0x42, 0x47) } else { (0x26, 0x2B) };
    (at::<1>(head, signature)? == [0x29])
        .then(|| text(&at::<11>(head, label)?))
        .flatten()
}

/// exFAT keeps its label in a root-directory entry (type 0x83: a count of
/// UTF-16 units, then up to 11 of them), so this reads the first part of
/// the root directory's first cluster, located from the boot sector.
fn exfat_label(f: &File, head: &[u8]) -> Option<String> {
    if at::<8>(head, 3)? != *b"EXFAT   " {
        return None;
    }
    let u32_at = |off| at::<4>(head, off).map(u32::from_le_bytes).map(u64::from);
    let (heap, root) = (u32_at(88)?, u32_at(96)?);
    let sector_shift = u32::from(*head.get(108)?);
    let cluster_shift = sector_shift + u32::from(*head.get(109)?);
    if !(9..=12).contains(&sector_shift) || cluster_shift > 25 {
        return None;
    }
    let offset = (heap << sector_shift).checked_add(root.checked_sub(2)? << cluster_shift)?;
    let mut dir = vec![0; 4096.min(1 << cluster_shift)];
    f.read_exact_at(&mut dir, offset).ok()?;
    let entry = dir
        .chunks_exact(32)
        .take_while(|e| e[0] != 0)
        .find(|e| e[0] == 0x83)?;
    let units: Vec<u16> = entry[2..2 + 2 * usize::from(entry[1].min(11))]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    text(String::from_utf16_lossy(&units).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    /// Builds one disk the way the kernel lays it out: a directory under
    /// devices/ with attribute files, partition subdirectories, and a
    /// relative block/NAME symlink to it. `devpath` ends in the disk name.
    fn fake_disk(sys: &Path, devpath: &str, attrs: &[(&str, &str)], parts: &[(u64, u64)]) {
        let dir = sys.join("devices").join(devpath);
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let sep = if name.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        let mut files: Vec<(String, String)> =
            attrs.iter().map(|&(k, v)| (k.into(), v.into())).collect();
        for (i, (start, size)) in parts.iter().enumerate() {
            let part = format!("{name}{sep}{}", i + 1);
            files.extend([
                (format!("{part}/partition"), (i + 1).to_string()),
                (format!("{part}/start"), start.to_string()),
                (format!("{part}/size"), size.to_string()),
                (format!("{part}/dev"), format!("259:{}", i + 1)),
            ]);
        }
        for (file, value) in files {
            let path = dir.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("{value}\n")).unwrap();
        }
        fs::create_dir_all(sys.join("block")).unwrap();
        let link = Path::new("../devices").join(devpath);
        std::os::unix::fs::symlink(link, sys.join("block").join(name)).unwrap();
    }

    fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        fake_disk(
            sys,
            "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1",
            &[
                ("size", "1000215216"),
                ("device/model", "Samsung SSD 980 1TB                     "),
                ("device/serial", "S64DNF0R123456     "),
                ("queue/rotational", "0"),
                ("removable", "0"),
                ("ro", "0"),
                ("dev", "259:0"),
            ],
            &[(2048, 1048576), (1050624, 999164592)],
        );
        fake_disk(
            sys,
            "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
            &[
                ("size", "3907029168"),
                ("device/model", "ST2000DM008-2FR1"),
                (
                    "device/wwid",
                    "t10.ATA     ST2000DM008-2FR102                      ZFL0ABCD",
                ),
                ("device/scsi_device/0:0:0:0/dev", "21:0"),
                ("queue/rotational", "1"),
                ("removable", "0"),
            ],
            &[(2048, 3907025072)],
        );
        fake_disk(
            sys,
            "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
            &[
                ("size", "30031872"),
                ("device/model", "Cruzer Blade    "),
                ("device/scsi_device/6:0:0:0/dev", "21:1"),
                ("removable", "1"),
                ("queue/rotational", "1"),
            ],
            &[],
        );
        fake_disk(
            sys,
            "pci0000:00/0000:00:18.0/host2/target2:0:0/2:0:0:0/block/sdc",
            &[
                ("size", "195312500"),
                ("device/model", "ST9100SAS"),
                ("device/wwid", "naa.5000c500a1b2c3d4"),
                ("device/scsi_device/2:0:0:0/dev", "21:2"),
                ("ro", "1"),
            ],
            &[],
        );
        fake_disk(
            sys,
            "pci0000:00/0000:00:04.0/virtio1/block/vda",
            &[("size", "41943040"), ("serial", "vm-disk-1")],
            &[],
        );
        fake_disk(
            sys,
            "platform/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0",
            &[
                ("size", "61071360"),
                ("device/name", "BJTD4R"),
                ("device/serial", "0x1a2b3c4d"),
            ],
            &[(8192, 524288)],
        );
        // The never-offered kinds, each with a plausible size, and an
        // empty card reader.
        for (devpath, size) in [
            (
                "platform/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0boot0",
                "8192",
            ),
            ("virtual/block/loop0", "2048"),
            ("virtual/block/ram0", "8192"),
            ("virtual/block/zram0", "8192"),
            ("virtual/block/dm-0", "8192"),
            ("virtual/block/md127", "8192"),
            (
                "pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sr0",
                "2097151",
            ),
            (
                "pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/host7/target7:0:0/7:0:0:0/block/sdd",
                "0",
            ),
        ] {
            fake_disk(sys, devpath, &[("size", size)], &[]);
        }
        t
    }

    fn by_name<'a>(disks: &'a [Disk], name: &str) -> &'a Disk {
        disks.iter().find(|d| d.name == name).unwrap()
    }

    #[test]
    fn lists_disks_from_sysfs() {
        let t = fake_sys();
        let disks = list(t.path()).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["mmcblk0", "nvme0n1", "sda", "sdb", "sdc", "vda"]);

        let nvme = by_name(&disks, "nvme0n1");
        assert_eq!(
            *nvme,
            Disk {
                name: "nvme0n1".into(),
                path: "/dev/nvme0n1".into(),
                size: 1000215216 * 512,
                model: Some("Samsung SSD 980 1TB".into()),
                serial: Some("S64DNF0R123456".into()),
                transport: Transport::Nvme,
                removable: false,
                read_only: false,
                rotational: false,
                partitions: vec![
                    Partition {
                        name: "nvme0n1p1".into(),
                        number: 1,
                        start: 2048 * 512,
                        size: 1048576 * 512,
                        label: None,
                    },
                    Partition {
                        name: "nvme0n1p2".into(),
                        number: 2,
                        start: 1050624 * 512,
                        size: 999164592 * 512,
                        label: None,
                    },
                ],
            }
        );
        assert_eq!(
            nvme.describe(),
            "nvme0n1  476.9 GiB  Samsung SSD 980 1TB  S64DNF0R123456  NVMe"
        );

        let sda = by_name(&disks, "sda");
        assert_eq!((sda.transport, sda.rotational), (Transport::Sata, true));
        assert_eq!(sda.serial.as_deref(), Some("ZFL0ABCD"));
        assert_eq!(sda.partitions[0].name, "sda1");

        let usb = by_name(&disks, "sdb");
        assert_eq!((usb.transport, usb.removable), (Transport::Usb, true));
        assert_eq!(
            usb.describe(),
            "sdb  14.3 GiB  Cruzer Blade  USB  removable"
        );

        let sas = by_name(&disks, "sdc");
        assert_eq!((sas.transport, sas.read_only), (Transport::Scsi, true));
        assert_eq!(sas.serial, None, "an NAA wwid is not a serial");

        let vda = by_name(&disks, "vda");
        assert_eq!(vda.transport, Transport::Virtio);
        assert_eq!(vda.serial.as_deref(), Some("vm-disk-1"));
        assert_eq!(vda.describe(), "vda  20.0 GiB  vm-disk-1  virtio");

        let mmc = by_name(&disks, "mmcblk0");
        assert_eq!(mmc.transport, Transport::Mmc);
        assert_eq!(mmc.model.as_deref(), Some("BJTD4R"));
        assert_eq!(mmc.partitions[0].name, "mmcblk0p1");
    }

    #[test]
    fn list_copes_with_odd_trees() {
        let t = tempfile::tempdir().unwrap();
        let err = list(t.path()).unwrap_err().to_string();
        assert!(err.contains("/block"), "{err}");
        // A dangling link, a garbage size and a control character in a model.
        fs::create_dir(t.path().join("block")).unwrap();
        std::os::unix::fs::symlink("../devices/gone", t.path().join("block/sdz")).unwrap();
        fake_disk(t.path(), "x/block/sdy", &[("size", "12abc")], &[]);
        fake_disk(
            t.path(),
            "x/block/sdx",
            &[("size", "8"), ("device/model", "a\x1b[2Jb")],
            &[],
        );
        let disks = list(t.path()).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].model.as_deref(), Some("a [2Jb"));
        assert_eq!(disks[0].transport, Transport::Other);
        assert!(list(Path::new("/nonexistent/sys")).is_err());
    }

    fn only(disks: &[Disk], names: &[&str]) -> Vec<Disk> {
        disks
            .iter()
            .filter(|d| names.contains(&d.name.as_str()))
            .cloned()
            .collect()
    }

    #[test]
    fn auto_picks_the_single_internal_disk() {
        let t = fake_sys();
        let all = list(t.path()).unwrap();
        let disks = only(&all, &["nvme0n1", "sdb", "sdc"]);
        assert_eq!(auto_target(&disks, None).unwrap().name, "nvme0n1");

        let disks = only(&all, &["nvme0n1", "sda"]);
        assert_eq!(
            auto_target(&disks, Some("/dev/sda")).unwrap().name,
            "nvme0n1"
        );
        assert_eq!(auto_target(&disks, Some("nvme0n1")).unwrap().name, "sda");
    }

    #[test]
    fn the_stick_is_found_by_its_labels() {
        let t = fake_sys();
        let mut all = list(t.path()).unwrap();
        let dev = tempfile::tempdir().unwrap();
        // An ext4-looking superblock labelled REIMAGEDATA on sda1 only.
        let mut sb = vec![0u8; 2048];
        sb[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[1024 + 120..1024 + 131].copy_from_slice(b"REIMAGEDATA");
        let sda = by_name(&all, "sda").clone();
        let part = &sda.partitions.first().expect("sda has a partition").name;
        std::fs::write(dev.path().join(part), &sb).unwrap();
        probe_labels(&mut all, dev.path());
        assert_eq!(boot_disk(&all).map(|d| d.name.as_str()), Some("sda"));
        // Unreadable partitions just have no label.
        assert!(
            by_name(&all, "nvme0n1")
                .partitions
                .iter()
                .all(|p| p.label.is_none())
        );
        // Another label is not the stick.
        sb[1024 + 120..1024 + 131].copy_from_slice(b"DATA\0\0\0\0\0\0\0");
        std::fs::write(dev.path().join(part), &sb).unwrap();
        probe_labels(&mut all, dev.path());
        assert!(boot_disk(&all).is_none());
    }

    #[test]
    fn auto_refuses_to_guess() {
        let t = fake_sys();
        let all = list(t.path()).unwrap();
        let err = auto_target(&all, None).unwrap_err().to_string();
        assert!(
            err.starts_with("reimage.target=auto: 4 internal disks"),
            "{err}"
        );
        for named in [
            "nvme0n1 (476.9 GiB, Samsung SSD 980 1TB)",
            "sda (1.8 TiB",
            "vda (",
            "mmcblk0 (",
        ] {
            assert!(err.contains(named), "{err}");
        }
        assert!(!err.contains("sdb") && !err.contains('\n'), "{err}");

        let err = auto_target(&only(&all, &["sdb", "sdc", "sda"]), Some("sda"))
            .unwrap_err()
            .to_string();
        for why in [
            "sda (1.8 TiB, ST2000DM008-2FR1): boot disk",
            "sdb (",
            "USB",
            "sdc (",
            "read-only",
        ] {
            assert!(err.contains(why), "{err}");
        }
        assert!(
            auto_target(&[], None)
                .unwrap_err()
                .to_string()
                .contains("no disks")
        );
    }

    fn mkfs(args: &[&str], image: &Path, size: u64) -> bool {
        fs::File::create(image).unwrap().set_len(size).unwrap();
        let made = Command::new(args[0]).args(&args[1..]).arg(image).output();
        match made {
            Ok(out) if out.status.success() => true,
            other => {
                eprintln!("skipping {}: {other:?}", args[0]);
                false
            }
        }
    }

    #[test]
    fn labels_of_real_filesystems() {
        let t = tempfile::tempdir().unwrap();
        let cases: [(&[&str], u64, Option<&str>); 5] = [
            (
                &["mkfs.ext4", "-q", "-F", "-L", "rootfs"],
                4 << 20,
                Some("rootfs"),
            ),
            (&["mkfs.ext4", "-q", "-F"], 4 << 20, None),
            (
                &["mkfs.vfat", "-n", "EFI SYSTEM"],
                4 << 20,
                Some("EFI SYSTEM"),
            ),
            (
                &["mkfs.vfat", "-F", "32", "-n", "BIGFAT"],
                40 << 20,
                Some("BIGFAT"),
            ),
            (&["mkfs.vfat"], 4 << 20, None),
        ];
        for (i, (args, size, want)) in cases.into_iter().enumerate() {
            let image = t.path().join(format!("fs{i}"));
            if mkfs(args, &image, size) {
                assert_eq!(probe_label(&image).as_deref(), want, "{args:?}");
            }
        }
    }

    #[test]
    fn exfat_label_from_the_root_directory() {
        // No mkfs.exfat here: a hand-made boot sector with 512-byte sectors,
        // 8-sector clusters, the heap at sector 64 and the root in cluster 4.
        let mut img = vec![0u8; 64 * 512 + 3 * 4096];
        img[3..11].copy_from_slice(b"EXFAT   ");
        img[88..92].copy_from_slice(&64u32.to_le_bytes());
        img[96..100].copy_from_slice(&4u32.to_le_bytes());
        (img[108], img[109]) = (9, 3);
        let root = 64 * 512 + 2 * 4096;
        img[root] = 0x81; // allocation bitmap entry first, as mkfs puts it
        let label = root + 32;
        (img[label], img[label + 1]) = (0x83, 4);
        for (i, unit) in "Data".encode_utf16().enumerate() {
            img[label + 2 + 2 * i..][..2].copy_from_slice(&unit.to_le_bytes());
        }
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("exfat");
        fs::write(&path, &img).unwrap();
        assert_eq!(probe_label(&path).as_deref(), Some("Data"));
        // Root cluster past the end of the device.
        img[96..100].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &img).unwrap();
        assert_eq!(probe_label(&path), None);
    }

    #[test]
    fn garbage_has_no_label() {
        let t = tempfile::tempdir().unwrap();
        let mut patterns: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0; 200],
            vec![0; 128 << 10],
            vec![0xFF; 256 << 10],
            (0..70_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ];
        // Signatures without what they promise: a FAT boot signature with
        // no 0x29 marker, an exFAT name with a nonsense geometry.
        let mut fat = vec![0u8; 4096];
        (fat[510], fat[511], fat[0x16]) = (0x55, 0xAA, 8);
        patterns.push(fat);
        let mut exfat = vec![0xFFu8; 4096];
        exfat[3..11].copy_from_slice(b"EXFAT   ");
        patterns.push(exfat);
        for (i, bytes) in patterns.iter().enumerate() {
            let path = t.path().join(format!("g{i}"));
            fs::write(&path, bytes).unwrap();
            assert_eq!(probe_label(&path), None, "pattern {i}");
        }
        assert_eq!(probe_label(t.path()), None, "a directory");
        assert_eq!(probe_label(&t.path().join("missing")), None);
    }
}
