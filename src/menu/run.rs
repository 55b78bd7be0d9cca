//! The menu's event loop and the workers behind its actions (STYLE §12):
//! an input thread and every worker feed one channel of [`Event`]s; the
//! loop hands each to [`App::update`], performs the [`Action`]s that come
//! back and redraws with `render`, which only reads the state.

use std::any::Any;
use std::collections::HashSet;
use std::io::{IsTerminal, Stdout};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossterm::event::{self as term_event, Event as TermEvent};
use crossterm::{cursor, execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use serde::Deserialize;

use super::app::{
    Action, App, Event, Exit, ImageEntry, ImageKind, PartEntry, ProgressEvent, Summary, TargetEntry,
};
use crate::progress::{Phase, ProgressSink};
use crate::rescue::disks::{self, Disk, Transport};
use crate::rescue::media;
use crate::restore::{self, RestoreOptions};
use crate::source::HttpOptions;

impl Exit {
    /// The exit status `reimage menu` ends with, which the rescue system's
    /// PID 1 acts on (rescue/init.rs): the shell is 0 (as quitting is), and
    /// the others stay clear of 1, every command's failure.
    pub fn code(self) -> u8 {
        match self {
            Exit::Shell => 0,
            Exit::Reboot => 10,
            Exit::PowerOff => 11,
        }
    }
}

/// Where the menu looks for images, and how it restores them.
#[derive(Debug, Clone)]
pub struct MenuOptions {
    /// Catalog URLs: an `images.json`, or a server's base URL ending in `/`.
    pub catalogs: Vec<String>,
    /// Directories searched for images, besides the filesystems of
    /// removable and USB disks.
    pub image_dirs: Vec<PathBuf>,
    /// How long to listen for multicast streams (DNS-SD); None: don't.
    pub browse: Option<Duration>,
    /// Restore only images signed by this key.
    pub pubkey: Option<minisign_verify::PublicKey>,
    pub http: HttpOptions,
    /// The disk the system booted from (kernel name or /dev path): never
    /// offered. The disk carrying the rescue stick's labels
    /// ([`disks::boot_disk`]) never is either.
    pub boot_disk: Option<String>,
    /// The sysfs root disks are listed from (`/sys`; tests build a fake).
    pub sys: PathBuf,
    /// Running as the rescue system: the boot stick's filesystems that are
    /// not mounted get mounted read-only under [`media::MEDIA_DIR`] to be searched.
    pub rescue: bool,
}

/// How often the input thread sends [`Event::Tick`].
const TICK: Duration = Duration::from_secs(1);

/// Events applied at most before the screen is drawn again, so a burst
/// (a pasted name, a fast restore's progress) costs one redraw, and a
/// flood still lets the screen move.
const BATCH: usize = 256;

/// Shows the menu on the terminal until the user picks a way out.
pub fn run(opts: MenuOptions) -> Result<Exit> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        bail!("the menu needs a terminal: stdin or stdout is not one");
    }
    // From here on SIGINT and SIGTERM set the restore pipeline's stop flag
    // instead of killing the process: a kill must not leave the console in
    // raw mode, and cancelling a restore raises SIGINT (Workers::cancel).
    crate::signals::catch_interrupts();
    let mut screen = Screen::enter()?;
    event_loop(&mut screen.terminal, opts)
}

fn event_loop(terminal: &mut Term, opts: MenuOptions) -> Result<Exit> {
    let (tx, rx) = mpsc::channel();
    let input = {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("menu input".into())
            .spawn(move || read_input(&tx))
            .context("starting the input thread")?
    };
    let mut workers = Workers {
        opts: Arc::new(opts),
        tx,
        scan: Arc::new(AtomicU64::new(0)),
        restoring: false,
        stop: Default::default(),
    };
    let mut app = App::new();
    let (w, h) = terminal::size().context("reading the terminal size")?;
    app.update(Event::Resize(w, h));
    let mut actions = app.start();
    loop {
        for action in actions.drain(..) {
            if let Some(exit) = workers.perform(action) {
                return Ok(exit);
            }
        }
        if input.is_finished() {
            return Err(input_failure(input));
        }
        terminal
            .draw(|frame| super::render::render(&app, frame))
            .context("drawing the menu")?;
        // Ticks arrive every second; waking without one only re-checks
        // the input thread. (The channel cannot close: `workers` holds a
        // sender.)
        let Ok(first) = rx.recv_timeout(2 * TICK) else {
            continue;
        };
        for ev in std::iter::once(first).chain(rx.try_iter().take(BATCH)) {
            workers.observe(&ev)?;
            actions.extend(app.update(ev));
        }
    }
}

