//! The restore pipeline (DESIGN §3):
//!
//! ```text
//! reader ──► workers (decompress, hash, check) ──► writer ──► verifiers
//!   ▲                                                 │
//!   └────────────── free slots (fixed pool) ◄─────────┘
//! ```
//!
//! Memory is `buffers` slots of `buffersize` bytes, allocated once. Each
//! piece's digest is checked before it is written; writes are positional
//! and go only where the image has data; the first MiB is held back and
//! written last. Verification re-reads what was written with O_DIRECT
//! while later pieces are still being written, and finishes after them.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::image::format::{Digest, Manifest};
use crate::io::AlignedBuf;
use crate::progress::{Phase, ProgressSink};
use crate::source::{self, ChunkSource, Piece, Slot};
use crate::target::{BOOT_AREA, Target};
use crate::util::human_size;

/// asr's knobs plus restoreexact. Defaults are what `reimage restore` uses.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub erase: bool,
    pub noprompt: bool,
    pub verify: bool,
    pub exact: bool,
    /// Slots in the copy pool.
    pub buffers: usize,
    /// Bytes per slot (raised to the image's chunk size when smaller).
    pub buffer_size: usize,
    /// Verification reader threads, each with one buffer.
    pub csum_buffers: usize,
    /// Bytes per verification read.
    pub csum_buffer_size: usize,
    /// Decompression/hashing threads; 0 means one per CPU.
    pub workers: usize,
    /// How http(s) sources are fetched.
    pub http: source::HttpOptions,
    /// Require a signature by this key over the image's manifest.
    pub pubkey: Option<minisign_verify::PublicKey>,
    /// Give up when a multicast source sends nothing for this long.
    pub timeout: Option<Duration>,
    /// A target that is a directory means a file in it named after the
    /// image (`--file DIR`).
    pub name_in_dir: bool,
    /// Stops this restore (the target is erased, as on any failure).
    pub stop: crate::signals::Stop,
    /// `--sourcevolume`: restore one volume of a .dmg.
    pub volume: Option<String>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            erase: false,
            noprompt: false,
            verify: true,
            exact: false,
            buffers: 8,
            buffer_size: 1 << 20,
            csum_buffers: 2,
            csum_buffer_size: 1 << 20,
            workers: 0,
            http: source::HttpOptions::default(),
            pubkey: None,
            timeout: None,
            name_in_dir: false,
            stop: Default::default(),
            volume: None,
        }
    }
}

#[derive(Debug)]
pub struct RestoreReport {
    /// Where the image went (a `--file` directory resolved to the file).
    pub target: PathBuf,
    /// Bytes written to the target (zeroed ranges included).
    pub written: u64,
    pub verified: bool,
    pub elapsed: Duration,
}

/// A range whose digest verification checks once it is on the device.
#[derive(Debug, Clone)]
struct Written {
    offset: u64,
    len: u64,
    digest: Digest,
}

/// Restores `source` onto `target` with asr's safety rules: nothing is
/// written before preflight and confirmation pass; any failure after the
/// first write erases the target to a valid empty state before reporting.
pub fn restore(
    source_spec: &str,
    target_path: &Path,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
) -> Result<RestoreReport> {
    if !opts.erase {
        bail!(
            "--erase is required: restoring onto {} destroys everything on it",
            target_path.display()
        );
    }
    progress.start(Phase::ValidateSource, 0);
    let source_opts = source::SourceOptions {
        piece_len: opts.buffer_size,
        http: opts.http.clone(),
        timeout: opts.timeout,
        volume: opts.volume.clone(),
    };
    let mut src = source::open(source_spec, &source_opts)?;
    src.check_before_writing(progress)?;
    if let Some(key) = &opts.pubkey {
        check_signature(source_spec, src.as_ref(), key, &source_opts)?;
        progress.detail(&format!("{source_spec}: signature verified"));
    }
    progress.finish(Phase::ValidateSource);

    let in_dir;
    let target_path = if opts.name_in_dir && target_path.is_dir() {
        in_dir = target_path.join(file_name_for(source_spec, src.info()));
        &in_dir
    } else {
        target_path
    };
    progress.start(Phase::ValidateTarget, 0);
    let mut target = Target::open(target_path)?;
    if let Err(e) = preflight(source_spec, src.as_ref(), &target, opts, progress) {
        // Nothing was written; don't leave behind a file we created.
        target.remove_if_created();
        return Err(e);
    }
    let info = src.info().clone();

    progress.note(&format!("Restoring {src} onto {}", target.describe()));
    // After the prompt (which must stay interruptible): a signal now stops
    // the copy so the target can be erased instead of left half-written.
    crate::signals::catch_interrupts();
    let started = Instant::now();
    let result = write_and_verify(src, &mut target, opts, progress);
    match result {
        Ok((written, verified)) => Ok(RestoreReport {
            target: target_path.to_owned(),
            written,
            verified,
            elapsed: started.elapsed(),
        }),
        Err(err) => {
            let shown = target.path.display().to_string();
            match target.erase_to_empty(info.content) {
                Ok(()) => Err(err.context(format!(
                    "restore onto {shown} failed; it was erased to a valid empty state"
                ))),
                Err(e2) => Err(err.context(format!(
                    "restore onto {shown} failed and erasing it failed too ({e2:#})"
                ))),
            }
        }
    }
}

