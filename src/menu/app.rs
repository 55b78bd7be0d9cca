//! The menu's state and its one entry point, [`App::update`]: an event in,
//! the state changed, actions out. No I/O happens here — not even reading
//! the clock (progress events carry their own timestamps) — so every path
//! through the menu is a plain unit test.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::progress::Phase;

/// One image the user can restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub name: String,
    /// Bytes, when the discovery knows them.
    pub size: Option<u64>,
    pub kind: ImageKind,
    /// What the restore opens: a URL, `mcast://…` or a path.
    pub location: String,
    pub description: Option<String>,
}

/// Where an image was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Listed in an HTTP catalog (`images.json`).
    Catalog,
    /// Announced by a multicast server (DNS-SD).
    Multicast,
    /// A file on the boot USB stick.
    Local,
}

impl ImageKind {
    /// The words the menu shows for the kind.
    pub fn label(self) -> &'static str {
        match self {
            ImageKind::Catalog => "HTTP catalog",
            ImageKind::Multicast => "multicast",
            ImageKind::Local => "USB stick",
        }
    }
}

/// A disk the image can go to. The backend leaves out the boot medium,
/// loop and RAM devices; the menu shows whatever it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    /// Kernel name, e.g. `nvme0n1`: what the user types to confirm.
    pub name: String,
    /// Device node, e.g. `/dev/nvme0n1`.
    pub path: PathBuf,
    pub size: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// `nvme`, `sata`, `usb`, `virtio`, `mmc`…
    pub transport: String,
    pub partitions: Vec<PartEntry>,
}

/// A partition on a [`TargetEntry`], shown so the user sees what goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    pub name: String,
    pub size: u64,
    pub label: Option<String>,
}

/// What a restore reports while it runs; see [`super::ChannelProgress`].
/// Timestamps come with the events so rate and ETA are computed without
/// reading the clock in `update`.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    Start {
        phase: Phase,
        total: u64,
        at: Instant,
    },
    Update {
        phase: Phase,
        done: u64,
        total: u64,
        at: Instant,
    },
    Finish {
        phase: Phase,
        at: Instant,
    },
    /// An informational line for the log.
    Note(String),
    /// Multicast receive statistics: datagram loss so far, in percent,
    /// and how many passes of the stream have been seen.
    Multicast {
        loss_percent: f64,
        passes: u32,
    },
}

/// What a finished restore reports (see `restore::RestoreReport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes written to the disk.
    pub written: u64,
    pub elapsed: Duration,
    pub verified: bool,
}

impl From<&crate::restore::RestoreReport> for Summary {
    fn from(r: &crate::restore::RestoreReport) -> Summary {
        Summary {
            written: r.written,
            elapsed: r.elapsed,
            verified: r.verified,
        }
    }
}

/// Everything the menu reacts to. The input thread and every worker feed
/// these into the one channel that [`super::run`] reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Key(KeyEvent),
    /// The terminal is now this many columns and rows (used for the
    /// PgUp/PgDn step; drawing adapts by itself).
    Resize(u16, u16),
    /// A scan (after [`Action::Discover`]) started these discoveries, by
    /// label (e.g. `catalog http://10.0.0.1/images.json`, `multicast`,
    /// `USB stick`); each reports later with [`Event::Images`]. An empty
    /// list means there is nowhere to look.
    Discovering(Vec<String>),
    /// A discovery finished. A label not announced by `Discovering` is
    /// added; a second report for a label replaces the first.
    Images {
        from: String,
        result: Result<Vec<ImageEntry>, String>,
    },
    /// The answer to [`Action::ListTargets`].
    Targets(Result<Vec<TargetEntry>, String>),
    Progress(ProgressEvent),
    /// The restore started by [`Action::StartRestore`] ended (an `Err`
    /// also after [`Action::CancelRestore`]).
    Finished(Result<Summary, String>),
    /// About once a second, from the input thread, with the time: a
    /// stalled restore sends no progress, and its clock must still run.
    Tick(Instant),
}

/// What the menu asks its caller to do. [`super::run`] hands the first
/// four to `perform`; the last three end the menu and come back as
/// [`Exit`].
// A handful of actions per key press: boxing StartRestore to shrink the
// others would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start every discovery: send [`Event::Discovering`] at once, then
    /// one [`Event::Images`] per discovery as each finishes.
    Discover,
    /// List the disks: answer with [`Event::Targets`].
    ListTargets,
    /// Erase `target` and restore `image` onto it, reporting with
    /// [`Event::Progress`] and then [`Event::Finished`]. The user has
    /// confirmed by typing the disk's name.
    StartRestore {
        image: ImageEntry,
        target: TargetEntry,
    },
    /// Stop the running restore (the user confirmed); it still ends with
    /// [`Event::Finished`].
    CancelRestore,
    Reboot,
    PowerOff,
    Shell,
}

/// How the menu ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Reboot,
    PowerOff,
    Shell,
}

impl Action {
    /// The exit this action stands for, if it ends the menu.
    pub fn exit(&self) -> Option<Exit> {
        match self {
            Action::Reboot => Some(Exit::Reboot),
            Action::PowerOff => Some(Exit::PowerOff),
            Action::Shell => Some(Exit::Shell),
            _ => None,
        }
    }
}

/// One discovery on the image picker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub label: String,
    pub state: SourceState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceState {
    Searching,
    Found(Vec<ImageEntry>),
    Failed(String),
}

/// The disk list: asked for, answered, or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listing {
    Pending,
    Ready(Vec<TargetEntry>),
    Failed(String),
}

