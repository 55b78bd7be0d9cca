//! Apple UDIF (.dmg) sources: images made by `tests/fixtures/make-dmg`, an
//! independent Python writer of the format (cross-checked against Debian's
//! dmg2img by `tests/fixtures/check-make-dmg`), restored, picked apart,
//! converted and refused.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const GENERATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make-dmg");
const CODECS: [&str; 6] = ["raw", "zlib", "bzip2", "adc", "lzfse", "lzma"];

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A 6 MiB GPT disk: "EFI" (1 MiB at sector 2048) and "data" (2 MiB at
/// sector 6144), each
/// part random bytes and part zeros, free space between and after.
fn gpt_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 6 << 20]).unwrap();
    sh(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+1M",
            "-c1:EFI",
            "-t1:ef00",
            "-n2:6144:+2M",
            "-c2:data",
            p(&disk),
        ],
    );
    let mut bytes = std::fs::read(&disk).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for range in [(2048..2800), (6144..7500), (8500..9500)] {
        for b in &mut bytes[range.start * 512..range.end * 512] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half the bytes repeat, so every codec has something to find.
            *b = if x.is_multiple_of(2) {
                (x >> 8) as u8
            } else {
                b'r'
            };
        }
    }
    std::fs::write(&disk, bytes).unwrap();
    disk
}

/// A scratch directory with `gpt_disk` in it as `disk.raw` and as
/// `disk.dmg` made with `extra` generator options.
fn disk_and_dmg(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = scratch();
    let disk = gpt_disk(dir.path());
    let dmg = dir.path().join("disk.dmg");
    make_dmg(&disk, &dmg, extra);
    (dir, disk, dmg)
}

fn make_dmg(raw: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "--input",
        p(raw),
        "--output",
        p(out),
        "--chunk-sectors",
        "64",
    ];
    args.extend_from_slice(extra);
    sh(GENERATOR, &args);
}

fn restore_file(source: &str, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "restore",
        "--source",
        source,
        "--file",
        p(target),
        "--erase",
        "--noprompt",
    ];
    args.extend_from_slice(extra);
    reimage(&args)
}

/// BLAKE3 of `sectors` sectors from `sector` on (a digest, so a failed
/// comparison prints two lines, not megabytes).
fn sectors_of(path: &Path, sector: u64, sectors: u64) -> blake3::Hash {
    blake3::hash(&read_at(path, sector * 512, sectors * 512))
}

#[test]
fn the_generator_agrees_with_dmg2img() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/check-make-dmg");
    let out = sh(script, &[]);
    assert!(out.contains("cases passed"), "{out}");
}

#[test]
fn every_codec_restores_the_disk_byte_for_byte() {
    let dir = scratch();
    let disk = gpt_disk(dir.path());
    let all = CODECS.join(",");
    for codecs in CODECS.iter().copied().chain([all.as_str()]) {
        let dmg = dir.path().join(format!("{codecs}.dmg"));
        make_dmg(&disk, &dmg, &["--codecs", codecs]);
        let out = dir.path().join("out.img");
        let o = restore_file(p(&dmg), &out, &[]);
        assert!(o.status.success(), "{codecs}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("UDIF disk image, 2 volumes"),
            "{codecs}: {}",
            stdout(&o)
        );
        assert_eq!(
            digest(&out),
            digest(&disk),
            "{codecs}: restored bytes differ"
        );
    }
}

