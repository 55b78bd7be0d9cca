//! One progress sink for every front end: asr-style human output, the
//! machine-readable `--puppetstrings` lines (and their JSON-lines form),
//! and later the menu.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ValidateSource,
    ValidateTarget,
    Restore,
    Verify,
    Create,
    Scan,
}

impl Phase {
    /// Stable machine name, part of the puppetstrings protocol.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ValidateSource => "validate-source",
            Phase::ValidateTarget => "validate-target",
            Phase::Restore => "restore",
            Phase::Verify => "verify",
            Phase::Create => "create",
            Phase::Scan => "scan",
        }
    }

    /// The word asr prints for the phase.
    fn label(self) -> &'static str {
        match self {
            Phase::ValidateSource => "Validating source",
            Phase::ValidateTarget => "Validating target",
            Phase::Restore => "Restoring",
            Phase::Verify => "Verifying",
            Phase::Create => "Imaging",
            Phase::Scan => "Scanning",
        }
    }

    /// Phases that only print "...done" rather than a progress bar.
    fn is_step(self) -> bool {
        matches!(self, Phase::ValidateSource | Phase::ValidateTarget)
    }
}

/// Receives progress from the long-running operations. `done` and `total`
/// are bytes of the phase's own work; `total` may be 0 when unknown.
pub trait ProgressSink: Send + Sync {
    fn start(&self, phase: Phase, total: u64);
    fn update(&self, phase: Phase, done: u64, total: u64);
    fn finish(&self, phase: Phase);
    /// An informational line (e.g. "Restoring from /srv/lab.rimg").
    fn note(&self, msg: &str);
    /// A line shown only with `--verbose`.
    fn detail(&self, msg: &str);
    /// A streamed source's reception (multicast): loss so far and passes
    /// seen. Only the menu shows it; the CLI's server log has the same.
    fn stream(&self, _loss_percent: f64, _passes: u32) {}
}

/// Shows nothing: for library callers and tests that only want results.
pub struct Quiet;

impl ProgressSink for Quiet {
    fn start(&self, _: Phase, _: u64) {}
    fn update(&self, _: Phase, _: u64, _: u64) {}
    fn finish(&self, _: Phase) {}
    fn note(&self, _: &str) {}
    fn detail(&self, _: &str) {}
}

/// Percent with one decimal, clamped to 100.
fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (done as f64 * 100.0 / total as f64).min(100.0)
    }
}

/// asr's look on stdout: `Validating target...done` and
/// `Restoring ....10....20....` where each dot is 2 %. On a terminal the
/// line is redrawn in place with rate and ETA; elsewhere (serial console,
/// log file) only whole dots are appended, so every line stays readable.
pub struct HumanProgress {
    tty: bool,
    verbose: bool,
    state: Mutex<HumanState>,
}

struct HumanState {
    /// Dots (2 % steps) printed so far for the current phase.
    steps: u32,
    started: Instant,
    last_draw: Option<Instant>,
    /// `done` at the phase's first update: verification overlaps the copy,
    /// so the Verifying phase starts with work already done, which must
    /// not count towards its rate.
    base: Option<u64>,
    /// A phase's line is started and not yet ended.
    open: bool,
}

impl HumanState {
    fn new() -> HumanState {
        HumanState {
            steps: 0,
            started: Instant::now(),
            last_draw: None,
            base: None,
            open: false,
        }
    }
}

/// A phase cut short by an error leaves its line open; end it, so the
/// error message starts a line of its own.
impl Drop for HumanProgress {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if st.open {
            println!();
        }
    }
}

impl HumanProgress {
    pub fn new(verbose: bool) -> HumanProgress {
        HumanProgress {
            tty: std::io::stdout().is_terminal(),
            verbose,
            state: Mutex::new(HumanState::new()),
        }
    }

    fn bar(steps: u32) -> String {
        (1..=steps)
            .map(|s| {
                if s % 5 == 0 {
                    (s * 2).to_string()
                } else {
                    ".".into()
                }
            })
            .collect()
    }
}

impl ProgressSink for HumanProgress {
    fn start(&self, phase: Phase, _total: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st = HumanState::new();
        st.open = true;
        let mut out = std::io::stdout().lock();
        if phase.is_step() {
            let _ = write!(out, "{}...", phase.label());
        } else {
            let _ = write!(out, "{} ", phase.label());
        }
        let _ = out.flush();
    }