/// The file name `--file DIR` restores into: the image's name, else the
/// source's file name, made safe as one path component.
fn file_name_for(source_spec: &str, info: &source::ImageInfo) -> String {
    let named = info
        .head
        .as_ref()
        .map(|h| h.manifest.name.clone())
        .filter(|n| !n.is_empty());
    let name = named.unwrap_or_else(|| {
        let last = source_spec.trim_end_matches('/').rsplit('/').next();
        last.unwrap_or_default().to_owned()
    });
    let safe: String = name
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        "image.img".into()
    } else if named_has_ext(safe) {
        safe.to_owned()
    } else {
        format!("{safe}.img")
    }
}

fn named_has_ext(name: &str) -> bool {
    Path::new(name).extension().is_some()
}

/// With `--pubkey`: the image must be prepared and its manifest signed by
/// that key, checked before anything is written.
fn check_signature(
    source_spec: &str,
    src: &dyn ChunkSource,
    key: &minisign_verify::PublicKey,
    opts: &source::SourceOptions,
) -> Result<()> {
    let head = src.info().head.as_ref().ok_or_else(|| {
        anyhow!(
            "--pubkey: {source_spec} is not a prepared image; only prepared images carry signatures"
        )
    })?;
    // A multicast server sends the signature with the manifest; files and
    // URLs have it beside them.
    let (sig, name, missing) = if source_spec.starts_with("mcast://") {
        let name = format!("the signature {source_spec} sent");
        (src.info().signature.clone(), name, "the server has none")
    } else {
        let name = format!("{source_spec}.minisig");
        (
            source::fetch_signature(source_spec, opts)?,
            name,
            "not found",
        )
    };
    let sig = sig.ok_or_else(|| {
        anyhow!("{source_spec} is not signed ({name}: {missing}) and --pubkey requires a signature")
    })?;
    crate::signature::verify_manifest(key, &head.manifest_bytes, &sig, &name)
}

/// Every check that must pass before the first write, including asking.
fn preflight(
    source_spec: &str,
    src: &dyn ChunkSource,
    target: &Target,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
) -> Result<()> {
    if !source_spec.contains("://") && target.overlaps(Path::new(source_spec))? {
        bail!(
            "the source {source_spec} is on the target {}; restoring would overwrite it",
            target.path.display()
        );
    }
    let info = src.info();
    if let Some(size) = info.size {
        // restoreexact grows a small partition, so only the sector check
        // applies to it here; check_exact covers the rest.
        target.check_fits(
            if opts.exact { 0 } else { size },
            info.sector_size,
            info.content,
        )?;
    }
    if let Some(head) = &info.head {
        check_alignment(&head.manifest, target)?;
    }
    if opts.exact {
        let size = info
            .size
            .context("restoreexact needs a source whose size is known up front")?;
        target.check_exact(size)?;
    }
    progress.finish(Phase::ValidateTarget);
    if !opts.noprompt {
        target.confirm_erase()?;
    }
    Ok(())
}