#[test]
fn a_whole_disk_dmg_restores_onto_a_larger_block_device() {
    let (dir, disk, dmg) = disk_and_dmg(&["--codecs", "zlib,lzfse"]);
    let dev_file = dir.path().join("dev.img");
    std::fs::write(&dev_file, vec![0xa5u8; 16 << 20]).unwrap();
    let dev = Loop::new(&dev_file);
    restore_ok(&dmg, dev.path(), &[]);
    // Both partitions as imaged (zero-fill runs written as zeros over the
    // old bytes), and a valid GPT whose backup moved to the end of the
    // larger device.
    for (first, n) in [(2048, 2048), (6144, 4096)] {
        assert_eq!(
            sectors_of(dev.path(), first, n),
            sectors_of(&disk, first, n)
        );
    }
    // Free space is not written: the device's old bytes stay there.
    assert_eq!(
        sectors_of(dev.path(), 4096, 2048),
        blake3::hash(&[0xa5u8; 2048 * 512])
    );
    let verify = sh("sgdisk", &["-v", &dev.dev]);
    assert!(verify.contains("No problems found"), "{verify}");
}

#[test]
fn a_volume_is_picked_by_number_or_name() {
    let (dir, disk, dmg) = disk_and_dmg(&["--codecs", "bzip2,adc"]);
    let out = dir.path().join("vol.img");
    for (pick, first, n) in [("2", 6144, 4096), ("data", 6144, 4096), ("EFI", 2048, 2048)] {
        let o = restore_file(p(&dmg), &out, &["--sourcevolume", pick]);
        assert!(o.status.success(), "{pick}: {}", stderr(&o));
        assert_eq!(digest(&out), sectors_of(&disk, first, n), "{pick}");
    }
    let o = restore_file(p(&dmg), &out, &["--sourcevolume", "Macintosh HD"]);
    assert_fails_with(
        &o,
        "has no such volume (one of: 1 \"EFI\" (1.0 MiB), 2 \"data\" (2.0 MiB))",
    );
    let o = restore_file(p(&disk), &out, &["--sourcevolume", "1"]);
    assert_fails_with(&o, "is not a .dmg");
}

/// Each hostile image fails with one clear line before the target is
/// touched (the target keeps its pattern).
#[test]
fn damaged_and_hostile_images_are_refused_before_anything_is_written() {
    let dir = scratch();
    let disk = gpt_disk(dir.path());
    let target = dir.path().join("target.img");
    let pattern = vec![0x5au8; 1 << 20];
    let cases = [
        ("bad-blkx-crc", "checksum mismatch in"),
        ("bad-master-crc", "master checksum mismatch"),
        ("bad-data-fork-crc", "data fork checksum mismatch"),
        ("run-past-blkx", "the runs must tile"),
        ("run-outside-fork", "outside the data fork"),
        ("overlapping-blkx", "cover the same sectors"),
        ("huge-run-count", "claims 4294967295 runs"),
        ("short-mish", "not a mish block table"),
        ("bad-codec", "type 0x80000009"),
        ("corrupt-payload", "disk.dmg"),
        ("not-plist", "property list does not parse"),
        ("huge-xml", "outside the file"),
        ("sector-count-mismatch", "the trailer says the image has"),
        ("encrypted", "encrypted disk image"),
        ("sparse", "sparse image"),
    ];
    for (kind, needle) in cases {
        let dmg = dir.path().join("disk.dmg");
        make_dmg(&disk, &dmg, &["--codecs", "zlib", "--hostile", kind]);
        std::fs::write(&target, &pattern).unwrap();
        let o = restore_file(p(&dmg), &target, &[]);
        assert_fails_with(&o, needle);
        assert_eq!(
            std::fs::read(&target).unwrap(),
            pattern,
            "{kind}: target changed"
        );
    }
}

#[test]
fn truncated_images_are_refused_with_a_clear_message() {
    let (dir, _, dmg) = disk_and_dmg(&["--codecs", "zlib"]);
    let whole = std::fs::read(&dmg).unwrap();
    let cut = dir.path().join("cut.dmg");
    let target = dir.path().join("target.img");
    // Lost its end (no trailer at all), and cut with the trailer kept.
    for len in [whole.len() / 2, whole.len() - 1] {
        std::fs::write(&cut, &whole[..len]).unwrap();
        let o = restore_file(p(&cut), &target, &[]);
        assert_fails_with(&o, "has no UDIF trailer");
    }
    let mut spliced = whole[..whole.len() / 2].to_vec();
    spliced.extend_from_slice(&whole[whole.len() - 512..]);
    std::fs::write(&cut, &spliced).unwrap();
    let o = restore_file(p(&cut), &target, &[]);
    assert_fails_with(&o, "outside the file");
    assert!(!target.exists(), "a target file was left behind");
}

