//! Signed images: a minisign signature (made by the real `minisign` tool)
//! over the manifest is checked before anything is written.

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn restore(source: &str, target: &Path, key: &str) -> std::process::Output {
    reimage(&[
        "restore",
        "--source",
        source,
        "--target",
        s(target),
        "--erase",
        "--noprompt",
        "--pubkey",
        key,
    ])
}

#[test]
fn signatures_are_checked_before_writing() {
    let dir = scratch();
    let files = sample_files(dir.path(), 4);
    let raw = dir.path().join("fs.img");
    make_ext4(&raw, 24, &files);
    let image = dir.path().join("fs.rimg");
    assert!(
        reimage(&["imagecreate", "--source", s(&raw), "--image", s(&image)])
            .status
            .success()
    );
    let (public, secret) = keypair(dir.path(), "good");
    let (other_public, _) = keypair(dir.path(), "other");
    sign(&image, &secret);

    let target = dir.path().join("t.img");
    // The key file and the bare key both work.
    let o = restore(s(&image), &target, s(&public));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_extents_match(&image, &raw, &target);
    let key_line = std::fs::read_to_string(&public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let o = restore(s(&image), &target, &key_line);
    assert!(o.status.success(), "{}", stderr(&o));

    std::fs::write(&target, b"untouched").unwrap();
    let o = restore(s(&image), &target, s(&other_public));
    assert_fails_with(&o, "different key");
    // Another image with this image's signature.
    let other = dir.path().join("other.rimg");
    assert!(
        reimage(&[
            "imagecreate",
            "--source",
            s(&raw),
            "--image",
            s(&other),
            "--level",
            "1"
        ])
        .status
        .success()
    );
    std::fs::copy(
        format!("{}.minisig", s(&image)),
        format!("{}.minisig", s(&other)),
    )
    .unwrap();
    let o = restore(s(&other), &target, s(&public));
    assert_fails_with(&o, "was altered");
    std::fs::remove_file(format!("{}.minisig", s(&other))).unwrap();
    let o = restore(s(&other), &target, s(&public));
    assert_fails_with(&o, "is not signed");
    let o = restore(s(&raw), &target, s(&public));
    assert_fails_with(&o, "only prepared images carry signatures");
    let o = restore(s(&image), &target, "not-a-key");
    assert_fails_with(&o, "neither a minisign public key");
    assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
}