/// O_DIRECT writes need every extent to start (and, but for the image's
/// last byte, end) on a target sector boundary.
fn check_alignment(m: &Manifest, target: &Target) -> Result<()> {
    let sector = u64::from(target.sector_size);
    for (i, e) in m.extents.iter().enumerate() {
        if e.target_offset % sector != 0
            || (e.target_end() % sector != 0 && e.target_end() != m.logical_size)
        {
            bail!(
                "extent {i} at byte {} is not aligned to the {sector}-byte sectors of {}",
                e.target_offset,
                target.path.display()
            );
        }
    }
    Ok(())
}

fn write_and_verify(
    src: Box<dyn ChunkSource>,
    target: &mut Target,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
) -> Result<(u64, bool)> {
    let info = src.info().clone();
    if opts.exact
        && let Some(size) = info.size
    {
        target.resize_exact(size)?;
    }
    target.begin(info.size.unwrap_or(0))?;
    let target = &*target;
    let verifier = opts.verify.then(|| Verifier::start(target, opts));
    let written = copy(src, target, opts, progress, verifier.as_ref())?;
    target.sync()?;
    let verified = match verifier {
        Some(v) => {
            v.finish(progress, &opts.stop)?;
            true
        }
        None => false,
    };
    target.finish_disk()?;
    Ok((written, verified))
}

/// A piece after its worker: checked, ready to write.
struct Ready {
    offset: u64,
    len: usize,
    digest: Digest,
    zero: bool,
    source_pos: u64,
    slot: Box<Slot>,
}

/// How often a streamed source's loss and passes go to the progress sink.
const STREAM_STATUS_EVERY: Duration = Duration::from_millis(500);

fn copy(
    src: Box<dyn ChunkSource>,
    target: &Target,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
    verifier: Option<&Verifier>,
) -> Result<u64> {
    let info = src.info().clone();
    let manifest = info.head.as_ref().map(|h| &h.manifest);
    let slot_len = opts
        .buffer_size
        .max(manifest.map_or(0, |m| m.chunk_size as usize));
    let buffers = opts.buffers.max(2);
    // Workers also write, so a couple more than CPUs keep the CPUs busy
    // while others wait for the device (measured: 4 workers restore the
    // bench image ~15 % faster than 2 on 2 CPUs). Each needs a slot, and
    // the reader one more.
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get()) + 2
    } else {
        opts.workers
    }
    .clamp(1, buffers - 1);

    // Progress counts restored bytes when the total is known, else bytes
    // of (compressed) source consumed.
    let (total, by_source) = match (manifest, info.size, info.source_len) {
        (Some(m), _, _) => (m.stored_bytes(), false),
        (None, Some(size), _) => (info.stored.unwrap_or(size), false),
        (None, None, len) => (len.unwrap_or(0), true),
    };
    progress.detail(&format!(
        "copy: {buffers} buffers of {}, {workers} workers, {} writes",
        human_size(slot_len as u64),
        if target.direct_io() {
            "O_DIRECT"
        } else {
            "buffered"
        }
    ));
    progress.start(Phase::Restore, total);

    let (free_tx, free_rx) = bounded::<Box<Slot>>(buffers);
    for _ in 0..buffers {
        free_tx
            .send(Box::new(Slot::new(slot_len)))
            .expect("pool channel has room");
    }
    let (work_tx, work_rx) = bounded::<(Piece, u64, Box<Slot>)>(buffers);
    let (ready_tx, ready_rx) = bounded::<Result<Ready>>(buffers + workers + 1);

    // The reader is not scoped: a read blocked on a stalled network stream
    // must not keep an aborted restore from erasing the target and exiting.
    // It ends by itself once its channels close.
    let abort = Arc::new(AtomicBool::new(false));
    let stream = src.stream_status();
    {
        let (ready, abort) = (ready_tx.clone(), abort.clone());
        let mut src = src;
        std::thread::spawn(move || {
            while let Ok(mut slot) = free_rx.recv() {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                match src.next_piece(&mut slot) {
                    Ok(Some(piece)) => {
                        if work_tx.send((piece, src.position(), slot)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        break;
                    }
                }
            }
        });
    }
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (work_rx, ready_tx, abort) = (work_rx.clone(), ready_tx.clone(), &abort);
            s.spawn(move || {
                let mut dctx = zstd::bulk::Decompressor::new().ok();
                loop {
                    let (piece, source_pos, slot) =
                        match work_rx.recv_timeout(Duration::from_millis(200)) {
                            Ok(work) => work,
                            Err(crossbeam_channel::RecvTimeoutError::Timeout)
                                if !abort.load(Ordering::Relaxed) =>
                            {
                                continue;
                            }
                            Err(_) => break,
                        };
                    let r = check_piece(piece, source_pos, slot, manifest, dctx.as_mut())
                        .and_then(|ready| write_piece(target, ready));
                    if ready_tx.send(r).is_err() {
                        break;
                    }
                }
            });
        }
        drop(work_rx);
        drop(ready_tx);

        let mut writer = BootHoldingWriter::new(target, verifier);
        let mut done = 0u64;
        let mut last_stream = Instant::now();
        let result = (|| -> Result<()> {
            loop {
                if let Some(s) = &stream
                    && last_stream.elapsed() >= STREAM_STATUS_EVERY
                {
                    last_stream = Instant::now();
                    progress.stream(s.loss_percent(), s.passes());
                }
                // Wake up now and then even when no piece comes (a stalled
                // network stream), so Ctrl-C is acted on promptly.
                let r = match ready_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(r) => r,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        opts.stop.check()?;
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                opts.stop.check()?;
                if let Some(v) = verifier {
                    v.check()?;
                }
                let ready = r?;
                writer.put(&ready)?;
                done = if by_source {
                    ready.source_pos
                } else {
                    done + ready.len as u64
                };
                progress.update(Phase::Restore, done, total);
                // The channel has room for every slot, so this never blocks.
                let _ = free_tx.send(ready.slot);
            }
            writer.finish()
        })();
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // Unblock the reader (waiting for a slot) and drain the workers.
        drop(free_tx);
        drop(ready_rx);
        result.map(|()| writer.written)
    })
    .inspect(|_| progress.finish(Phase::Restore))
}

