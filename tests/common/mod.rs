//! Helpers for black-box tests of the reimage binary on real files and
//! loop devices. Needs root (losetup, mount) and e2fsprogs, gdisk,
//! util-linux; `scripts/test` installs them.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod netns;

use reimage::image::format::{ImageHead, read_head};

pub const MIB: u64 = 1 << 20;

/// A scratch directory on disk (not tmpfs: loop devices over tmpfs files
/// behave differently), removed on drop.
pub fn scratch() -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp/reimage-tests").unwrap();
    tempfile::Builder::new()
        .prefix("t")
        .tempdir_in("/var/tmp/reimage-tests")
        .unwrap()
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs reimage without a controlling terminal (setsid), as CI would.
pub fn reimage(args: &[&str]) -> Output {
    Command::new("setsid")
        .arg("-w")
        .arg(env!("CARGO_BIN_EXE_reimage"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running reimage")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts exit status 1 with exactly one line on stderr containing `needle`.
pub fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1, got {:?}; stderr: {err}",
        o.status
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

/// A loop device over a file, detached on drop.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn new(file: &Path) -> Loop {
        Self::with(file, &["--direct-io=on"])
    }

    pub fn with(file: &Path, extra: &[&str]) -> Loop {
        let mut args = vec!["--find", "--show"];
        args.extend_from_slice(extra);
        let f = file.to_str().unwrap();
        args.push(f);
        let dev = sh("losetup", &args).trim().to_owned();
        Loop { dev }
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.dev)
    }

    /// Makes the kernel create partition devices from the table on the
    /// device (this host kernel has no partition parsers, so BLKRRPART
    /// finds nothing; partx adds them with BLKPG).
    pub fn add_partitions(&self) {
        sh("partx", &["--add", &self.dev]);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("partx").args(["--delete", &self.dev]).output();
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

/// A directory of real files (docs and binaries from the host) to put into
/// test filesystems, about `mib` MiB, built once per scratch dir.
pub fn sample_files(dir: &Path, mib: u64) -> PathBuf {
    let root = dir.join("files");
    std::fs::create_dir_all(&root).unwrap();
    let mut total = 0u64;
    let mut n = 0;
    for src in ["/usr/share/doc", "/usr/bin", "/usr/lib/x86_64-linux-gnu"] {
        for entry in walk(Path::new(src)) {
            if total >= mib * MIB {
                return root;
            }
            let Ok(meta) = std::fs::symlink_metadata(&entry) else {
                continue;
            };
            if !meta.is_file() || meta.len() > 4 * MIB {
                continue;
            }
            let dest = root.join(format!(
                "{n:05}-{}",
                entry.file_name().unwrap().to_string_lossy()
            ));
            if std::fs::copy(&entry, &dest).is_ok() {
                total += meta.len();
                n += 1;
            }
        }
    }
    root
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An ext4 filesystem image of `mib` MiB holding `files`.
pub fn make_ext4(path: &Path, mib: u64, files: &Path) {
    sh(
        "truncate",
        &["-s", &format!("{mib}M"), path.to_str().unwrap()],
    );
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "root_owner=0:0",
            "-d",
            files.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
}

/// A GPT disk image made by `scripts/make-sample-disk`: partition 1 a
/// 16 MiB FAT ESP, partition 2 an ext4 filesystem with `files`, free space
/// after it. Returns the ext4 partition's byte offset and length.
pub fn make_gpt_disk(path: &Path, disk_mib: u64, ext4_mib: u64, files: &Path) -> (u64, u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make-sample-disk");
    sh(
        script,
        &[
            path.to_str().unwrap(),
            &disk_mib.to_string(),
            &ext4_mib.to_string(),
            files.to_str().unwrap(),
        ],
    );
    (17 * MIB, ext4_mib * MIB)
}

pub fn head_of(image: &Path) -> ImageHead {
    read_head(&mut std::fs::File::open(image).unwrap()).unwrap()
}

/// Reads `len` bytes at `offset` of a file or device.
pub fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Asserts that every extent the image stores reads back identically from
/// `source` and `target`.
pub fn assert_extents_match(image: &Path, source: &Path, target: &Path) {
    assert_extents_match_outside(image, source, target, &[]);
}

/// Like `assert_extents_match`, ignoring bytes in `skip` (ranges reimage
/// rewrites on purpose, like GPT headers moved to a larger disk's end).
pub fn assert_extents_match_outside(
    image: &Path,
    source: &Path,
    target: &Path,
    skip: &[std::ops::Range<u64>],
) {
    let head = head_of(image);
    for e in &head.manifest.extents {
        let mut a = read_at(source, e.target_offset, u64::from(e.length));
        let mut b = read_at(target, e.target_offset, u64::from(e.length));
        for r in skip {
            for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
                if r.contains(&(e.target_offset + i as u64)) {
                    (*x, *y) = (0, 0);
                }
            }
        }
        assert!(a == b, "extent at {} differs", e.target_offset);
    }
}

/// BLAKE3 of a whole file or device.
pub fn digest(path: &Path) -> blake3::Hash {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

/// e2fsck -fn on `len` bytes at `offset` of `dev` (a loop over the range).
pub fn assert_fsck_clean(dev: &Path, offset: u64, len: u64) {
    let l = Loop::with(
        dev,
        &[
            "-r",
            "-o",
            &offset.to_string(),
            "--sizelimit",
            &len.to_string(),
        ],
    );
    let out = run("e2fsck", &["-fn", &l.dev]);
    assert!(
        out.status.success(),
        "e2fsck found problems: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A disk erased to a valid empty state: a GPT that verifies and has no
/// partitions, and nothing else recognisable.
pub fn assert_empty_gpt(dev: &Path) {
    let d = dev.to_str().unwrap();
    // sgdisk invents a table in memory for a blank disk, so first make
    // sure a real one is on the device.
    assert_eq!(&read_at(dev, 512, 8), b"EFI PART", "no GPT header at LBA 1");
    let pttype = sh("blkid", &["-p", "-s", "PTTYPE", "-o", "value", d]);
    assert_eq!(pttype.trim(), "gpt");
    let v = sh("sgdisk", &["-v", d]);
    assert!(
        v.contains("No problems found") && !v.contains("Creating new GPT"),
        "sgdisk -v: {v}"
    );
    let p = sh("sgdisk", &["-p", d]);
    let rows = p
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(rows, 0, "partitions left: {p}");
}

/// A partition erased to a valid empty state: no signature wipefs knows
/// (filesystems, RAID members, partition tables, LUKS...).
pub fn assert_no_signatures(dev: &Path) {
    let found = sh(
        "wipefs",
        &["--no-act", "--noheadings", dev.to_str().unwrap()],
    );
    assert!(found.trim().is_empty(), "signatures left: {found}");
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A key pair without a password.
pub fn keypair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    sh(
        "minisign",
        &["-G", "-W", "-p", p(&public), "-s", p(&secret)],
    );
    (public, secret)
}

/// Signs `image`'s manifest with `secret`, writing IMAGE.minisig.
pub fn sign(image: &Path, secret: &Path) {
    let manifest = image.with_extension("manifest");
    let o = reimage(&["imagescan", p(image), "--manifest", p(&manifest)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sig = format!("{}.minisig", p(image));
    sh(
        "minisign",
        &["-S", "-s", p(secret), "-m", p(&manifest), "-x", &sig],
    );
}

/// Flips a byte in the middle of the last extent's payload of a prepared
/// image, in place: its digest fails after every other extent was written.
pub fn corrupt_last_extent(image: &Path) {
    use std::os::unix::fs::FileExt;
    let head = head_of(image);
    let e = head.manifest.extents.last().unwrap();
    let at = head.manifest.payload_area + e.payload_offset + u64::from(e.payload_len) / 2;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

/// A restore with --erase --noprompt that must succeed; returns stdout.
pub fn restore_ok(source: &Path, target: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "restore",
        "--source",
        p(source),
        "--target",
        p(target),
        "--erase",
        "--noprompt",
    ];
    args.extend_from_slice(extra);
    let o = reimage(&args);
    assert!(o.status.success(), "restore failed: {}", stderr(&o));
    stdout(&o)
}

/// A loop device over a file of random bytes, so "unchanged" means
/// something.
pub fn random_loop(dir: &Path, mib: u64) -> (PathBuf, Loop) {
    let f = dir.join("target.img");
    sh(
        "sh",
        &["-c", &format!("head -c {mib}M /dev/urandom > {}", p(&f))],
    );
    let l = Loop::new(&f);
    (f, l)
}