#[test]
fn imagescan_converts_a_dmg_and_free_space_stays_free() {
    let (dir, disk, dmg) = disk_and_dmg(&["--codecs", "lzfse,zlib"]);
    let o = reimage(&["imagescan", p(&dmg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rimg = dir.path().join("disk.rimg");
    let m = head_of(&rimg).manifest;
    assert_eq!(m.logical_size, 6 << 20);
    // Only the random parts and the partition tables are stored (the
    // GPT's areas whole: 64 KiB of slack).
    let nonzero = std::fs::read(&disk)
        .unwrap()
        .chunks(4096)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
        * 4096;
    assert!(
        m.stored_bytes() <= nonzero + (64 << 10),
        "{} stored, {nonzero} not zero",
        m.stored_bytes()
    );
    let out = dir.path().join("out.img");
    let o = restore_file(p(&rimg), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(digest(&out), digest(&disk));

    let bad = dir.path().join("bad.dmg");
    make_dmg(&disk, &bad, &["--hostile", "bad-blkx-crc"]);
    let o = reimage(&[
        "imagescan",
        p(&bad),
        "--output",
        p(&dir.path().join("bad.rimg")),
    ]);
    assert_fails_with(&o, "checksum mismatch");
    assert!(!dir.path().join("bad.rimg").exists());
}

#[test]
fn the_multicast_server_asks_for_a_prepared_image() {
    let (dir, _, dmg) = disk_and_dmg(&[]);
    let config = dir.path().join("c.plist");
    std::fs::write(
        &config,
        "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>\
         <key>Data Rate</key><integer>1000000</integer>\
         <key>Multicast Address</key><string>239.255.7.7</string>\
         <key>DNS Service Discovery</key><false/></dict></plist>",
    )
    .unwrap();
    let o = reimage(&["server", "--source", p(&dmg), "--config", p(&config)]);
    assert_fails_with(&o, "reimage imagescan");
}

/// Single flipped bytes anywhere, mostly in the tables and trailer: every
/// outcome is a restore or an error, never a panic (read in-process, so a
/// panic fails this test).
#[test]
fn flipped_bytes_never_panic() {
    let (dir, _, dmg) = disk_and_dmg(&["--codecs", &CODECS.join(",")]);
    let whole = std::fs::read(&dmg).unwrap();
    let koly = &whole[whole.len() - 512..];
    let xml_at = u64::from_be_bytes(koly[216..224].try_into().unwrap()) as usize;
    let bad = dir.path().join("bad.dmg");
    let opts = reimage::source::SourceOptions::default();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let (mut refused, mut read) = (0, 0);
    for i in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Three in four flips hit the property list or the trailer.
        let at = if i % 4 == 0 {
            x as usize % whole.len()
        } else {
            xml_at + x as usize % (whole.len() - xml_at)
        };
        let mut bytes = whole.clone();
        bytes[at] ^= 1 << (x >> 60 & 7);
        std::fs::write(&bad, &bytes).unwrap();
        let outcome = reimage::source::open(p(&bad), &opts).and_then(|mut src| {
            src.check_before_writing(&reimage::progress::Quiet)?;
            let mut slot = reimage::source::Slot::new(1 << 20);
            while src.next_piece(&mut slot)?.is_some() {}
            Ok(())
        });
        match outcome {
            Ok(()) => read += 1,
            Err(_) => refused += 1,
        }
    }
    // Most flips are caught (a checksum covers every byte but the
    // property list's whitespace, names and unused fields).
    assert!(refused > 200, "{refused} refused, {read} read");
}
