//! Black-box restore tests on files and real loop devices.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

/// Images shared by every test in this binary, built once.
struct Fixtures {
    /// 128 MiB GPT disk: FAT ESP + 96 MiB ext4 with ~30 MiB of files.
    disk: PathBuf,
    disk_rimg: PathBuf,
    ext4_offset: u64,
    ext4_len: u64,
    /// 64 MiB bare ext4 filesystem.
    part: PathBuf,
    part_rimg: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch().keep();
        let files = sample_files(&dir, 30);
        let disk = dir.join("disk.img");
        let (ext4_offset, ext4_len) = make_gpt_disk(&disk, 128, 96, &files);
        let disk_rimg = dir.join("disk.rimg");
        let o = reimage(&[
            "imagecreate",
            "--source",
            disk.to_str().unwrap(),
            "--image",
            disk_rimg.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "imagecreate disk: {}", stderr(&o));
        let part = dir.join("part.img");
        make_ext4(&part, 64, &sample_files(&dir.join("small"), 8));
        let part_rimg = dir.join("part.rimg");
        let o = reimage(&[
            "imagecreate",
            "--source",
            part.to_str().unwrap(),
            "--image",
            part_rimg.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "imagecreate part: {}", stderr(&o));
        Fixtures {
            disk,
            disk_rimg,
            ext4_offset,
            ext4_len,
            part,
            part_rimg,
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A zero-filled backing file of `mib` MiB with a loop device over it.
fn blank_loop(dir: &Path, name: &str, mib: u64) -> (PathBuf, Loop) {
    let f = dir.join(name);
    sh("truncate", &["-s", &format!("{mib}M"), s(&f)]);
    let l = Loop::new(&f);
    (f, l)
}

#[test]
fn gpt_disk_round_trip_onto_larger_loop_device() {
    let f = fixtures();
    let dir = scratch();
    // Larger than the image: the GPT backup must move to the new end.
    let (_file, l) = blank_loop(dir.path(), "t.img", 160);
    let out = restore_ok(&f.disk_rimg, l.path(), &[]);
    assert!(out.contains("Validating target...done"), "{out}");
    assert!(out.contains("Verifying"), "{out}");
    // The protective MBR, primary GPT header and old backup GPT change when
    // the backup moves to the new end; everything else must match.
    let end = 128 * MIB;
    assert_extents_match_outside(
        &f.disk_rimg,
        &f.disk,
        l.path(),
        &[0..1024, end - 33 * 512..end],
    );
    let v = sh("sgdisk", &["-v", &l.dev]);
    assert!(
        v.contains("No problems found"),
        "backup GPT not relocated: {v}"
    );
    assert_fsck_clean(l.path(), f.ext4_offset, f.ext4_len);
    let p = sh("sgdisk", &["-i", "2", &l.dev]);
    assert!(p.contains("'root'"), "{p}");
}

#[test]
fn bare_partition_round_trip() {
    let f = fixtures();
    let dir = scratch();
    let (_file, l) = blank_loop(dir.path(), "p.img", 64);
    restore_ok(&f.part_rimg, l.path(), &[]);
    assert_extents_match(&f.part_rimg, &f.part, l.path());
    assert_fsck_clean(l.path(), 0, 64 * MIB);
}

#[test]
fn prepared_image_onto_a_file_is_byte_identical_to_a_zero_padded_source() {
    let f = fixtures();
    let dir = scratch();
    let out = dir.path().join("out.img");
    restore_ok(&f.part_rimg, &out, &["--noverify"]);
    assert_extents_match(&f.part_rimg, &f.part, &out);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);
    let o = run("e2fsck", &["-fn", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn raw_and_compressed_sources_round_trip() {
    let f = fixtures();
    let dir = scratch();
    let raw = &f.part;
    let gz = dir.path().join("p.img.gz");
    let xz = dir.path().join("p.img.xz");
    let zst = dir.path().join("p.img.zst");
    sh(
        "sh",
        &["-c", &format!("gzip -1 -c {} > {}", s(raw), s(&gz))],
    );
    sh(
        "sh",
        &["-c", &format!("xz -0 -T2 -c {} > {}", s(raw), s(&xz))],
    );
    sh("zstd", &["-q", "-1", s(raw), "-o", s(&zst)]);
    let want = digest(raw);
    for src in [raw.clone(), gz, xz, zst] {
        let (file, l) = blank_loop(dir.path(), "t.img", 64);
        // Old contents must not survive in the image's zero ranges.
        sh(
            "sh",
            &["-c", &format!("head -c 64M /dev/urandom > {}", s(&file))],
        );
        restore_ok(&src, l.path(), &[]);
        assert_eq!(
            digest(l.path()),
            want,
            "restore from {} differs",
            src.display()
        );
        drop(l);
        let out = dir.path().join("out.img");
        restore_ok(&src, &out, &[]);
        assert_eq!(
            digest(&out),
            want,
            "restore of {} to a file differs",
            src.display()
        );
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn block_device_source_clones_a_volume() {
    let f = fixtures();
    let dir = scratch();
    let src = Loop::with(&f.part, &["-r"]);
    let (_file, l) = blank_loop(dir.path(), "t.img", 64);
    restore_ok(src.path(), l.path(), &[]);
    assert_eq!(digest(l.path()), digest(&f.part));
}

#[test]
fn legacy_single_dash_spelling_restores() {
    let f = fixtures();
    let dir = scratch();
    let (_file, l) = blank_loop(dir.path(), "p.img", 64);
    let o = reimage(&[
        "-source",
        s(&f.part_rimg),
        "-target",
        &l.dev,
        "-erase",
        "-noprompt",
        "-noverify",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(l.path(), 0, 64 * MIB);
    let o = reimage(&["-imagescan", s(&f.part_rimg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Image digest: "), "{}", stdout(&o));
}

#[test]
fn bad_arguments_are_one_line_errors() {
    assert_fails_with(
        &reimage(&["restore", "--source", "a", "--target", "b", "--bogus"]),
        "--bogus",
    );
    assert_fails_with(
        &reimage(&[
            "restore",
            "--source",
            "a",
            "--target",
            "b",
            "--buffers",
            "0",
        ]),
        "--buffers",
    );
    assert_fails_with(
        &reimage(&[
            "imagecreate",
            "--source",
            "a",
            "--image",
            "b",
            "--chunksize",
            "5000",
        ]),
        "chunk size",
    );
    assert_fails_with(&reimage(&["frobnicate"]), "frobnicate");
    let help = reimage(&["help", "restore"]);
    assert!(help.status.success() && stdout(&help).contains("--csumbuffersize"));
}

#[test]
fn puppetstrings_prints_one_event_per_line() {
    let f = fixtures();
    let dir = scratch();
    let out = dir.path().join("o.img");
    let text = restore_ok(&f.part_rimg, &out, &["--puppetstrings"]);
    let progress: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("PROGRESS\t"))
        .collect();
    assert!(!progress.is_empty(), "{text}");
    for line in &progress {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 5, "{line}");
        let (done, total): (u64, u64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
        assert!(done <= total, "{line}");
        let pct: f64 = fields[4].parse().unwrap();
        assert!((0.0..=100.0).contains(&pct));
    }
    assert!(text.contains("FINISH\tverify"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("PROGRESS\trestore\t") && l.ends_with("\t100.0")),
        "{text}"
    );
    let json = restore_ok(&f.part_rimg, &out, &["--puppetstrings", "--json"]);
    for line in json.lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    }
}

#[test]
fn restoreexact_grows_the_target_partition_in_the_gpt() {
    let f = fixtures();
    let dir = scratch();
    // A disk whose partition 2 (32 MiB) is smaller than the 64 MiB image,
    // with free space after it.
    let disk = dir.path().join("d.img");
    sh("truncate", &["-s", "160M", s(&disk)]);
    sh("sgdisk", &["-n1:2048:+16M", "-n2:0:+32M", s(&disk)]);
    let l = Loop::new(&disk);
    l.add_partitions();
    let p2 = format!("{}p2", l.dev);
    let o = reimage(&[
        "restoreexact",
        "--source",
        s(&f.part_rimg),
        "--target",
        &p2,
        "--erase",
        "--noprompt",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = sh("sgdisk", &["-i", "2", &l.dev]);
    assert!(info.contains("Partition size: 131072 sectors"), "{info}");
    assert!(sh("sgdisk", &["-v", &l.dev]).contains("No problems found"));
    assert_fsck_clean(l.path(), 17 * MIB, 64 * MIB);
}

#[test]
fn restoreexact_refuses_before_writing_when_the_partition_cannot_grow() {
    let f = fixtures();
    let dir = scratch();
    let disk = dir.path().join("d.img");
    sh("truncate", &["-s", "96M", s(&disk)]);
    // Partition 3 right after 2 leaves no room to grow.
    sh(
        "sgdisk",
        &["-n1:2048:+16M", "-n2:0:+32M", "-n3:0:+32M", s(&disk)],
    );
    let l = Loop::new(&disk);
    l.add_partitions();
    let before = digest(&disk);
    let o = reimage(&[
        "restoreexact",
        "--source",
        s(&f.part_rimg),
        "--target",
        &format!("{}p2", l.dev),
        "--erase",
        "--noprompt",
    ]);
    assert_fails_with(&o, "partition");
    assert_eq!(digest(&disk), before, "disk changed");
}
