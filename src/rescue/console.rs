//! The rescue system's consoles: where its messages go (every `console=`
//! the kernel was given, so a serial-only machine and a VGA one both see
//! them) and the whole-line progress an unattended restore prints there.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::{clock, human_size};

/// The device node behind one `console=` value: `ttyS0,115200n8` is
/// /dev/ttyS0; `tty0` (the foreground virtual terminal) is /dev/tty1, the
/// one the menu draws on. Values that name no tty (`null`, `lp0`,
/// `netconsole` setups) give None.
pub fn device(console: &str) -> Option<PathBuf> {
    let name = console.split(',').next()?;
    let name = if name == "tty0" { "tty1" } else { name };
    let tty = name.starts_with("tty") || name.starts_with("hvc");
    (tty && name.bytes().all(|c| c.is_ascii_alphanumeric()))
        .then(|| PathBuf::from("/dev").join(name))
}

/// The distinct console devices in kernel order; the last is the primary
/// (the kernel's /dev/console). Without `console=` the kernel uses the
/// first virtual terminal.
pub fn devices(consoles: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dev in consoles.iter().filter_map(|c| device(c)) {
        out.retain(|d| *d != dev);
        out.push(dev);
    }
    if out.is_empty() {
        out.push(PathBuf::from("/dev/tty1"));
    }
    out
}

/// Lines to every console. A console that cannot be opened is left out (a
/// `console=ttyS1` on a machine without that port must not silence the
/// others). With none open, stdout — the kernel's /dev/console — gets them.
pub struct Consoles {
    outs: Mutex<Vec<(PathBuf, File)>>,
}

impl Consoles {
    pub fn open(devices: &[PathBuf]) -> Consoles {
        let outs = devices
            .iter()
            .filter_map(|d| Some((d.clone(), open_console(d)?)))
            .collect();
        Consoles {
            outs: Mutex::new(outs),
        }
    }

    /// Only stdout: for `reimage rescue` tried outside a real boot, where
    /// the test harness reads stdout.
    pub fn stdout() -> Consoles {
        Consoles {
            outs: Mutex::new(Vec::new()),
        }
    }

    /// One whole line, prefixed so it stands out among kernel messages.
    pub fn line(&self, msg: &str) {
        let text = format!("reimage: {msg}\n");
        let mut outs = self.outs.lock().unwrap_or_else(|e| e.into_inner());
        if outs.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        for (path, out) in outs.iter_mut() {
            if out.write_all(text.as_bytes()).is_ok() {
                continue;
            }
            // When a session leader on this tty (the menu, a console shell)
            // exits, the kernel hangs the tty up and every file open on it
            // fails from then on (EIO). A fresh open works again.
            if let Some(fresh) = open_console(path) {
                *out = fresh;
                let _ = out.write_all(text.as_bytes());
            }
        }
    }
}

/// Opened without becoming its controlling terminal: PID 1 must not own
/// the console that the menu and shells take as theirs.
fn open_console(path: &Path) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .ok()
}

/// Turns the `--puppetstrings` lines of a `reimage restore` child into the
/// lines the consoles show: phase changes, errors and notes as they come,
/// and progress at every 5 % or every 10 s, whichever comes first, with
/// rate and time left.
pub struct ProgressLines {
    phase: String,
    started: Instant,
    last_step: u32,
    last_at: Instant,
}

/// A progress line is due after this much silence even within a 5 % step
/// (a slow network should not look like a hang).
const QUIET: Duration = Duration::from_secs(10);

impl ProgressLines {
    pub fn new(now: Instant) -> ProgressLines {
        ProgressLines {
            phase: String::new(),
            started: now,
            last_step: 0,
            last_at: now,
        }
    }

    /// The console line for one line of the child's output, if any.
    pub fn feed(&mut self, line: &str, now: Instant) -> Option<String> {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[..] {
            ["START", phase, _, total, _] => {
                self.phase = phase.to_owned();
                self.started = now;
                self.last_step = 0;
                self.last_at = now;
                let total = total.parse::<u64>().ok().filter(|&t| t > 0);
                Some(match total {
                    Some(t) => format!("{phase}: {}", human_size(t)),
                    None => format!("{phase}…"),
                })
            }
            ["PROGRESS", phase, done, total, _] => {
                let (done, total) = (done.parse::<u64>().ok()?, total.parse::<u64>().ok()?);
                self.progress(phase, done, total, now)
            }
            ["FINISH", phase, ..] => {
                let secs = now.duration_since(self.started).as_secs_f64();
                Some(format!("{phase}: done in {secs:.1} s"))
            }
            ["INFO", msg] => Some(msg.to_owned()),
            // Anything else is a message of the child's own (an error),
            // which gets our prefix again in Consoles::line.
            _ => {
                let msg = line.trim_end();
                Some(msg.strip_prefix("reimage: ").unwrap_or(msg).to_owned())
                    .filter(|l| !l.is_empty())
            }
        }
    }

