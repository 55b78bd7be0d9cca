//! imagecreate and imagescan, black-box.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use reimage::image::format::{self, Manifest};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn create(src: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["imagecreate", "--source", s(src), "--image", s(out)];
    args.extend_from_slice(extra);
    reimage(&args)
}

#[test]
fn imagecreate_stores_only_used_blocks_of_a_gpt_disk() {
    let dir = scratch();
    let files = sample_files(dir.path(), 10);
    let disk = dir.path().join("d.img");
    make_gpt_disk(&disk, 256, 200, &files);
    // Old data in the ext4 free space must not be stored: fill it first.
    let rimg = dir.path().join("d.rimg");
    let o = create(&disk, &rimg, &["--verbose"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("partition 2"), "{out}");
    assert!(out.contains("ext2/3/4 filesystem"), "{out}");
    assert!(out.contains("FAT filesystem"), "{out}");
    let m = head_of(&rimg).manifest;
    assert_eq!(m.content, format::Content::Disk);
    assert_eq!(m.table, format::TableKind::Gpt);
    assert_eq!(m.logical_size, 256 * MIB);
    // ~10 MiB of files plus metadata; far less than the 216 MiB of partitions.
    assert!(
        m.stored_bytes() < 40 * MIB,
        "stored {} bytes",
        m.stored_bytes()
    );
    assert!(
        m.stored_bytes() > 10 * MIB,
        "stored {} bytes",
        m.stored_bytes()
    );
    assert!(m.is_streaming_order());
    // The backup GPT at the disk's end is stored.
    assert!(m.extents.last().unwrap().target_end() == m.logical_size);
    let again = create(&disk, &rimg, &[]);
    assert_fails_with(&again, "already exists");
    let forced = create(
        &disk,
        &rimg,
        &["--force", "--chunksize", "256k", "--level", "1"],
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(
        head_of(&rimg)
            .manifest
            .extents
            .iter()
            .all(|e| e.length <= 256 << 10)
    );
}

#[test]
fn imagecreate_skips_zero_blocks_of_unknown_content() {
    let dir = scratch();
    let raw = dir.path().join("r.img");
    sh("truncate", &["-s", "32M", s(&raw)]);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&[7u8; 5000], 3 * MIB + 100).unwrap();
    f.write_all_at(&[9u8; 10], 30 * MIB).unwrap();
    let rimg = dir.path().join("r.rimg");
    let o = create(&raw, &rimg, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = head_of(&rimg).manifest;
    assert_eq!(m.content, format::Content::Raw);
    assert_eq!(m.extents.len(), 2, "{:?}", m.extents);
    assert_eq!(m.extents[0].target_offset, 3 * MIB);
    assert_eq!(m.extents[0].length, 8192);
    assert_eq!(m.extents[1].target_offset, 30 * MIB);
    let out = dir.path().join("o.img");
    restore_ok(&rimg, &out, &[]);
    assert_eq!(digest(&out), digest(&raw));
}

#[test]
fn imagescan_verifies_and_reorders_into_streaming_order() {
    let dir = scratch();
    let part = dir.path().join("p.img");
    make_ext4(&part, 32, &sample_files(dir.path(), 6));
    let rimg = dir.path().join("p.rimg");
    assert!(create(&part, &rimg, &[]).status.success());
    let o = reimage(&["imagescan", s(&rimg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let digest_line = stdout(&o);
    assert!(
        digest_line.contains(&format::hex(&head_of(&rimg).digest())),
        "{digest_line}"
    );

    // Rewrite the payloads in reverse order (a valid but non-streaming image).
    let head = head_of(&rimg);
    let data = std::fs::read(&rimg).unwrap();
    let mut m: Manifest = head.manifest.clone();
    let mut payloads = Vec::new();
    let mut next = 0u64;
    for e in m.extents.iter_mut().rev() {
        let at = (head.manifest.payload_area + e.payload_offset) as usize;
        payloads.extend_from_slice(&data[at..at + e.payload_len as usize]);
        e.payload_offset = next;
        next += u64::from(e.payload_len);
    }
    m.payload_area = format::head_len(m.name.len(), m.extents.len());
    let mut out = format::encode_head(&m);
    out.extend_from_slice(&payloads);
    let shuffled = dir.path().join("shuffled.rimg");
    std::fs::write(&shuffled, &out).unwrap();
    assert!(!head_of(&shuffled).manifest.is_streaming_order());
    // Restoring works in any order...
    let t = dir.path().join("t.img");
    restore_ok(&shuffled, &t, &[]);
    assert_extents_match(&rimg, &part, &t);
    // ...and imagescan puts it back into streaming order.
    let o = reimage(&["imagescan", s(&shuffled)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("streaming order"), "{}", stdout(&o));
    let fixed = head_of(&shuffled);
    assert!(fixed.manifest.is_streaming_order());
    assert_eq!(fixed.manifest.extents.len(), head.manifest.extents.len());

    // A flipped payload byte is found.
    let e = &fixed.manifest.extents[fixed.manifest.extents.len() / 2];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shuffled)
        .unwrap();
    let at = fixed.manifest.payload_area + e.payload_offset + 3;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
    let o = reimage(&["imagescan", s(&shuffled)]);
    assert_fails_with(&o, "corrupt");
}

#[test]
fn imagescan_converts_raw_and_compressed_images() {
    let dir = scratch();
    let part = dir.path().join("p.img");
    make_ext4(&part, 32, &sample_files(dir.path(), 6));
    let gz = dir.path().join("q.img.gz");
    sh(
        "sh",
        &["-c", &format!("gzip -1 -c {} > {}", s(&part), s(&gz))],
    );
    let o = reimage(&["imagescan", s(&gz)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let made = dir.path().join("q.rimg");
    let m = head_of(&made).manifest;
    assert_eq!(
        m.fs,
        format::FsKind::Ext,
        "conversion should see the filesystem"
    );
    let out_path = dir.path().join("explicit.rimg");
    let o = reimage(&["imagescan", s(&part), "--output", s(&out_path)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for img in [&made, &out_path] {
        let t = dir.path().join("t.img");
        let _ = std::fs::remove_file(&t);
        restore_ok(img, &t, &[]);
        assert_extents_match(img, &part, &t);
        assert!(run("e2fsck", &["-fn", s(&t)]).status.success());
    }
    assert!(
        !dir.path()
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    );
}

#[test]
fn mbr_disk_and_partition_device_capture_and_restore() {
    let dir = scratch();
    let files = sample_files(dir.path(), 6);
    // An MBR disk: partition 1 ext4 with files, partition 2 left empty.
    let disk = dir.path().join("mbr.img");
    sh("truncate", &["-s", "96M", s(&disk)]);
    sh(
        "sh",
        &[
            "-c",
            &format!(
                "printf 'label: dos\\n2048,81920,83\\n,,83\\n' | sfdisk -q {}",
                s(&disk)
            ),
        ],
    );
    let part = dir.path().join("p1.img");
    make_ext4(&part, 40, &files);
    sh(
        "dd",
        &[
            &format!("if={}", s(&part)),
            &format!("of={}", s(&disk)),
            "bs=1M",
            "seek=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    let l = Loop::with(&disk, &["--direct-io=on", "--read-only"]);
    l.add_partitions();

    // The whole disk: an MBR image storing the table and the used blocks.
    let rimg = dir.path().join("mbr.rimg");
    let o = create(l.path(), &rimg, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = head_of(&rimg).manifest;
    assert_eq!(
        (m.content, m.table),
        (format::Content::Disk, format::TableKind::Mbr)
    );
    assert!(m.stored_bytes() < 30 * MIB, "stored {}", m.stored_bytes());
    let out = dir.path().join("out.img");
    restore_ok(&rimg, &out, &[]);
    assert_eq!(
        sh("sfdisk", &["-d", s(&out)]).replace(s(&out), "X"),
        sh("sfdisk", &["-d", s(&disk)]).replace(s(&disk), "X")
    );
    assert_fsck_clean(&out, MIB, 40 * MIB);

    // One partition device: a partition image of its filesystem.
    let primg = dir.path().join("p1.rimg");
    let o = create(Path::new(&format!("{}p1", l.dev)), &primg, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = head_of(&primg).manifest;
    assert_eq!(
        (m.content, m.fs, m.logical_size),
        (format::Content::Partition, format::FsKind::Ext, 40 * MIB)
    );
    let out2 = dir.path().join("p1-out.img");
    restore_ok(&primg, &out2, &[]);
    assert_extents_match(&primg, &part, &out2);
    assert!(run("e2fsck", &["-fn", s(&out2)]).status.success());
}

#[test]
fn imagecreate_refuses_a_filesystem_mounted_read_write() {
    let dir = scratch();
    let img = dir.path().join("fs.img");
    make_ext4(&img, 32, &sample_files(dir.path(), 2));
    let l = Loop::new(&img);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let rimg = dir.path().join("fs.rimg");
    sh("mount", &[&l.dev, s(&mnt)]);
    let rw = create(l.path(), &rimg, &[]);
    sh("mount", &["-o", "remount,ro", s(&mnt)]);
    let ro = create(l.path(), &rimg, &[]);
    sh("umount", &[s(&mnt)]);
    assert_fails_with(&rw, "is mounted read-write at");
    assert!(
        ro.status.success(),
        "read-only mounts are fine: {}",
        stderr(&ro)
    );
}

#[test]
fn catalog_lists_prepared_images() {
    let dir = scratch();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("lab")).unwrap();
    let raw = dir.path().join("p.img");
    make_ext4(&raw, 16, &sample_files(dir.path(), 1));
    for (img, name) in [
        (www.join("a.rimg"), "first"),
        (www.join("lab/b.rimg"), "second"),
    ] {
        let o = create(&raw, &img, &["--name", name]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    std::fs::write(www.join("lab/b.txt"), "Lab image, fall term\nmore text").unwrap();
    std::fs::write(www.join("lab/b.rimg.minisig"), "sig").unwrap();
    std::fs::write(www.join("broken.rimg"), b"RIMG garbage").unwrap();
    let o = reimage(&["catalog", s(&www)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipping") && stderr(&o).contains("broken.rimg"),
        "{}",
        stderr(&o)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let (a, b) = (&images[0], &images[1]);
    assert_eq!(a["name"], "first");
    assert_eq!(a["url"], "a.rimg");
    assert_eq!(a["description"], "ext2/3/4 filesystem");
    assert_eq!(a["size"], 16 * MIB);
    assert_eq!(a["signature_url"], serde_json::Value::Null);
    assert_eq!(
        a["digest"],
        format::hex(&head_of(&www.join("a.rimg")).digest())
    );
    assert_eq!(b["url"], "lab/b.rimg");
    assert_eq!(b["description"], "Lab image, fall term");
    assert_eq!(b["signature_url"], "lab/b.rimg.minisig");
    assert!(a["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        a["file_size"],
        std::fs::metadata(www.join("a.rimg")).unwrap().len()
    );
}
