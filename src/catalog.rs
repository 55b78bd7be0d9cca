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
        created: rfc3339(m.created),
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

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian, the days-to-civil algorithm of H. Hinnant's date library).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_320_821), "2026-11-22T04:13:41Z");
    }
}