/// The three stages the progress screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Validate,
    Restore,
    Verify,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Validate, Stage::Restore, Stage::Verify];

    pub fn of(phase: Phase) -> Stage {
        match phase {
            Phase::ValidateSource | Phase::ValidateTarget => Stage::Validate,
            Phase::Restore | Phase::Create => Stage::Restore,
            Phase::Verify | Phase::Scan => Stage::Verify,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Restore => "restore",
            Stage::Verify => "verify",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StageState {
    Waiting,
    Running,
    Done,
}

/// How far a restore has got, as the progress events told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunProgress {
    pub phase: Option<Phase>,
    pub stages: [StageState; 3],
    /// Bytes of the current phase's work.
    pub done: u64,
    pub total: u64,
    /// Bytes per second over the last few seconds of the current phase.
    pub rate: Option<f64>,
    samples: VecDeque<(Instant, u64)>,
    /// The first and the latest event's time.
    pub started: Option<Instant>,
    pub latest: Option<Instant>,
    /// Target validation passed: from here on the disk may be written,
    /// so stopping or failing leaves it erased.
    pub writing: bool,
    /// Multicast loss percent and passes seen.
    pub multicast: Option<(f64, u32)>,
    pub log: VecDeque<String>,
}

/// Log lines kept for the progress screen.
const LOG_LINES: usize = 200;
/// The window the rate is averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl RunProgress {
    fn new() -> RunProgress {
        RunProgress {
            phase: None,
            stages: [StageState::Waiting; 3],
            done: 0,
            total: 0,
            rate: None,
            samples: VecDeque::new(),
            started: None,
            latest: None,
            writing: false,
            multicast: None,
            log: VecDeque::new(),
        }
    }

    pub fn stage(&self) -> Option<Stage> {
        self.phase.map(Stage::of)
    }

    /// Seconds left at the current rate, when both are known.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate.filter(|r| *r > 0.0)?;
        if self.total == 0 {
            return None;
        }
        let left = self.total.saturating_sub(self.done) as f64 / rate;
        Some(Duration::from_secs_f64(left.min(1e9)))
    }

    pub fn elapsed(&self) -> Option<Duration> {
        Some(self.latest?.saturating_duration_since(self.started?))
    }

    /// Time passes without progress: elapsed moves on, and once nothing
    /// has arrived for a whole rate window the rate (and with it the ETA)
    /// is unknown rather than the last good one.
    fn tick(&mut self, at: Instant) {
        self.stamp(at);
        let stalled = self
            .samples
            .back()
            .is_none_or(|(t, _)| at.saturating_duration_since(*t) > RATE_WINDOW);
        if stalled {
            self.rate = None;
        }
    }

    fn stamp(&mut self, at: Instant) {
        self.started.get_or_insert(at);
        self.latest = Some(self.latest.map_or(at, |l| l.max(at)));
    }

    fn begin(&mut self, phase: Phase, total: u64) {
        let stage = Stage::of(phase);
        for s in Stage::ALL {
            if s.index() < stage.index() {
                self.stages[s.index()] = StageState::Done;
            }
        }
        self.stages[stage.index()] = StageState::Running;
        self.phase = Some(phase);
        self.done = 0;
        self.total = total;
        self.rate = None;
        self.samples.clear();
    }

    fn apply(&mut self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::Start { phase, total, at } => {
                self.stamp(at);
                self.begin(phase, total);
                // A phase's first update is its base: verification
                // overlaps the copy and starts with work already done.
            }
            ProgressEvent::Update {
                phase,
                done,
                total,
                at,
            } => {
                self.stamp(at);
                if self.phase != Some(phase) {
                    self.begin(phase, total);
                }
                self.done = done;
                self.total = total;
                self.samples.push_back((at, done));
                while self.samples.len() > 2
                    && self
                        .samples
                        .front()
                        .is_some_and(|(t, _)| at.saturating_duration_since(*t) > RATE_WINDOW)
                {
                    self.samples.pop_front();
                }
                if let (Some((t0, d0)), Some((t1, d1))) =
                    (self.samples.front(), self.samples.back())
                {
                    let secs = t1.saturating_duration_since(*t0).as_secs_f64();
                    if secs > 0.0 {
                        self.rate = Some(d1.saturating_sub(*d0) as f64 / secs);
                    }
                }
            }
            ProgressEvent::Finish { phase, at } => {
                self.stamp(at);
                let stage = Stage::of(phase);
                if phase == Phase::ValidateTarget {
                    self.writing = true;
                }
                // Validation is two phases; the stage ends with the second.
                if phase != Phase::ValidateSource {
                    self.stages[stage.index()] = StageState::Done;
                }
                if self.phase == Some(phase) && self.total > 0 {
                    self.done = self.total;
                }
            }
            ProgressEvent::Note(line) => {
                if self.log.len() == LOG_LINES {
                    self.log.pop_front();
                }
                self.log.push_back(line);
            }
            ProgressEvent::Multicast {
                loss_percent,
                passes,
            } => self.multicast = Some((loss_percent, passes)),
        }
    }
}

/// A restore: what goes where, and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    pub image: ImageEntry,
    pub target: TargetEntry,
    pub progress: RunProgress,
    /// The user stopped it; waiting for `Finished`.
    pub stopping: bool,
}

/// A line of a choice list (error, done and power menus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    Retry,
    OtherImage,
    OtherDisk,
    AnotherDisk,
    Shell,
    Reboot,
    PowerOff,
    Back,
}

impl Choice {
    pub fn label(self) -> &'static str {
        match self {
            Choice::Retry => "Retry: same image, same disk",
            Choice::OtherImage => "Choose another image",
            Choice::OtherDisk => "Choose another disk",
            Choice::AnotherDisk => "Image another disk",
            Choice::Shell => "Open a shell",
            Choice::Reboot => "Reboot",
            Choice::PowerOff => "Power off",
            Choice::Back => "Back to the menu",
        }
    }
}

