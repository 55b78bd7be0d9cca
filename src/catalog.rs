//! The image catalog (`images.json`): what the menu lists for a server.
//! `reimage catalog DIR` writes it for images served by any web server;
//! `reimage serve` will answer `/images.json` with the same document.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::image::format::{self, Content, FsKind, TableKind};

#[derive(Debug, Serialize)]
pub struct Catalog {
    pub images: Vec<Entry>,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub name: String,
    /// First line of `IMAGE.txt` beside the image, else what it holds.
    pub description: String,
    /// Bytes the image needs on the target.
    pub size: u64,
    /// Bytes of the image file (what is transferred).
    pub file_size: u64,
    /// The image digest (BLAKE3 of the manifest), hex.
    pub digest: String,
    /// Relative to the catalog's own URL.
    pub url: String,
    pub signature_url: Option<String>,
    /// Capture time, RFC 3339 UTC.
    pub created: String,
}

/// Catalogs every `*.rimg` below `dir`, sorted by path. Images that cannot
/// be read are left out with one warning line each.
pub fn build(dir: &Path) -> Result<(Catalog, Vec<String>)> {
    let mut paths = Vec::new();
    collect(dir, &mut paths).with_context(|| format!("listing {}", dir.display()))?;
    paths.sort();
    let mut images = Vec::new();
    let mut warnings = Vec::new();
    for path in paths {
        match entry(dir, &path) {
            Ok(e) => images.push(e),
            Err(e) => warnings.push(format!("skipping {}: {e:#}", path.display())),
        }
    }
    Ok((Catalog { images }, warnings))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "rimg") {
            out.push(path);
        }
    }
    Ok(())
}

fn entry(root: &Path, path: &Path) -> Result<Entry> {
    let mut file = std::fs::File::open(path)?;
    let file_size = file.metadata()?.len();
    let head = format::read_head(&mut file)?;
    let m = &head.manifest;
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    let sig = PathBuf::from(format!("{}.minisig", path.display()));
    let description = std::fs::read_to_string(path.with_extension("txt"))
        .ok()
        .and_then(|t| t.lines().next().map(str::trim).map(str::to_owned))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| describe(m.content, m.table, m.fs));
    Ok(Entry {
        name: if m.name.is_empty() {
            rel.clone()
        } else {
            m.name.clone()
        },
        description,
        size: m.logical_size,
        file_size,
        digest: format::hex(&head.digest()),
        signature_url: sig.is_file().then(|| format!("{rel}.minisig")),
        url: rel,
        created: crate::util::rfc3339(m.created),
    })
}

fn describe(content: Content, table: TableKind, fs: FsKind) -> String {
    match (content, table, fs) {
        (Content::Disk, TableKind::Gpt, _) => "whole disk (GPT)".into(),
        (Content::Disk, TableKind::Mbr, _) => "whole disk (MBR)".into(),
        (Content::Partition, _, FsKind::Ext) => "ext2/3/4 filesystem".into(),
        (Content::Partition, _, FsKind::Fat) => "FAT filesystem".into(),
        (Content::Partition, _, _) => "partition".into(),
        _ => "raw image".into(),
    }
}
