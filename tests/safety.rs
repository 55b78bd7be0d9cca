//! Refusals and failures: preflight refusals leave the target untouched;
//! failures after the first write leave it erased to a valid empty state.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

struct Fixtures {
    disk_rimg: PathBuf,
    part_rimg: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch().keep();
        let files = sample_files(&dir, 12);
        let disk = dir.join("disk.img");
        make_gpt_disk(&disk, 64, 40, &files);
        let disk_rimg = dir.join("disk.rimg");
        let o = reimage(&[
            "imagecreate",
            "--source",
            s(&disk),
            "--image",
            s(&disk_rimg),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let part = dir.join("part.img");
        make_ext4(&part, 32, &files);
        let part_rimg = dir.join("part.rimg");
        let o = reimage(&[
            "imagecreate",
            "--source",
            s(&part),
            "--image",
            s(&part_rimg),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        Fixtures {
            disk_rimg,
            part_rimg,
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn restore(source: &Path, target: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "--source", s(source), "--target", target];
    args.extend_from_slice(extra);
    reimage(&args)
}

#[test]
fn missing_erase_is_refused_and_target_unchanged() {
    let f = fixtures();
    let dir = scratch();
    let (file, l) = random_loop(dir.path(), 64);
    let before = digest(&file);
    let o = restore(&f.disk_rimg, &l.dev, &["--noprompt"]);
    assert_fails_with(&o, "--erase is required");
    assert_eq!(digest(&file), before);
}

/// Runs a restore inside a pseudo-terminal (script(1)), typing `answer`
/// at the erase prompt.
fn restore_answering(source: &Path, target: &str, answer: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let cmd = format!(
        "{} restore --source {} --target {target} --erase",
        env!("CARGO_BIN_EXE_reimage"),
        s(source)
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_erase_prompt_on_the_terminal_decides() {
    let f = fixtures();
    let dir = scratch();
    let (file, l) = random_loop(dir.path(), 64);
    let before = digest(&file);
    let (code, out) = restore_answering(&f.disk_rimg, &l.dev, "n\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("Erase contents of {} (", l.dev)),
        "{out}"
    );
    assert!(out.contains("? [ny]: "), "{out}");
    assert!(out.contains("not confirmed"), "{out}");
    assert_eq!(digest(&file), before);
    let (code, out) = restore_answering(&f.disk_rimg, &l.dev, "y\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Verifying"), "{out}");
    assert!(sh("sgdisk", &["-v", &l.dev]).contains("No problems found"));
}

#[test]
fn no_terminal_and_no_noprompt_is_refused() {
    let f = fixtures();
    let dir = scratch();
    let (file, l) = random_loop(dir.path(), 64);
    let before = digest(&file);
    let o = restore(&f.disk_rimg, &l.dev, &["--erase"]);
    assert_fails_with(&o, "no terminal to confirm");
    assert_eq!(digest(&file), before);
    // A file target that did not exist is not left behind either.
    let fresh = dir.path().join("fresh.img");
    let o = restore(&f.disk_rimg, s(&fresh), &["--erase"]);
    assert_fails_with(&o, "no terminal to confirm");
    assert!(!fresh.exists());
}

#[test]
fn restoring_a_source_onto_itself_is_refused() {
    let f = fixtures();
    let dir = scratch();
    // A file onto itself.
    let copy = dir.path().join("self.rimg");
    std::fs::copy(&f.part_rimg, &copy).unwrap();
    let before = digest(&copy);
    let o = restore(&copy, s(&copy), &["--erase", "--noprompt"]);
    assert_fails_with(&o, "is on the target");
    assert_eq!(digest(&copy), before);
    // A partition of a disk onto the disk.
    let disk = dir.path().join("d.img");
    sh("truncate", &["-s", "48M", s(&disk)]);
    sh("sgdisk", &["-n1:2048:+40M", s(&disk)]);
    let l = Loop::new(&disk);
    l.add_partitions();
    let before = digest(&disk);
    let o = restore(
        Path::new(&format!("{}p1", l.dev)),
        &l.dev,
        &["--erase", "--noprompt"],
    );
    assert_fails_with(&o, "is on the target");
    assert_eq!(digest(&disk), before);
}

#[test]
fn too_small_target_is_refused_and_unchanged() {
    let f = fixtures();
    let dir = scratch();
    let (file, l) = random_loop(dir.path(), 32);
    let before = digest(&file);
    let o = restore(&f.disk_rimg, &l.dev, &["--erase", "--noprompt"]);
    assert_fails_with(&o, "There is not enough space on");
    assert_eq!(digest(&file), before);
}

#[test]
fn mounted_target_is_refused_and_unchanged() {
    let f = fixtures();
    let dir = scratch();
    let img = dir.path().join("fs.img");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    make_ext4(&img, 40, &empty);
    let l = Loop::new(&img);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh("mount", &["-o", "ro", &l.dev, s(&mnt)]);
    let before = digest(l.path());
    let o = restore(&f.part_rimg, &l.dev, &["--erase", "--noprompt"]);
    let after = digest(l.path());
    sh("umount", &[s(&mnt)]);
    assert_fails_with(&o, "is mounted at");
    assert_eq!(after, before);
}

#[test]
fn target_held_open_exclusively_is_refused_and_unchanged() {
    let f = fixtures();
    let dir = scratch();
    let (file, l) = random_loop(dir.path(), 64);
    let before = digest(&file);
    // Another program holding the device with O_EXCL, as mkfs or a RAID
    // assembly would.
    let mut holder = std::process::Command::new("python3")
        .args(["-c", "import os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY|os.O_EXCL); print('held', flush=True); time.sleep(60)", &l.dev])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    let o = restore(&f.disk_rimg, &l.dev, &["--erase", "--noprompt"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_fails_with(&o, "is in use");
    assert_eq!(digest(&file), before);
}

/// Something done to a copy of a good image.
type Damage = dyn Fn(&std::fs::File, &reimage::image::format::ImageHead);

/// Copies an image and damages it with `damage`.
fn damaged(
    f: &Path,
    dir: &Path,
    damage: impl FnOnce(&std::fs::File, &reimage::image::format::ImageHead),
) -> PathBuf {
    let out = dir.join("bad.rimg");
    std::fs::copy(f, &out).unwrap();
    let head = head_of(&out);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)
        .unwrap();
    damage(&file, &head);
    out
}

#[test]
fn corrupted_chunk_fails_and_leaves_the_disk_an_empty_gpt() {
    let f = fixtures();
    let dir = scratch();
    let bad = damaged(&f.disk_rimg, dir.path(), |_, _| {});
    corrupt_last_extent(&bad);
    let (_file, l) = random_loop(dir.path(), 64);
    let o = restore(&bad, &l.dev, &["--erase", "--noprompt"]);
    assert_fails_with(&o, "erased to a valid empty state");
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
    assert_empty_gpt(l.path());
}

#[test]
fn truncated_image_fails_and_leaves_a_partition_without_signatures() {
    let f = fixtures();
    let dir = scratch();
    let bad = damaged(&f.part_rimg, dir.path(), |file, head| {
        let len = head.manifest.payload_area + head.manifest.payload_bytes() * 2 / 3;
        file.set_len(len).unwrap();
    });
    // Partition 1 of a GPT disk, holding an old ext4 filesystem.
    let disk = dir.path().join("d.img");
    sh("truncate", &["-s", "48M", s(&disk)]);
    sh("sgdisk", &["-n1:2048:+40M", s(&disk)]);
    let l = Loop::new(&disk);
    l.add_partitions();
    let p1 = format!("{}p1", l.dev);
    sh("mkfs.ext4", &["-q", &p1]);
    let o = restore(&bad, &p1, &["--erase", "--noprompt"]);
    assert_fails_with(&o, "truncated");
    assert_no_signatures(Path::new(&p1));
    // The disk's own table is untouched.
    assert!(sh("sgdisk", &["-v", &l.dev]).contains("No problems found"));
}

#[test]
fn truncated_image_onto_a_whole_disk_leaves_an_empty_gpt() {
    let f = fixtures();
    let dir = scratch();
    let bad = damaged(&f.part_rimg, dir.path(), |file, head| {
        file.set_len(head.manifest.payload_area + 100).unwrap();
    });
    let (_file, l) = random_loop(dir.path(), 32);
    let o = restore(&bad, &l.dev, &["--erase", "--noprompt"]);
    assert_fails_with(&o, "truncated");
    assert_empty_gpt(l.path());
}

#[test]
fn failing_target_midway_is_erased_to_an_empty_gpt() {
    let f = fixtures();
    let dir = scratch();
    // A loop device over a sparse 64 MiB file on a 6 MiB tmpfs: writes
    // fail with ENOSPC partway through the restore. The first and last MiB
    // are allocated up front so the erase afterwards can still land.
    let mnt = dir.path().join("tmpfs");
    std::fs::create_dir(&mnt).unwrap();
    sh("mount", &["-t", "tmpfs", "-o", "size=6m", "tmpfs", s(&mnt)]);
    let backing = mnt.join("t.img");
    sh("truncate", &["-s", "64M", s(&backing)]);
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", s(&backing)),
            "bs=1M",
            "count=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", s(&backing)),
            "bs=1M",
            "seek=63",
            "count=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    let l = Loop::with(&backing, &[]);
    let o = restore(&f.disk_rimg, &l.dev, &["--erase", "--noprompt"]);
    let fails = o.status.code() == Some(1);
    let err = stderr(&o);
    let empty = std::panic::catch_unwind(|| assert_empty_gpt(l.path()));
    drop(l);
    sh("umount", &[s(&mnt)]);
    assert!(fails, "restore onto a failing device succeeded: {err}");
    assert!(err.contains("erased to a valid empty state"), "{err}");
    assert!(empty.is_ok(), "target not left an empty GPT");
}

#[test]
fn garbage_images_are_clear_errors_and_touch_nothing() {
    let f = fixtures();
    let dir = scratch();
    let (file, l) = random_loop(dir.path(), 64);
    let before = digest(&file);
    let cases: Vec<(&str, Box<Damage>)> = vec![
        (
            "manifest digest mismatch",
            Box::new(|f, _| f.write_all_at(&[0xff], 70).unwrap()),
        ),
        ("version", Box::new(|f, _| f.write_all_at(&[9], 8).unwrap())),
        (
            "corrupt image header",
            Box::new(|f, _| f.write_all_at(&u64::MAX.to_le_bytes(), 24).unwrap()),
        ),
    ];
    for (needle, damage) in cases {
        let bad = damaged(&f.disk_rimg, dir.path(), damage);
        let o = restore(&bad, &l.dev, &["--erase", "--noprompt"]);
        assert_fails_with(&o, needle);
        assert_eq!(digest(&file), before, "{needle}: target changed");
    }
    let o = restore(
        &dir.path().join("missing.rimg"),
        &l.dev,
        &["--erase", "--noprompt"],
    );
    assert_fails_with(&o, "missing.rimg");
    let o = restore(
        &f.disk_rimg,
        "/dev/nonexistent-disk",
        &["--erase", "--noprompt"],
    );
    assert_fails_with(&o, "does not exist");
}