/// Keys, resizes and a [`Event::Tick`] about once a second, until the
/// menu is gone (its receiver dropped) or the terminal fails.
fn read_input(tx: &Sender<Event>) -> std::io::Result<()> {
    let mut next_tick = Instant::now() + TICK;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let ev = if term_event::poll(wait)? {
            match term_event::read()? {
                TermEvent::Key(k) => Event::Key(k),
                TermEvent::Resize(w, h) => Event::Resize(w, h),
                _ => continue,
            }
        } else {
            let now = Instant::now();
            next_tick = now + TICK;
            Event::Tick(now)
        };
        if tx.send(ev).is_err() {
            return Ok(());
        }
    }
}

/// Why the input thread ended early.
fn input_failure(input: JoinHandle<std::io::Result<()>>) -> anyhow::Error {
    match input.join() {
        Ok(Err(e)) => anyhow::Error::new(e).context("reading the terminal"),
        Ok(Ok(())) => anyhow!("the terminal input ended"),
        Err(panic) => anyhow!("the input thread panicked: {}", panic_text(&*panic)),
    }
}

type Term = Terminal<CrosstermBackend<Stdout>>;

/// The terminal in raw mode on the alternate screen. Dropping it gives the
/// terminal back; so does the panic hook when the menu thread panics,
/// before the message is printed.
struct Screen {
    terminal: Term,
    hook: Arc<HookState>,
}

/// What the panic hook knows while the menu owns the terminal.
struct HookState {
    active: AtomicBool,
    menu_thread: ThreadId,
    /// Panics of other threads while the menu is up. Printed then, they
    /// would scribble over the screen (and a worker shows its own in the
    /// menu, see [`caught`]); they are printed once the terminal is back.
    held: Mutex<Vec<String>>,
    /// The real stderr while fd 2 goes to the log (see [`stderr_to_log`]).
    stderr: Mutex<Option<OwnedFd>>,
}

impl HookState {
    /// Gives the terminal back and stderr with it. Runs once, whoever
    /// comes first: the panic hook or Screen's Drop.
    fn restore(&self) {
        give_terminal_back();
        if let Some(real) = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = nix::unistd::dup2_stderr(&real);
        }
    }
}

/// Where stderr goes while the menu shows: library code that prints there
/// (the multicast client's rare warnings) would otherwise scribble over
/// the screen until the next redraw.
fn menu_log() -> PathBuf {
    std::env::temp_dir().join("reimage-menu.log")
}

/// Points fd 2 at `log` (appending) and returns the real stderr, or None
/// when that cannot be done (then stderr stays as it is).
fn stderr_to_log(log: &Path) -> Option<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok()?;
    let real = nix::unistd::dup(std::io::stderr()).ok()?;
    nix::unistd::dup2_stderr(&file).ok()?;
    Some(real)
}

impl Screen {
    fn enter() -> Result<Screen> {
        let hook = Arc::new(HookState {
            active: AtomicBool::new(false),
            menu_thread: std::thread::current().id(),
            held: Mutex::new(Vec::new()),
            stderr: Mutex::new(None),
        });
        install_panic_hook(hook.clone());
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
            .context("opening the terminal")?;
        // From here every way out, errors included, goes through Drop.
        let mut screen = Screen { terminal, hook };
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        screen.hook.active.store(true, Ordering::SeqCst);
        // Not Terminal::clear: it asks the terminal where the cursor is,
        // and a serial console (a BMC's, a log) may never answer.
        execute!(
            screen.terminal.backend_mut(),
            terminal::EnterAlternateScreen,
            terminal::Clear(terminal::ClearType::All)
        )
        .context("switching to the alternate screen")?;
        *screen.hook.stderr.lock().unwrap_or_else(|e| e.into_inner()) = stderr_to_log(&menu_log());
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.hook.active.store(false, Ordering::SeqCst);
        self.hook.restore();
        let held = std::mem::take(&mut *self.hook.held.lock().unwrap_or_else(|e| e.into_inner()));
        for panic in held {
            eprintln!("reimage: a thread {panic}");
        }
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor. Best
/// effort: nothing more can be done for a terminal that is gone.
fn give_terminal_back() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
}

/// Chains a hook in front of the current one; it only acts while the
/// menu owns the terminal, so it is harmless once [`run`] has returned.
fn install_panic_hook(state: Arc<HookState>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if state.active.load(Ordering::SeqCst) {
            if std::thread::current().id() != state.menu_thread {
                let mut held = state.held.lock().unwrap_or_else(|e| e.into_inner());
                held.push(info.to_string());
                return;
            }
            state.active.store(false, Ordering::SeqCst);
            state.restore();
        }
        previous(info);
    }));
}