pub(crate) const FAILED_CHOICES: [Choice; 6] = [
    Choice::Retry,
    Choice::OtherImage,
    Choice::OtherDisk,
    Choice::Shell,
    Choice::Reboot,
    Choice::PowerOff,
];
pub(crate) const DONE_CHOICES: [Choice; 4] = [
    Choice::Reboot,
    Choice::PowerOff,
    Choice::AnotherDisk,
    Choice::Shell,
];
pub(crate) const POWER_CHOICES: [Choice; 4] = [
    Choice::Reboot,
    Choice::PowerOff,
    Choice::Shell,
    Choice::Back,
];

/// The screen under any popup.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Screen {
    Images,
    Targets {
        image: ImageEntry,
    },
    Confirm {
        image: ImageEntry,
        target: TargetEntry,
        input: String,
        /// What was typed when Enter was last pressed on a wrong name.
        rejected: Option<String>,
    },
    Progress(Box<Run>),
    Failed {
        run: Box<Run>,
        message: String,
        choice: usize,
    },
    Done {
        run: Box<Run>,
        summary: Summary,
        choice: usize,
    },
}

/// A confirm step over the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Popup {
    /// Reboot / power off / shell / back, from the image picker.
    Power { choice: usize },
    /// "Stop the restore?"; `stop` is the highlighted button (keep going
    /// is the default).
    Cancel { stop: bool },
}

/// The longest name the confirm field takes.
const INPUT_MAX: usize = 64;

/// All of the menu's state. Build with [`App::new`], get the first
/// actions from [`App::start`], then feed every event to
/// [`App::update`] and draw with [`super::render`].
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub(crate) size: (u16, u16),
    /// `None` until the current scan says what it looks at.
    pub(crate) sources: Option<Vec<Source>>,
    pub(crate) image_sel: usize,
    pub(crate) targets: Listing,
    pub(crate) target_sel: usize,
    pub(crate) screen: Screen,
    pub(crate) popup: Option<Popup>,
    pub(crate) started: bool,
    pub(crate) ticks: u64,
}

impl Default for App {
    fn default() -> App {
        App::new()
    }
}

impl App {
    pub fn new() -> App {
        App {
            size: (80, 24),
            sources: None,
            image_sel: 0,
            targets: Listing::Pending,
            target_sel: 0,
            screen: Screen::Images,
            popup: None,
            started: false,
            ticks: 0,
        }
    }

    /// The actions to perform when the menu (re)appears: the first time,
    /// a discovery; after a return from the shell, none.
    pub fn start(&mut self) -> Vec<Action> {
        if std::mem::replace(&mut self.started, true) {
            Vec::new()
        } else {
            self.rescan()
        }
    }

    /// Every image found so far, in the order of the discoveries.
    pub fn images(&self) -> impl Iterator<Item = &ImageEntry> {
        self.sources.iter().flatten().flat_map(|s| match &s.state {
            SourceState::Found(v) => v.as_slice(),
            _ => &[],
        })
    }

    pub fn selected_image(&self) -> Option<&ImageEntry> {
        self.images().nth(self.image_sel)
    }

    pub(crate) fn target_list(&self) -> &[TargetEntry] {
        match &self.targets {
            Listing::Ready(v) => v,
            _ => &[],
        }
    }

    pub fn selected_target(&self) -> Option<&TargetEntry> {
        self.target_list().get(self.target_sel)
    }

    /// Every discovery has reported.
    pub(crate) fn scan_complete(&self) -> bool {
        self.sources
            .as_ref()
            .is_some_and(|v| v.iter().all(|s| s.state != SourceState::Searching))
    }

    /// PgUp/PgDn step: about the entries a screen of this height shows
    /// (an entry takes two or three rows).
    fn page(&self) -> usize {
        (usize::from(self.size.1).saturating_sub(6) / 3).max(1)
    }