    fn update(&self, phase: Phase, done: u64, total: u64) {
        if phase.is_step() || total == 0 {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let steps = (percent(done, total) / 2.0) as u32;
        let mut out = std::io::stdout().lock();
        if self.tty {
            let now = Instant::now();
            if st
                .last_draw
                .is_some_and(|t| now.duration_since(t).as_millis() < 100)
                && steps == st.steps
            {
                return;
            }
            st.last_draw = Some(now);
            st.steps = steps;
            let secs = now.duration_since(st.started).as_secs_f64().max(1e-3);
            let base = *st.base.get_or_insert(done);
            let rate = done.saturating_sub(base) as f64 / secs;
            let eta = if rate > 0.0 {
                (total.saturating_sub(done)) as f64 / rate
            } else {
                0.0
            };
            let _ = write!(
                out,
                "\r\x1b[K{} {:<50} {:5.1}%  {}/s  ETA {}:{:02}",
                phase.label(),
                Self::bar(steps),
                percent(done, total),
                crate::util::human_size(rate as u64),
                eta as u64 / 60,
                eta as u64 % 60
            );
        } else if steps > st.steps {
            let all = Self::bar(steps);
            let _ = write!(out, "{}", &all[Self::bar(st.steps).len()..]);
            st.steps = steps;
        }
        let _ = out.flush();
    }

    fn finish(&self, phase: Phase) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open = false;
        let mut out = std::io::stdout().lock();
        if phase.is_step() {
            let _ = writeln!(out, "done");
        } else if self.tty {
            let secs = st.started.elapsed().as_secs_f64();
            let _ = writeln!(
                out,
                "\r\x1b[K{} {} ({secs:.1} s)",
                phase.label(),
                Self::bar(50)
            );
        } else {
            let all = Self::bar(50);
            let _ = writeln!(out, "{}", &all[Self::bar(st.steps).len()..]);
        }
    }

    fn note(&self, msg: &str) {
        println!("{msg}");
    }

    fn detail(&self, msg: &str) {
        if self.verbose {
            println!("{msg}");
        }
    }
}

/// Machine-readable progress (`--puppetstrings`): one event per line on
/// stdout, tab-separated or JSON; the README specifies both.
pub struct MachineProgress {
    json: bool,
    verbose: bool,
    /// Last whole percent reported per phase, to emit at most 101 lines.
    last: Mutex<Option<u32>>,
}

impl MachineProgress {
    pub fn new(json: bool, verbose: bool) -> MachineProgress {
        MachineProgress {
            json,
            verbose,
            last: Mutex::new(None),
        }
    }

    fn emit(&self, event: &str, phase: Phase, done: u64, total: u64) {
        let line = if self.json {
            format!(
                "{{\"event\":\"{event}\",\"phase\":\"{}\",\"done\":{done},\"total\":{total},\"percent\":{:.1}}}",
                phase.name(),
                percent(done, total)
            )
        } else {
            format!(
                "{}\t{}\t{done}\t{total}\t{:.1}",
                event.to_uppercase(),
                phase.name(),
                percent(done, total)
            )
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

impl ProgressSink for MachineProgress {
    fn start(&self, phase: Phase, total: u64) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.emit("start", phase, 0, total);
    }

    fn update(&self, phase: Phase, done: u64, total: u64) {
        let whole = percent(done, total) as u32;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != Some(whole) {
            *last = Some(whole);
            drop(last);
            self.emit("progress", phase, done, total);
        }
    }

    fn finish(&self, phase: Phase) {
        self.emit("finish", phase, 0, 0);
    }

    fn note(&self, msg: &str) {
        let line = if self.json {
            format!(
                "{{\"event\":\"info\",\"message\":{}}}",
                crate::util::json_string(msg)
            )
        } else {
            format!("INFO\t{}", msg.replace(['\t', '\n'], " "))
        };
        println!("{line}");
    }

    fn detail(&self, msg: &str) {
        if self.verbose {
            self.note(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asr_bar_has_numbers_every_ten_percent() {
        assert_eq!(HumanProgress::bar(12), "....10....20..");
        assert_eq!(
            HumanProgress::bar(50).len(),
            "....10....20....30....40....50....60....70....80....90....100".len()
        );
        assert!(HumanProgress::bar(50).ends_with("90....100"));
    }

    #[test]
    fn percent_is_clamped_and_total_zero_safe() {
        assert_eq!(percent(5, 0), 0.0);
        assert_eq!(percent(200, 100), 100.0);
        assert_eq!(percent(1, 4), 25.0);
    }
}