/// Worker step: decompress if needed, hash, compare with the manifest.
fn check_piece(
    piece: Piece,
    source_pos: u64,
    mut slot: Box<Slot>,
    manifest: Option<&Manifest>,
    dctx: Option<&mut zstd::bulk::Decompressor<'static>>,
) -> Result<Ready> {
    let (offset, len, digest) = match piece {
        Piece::Raw { offset, len } => (offset, len, *blake3::hash(&slot.data[..len]).as_bytes()),
        Piece::Checked(i) => {
            let m = manifest.ok_or_else(|| anyhow!("internal: extent piece without a manifest"))?;
            let e = &m.extents[i];
            (e.target_offset, e.length as usize, e.digest)
        }
        Piece::Extent(i) => {
            let m = manifest.ok_or_else(|| anyhow!("internal: extent piece without a manifest"))?;
            let dctx = dctx.ok_or_else(|| anyhow!("could not create a zstd decompressor"))?;
            let digest = source::unpack_extent(m, i, &mut slot, dctx)?;
            let e = &m.extents[i];
            (e.target_offset, e.length as usize, digest)
        }
    };
    let zero = crate::io::is_zero(&slot.data[..len]);
    Ok(Ready {
        offset,
        len,
        digest,
        zero,
        source_pos,
        slot,
    })
}

/// Worker step after the check: writes the piece positionally, except the
/// part inside the boot area, which the collector holds back. Several
/// workers write at once, which keeps more than one request in flight.
fn write_piece(target: &Target, r: Ready) -> Result<Ready> {
    let end = r.offset + r.len as u64;
    if !target.is_file() && end > target.size {
        bail!(
            "the image is larger than {} ({})",
            target.path.display(),
            human_size(target.size)
        );
    }
    let held = end.min(BOOT_AREA).saturating_sub(r.offset);
    let rest = &r.slot.data[held as usize..r.len];
    if !rest.is_empty() {
        let at = r.offset + held;
        if r.zero {
            target.zero_range(at, rest.len() as u64)?;
        } else {
            target.write_at(rest, at)?;
        }
    }
    Ok(r)
}