    /// Changes the state for one event and says what to do about it.
    pub fn update(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Key(k) => self.key(k),
            Event::Resize(w, h) => {
                self.size = (w, h);
                Vec::new()
            }
            Event::Tick(at) => {
                self.ticks = self.ticks.wrapping_add(1);
                if let Screen::Progress(run) = &mut self.screen {
                    run.progress.tick(at);
                }
                Vec::new()
            }
            Event::Discovering(labels) => {
                let mut sources: Vec<Source> = Vec::with_capacity(labels.len());
                for label in labels {
                    if !sources.iter().any(|s| s.label == label) {
                        sources.push(Source {
                            label,
                            state: SourceState::Searching,
                        });
                    }
                }
                self.change_images(|s| *s = Some(sources));
                Vec::new()
            }
            Event::Images { from, result } => {
                let state = match result {
                    Ok(v) => SourceState::Found(v),
                    Err(e) => SourceState::Failed(e),
                };
                self.change_images(|sources| {
                    let sources = sources.get_or_insert_with(Vec::new);
                    match sources.iter_mut().find(|s| s.label == from) {
                        Some(s) => s.state = state,
                        None => sources.push(Source { label: from, state }),
                    }
                });
                Vec::new()
            }
            Event::Targets(result) => {
                let prev = self.selected_target().map(|t| t.name.clone());
                self.targets = match result {
                    Ok(v) => Listing::Ready(v),
                    Err(e) => Listing::Failed(e),
                };
                let list = self.target_list();
                self.target_sel = prev
                    .and_then(|n| list.iter().position(|t| t.name == n))
                    .unwrap_or(0);
                Vec::new()
            }
            Event::Progress(p) => {
                if let Screen::Progress(run) = &mut self.screen {
                    run.progress.apply(p);
                }
                Vec::new()
            }
            Event::Finished(result) => {
                let Screen::Progress(run) = &self.screen else {
                    return Vec::new();
                };
                let run = run.clone();
                if self
                    .popup
                    .is_some_and(|p| matches!(p, Popup::Cancel { .. }))
                {
                    self.popup = None;
                }
                self.screen = match result {
                    Ok(summary) => Screen::Done {
                        run,
                        summary,
                        choice: 0,
                    },
                    Err(message) => Screen::Failed {
                        run,
                        message,
                        choice: 0,
                    },
                };
                Vec::new()
            }
        }
    }

    /// Changes the image list, keeping the same image selected.
    fn change_images(&mut self, f: impl FnOnce(&mut Option<Vec<Source>>)) {
        let prev = self.selected_image().cloned();
        f(&mut self.sources);
        let found = prev.and_then(|p| self.images().position(|e| *e == p));
        if let Some(i) = found {
            self.image_sel = i;
        }
        self.image_sel = self.image_sel.min(self.images().count().saturating_sub(1));
    }

    fn rescan(&mut self) -> Vec<Action> {
        self.sources = None;
        self.image_sel = 0;
        vec![Action::Discover]
    }

    fn list_targets(&mut self) -> Vec<Action> {
        self.targets = Listing::Pending;
        vec![Action::ListTargets]
    }

    fn key(&mut self, k: KeyEvent) -> Vec<Action> {
        if k.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if let Some(popup) = self.popup {
            return self.popup_key(popup, k);
        }
        let page = self.page();
        match &mut self.screen {
            Screen::Images => {
                let n = self.images().count();
                if let Some(sel) = move_selection(self.image_sel, n, page, k) {
                    self.image_sel = sel;
                    return Vec::new();
                }
                match k.code {
                    KeyCode::Enter => match self.selected_image() {
                        Some(image) => {
                            self.screen = Screen::Targets {
                                image: image.clone(),
                            };
                            self.list_targets()
                        }
                        None => Vec::new(),
                    },
                    KeyCode::Char('r') => self.rescan(),
                    KeyCode::Char('s') => vec![Action::Shell],
                    KeyCode::Char('q') | KeyCode::Esc => {
                        self.popup = Some(Popup::Power { choice: 0 });
                        Vec::new()
                    }
                    _ => Vec::new(),
                }
            }
            Screen::Targets { image } => {
                let image = image.clone();
                let n = self.target_list().len();
                if let Some(sel) = move_selection(self.target_sel, n, page, k) {
                    self.target_sel = sel;
                    return Vec::new();
                }
                match k.code {
                    KeyCode::Enter => {
                        if let Some(target) = self.selected_target().cloned() {
                            self.screen = Screen::Confirm {
                                image,
                                target,
                                input: String::new(),
                                rejected: None,
                            };
                        }
                        Vec::new()
                    }
                    KeyCode::Char('r') => self.list_targets(),
                    KeyCode::Esc => {
                        self.screen = Screen::Images;
                        Vec::new()
                    }
                    _ => Vec::new(),
                }
            }
            Screen::Confirm {
                image,
                target,
                input,
                rejected,
            } => {
                let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                match k.code {
                    KeyCode::Esc => {
                        let image = image.clone();
                        self.screen = Screen::Targets { image };
                    }
                    KeyCode::Enter => {
                        if input.trim() == target.name {
                            let (image, target) = (image.clone(), target.clone());
                            self.screen = Screen::Progress(Box::new(Run {
                                image: image.clone(),
                                target: target.clone(),
                                progress: RunProgress::new(),
                                stopping: false,
                            }));
                            return vec![Action::StartRestore { image, target }];
                        }
                        *rejected = Some(input.clone());
                    }
                    KeyCode::Backspace => {
                        input.pop();
                        *rejected = None;
                    }
                    KeyCode::Char('u') if ctrl => {
                        input.clear();
                        *rejected = None;
                    }
                    KeyCode::Char(c)
                        if !ctrl
                            && !k.modifiers.contains(KeyModifiers::ALT)
                            && !c.is_control()
                            && input.chars().count() < INPUT_MAX =>
                    {
                        input.push(c);
                        *rejected = None;
                    }
                    _ => {}
                }
                Vec::new()
            }
            Screen::Progress(run) => {
                if matches!(k.code, KeyCode::Esc | KeyCode::Char('q')) && !run.stopping {
                    self.popup = Some(Popup::Cancel { stop: false });
                }
                Vec::new()
            }
            Screen::Failed { choice, .. } => match choose_key(choice, FAILED_CHOICES.len(), k) {
                Some(i) => self.choose(FAILED_CHOICES[i]),
                None => Vec::new(),
            },
            Screen::Done { choice, .. } => match choose_key(choice, DONE_CHOICES.len(), k) {
                Some(i) => self.choose(DONE_CHOICES[i]),
                None => Vec::new(),
            },
        }
    }

    fn popup_key(&mut self, popup: Popup, k: KeyEvent) -> Vec<Action> {
        match popup {
            Popup::Power { mut choice } => {
                if matches!(k.code, KeyCode::Esc | KeyCode::Char('q')) {
                    self.popup = None;
                    return Vec::new();
                }
                let picked = choose_key(&mut choice, POWER_CHOICES.len(), k);
                self.popup = Some(Popup::Power { choice });
                match picked {
                    Some(i) => {
                        self.popup = None;
                        self.choose(POWER_CHOICES[i])
                    }
                    None => Vec::new(),
                }
            }
            Popup::Cancel { stop } => {
                let decided = match k.code {
                    KeyCode::Char('y' | 'Y') => Some(true),
                    KeyCode::Char('n' | 'N' | 'q') | KeyCode::Esc => Some(false),
                    KeyCode::Enter => Some(stop),
                    KeyCode::Left
                    | KeyCode::Right
                    | KeyCode::Tab
                    | KeyCode::BackTab
                    | KeyCode::Char('h' | 'l') => {
                        self.popup = Some(Popup::Cancel { stop: !stop });
                        None
                    }
                    _ => None,
                };
                match decided {
                    Some(true) => {
                        self.popup = None;
                        match &mut self.screen {
                            Screen::Progress(run) if !run.stopping => {
                                run.stopping = true;
                                vec![Action::CancelRestore]
                            }
                            _ => Vec::new(),
                        }
                    }
                    Some(false) => {
                        self.popup = None;
                        Vec::new()
                    }
                    None => Vec::new(),
                }
            }
        }
    }

    fn choose(&mut self, c: Choice) -> Vec<Action> {
        let run = match &self.screen {
            Screen::Failed { run, .. } | Screen::Done { run, .. } => Some(run.clone()),
            _ => None,
        };
        match c {
            Choice::Retry => {
                if let Some(run) = run {
                    // Retrying erases the disk again: confirm again.
                    self.screen = Screen::Confirm {
                        image: run.image,
                        target: run.target,
                        input: String::new(),
                        rejected: None,
                    };
                }
                Vec::new()
            }
            Choice::OtherImage => {
                self.screen = Screen::Images;
                Vec::new()
            }
            Choice::OtherDisk | Choice::AnotherDisk => match run {
                Some(run) => {
                    self.screen = Screen::Targets { image: run.image };
                    self.list_targets()
                }
                None => Vec::new(),
            },
            Choice::Shell => vec![Action::Shell],
            Choice::Reboot => vec![Action::Reboot],
            Choice::PowerOff => vec![Action::PowerOff],
            Choice::Back => Vec::new(),
        }
    }
}