/// Performs actions on threads of their own; their answers come back as
/// events on the menu's channel.
struct Workers {
    opts: Arc<MenuOptions>,
    tx: Sender<Event>,
    /// Counts scans. A discovery reports only while its scan is the
    /// latest, so a rescan's list never gets an earlier scan's late answer.
    scan: Arc<AtomicU64>,
    /// A restore thread runs: from StartRestore until its Finished passes.
    restoring: bool,
    /// The running restore's stop.
    stop: crate::signals::Stop,
}

impl Workers {
    /// Starts what `action` asks for, or says how the menu ends.
    fn perform(&mut self, action: Action) -> Option<Exit> {
        match action {
            Action::Discover => self.discover(),
            Action::ListTargets => self.list_targets(),
            Action::StartRestore { image, target } => self.start_restore(image, target),
            Action::CancelRestore => self.cancel(),
            exit @ (Action::Reboot | Action::PowerOff | Action::Shell) => return exit.exit(),
        }
        None
    }

    /// Sees every event before the menu does: notes the end of a restore,
    /// and ends the menu after a SIGINT/SIGTERM from outside once no
    /// restore runs (a running one stops at the signal by itself, erases
    /// its target and reports first).
    fn observe(&mut self, ev: &Event) -> Result<()> {
        if matches!(ev, Event::Finished(_)) {
            self.restoring = false;
        }
        if !self.restoring {
            crate::signals::check()?;
        }
        Ok(())
    }

    fn discover(&self) {
        type Job = Box<dyn FnOnce() -> Result<Vec<ImageEntry>> + Send>;
        let scan = self.scan.fetch_add(1, Ordering::SeqCst) + 1;
        let mut jobs: Vec<(String, Job)> = Vec::new();
        for url in &self.opts.catalogs {
            let (url, http) = (url.clone(), self.opts.http.clone());
            jobs.push((
                format!("catalog {url}"),
                Box::new(move || catalog_images(&url, &http)),
            ));
        }
        if let Some(wait) = self.opts.browse {
            jobs.push(("multicast".into(), Box::new(move || multicast_images(wait))));
        }
        for dir in &self.opts.image_dirs {
            let dir = dir.clone();
            jobs.push((
                format!("directory {}", dir.display()),
                Box::new(move || dir_images(&dir)),
            ));
        }
        let opts = self.opts.clone();
        jobs.push((
            ImageKind::Local.label().into(),
            Box::new(move || usb_images(&opts)),
        ));
        let labels = jobs.iter().map(|(label, _)| label.clone()).collect();
        // Sent before any worker starts, so it reaches the menu first.
        let _ = self.tx.send(Event::Discovering(labels));
        for (label, job) in jobs {
            let (tx, latest) = (self.tx.clone(), self.scan.clone());
            std::thread::spawn(move || {
                let result = caught(job);
                if latest.load(Ordering::SeqCst) == scan {
                    let _ = tx.send(Event::Images {
                        from: label,
                        result,
                    });
                }
            });
        }
    }

    fn list_targets(&self) {
        let (tx, opts) = (self.tx.clone(), self.opts.clone());
        std::thread::spawn(move || {
            let _ = tx.send(Event::Targets(caught(|| targets(&opts))));
        });
    }