/// Collects written pieces: keeps the parts inside the first MiB in a side
/// buffer to write last, and hands written ranges to the verifier.
struct BootHoldingWriter<'a> {
    target: &'a Target,
    verifier: Option<&'a Verifier>,
    boot: AlignedBuf,
    /// Parts of the boot area the image covers.
    boot_ranges: Vec<Range<u64>>,
    /// Pieces touching the boot area; verified once it is written.
    boot_pieces: Vec<Written>,
    written: u64,
    since_sync: u64,
}

/// Bytes written between syncs when writes go through the page cache, so
/// dirty data never piles up and Ctrl-C or a failure never waits minutes.
const BUFFERED_SYNC_INTERVAL: u64 = 64 << 20;

impl<'a> BootHoldingWriter<'a> {
    fn new(target: &'a Target, verifier: Option<&'a Verifier>) -> Self {
        BootHoldingWriter {
            target,
            verifier,
            boot: AlignedBuf::new(BOOT_AREA as usize),
            boot_ranges: Vec::new(),
            boot_pieces: Vec::new(),
            written: 0,
            since_sync: 0,
        }
    }

    /// Takes a piece `write_piece` has written all of but its boot part.
    fn put(&mut self, r: &Ready) -> Result<()> {
        let end = r.offset + r.len as u64;
        let held = end.min(BOOT_AREA).saturating_sub(r.offset);
        if held > 0 {
            let at = r.offset as usize;
            self.boot[at..at + held as usize].copy_from_slice(&r.slot.data[..held as usize]);
            self.boot_ranges.push(r.offset..r.offset + held);
        }
        self.written += r.len as u64;
        self.since_sync += r.len as u64;
        if self.since_sync >= BUFFERED_SYNC_INTERVAL && !self.target.direct_io() {
            self.target.sync()?;
            self.since_sync = 0;
        }
        let w = Written {
            offset: r.offset,
            len: r.len as u64,
            digest: r.digest,
        };
        if held > 0 {
            self.boot_pieces.push(w);
        } else if let Some(v) = self.verifier {
            v.queue(w);
        }
        Ok(())
    }

    /// Writes the held-back boot area last, merged into as few writes as
    /// the image's coverage allows.
    fn finish(&mut self) -> Result<()> {
        self.target.sync()?;
        for r in crate::ranges::normalize(std::mem::take(&mut self.boot_ranges)) {
            self.target
                .write_at(&self.boot[r.start as usize..r.end as usize], r.start)?;
        }
        if let Some(v) = self.verifier {
            self.boot_pieces.drain(..).for_each(|w| v.queue(w));
        }
        Ok(())
    }
}

/// Re-reads written ranges from the device (O_DIRECT, so not from the page
/// cache) on its own threads while the copy goes on, comparing digests.
struct Verifier {
    tx: Option<Sender<Written>>,
    total: AtomicU64,
    verified: Arc<AtomicU64>,
    /// The first failure; also tells the other threads to stop.
    error: Arc<Mutex<Option<anyhow::Error>>>,
    /// Set when the restore ends early, so threads stop reading a target
    /// that is about to be erased.
    stop: Arc<AtomicBool>,
    done_rx: Receiver<()>,
    threads: usize,
}