/// The list-moving keys: the new selection, or `None` for other keys.
fn move_selection(sel: usize, n: usize, page: usize, k: KeyEvent) -> Option<usize> {
    let last = n.saturating_sub(1);
    let sel = sel.min(last);
    Some(match k.code {
        KeyCode::Up | KeyCode::Char('k') => sel.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => (sel + 1).min(last),
        KeyCode::PageUp => sel.saturating_sub(page),
        KeyCode::PageDown => (sel + page).min(last),
        KeyCode::Home | KeyCode::Char('g') => 0,
        KeyCode::End | KeyCode::Char('G') => last,
        _ => return None,
    })
}

/// Up/down/Enter on a short choice list: moves `choice`, and returns
/// the index chosen with Enter.
fn choose_key(choice: &mut usize, n: usize, k: KeyEvent) -> Option<usize> {
    match move_selection(*choice, n, n, k) {
        Some(sel) => {
            *choice = sel;
            None
        }
        None => (k.code == KeyCode::Enter).then_some(*choice),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn key(code: KeyCode) -> Event {
        Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    pub fn ch(c: char) -> Event {
        key(KeyCode::Char(c))
    }

    pub fn typed(app: &mut App, s: &str) -> Vec<Action> {
        s.chars().flat_map(|c| app.update(ch(c))).collect()
    }

    pub fn image(name: &str, kind: ImageKind) -> ImageEntry {
        ImageEntry {
            name: name.into(),
            size: Some(12 << 30),
            kind,
            location: format!("http://10.0.0.1:8080/{name}.rimg"),
            description: None,
        }
    }

    pub fn disk(name: &str) -> TargetEntry {
        TargetEntry {
            name: name.into(),
            path: PathBuf::from(format!("/dev/{name}")),
            size: 500 << 30,
            model: Some("Samsung SSD 970 EVO Plus 500GB".into()),
            serial: Some("S4EVNX0R123456".into()),
            transport: "nvme".into(),
            partitions: vec![],
        }
    }

    /// An app on the image picker with one catalog of `names`.
    pub fn with_images(names: &[&str]) -> App {
        let mut app = App::new();
        assert_eq!(app.start(), vec![Action::Discover]);
        app.update(Event::Discovering(vec!["catalog".into()]));
        app.update(Event::Images {
            from: "catalog".into(),
            result: Ok(names.iter().map(|n| image(n, ImageKind::Catalog)).collect()),
        });
        app
    }

    /// An app on the confirm screen for image `a` onto `nvme0n1`.
    pub fn at_confirm() -> App {
        let mut app = with_images(&["a", "b"]);
        assert_eq!(app.update(key(KeyCode::Enter)), vec![Action::ListTargets]);
        app.update(Event::Targets(Ok(vec![disk("nvme0n1"), disk("sda")])));
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(matches!(app.screen, Screen::Confirm { .. }));
        app
    }

    pub fn at_progress() -> App {
        let mut app = at_confirm();
        let actions = typed(&mut app, "nvme0n1");
        assert!(actions.is_empty());
        let actions = app.update(key(KeyCode::Enter));
        assert!(matches!(actions.as_slice(), [Action::StartRestore { .. }]));
        app
    }

    fn progress(app: &App) -> &RunProgress {
        match &app.screen {
            Screen::Progress(run) => &run.progress,
            s => panic!("not on the progress screen: {s:?}"),
        }
    }

    #[test]
    fn start_discovers_once() {
        let mut app = App::new();
        assert_eq!(app.start(), vec![Action::Discover]);
        assert_eq!(app.start(), vec![]);
    }

    #[test]
    fn picker_to_restore_needs_the_exact_disk_name() {
        let mut app = with_images(&["a", "b"]);
        app.update(ch('j'));
        assert_eq!(app.update(key(KeyCode::Enter)), vec![Action::ListTargets]);
        assert!(matches!(&app.screen, Screen::Targets { image } if image.name == "b"));
        // Enter before the disks arrive does nothing.
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(matches!(app.screen, Screen::Targets { .. }));
        app.update(Event::Targets(Ok(vec![disk("sda"), disk("nvme0n1")])));
        app.update(key(KeyCode::Down));
        assert!(app.update(key(KeyCode::Enter)).is_empty());

        // Enter with nothing typed, a wrong name, a prefix: nothing starts.
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(typed(&mut app, "sda").is_empty());
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        match &app.screen {
            Screen::Confirm {
                input, rejected, ..
            } => {
                assert_eq!(input, "sda");
                assert_eq!(rejected.as_deref(), Some("sda"));
            }
            s => panic!("{s:?}"),
        }
        for _ in 0..3 {
            app.update(key(KeyCode::Backspace));
        }
        typed(&mut app, "nvme0n");
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        // Ctrl-U clears; the right name starts the restore, once.
        app.update(Event::Key(KeyEvent::new(
            KeyCode::Char('u'),
            KeyModifiers::CONTROL,
        )));
        assert!(typed(&mut app, "nvme0n1").is_empty());
        let actions = app.update(key(KeyCode::Enter));
        assert_eq!(
            actions,
            vec![Action::StartRestore {
                image: image("b", ImageKind::Catalog),
                target: disk("nvme0n1"),
            }]
        );
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(typed(&mut app, "nvme0n1").is_empty());
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(matches!(app.screen, Screen::Progress(_)));
    }

    #[test]
    fn letters_are_text_on_the_confirm_screen() {
        let mut app = at_confirm();
        assert!(typed(&mut app, "qsr").is_empty());
        assert!(app.popup.is_none());
        assert!(matches!(&app.screen, Screen::Confirm { input, .. } if input == "qsr"));
    }

    #[test]
    fn escape_paths() {
        let mut app = at_confirm();
        typed(&mut app, "nvme");
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert!(matches!(app.screen, Screen::Targets { .. }));
        // Back on the same disk; the confirm field starts empty again.
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(matches!(&app.screen, Screen::Confirm { input, .. } if input.is_empty()));
        app.update(key(KeyCode::Esc));
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert_eq!(app.screen, Screen::Images);
        // Esc on the picker opens the power menu; Esc closes it.
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert_eq!(app.popup, Some(Popup::Power { choice: 0 }));
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert_eq!(app.popup, None);
        // q too; Enter on its first line reboots, its last goes back.
        app.update(ch('q'));
        assert_eq!(app.update(key(KeyCode::Enter)), vec![Action::Reboot]);
        assert_eq!(app.popup, None);
        app.update(ch('q'));
        app.update(key(KeyCode::End));
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert_eq!(app.popup, None);
        app.update(ch('q'));
        app.update(ch('j'));
        assert_eq!(app.update(key(KeyCode::Enter)), vec![Action::PowerOff]);
        assert_eq!(app.update(ch('s')), vec![Action::Shell]);
        assert_eq!(Action::Shell.exit(), Some(Exit::Shell));
        assert_eq!(Action::Discover.exit(), None);
    }

    #[test]
    fn rescan_asks_again_and_forgets_the_old_list() {
        let mut app = with_images(&["a", "b", "c"]);
        app.update(key(KeyCode::End));
        assert_eq!(app.update(ch('r')), vec![Action::Discover]);
        assert_eq!(app.images().count(), 0);
        assert_eq!(app.sources, None);
        assert_eq!(app.image_sel, 0);
        app.update(Event::Targets(Ok(vec![])));
        app.update(key(KeyCode::Enter));
        assert_eq!(app.screen, Screen::Images, "nothing to choose yet");
    }

    #[test]
    fn target_rescan_and_empty_list() {
        let mut app = with_images(&["a"]);
        app.update(key(KeyCode::Enter));
        app.update(Event::Targets(Ok(vec![])));
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(matches!(app.screen, Screen::Targets { .. }));
        assert_eq!(app.update(ch('r')), vec![Action::ListTargets]);
        assert_eq!(app.targets, Listing::Pending);
        app.update(Event::Targets(Err("no sysfs".into())));
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        app.update(Event::Targets(Ok(vec![disk("sda")])));
        app.update(key(KeyCode::Enter));
        assert!(matches!(app.screen, Screen::Confirm { .. }));
    }

    #[test]
    fn selection_stays_in_bounds() {
        let names: Vec<String> = (0..20).map(|i| format!("img{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut app = with_images(&names);
        app.update(key(KeyCode::Up));
        assert_eq!(app.image_sel, 0);
        app.update(key(KeyCode::PageUp));
        assert_eq!(app.image_sel, 0);
        app.update(key(KeyCode::PageDown));
        assert_eq!(app.image_sel, 6, "a page at 80x24");
        for _ in 0..10 {
            app.update(key(KeyCode::PageDown));
        }
        assert_eq!(app.image_sel, 19);
        app.update(key(KeyCode::Down));
        assert_eq!(app.image_sel, 19);
        app.update(Event::Resize(120, 40));
        app.update(key(KeyCode::PageUp));
        assert_eq!(app.image_sel, 8, "a page at 120x40");
        app.update(key(KeyCode::Home));
        assert_eq!(app.image_sel, 0);
        app.update(ch('G'));
        assert_eq!(app.selected_image().unwrap().name, "img19");

        // Keys on an empty list are harmless.
        let mut empty = App::new();
        empty.start();
        for code in [KeyCode::Down, KeyCode::PageDown, KeyCode::End, KeyCode::Up] {
            empty.update(key(code));
            assert_eq!(empty.image_sel, 0);
        }
        assert!(empty.update(key(KeyCode::Enter)).is_empty());
    }

    #[test]
    fn a_shorter_list_clamps_the_selection() {
        let mut app = with_images(&["a", "b", "c"]);
        app.update(key(KeyCode::End));
        app.update(Event::Images {
            from: "catalog".into(),
            result: Ok(vec![image("x", ImageKind::Catalog)]),
        });
        assert_eq!(app.image_sel, 0);
        assert_eq!(app.selected_image().unwrap().name, "x");
    }

    #[test]
    fn discoveries_report_in_any_order() {
        let labels = ["catalog", "multicast", "USB stick"];
        let results = || {
            vec![
                Event::Images {
                    from: "USB stick".into(),
                    result: Ok(vec![image("usb", ImageKind::Local)]),
                },
                Event::Images {
                    from: "catalog".into(),
                    result: Err("connection refused".into()),
                },
                Event::Images {
                    from: "multicast".into(),
                    result: Ok(vec![
                        image("m1", ImageKind::Multicast),
                        image("m2", ImageKind::Multicast),
                    ]),
                },
            ]
        };
        let orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]];
        let mut finals = Vec::new();
        for order in orders {
            let mut app = App::new();
            app.start();
            app.update(Event::Discovering(
                labels.iter().map(|s| s.to_string()).collect(),
            ));
            assert!(!app.scan_complete());
            let evs = results();
            for (n, i) in order.iter().enumerate() {
                // The user has the first image selected whenever there
                // is one; later arrivals don't move the selection.
                let before = app.selected_image().cloned();
                assert!(app.update(evs[*i].clone()).is_empty());
                if let Some(b) = before {
                    assert_eq!(app.selected_image(), Some(&b));
                }
                assert_eq!(app.scan_complete(), n == 2);
            }
            let names: Vec<_> = app.images().map(|e| e.name.clone()).collect();
            assert_eq!(names, ["m1", "m2", "usb"], "discovery order, not arrival");
            finals.push(app.sources.clone());
        }
        assert!(finals.windows(2).all(|w| w[0] == w[1]));

        // A report before the Discovering list, and an unknown label.
        let mut app = App::new();
        app.start();
        app.update(Event::Images {
            from: "late".into(),
            result: Ok(vec![image("l", ImageKind::Local)]),
        });
        assert_eq!(app.images().count(), 1);
        assert!(app.scan_complete());
    }

    #[test]
    fn selection_follows_the_image_when_others_arrive_before_it() {
        let mut app = App::new();
        app.start();
        app.update(Event::Discovering(vec!["a".into(), "b".into()]));
        app.update(Event::Images {
            from: "b".into(),
            result: Ok(vec![
                image("b1", ImageKind::Local),
                image("b2", ImageKind::Local),
            ]),
        });
        app.update(ch('j'));
        assert_eq!(app.selected_image().unwrap().name, "b2");
        app.update(Event::Images {
            from: "a".into(),
            result: Ok(vec![image("a1", ImageKind::Catalog)]),
        });
        assert_eq!(app.image_sel, 2);
        assert_eq!(app.selected_image().unwrap().name, "b2");
    }

    #[test]
    fn cancel_needs_confirmation() {
        let mut app = at_progress();
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert_eq!(app.popup, Some(Popup::Cancel { stop: false }));
        // Enter on the default button keeps going.
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert_eq!(app.popup, None);
        app.update(ch('q'));
        assert!(app.update(ch('n')).is_empty());
        assert_eq!(app.popup, None);
        app.update(ch('q'));
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert_eq!(app.popup, None);
        // Right, then Enter, stops; once.
        app.update(ch('q'));
        assert!(app.update(key(KeyCode::Right)).is_empty());
        assert_eq!(app.popup, Some(Popup::Cancel { stop: true }));
        assert_eq!(app.update(key(KeyCode::Enter)), vec![Action::CancelRestore]);
        assert_eq!(app.popup, None);
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert_eq!(app.popup, None, "no second stop while stopping");
        // The worker ends it.
        app.update(Event::Finished(Err("cancelled".into())));
        assert!(matches!(&app.screen, Screen::Failed { run, message, .. }
            if run.stopping && message == "cancelled"));

        let mut app = at_progress();
        app.update(key(KeyCode::Esc));
        assert_eq!(app.update(ch('y')), vec![Action::CancelRestore]);
    }

    #[test]
    fn finishing_closes_the_cancel_question() {
        let mut app = at_progress();
        app.update(key(KeyCode::Esc));
        app.update(Event::Finished(Ok(Summary {
            written: 1,
            elapsed: Duration::from_secs(1),
            verified: true,
        })));
        assert_eq!(app.popup, None);
        assert!(matches!(app.screen, Screen::Done { .. }));
        // A stray Finished or progress elsewhere changes nothing.
        let before = app.clone();
        app.update(Event::Finished(Err("late".into())));
        app.update(Event::Progress(ProgressEvent::Note("x".into())));
        assert_eq!(app, before);
    }

    #[test]
    fn progress_events_update_the_numbers() {
        let mut app = at_progress();
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut send = |p| {
            assert!(app.update(Event::Progress(p)).is_empty());
        };
        send(ProgressEvent::Start {
            phase: Phase::ValidateSource,
            total: 0,
            at: at(0.0),
        });
        send(ProgressEvent::Finish {
            phase: Phase::ValidateSource,
            at: at(0.5),
        });
        send(ProgressEvent::Start {
            phase: Phase::ValidateTarget,
            total: 0,
            at: at(0.5),
        });
        send(ProgressEvent::Note("Validating target".into()));
        let p = progress(&app).clone();
        assert_eq!(p.stages[0], StageState::Running);
        assert!(!p.writing);
        assert_eq!(p.log, ["Validating target"]);
        let mut send = |p| {
            assert!(app.update(Event::Progress(p)).is_empty());
        };
        send(ProgressEvent::Finish {
            phase: Phase::ValidateTarget,
            at: at(1.0),
        });
        send(ProgressEvent::Start {
            phase: Phase::Restore,
            total: 1000 << 20,
            at: at(1.0),
        });
        for s in 1..=5u64 {
            send(ProgressEvent::Update {
                phase: Phase::Restore,
                done: s * (100 << 20),
                total: 1000 << 20,
                at: at(1.0 + s as f64),
            });
        }
        send(ProgressEvent::Multicast {
            loss_percent: 3.2,
            passes: 2,
        });
        let p = progress(&app).clone();
        assert_eq!(
            p.stages,
            [StageState::Done, StageState::Running, StageState::Waiting]
        );
        assert!(p.writing);
        assert_eq!(p.done, 500 << 20);
        assert_eq!(p.total, 1000 << 20);
        let rate = p.rate.unwrap();
        assert!((rate - (100 << 20) as f64).abs() < 1.0, "{rate}");
        assert_eq!(p.eta().unwrap().as_secs(), 5);
        assert_eq!(p.elapsed(), Some(Duration::from_secs(6)));
        assert_eq!(p.multicast, Some((3.2, 2)));

        // Verification starts with work done: the rate counts from there.
        let mut send = |p| {
            assert!(app.update(Event::Progress(p)).is_empty());
        };
        send(ProgressEvent::Finish {
            phase: Phase::Restore,
            at: at(11.0),
        });
        send(ProgressEvent::Start {
            phase: Phase::Verify,
            total: 1000 << 20,
            at: at(11.0),
        });
        let p = progress(&app).clone();
        assert_eq!(
            p.stages,
            [StageState::Done, StageState::Done, StageState::Running]
        );
        assert_eq!((p.done, p.rate), (0, None));
        let mut send = |p| {
            assert!(app.update(Event::Progress(p)).is_empty());
        };
        send(ProgressEvent::Update {
            phase: Phase::Verify,
            done: 900 << 20,
            total: 1000 << 20,
            at: at(11.5),
        });
        send(ProgressEvent::Update {
            phase: Phase::Verify,
            done: 950 << 20,
            total: 1000 << 20,
            at: at(12.0),
        });
        let p = progress(&app).clone();
        assert!((p.rate.unwrap() - (100 << 20) as f64).abs() < 1.0);
        assert_eq!(p.eta().unwrap().as_millis(), 500);
    }

    #[test]
    fn rate_is_averaged_over_recent_seconds() {
        let mut app = at_progress();
        let t0 = Instant::now();
        for s in 0..=30u64 {
            // 10 MiB/s for 20 s, then 1 MiB/s.
            let done = if s <= 20 { s * 10 } else { 200 + (s - 20) } << 20;
            app.update(Event::Progress(ProgressEvent::Update {
                phase: Phase::Restore,
                done,
                total: 1 << 40,
                at: t0 + Duration::from_secs(s),
            }));
        }
        let rate = progress(&app).rate.unwrap();
        assert!((rate - (1 << 20) as f64).abs() < 1.0, "{rate}");
    }

    #[test]
    fn a_stall_keeps_the_clock_running_and_forgets_the_rate() {
        let mut app = at_progress();
        let t0 = Instant::now();
        for s in 0..=5u64 {
            app.update(Event::Progress(ProgressEvent::Update {
                phase: Phase::Restore,
                done: s << 20,
                total: 1 << 30,
                at: t0 + Duration::from_secs(s),
            }));
        }
        assert!(progress(&app).eta().is_some());
        // Ticks within the window: the rate stands.
        app.update(Event::Tick(t0 + Duration::from_secs(12)));
        assert!(progress(&app).rate.is_some());
        assert!(progress(&app).elapsed().unwrap() >= Duration::from_secs(12));
        // Nothing for longer than the window: no rate, no ETA.
        app.update(Event::Tick(t0 + Duration::from_secs(40)));
        assert_eq!(progress(&app).rate, None);
        assert_eq!(progress(&app).eta(), None);
        assert!(progress(&app).elapsed().unwrap() >= Duration::from_secs(40));
    }

    #[test]
    fn failure_choices() {
        let mut app = at_progress();
        app.update(Event::Finished(Err("boom".into())));
        // Retry goes through the confirm step again.
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert!(matches!(&app.screen, Screen::Confirm { target, input, .. }
            if target.name == "nvme0n1" && input.is_empty()));
        typed(&mut app, "nvme0n1");
        assert!(matches!(
            app.update(key(KeyCode::Enter)).as_slice(),
            [Action::StartRestore { .. }]
        ));
        app.update(Event::Finished(Err("boom".into())));
        app.update(key(KeyCode::Down));
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        assert_eq!(app.screen, Screen::Images);

        let mut app = at_progress();
        app.update(Event::Finished(Err("boom".into())));
        app.update(key(KeyCode::Down));
        app.update(key(KeyCode::Down));
        assert_eq!(app.update(key(KeyCode::Enter)), vec![Action::ListTargets]);
        assert!(matches!(&app.screen, Screen::Targets { image } if image.name == "a"));

        let expect = [Action::Shell, Action::Reboot, Action::PowerOff];
        for (i, want) in expect.into_iter().enumerate() {
            let mut app = at_progress();
            app.update(Event::Finished(Err("boom".into())));
            for _ in 0..3 + i {
                app.update(key(KeyCode::Down));
            }
            assert_eq!(app.update(key(KeyCode::Enter)), vec![want]);
        }
    }

    #[test]
    fn done_choices() {
        let summary = Summary {
            written: 8 << 30,
            elapsed: Duration::from_secs(83),
            verified: true,
        };
        let expect = [
            vec![Action::Reboot],
            vec![Action::PowerOff],
            vec![Action::ListTargets],
            vec![Action::Shell],
        ];
        for (i, want) in expect.into_iter().enumerate() {
            let mut app = at_progress();
            app.update(Event::Finished(Ok(summary.clone())));
            for _ in 0..i {
                app.update(ch('j'));
            }
            assert_eq!(app.update(key(KeyCode::Enter)), want);
        }
        let mut app = at_progress();
        app.update(Event::Finished(Ok(summary)));
        app.update(key(KeyCode::End));
        app.update(key(KeyCode::Up));
        app.update(key(KeyCode::Enter));
        assert!(matches!(&app.screen, Screen::Targets { image } if image.name == "a"));
        assert_eq!(app.targets, Listing::Pending);
    }

    #[test]
    fn key_releases_are_ignored() {
        let mut app = with_images(&["a"]);
        let mut k = KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE);
        k.kind = KeyEventKind::Release;
        assert!(app.update(Event::Key(k)).is_empty());
        assert_eq!(app.screen, Screen::Images);
    }
}