    fn start_restore(&mut self, image: ImageEntry, target: TargetEntry) {
        self.restoring = true;
        let opts = RestoreOptions {
            // The user typed the disk's name to confirm the erase.
            erase: true,
            noprompt: true,
            pubkey: self.opts.pubkey.clone(),
            http: self.opts.http.clone(),
            ..RestoreOptions::default()
        };
        self.stop = opts.stop.clone();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let progress = ChannelProgress::new(tx.clone());
            let result =
                caught(|| restore::restore(&image.location, &target.path, &opts, &progress));
            let _ = tx.send(Event::Finished(result.map(|r| Summary::from(&r))));
        });
    }

    /// Stops the running restore: it erases its target to a valid empty
    /// state and fails, which comes back as `Finished`.
    fn cancel(&mut self) {
        self.stop.request();
    }
}

/// Runs a worker's job; its error, or its panic (which would leave the
/// menu waiting forever), becomes the one line the menu shows.
fn caught<T>(job: impl FnOnce() -> Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(job)) {
        Ok(result) => result.map_err(|e| format!("{e:#}").replace(['\n', '\r'], " ")),
        Err(panic) => Err(format!("internal error: {}", panic_text(&*panic))),
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The progress sink of a menu restore: every call becomes an
/// [`Event::Progress`] on the menu's channel, stamped with the time it
/// happened (the menu's state never reads the clock).
///
/// There are no [`ProgressEvent::Multicast`] events yet: the multicast
/// client keeps its loss counters to itself and gets no sink.
pub struct ChannelProgress {
    tx: Sender<Event>,
    /// When the last update went out.
    last_update: Mutex<Option<Instant>>,
}

/// The restore reports every piece (up to thousands a second); the screen
/// needs a few updates a second, and the rate is averaged over seconds.
const UPDATE_EVERY: Duration = Duration::from_millis(100);

impl ChannelProgress {
    pub fn new(tx: Sender<Event>) -> ChannelProgress {
        ChannelProgress {
            tx,
            last_update: Mutex::new(None),
        }
    }

    fn send(&self, ev: ProgressEvent) {
        // Nobody listens once the menu has ended; the restore goes on.
        let _ = self.tx.send(Event::Progress(ev));
    }
}

impl ProgressSink for ChannelProgress {
    fn start(&self, phase: Phase, total: u64) {
        *self.last_update.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.send(ProgressEvent::Start {
            phase,
            total,
            at: Instant::now(),
        });
    }

    fn update(&self, phase: Phase, done: u64, total: u64) {
        let at = Instant::now();
        let mut last = self.last_update.lock().unwrap_or_else(|e| e.into_inner());
        let complete = total > 0 && done >= total;
        if complete || last.is_none_or(|t| at.duration_since(t) >= UPDATE_EVERY) {
            *last = Some(at);
            drop(last);
            self.send(ProgressEvent::Update {
                phase,
                done,
                total,
                at,
            });
        }
    }

    fn finish(&self, phase: Phase) {
        self.send(ProgressEvent::Finish {
            phase,
            at: Instant::now(),
        });
    }

    fn stream(&self, loss_percent: f64, passes: u32) {
        self.send(ProgressEvent::Multicast {
            loss_percent,
            passes,
        });
    }

    fn note(&self, msg: &str) {
        self.send(ProgressEvent::Note(msg.to_owned()));
    }

    /// The menu has no --verbose, and its log has room for the details
    /// (the copy's setup, a verified signature).
    fn detail(&self, msg: &str) {
        self.note(msg);
    }
}

/// What the menu reads of `images.json` (`catalog::Entry`, which is only
/// written); unknown fields are ignored, so the catalog can grow.
#[derive(Deserialize)]
struct CatalogDoc {
    images: Vec<CatalogImage>,
}

#[derive(Deserialize)]
struct CatalogImage {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    url: String,
}

/// A catalog entry is a few hundred bytes: room for thousands of images.
const CATALOG_LIMIT: u64 = 8 << 20;

fn catalog_images(url: &str, http: &HttpOptions) -> Result<Vec<ImageEntry>> {
    let url = if url.ends_with('/') {
        format!("{url}images.json")
    } else {
        url.to_owned()
    };
    let text = crate::source::fetch_small(&url, http, CATALOG_LIMIT)?
        .ok_or_else(|| anyhow!("not found (HTTP 404)"))?;
    parse_catalog(&url, &text)
}

/// The images of a catalog fetched from `url`; their URLs are relative to
/// it. Messages leave the URL out: the menu shows them under it.
fn parse_catalog(url: &str, text: &str) -> Result<Vec<ImageEntry>> {
    let base = reqwest::Url::parse(url).context("not a URL")?;
    let doc: CatalogDoc = serde_json::from_str(text).context("not an image catalog")?;
    doc.images
        .into_iter()
        .map(|image| {
            let location = base
                .join(&image.url)
                .with_context(|| format!("{} has a bad url {:?}", image.name, image.url))?;
            Ok(ImageEntry {
                name: image.name,
                size: image.size,
                kind: ImageKind::Catalog,
                location: location.to_string(),
                description: image.description.filter(|d| !d.trim().is_empty()),
            })
        })
        .collect()
}

fn multicast_images(wait: Duration) -> Result<Vec<ImageEntry>> {
    let streams = crate::mcast::dnssd::browse(wait)?;
    Ok(streams
        .into_iter()
        .map(|s| ImageEntry {
            location: s.url(),
            // Two servers may stream images of one name; the digest tells
            // whether they are the same image. browse() checked it is hex.
            description: Some(format!("digest {}", &s.digest[..16])),
            name: s.name,
            size: Some(s.size),
            kind: ImageKind::Multicast,
        })
        .collect())
}

/// File names the menu offers: prepared images and the raw images restore
/// takes. Restore goes by content; the name only decides what to list.
const IMAGE_SUFFIXES: [&str; 6] = [".rimg", ".img", ".img.gz", ".img.xz", ".img.zst", ".dmg"];

/// How deep below a directory images are looked for: a data partition is
/// organised by hand (`images/lab/`), and an unbounded walk of a big disk
/// would keep its source "searching" for minutes.
const IMAGE_DEPTH: usize = 3;

fn is_image_name(name: &str) -> bool {
    IMAGE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

fn dir_images(dir: &Path) -> Result<Vec<ImageEntry>> {
    let mut found = Vec::new();
    walk(dir, IMAGE_DEPTH, &mut found).with_context(|| format!("listing {}", dir.display()))?;
    Ok(found.iter().filter_map(|p| local_entry(p)).collect())
}

/// Image files in `dir` and `depth - 1` levels below it, in name order.
/// Only `dir` itself must be readable; hidden directories are skipped.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        // file_type() does not follow links: no walking into a linked
        // directory (a loop); a linked image file is fine.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && depth > 1 && !name.starts_with('.') {
            let _ = walk(&path, depth - 1, out);
        } else if !is_dir && is_image_name(&name) && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The entry for an image file. A prepared image whose head does not
/// read is left out, as `reimage catalog` does: restoring it could only
/// fail.
fn local_entry(path: &Path) -> Option<ImageEntry> {
    let file_name = path.file_name()?.to_string_lossy().into_owned();
    // The first line of IMAGE.txt beside it, as the catalog has it.
    let description = std::fs::read_to_string(path.with_extension("txt"))
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
        .filter(|l| !l.is_empty());
    let (name, size) = if file_name.ends_with(".rimg") {
        let mut file = std::fs::File::open(path).ok()?;
        let m = crate::image::format::read_head(&mut file).ok()?.manifest;
        let name = if m.name.is_empty() { file_name } else { m.name };
        (name, Some(m.logical_size))
    } else if file_name.ends_with(".img") {
        let len = std::fs::metadata(path).ok()?.len();
        (file_name, Some(len))
    } else {
        // Compressed (or a .dmg): the size is known only once the image
        // is opened, which listing does not do.
        (file_name, None)
    };
    Some(ImageEntry {
        name,
        size,
        kind: ImageKind::Local,
        location: path.to_string_lossy().into_owned(),
        description,
    })
}

/// Images on the mounted filesystems of removable and USB disks and of
/// the boot disk, after (in rescue mode) mounting the boot stick's.
/// Problems matter only when they leave the list empty.
fn usb_images(opts: &MenuOptions) -> Result<Vec<ImageEntry>> {
    let mut disks = disks::list(&opts.sys)?;
    disks::probe_labels(&mut disks, Path::new("/dev"));
    let boot = boot_disks(opts, &disks);
    let is_boot = |d: &Disk| boot.contains(&d.name);
    let mut problems = Vec::new();
    if opts.rescue {
        let mounts = crate::blockdev::mounts()?;
        for stick in disks.iter().filter(|d| is_boot(d)) {
            problems.extend(media::mount_stick(stick, &mounts));
        }
    }
    let mounts = crate::blockdev::mounts()?;
    let mut roots: Vec<PathBuf> = Vec::new();
    let searched = disks
        .iter()
        .filter(|d| d.removable || d.transport == Transport::Usb || is_boot(d));
    for point in searched.flat_map(|d| media::mount_points(d, &mounts)) {
        if !roots.contains(&point) {
            roots.push(point);
        }
    }
    let mut found = Vec::new();
    for root in &roots {
        if let Err(e) = walk(root, IMAGE_DEPTH, &mut found) {
            problems.push(format!("listing {}: {e}", root.display()));
        }
    }
    // A filesystem mounted twice (a bind mount) shows its files twice.
    let mut seen = HashSet::new();
    found.retain(|p| std::fs::metadata(p).is_ok_and(|m| seen.insert((m.dev(), m.ino()))));
    let images: Vec<ImageEntry> = found.iter().filter_map(|p| local_entry(p)).collect();
    if images.is_empty() && !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(images)
}

/// The boot medium's kernel names: the one given, and the disk carrying
/// the rescue stick's labels.
fn boot_disks(opts: &MenuOptions, disks: &[Disk]) -> Vec<String> {
    let given = opts
        .boot_disk
        .as_deref()
        .map(|b| b.strip_prefix("/dev/").unwrap_or(b).to_owned());
    let labelled = disks::boot_disk(disks).map(|d| d.name.clone());
    given.into_iter().chain(labelled).collect()
}

/// The disks to offer: all that [`disks::list`] lists (it leaves out loop,
/// RAM, optical and other virtual devices), but the boot medium and
/// read-only disks (a write-protected card: the restore's preflight would
/// refuse it only after the user picked and confirmed it).
fn targets(opts: &MenuOptions) -> Result<Vec<TargetEntry>> {
    let mut disks = disks::list(&opts.sys)?;
    disks::probe_labels(&mut disks, Path::new("/dev"));
    let boot = boot_disks(opts, &disks);
    Ok(disks
        .into_iter()
        .filter(|d| !d.read_only && !boot.contains(&d.name))
        .map(target_entry)
        .collect())
}

fn target_entry(d: Disk) -> TargetEntry {
    TargetEntry {
        transport: d.transport.to_string().to_lowercase(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| PartEntry {
                name: p.name,
                size: p.size,
                label: p.label,
            })
            .collect(),
        name: d.name,
        path: d.path,
        size: d.size,
        model: d.model,
        serial: d.serial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_what_pid_1_expects() {
        assert_eq!(Exit::Shell.code(), 0);
        assert_eq!(Exit::Reboot.code(), 10);
        assert_eq!(Exit::PowerOff.code(), 11);
    }

    #[test]
    fn catalog_urls_resolve_against_the_catalog() {
        let text = r#"{"images": [
            {"name": "lab", "description": "Lab PCs", "size": 1024, "file_size": 10,
             "digest": "ab", "url": "lab.rimg", "signature_url": null,
             "created": "2024-01-01T00:00:00Z"},
            {"name": "kiosk", "description": " ", "size": 2048,
             "url": "sub/kiosk.rimg"},
            {"name": "elsewhere", "url": "https://cdn.example/x.rimg"}
        ]}"#;
        let images = parse_catalog("http://10.0.0.1:8080/imgs/images.json", text).unwrap();
        let got: Vec<(&str, &str, Option<u64>, Option<&str>)> = images
            .iter()
            .map(|i| {
                assert_eq!(i.kind, ImageKind::Catalog);
                (
                    i.name.as_str(),
                    i.location.as_str(),
                    i.size,
                    i.description.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "lab",
                    "http://10.0.0.1:8080/imgs/lab.rimg",
                    Some(1024),
                    Some("Lab PCs")
                ),
                (
                    "kiosk",
                    "http://10.0.0.1:8080/imgs/sub/kiosk.rimg",
                    Some(2048),
                    None
                ),
                ("elsewhere", "https://cdn.example/x.rimg", None, None),
            ]
        );
    }

    #[test]
    fn a_bad_catalog_is_one_line() {
        let url = "http://srv/images.json";
        for text in [
            "<html>not found</html>",
            r#"{"images": [{"url": "x"}]}"#,
            "",
        ] {
            let e = format!("{:#}", parse_catalog(url, text).unwrap_err());
            assert!(e.starts_with("not an image catalog: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse_catalog("not a url", r#"{"images": []}"#).is_err());
    }

    #[test]
    fn image_files_are_found_by_name_and_depth() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for f in [
            "a.img",
            "b.img.zst",
            "c.img.gz",
            "notes.txt",
            "d.img.partial",
            "one/e.img.xz",
            "one/two/f.img",
            "one/two/three/too-deep.img",
            ".hidden/g.img",
        ] {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"0123").unwrap();
        }
        std::fs::write(root.join("a.txt"), "Lab image\nmore\n").unwrap();
        // Not a prepared image: left out.
        std::fs::write(root.join("broken.rimg"), b"garbage").unwrap();
        std::os::unix::fs::symlink(root, root.join("one/loop")).unwrap();

        let images = dir_images(root).unwrap();
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["a.img", "b.img.zst", "c.img.gz", "e.img.xz", "f.img"]
        );
        assert_eq!(images[0].size, Some(4));
        assert_eq!(images[0].description.as_deref(), Some("Lab image"));
        assert_eq!(images[1].size, None);
        assert!(images.iter().all(|i| i.kind == ImageKind::Local));
        assert_eq!(
            images[4].location,
            root.join("one/two/f.img").to_string_lossy()
        );
        assert!(dir_images(&root.join("missing")).is_err());
    }

    #[test]
    fn stderr_goes_to_the_log_while_the_menu_shows() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("menu.log");
        let real = stderr_to_log(&log).expect("redirected");
        // Straight to fd 2, as library code does (eprintln! would go to
        // the test harness's capture instead).
        std::io::stderr().write_all(b"chunk 7 refused\n").unwrap();
        nix::unistd::dup2_stderr(&real).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("chunk 7 refused"), "{text:?}");
    }

    #[test]
    fn progress_becomes_stamped_events() {
        let (tx, rx) = mpsc::channel();
        let sink = ChannelProgress::new(tx);
        let before = Instant::now();
        sink.start(Phase::Restore, 100);
        for done in 1..=100 {
            sink.update(Phase::Restore, done, 100);
        }
        sink.finish(Phase::Restore);
        sink.note("hello");
        sink.detail("details too");
        sink.stream(2.5, 3);
        let events: Vec<ProgressEvent> = rx
            .try_iter()
            .map(|e| match e {
                Event::Progress(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            matches!(events[0], ProgressEvent::Start { phase: Phase::Restore, total: 100, at } if at >= before)
        );
        // Throttled, but the first and the complete one always go out.
        let updates: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                ProgressEvent::Update { done, .. } => Some(*done),
                _ => None,
            })
            .collect();
        assert_eq!(updates.first(), Some(&1));
        assert_eq!(updates.last(), Some(&100));
        assert!(updates.len() < 100, "{updates:?}");
        let n = events.len();
        assert!(matches!(
            events[n - 4],
            ProgressEvent::Finish {
                phase: Phase::Restore,
                ..
            }
        ));
        assert_eq!(events[n - 3], ProgressEvent::Note("hello".into()));
        assert_eq!(events[n - 2], ProgressEvent::Note("details too".into()));
        assert_eq!(
            events[n - 1],
            ProgressEvent::Multicast {
                loss_percent: 2.5,
                passes: 3
            }
        );
    }

    #[test]
    fn worker_errors_and_panics_become_one_line() {
        let e = caught::<()>(|| Err(anyhow!("two\nlines").context("outer"))).unwrap_err();
        assert_eq!(e, "outer: two lines");
        let e = caught::<()>(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(e, "internal error: boom 1");
        assert_eq!(caught(|| Ok(5)), Ok(5));
    }
}