impl Verifier {
    fn start(target: &Target, opts: &RestoreOptions) -> Verifier {
        let (tx, rx) = unbounded::<Written>();
        let (done_tx, done_rx) = unbounded();
        let verified = Arc::new(AtomicU64::new(0));
        let error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = opts.csum_buffers.max(1);
        for _ in 0..threads {
            let (rx, done_tx) = (rx.clone(), done_tx.clone());
            let (verified, error, stop) = (verified.clone(), error.clone(), stop.clone());
            let reader = target.open_verify_reader();
            let buf_len = opts.csum_buffer_size.max(crate::io::IO_ALIGN);
            let path = target.path.clone();
            std::thread::spawn(move || {
                let r = (|| -> Result<()> {
                    let (file, _) = reader?;
                    let mut buf = AlignedBuf::new(buf_len);
                    for w in rx {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let got =
                            hash_range(&file, &mut buf, w.offset, w.len).with_context(|| {
                                format!("reading back {} at byte {}", path.display(), w.offset)
                            })?;
                        if got != w.digest {
                            bail!(
                                "verification failed: {} bytes at offset {} of {} differ from the image",
                                w.len,
                                w.offset,
                                path.display()
                            );
                        }
                        verified.fetch_add(w.len, Ordering::Relaxed);
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    stop.store(true, Ordering::Relaxed);
                    error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
                let _ = done_tx.send(());
            });
        }
        Verifier {
            tx: Some(tx),
            total: AtomicU64::new(0),
            verified,
            error,
            stop,
            done_rx,
            threads,
        }
    }

    fn queue(&self, w: Written) {
        self.total.fetch_add(w.len, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            // Threads only stop early after a failure, which check() and
            // finish() report.
            let _ = tx.send(w);
        }
    }

    /// Fails as soon as a verifier thread has, so a restore onto a device
    /// that does not keep what it is given stops early.
    fn check(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the verifiers, showing the `Verifying` phase.
    fn finish(mut self, progress: &dyn ProgressSink, stop: &crate::signals::Stop) -> Result<()> {
        drop(self.tx.take());
        let total = self.total.load(Ordering::Relaxed);
        progress.start(Phase::Verify, total);
        let mut pending = self.threads;
        while pending > 0 {
            match self.done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => pending -= 1,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => stop.check()?,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            self.check()?;
            progress.update(Phase::Verify, self.verified.load(Ordering::Relaxed), total);
        }
        progress.finish(Phase::Verify);
        Ok(())
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// BLAKE3 of `len` bytes at `offset`, read in `buf`-sized pieces.
pub(crate) fn hash_range(
    file: &std::fs::File,
    buf: &mut AlignedBuf,
    offset: u64,
    len: u64,
) -> std::io::Result<Digest> {
    use std::os::unix::fs::FileExt;
    let mut h = blake3::Hasher::new();
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        // O_DIRECT needs sector-multiple lengths: read the rounded-up
        // length and hash only what belongs to the range.
        let read_len = want.next_multiple_of(512).min(buf.len());
        let n = file.read_at(&mut buf[..read_len], at)?;
        if n < want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "device ended early",
            ));
        }
        h.update(&buf[..want]);
        at += want as u64;
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Quiet;

    /// A file target holding 3 MiB of a pattern, and the digests of its MiBs.
    fn target_with_pattern(dir: &Path) -> (Target, Vec<Digest>) {
        let path = dir.join("t.img");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let digests = data
            .chunks(1 << 20)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect();
        (Target::open(&path).unwrap(), digests)
    }

    /// A verifier with MiB `i` of the target queued against `digests[i]`.
    fn verify_mibs(target: &Target, digests: &[Digest]) -> Verifier {
        let v = Verifier::start(target, &RestoreOptions::default());
        for (i, d) in digests.iter().enumerate() {
            v.queue(Written {
                offset: (i as u64) << 20,
                len: 1 << 20,
                digest: *d,
            });
        }
        v
    }

    #[test]
    fn verifier_accepts_what_the_device_holds() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (target, digests) = target_with_pattern(dir.path());
        let v = verify_mibs(&target, &digests);
        v.finish(&Quiet, &Default::default()).unwrap();
    }

    #[test]
    fn verifier_reports_a_range_the_device_did_not_keep() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (target, mut digests) = target_with_pattern(dir.path());
        digests[1][0] ^= 1;
        let v = verify_mibs(&target, &digests);
        let err = v
            .finish(&Quiet, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("verification failed") && err.contains("offset 1048576"),
            "{err}"
        );
    }

    #[test]
    fn hash_range_reads_unaligned_tails() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("odd");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (f, _) = crate::io::open_read_direct(&path).unwrap();
        let mut buf = AlignedBuf::new(4096);
        let d = hash_range(&f, &mut buf, 4096, 10_000 - 4096).unwrap();
        assert_eq!(d, *blake3::hash(&data[4096..]).as_bytes());
        assert!(
            hash_range(&f, &mut buf, 8192, 4096).is_err(),
            "reading past the end"
        );
    }
}
