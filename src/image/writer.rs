use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::format::{self, Codec, Digest, Extent, Manifest};

/// Writes a prepared image: payloads first (appended in the order given,
/// which callers keep in target order), then the head into the space
/// reserved in front of them. Output goes to `NAME.partial` and is renamed
/// into place only when complete, so a `.rimg` on disk is never half-written.
pub struct ImageWriter {
    file: File,
    partial: PathBuf,
    path: PathBuf,
    payload_area: u64,
    next_payload: u64,
    extents: Vec<Extent>,
}

/// Alignment of the payload area (bytes), so payload reads can start on a
/// page boundary.
const PAYLOAD_ALIGN: u64 = 4096;

impl ImageWriter {
    /// `max_extents` bounds how many extents will be pushed and `name_len`
    /// is the image name's length: together they size the reserved head.
    pub fn create(
        path: &Path,
        max_extents: usize,
        name_len: usize,
        overwrite: bool,
    ) -> Result<ImageWriter> {
        if !overwrite && path.exists() {
            bail!(
                "{} already exists (pass --force to replace it)",
                path.display()
            );
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let payload_area = format::head_len(name_len, max_extents).next_multiple_of(PAYLOAD_ALIGN);
        Ok(ImageWriter {
            file,
            partial,
            path: path.to_owned(),
            payload_area,
            next_payload: 0,
            extents: Vec::with_capacity(max_extents),
        })
    }

    pub fn push(
        &mut self,
        target_offset: u64,
        length: u32,
        codec: Codec,
        digest: Digest,
        payload: &[u8],
    ) -> Result<()> {
        self.file
            .write_all_at(payload, self.payload_area + self.next_payload)
            .with_context(|| format!("writing {}", self.partial.display()))?;
        self.extents.push(Extent {
            target_offset,
            length,
            payload_offset: self.next_payload,
            payload_len: payload.len() as u32,
            codec,
            digest,
        });
        self.next_payload += payload.len() as u64;
        Ok(())
    }

    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Payload bytes written so far.
    pub fn payload_len(&self) -> u64 {
        self.next_payload
    }

    /// Fills in `payload_area` and `extents` of `manifest`, writes the head,
    /// syncs and renames into place. Returns the image digest.
    pub fn finish(mut self, mut manifest: Manifest) -> Result<Digest> {
        manifest.payload_area = self.payload_area;
        manifest.extents = std::mem::take(&mut self.extents);
        let head = format::encode_head(&manifest);
        if head.len() as u64 > self.payload_area {
            bail!(
                "internal: manifest of {} bytes exceeds the {} reserved",
                head.len(),
                self.payload_area
            );
        }
        // Zero the padding explicitly: the file may be reused by --force.
        let mut block = head;
        block.resize(self.payload_area as usize, 0);
        self.file.write_all_at(&block, 0)?;
        self.file.set_len(self.payload_area + self.next_payload)?;
        self.file.sync_all()?;
        std::fs::rename(&self.partial, &self.path)
            .with_context(|| format!("renaming to {}", self.path.display()))?;
        self.partial.clear();
        Ok(format::manifest_digest(&manifest.encode()))
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        // An unfinished image is useless; don't leave it behind.
        if !self.partial.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