    fn progress(&mut self, phase: &str, done: u64, total: u64, now: Instant) -> Option<String> {
        if total == 0 {
            return None;
        }
        let pct = (done.min(total) as f64 * 100.0 / total as f64) as u32;
        let step = pct / 5;
        if step <= self.last_step && now.duration_since(self.last_at) < QUIET {
            return None;
        }
        self.last_step = step.max(self.last_step);
        self.last_at = now;
        let secs = now.duration_since(self.started).as_secs_f64();
        let mut line = format!(
            "{phase} {pct:3}%  {} of {}",
            human_size(done),
            human_size(total)
        );
        if secs >= 1.0 && done > 0 {
            let rate = done as f64 / secs;
            let left = (total - done.min(total)) as f64 / rate;
            line += &format!(
                "  {:.1} MB/s  {} left",
                rate / 1e6,
                clock(Duration::from_secs_f64(left))
            );
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_values_name_devices() {
        assert_eq!(device("ttyS0,115200n8"), Some("/dev/ttyS0".into()));
        assert_eq!(device("tty0"), Some("/dev/tty1".into()));
        assert_eq!(device("tty2"), Some("/dev/tty2".into()));
        assert_eq!(device("hvc0"), Some("/dev/hvc0".into()));
        assert_eq!(device("null"), None);
        assert_eq!(device("lp0"), None);
        assert_eq!(device("tty../../x"), None);
        assert_eq!(device(""), None);
    }

    #[test]
    fn the_last_console_is_primary_and_none_means_tty1() {
        let v = |s: &[&str]| devices(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&[]), vec![PathBuf::from("/dev/tty1")]);
        assert_eq!(
            v(&["tty0", "ttyS0,115200"]),
            vec![PathBuf::from("/dev/tty1"), "/dev/ttyS0".into()]
        );
        // A repeat moves to the end, as the kernel makes it /dev/console.
        assert_eq!(
            v(&["ttyS0", "tty0", "ttyS0"]),
            vec![PathBuf::from("/dev/tty1"), "/dev/ttyS0".into()]
        );
        assert_eq!(v(&["null"]), vec![PathBuf::from("/dev/tty1")]);
    }

    #[test]
    fn progress_lines_every_five_percent_or_ten_seconds() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = ProgressLines::new(t0);
        let gib = 1u64 << 30;
        assert_eq!(
            p.feed(&format!("START\trestore\t0\t{gib}\t0.0"), t0),
            Some("restore: 1.0 GiB".into())
        );
        // 3 %: within the first step, nothing.
        let line = |done: u64| format!("PROGRESS\trestore\t{done}\t{gib}\t0");
        assert_eq!(p.feed(&line(gib * 3 / 100), at(1)), None);
        let five = p.feed(&line(gib / 20 + 1), at(2)).unwrap();
        assert!(
            five.starts_with("restore   5%  51.2 MiB of 1.0 GiB"),
            "{five}"
        );
        assert!(five.contains("MB/s") && five.contains("left"), "{five}");
        assert_eq!(p.feed(&line(gib * 6 / 100), at(3)), None);
        // Ten quiet seconds: a line even inside the step.
        assert!(p.feed(&line(gib * 7 / 100), at(13)).is_some());
        assert!(p.feed(&line(gib), at(20)).unwrap().contains("100%"));
        assert_eq!(
            p.feed("FINISH\trestore\t0\t0\t0.0", at(20)),
            Some("restore: done in 20.0 s".into())
        );
        assert_eq!(p.feed("INFO\tverified", at(21)), Some("verified".into()));
        assert_eq!(
            p.feed("reimage: disk too small\n", at(21)),
            Some("disk too small".into())
        );
        assert_eq!(p.feed("", at(21)), None);
        // Garbage numbers are not progress and do not panic.
        assert_eq!(p.feed("PROGRESS\trestore\tx\t-1\t0", at(22)), None);
        assert_eq!(p.feed("PROGRESS\trestore\t5\t0\t0", at(22)), None);
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(Duration::from_secs(65)), "1:05");
        assert_eq!(clock(Duration::from_secs(7389)), "2:03:09");
    }
}
