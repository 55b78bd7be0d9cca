//! `reimage.*` kernel command-line parameters.
//!
//! The line is split exactly as the kernel's `next_arg()` (lib/cmdline.c)
//! splits it, so what the user typed in the boot loader means the same here
//! as it does to the kernel. Nothing in it may stop the rescue system from
//! coming up: bad parameters become warnings for the console.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// What to do after an unattended restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After {
    Reboot,
    Poweroff,
    #[default]
    Menu,
    Shell,
}

/// `reimage.target=`: a device path, or `auto` (see `disks::auto_target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Auto,
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub source: Option<String>,
    pub target: Option<TargetSpec>,
    pub noprompt: bool,
    pub noverify: bool,
    pub after: After,
    pub pubkey: Option<String>,
    pub cacert: Option<String>,
    pub catalog: Option<String>,
    pub timeout: Option<u64>,
    /// The rescue shell on tty2 (`reimage.shell=0` turns it off).
    pub shell: bool,
    /// The kernel's own `console=` values in order (`ttyS0,115200n8`,
    /// `tty0`): progress goes to each, the menu to the last, which is the
    /// one the kernel makes /dev/console.
    pub consoles: Vec<String>,
    /// Problems found, one line each, to show on the console.
    pub warnings: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            source: None,
            target: None,
            noprompt: false,
            noverify: false,
            after: After::default(),
            pubkey: None,
            cacert: None,
            catalog: None,
            timeout: None,
            shell: true,
            consoles: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Params {
    /// Parses a kernel command line. Never fails: unknown `reimage.*` keys
    /// and bad values land in `warnings`, and a bad value leaves whatever an
    /// earlier occurrence of the key set (otherwise the last one wins).
    pub fn parse(cmdline: &str) -> Params {
        let mut params = Params::default();
        for (param, val) in args(cmdline) {
            if let ("console", Some(v)) = (param, val) {
                params.consoles.push(v.to_owned());
                continue;
            }
            let Some(key) = param.strip_prefix("reimage.") else {
                continue;
            };
            if let Err(why) = params.set(key, val) {
                let typed = val.map_or_else(|| param.to_owned(), |v| format!("{param}={v}"));
                params
                    .warnings
                    .push(format!("{}: {why}", printable(&typed)));
            }
        }
        params
    }

    /// Reads /proc/cmdline.
    pub fn from_kernel() -> Result<Params> {
        let raw = std::fs::read("/proc/cmdline").context("reading /proc/cmdline")?;
        Ok(Params::parse(&String::from_utf8_lossy(&raw)))
    }

    /// Whether the kernel line asks for an unattended restore (source and
    /// target both given).
    pub fn unattended(&self) -> bool {
        self.source.is_some() && self.target.is_some()
    }

    fn set(&mut self, key: &str, val: Option<&str>) -> Result<(), &'static str> {
        match key {
            "source" => self.source = Some(value(val)?.to_owned()),
            "pubkey" => self.pubkey = Some(value(val)?.to_owned()),
            "cacert" => self.cacert = Some(value(val)?.to_owned()),
            "catalog" => self.catalog = Some(value(val)?.to_owned()),
            "target" => self.target = Some(target(value(val)?)?),
            "noprompt" => self.noprompt = flag(val)?,
            "noverify" => self.noverify = flag(val)?,
            "shell" => self.shell = flag(val)?,
            "after" => self.after = after(value(val)?)?,
            "timeout" => {
                let secs = value(val)?.parse().map_err(|_| "expected whole seconds")?;
                self.timeout = Some(secs);
            }
            _ => return Err("unknown parameter, ignored"),
        }
        Ok(())
    }
}

fn value(val: Option<&str>) -> Result<&str, &'static str> {
    val.filter(|v| !v.is_empty()).ok_or("needs a value")
}

/// A bare flag means on; a value is read as the kernel's kstrtobool reads it.
fn flag(val: Option<&str>) -> Result<bool, &'static str> {
    let Some(v) = val else { return Ok(true) };
    match v.to_ascii_lowercase().as_str() {
        "1" | "y" | "yes" | "true" | "on" => Ok(true),
        "0" | "n" | "no" | "false" | "off" => Ok(false),
        _ => Err("expected 1/0, yes/no or true/false"),
    }
}

fn target(v: &str) -> Result<TargetSpec, &'static str> {
    if v.eq_ignore_ascii_case("auto") {
        Ok(TargetSpec::Auto)
    } else if v.starts_with('/') {
        Ok(TargetSpec::Path(v.into()))
    } else {
        Err("expected auto or a device path such as /dev/sda")
    }
}

fn after(v: &str) -> Result<After, &'static str> {
    match v.to_ascii_lowercase().as_str() {
        "reboot" => Ok(After::Reboot),
        "poweroff" => Ok(After::Poweroff),
        "menu" => Ok(After::Menu),
        "shell" => Ok(After::Shell),
        _ => Err("expected reboot, poweroff, menu or shell"),
    }
}

/// What the user typed, made safe for a console line: control characters
/// would move the cursor, and a runaway value would flood the screen.
fn printable(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// The kernel's isspace() on ASCII: space and \t \n \v \f \r.
fn is_space(c: u8) -> bool {
    c == b' ' || (b'\t'..=b'\r').contains(&c)
}

/// `(param, value)` pairs in order, stopping at a bare `--` (what follows
/// is init's argv, not parameters).
fn args(mut rest: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
        if rest.is_empty() {
            return None;
        }
        let (arg, tail) = next_arg(rest);
        rest = tail;
        Some(arg)
    })
    .take_while(|&(param, val)| !(param == "--" && val.is_none()))
}

/// One argument off the front of `s` (non-empty, no leading space), as
/// next_arg() does it: spaces inside double quotes don't split, a quote
/// opening the whole argument or its value is dropped together with one
/// trailing quote, and other quotes stay.
fn next_arg(s: &str) -> ((&str, Option<&str>), &str) {
    let quoted = s.starts_with('"');
    let body = &s[usize::from(quoted)..];
    let mut in_quote = quoted;
    let end = body
        .bytes()
        .position(|c| {
            in_quote ^= c == b'"';
            is_space(c) && !in_quote
        })
        .unwrap_or(body.len());
    // `end` indexes an ASCII space (or the end), so both slices are on
    // character boundaries.
    let (mut word, rest) = (&body[..end], body.get(end + 1..).unwrap_or(""));
    let equals = word.find('=');
    if quoted || equals.is_some_and(|e| word[e + 1..].starts_with('"')) {
        word = word.strip_suffix('"').unwrap_or(word);
    }
    let arg = match equals {
        None => (word, None),
        Some(e) => {
            let val = &word[e + 1..];
            (&word[..e], Some(val.strip_prefix('"').unwrap_or(val)))
        }
    };
    (arg, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(line: &str) -> Vec<String> {
        Params::parse(line).warnings
    }

    #[test]
    fn pxe_line() {
        let p = Params::parse(
            "BOOT_IMAGE=/vmlinuz initrd=initrd.img console=ttyS0,115200 \
             reimage.source=http://10.0.0.1:8080/lab.rimg reimage.target=auto \
             reimage.noprompt reimage.after=reboot quiet console=tty0\n",
        );
        assert_eq!(
            p,
            Params {
                source: Some("http://10.0.0.1:8080/lab.rimg".into()),
                target: Some(TargetSpec::Auto),
                noprompt: true,
                after: After::Reboot,
                consoles: vec!["ttyS0,115200".into(), "tty0".into()],
                ..Params::default()
            }
        );
        assert!(p.unattended() && p.shell);
    }

    #[test]
    fn every_parameter() {
        let p = Params::parse(
            "reimage.source=mcast://239.1.2.3:7000 reimage.target=/dev/disk/by-id/nvme-X \
             reimage.noprompt=no reimage.noverify=1 reimage.after=Poweroff \
             reimage.pubkey=RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3 \
             reimage.cacert=/etc/ca.pem reimage.catalog=http://srv/images.json \
             reimage.timeout=90 reimage.shell=0",
        );
        assert_eq!(p.source.as_deref(), Some("mcast://239.1.2.3:7000"));
        assert_eq!(
            p.target,
            Some(TargetSpec::Path("/dev/disk/by-id/nvme-X".into()))
        );
        assert!(!p.noprompt && p.noverify && !p.shell);
        assert_eq!(p.after, After::Poweroff);
        assert!(p.pubkey.as_deref().unwrap().starts_with("RWQf"));
        assert_eq!(p.cacert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(p.catalog.as_deref(), Some("http://srv/images.json"));
        assert_eq!(p.timeout, Some(90));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn quoting_follows_the_kernel() {
        let source = |line| Params::parse(line).source;
        let spaced = Some("http://a b".to_owned());
        assert_eq!(source("\"reimage.source=http://a b\""), spaced);
        assert_eq!(source("reimage.source=\"http://a b\" quiet"), spaced);
        assert_eq!(source("x \t\"reimage.source=http://a b\"\tquiet"), spaced);
        // Quotes elsewhere stay, as the kernel leaves them.
        assert_eq!(
            source("reimage.source=a\"b c\"d").as_deref(),
            Some("a\"b c\"d")
        );
        assert_eq!(source("\"reimage.source=\"a\"\"").as_deref(), Some("a\""));
        // An unterminated quote runs to the end of the line.
        assert_eq!(
            source("reimage.source=\"/x y quiet").as_deref(),
            Some("/x y quiet")
        );
        let p = Params::parse("\"reimage.noprompt\" reimage.source=\"\"");
        assert!(p.noprompt && p.source.is_none());
        assert_eq!(p.warnings, ["reimage.source=: needs a value"]);
    }

    #[test]
    fn double_dash_ends_our_parameters() {
        let p = Params::parse("reimage.noverify -- reimage.source=/img reimage.bogus");
        assert!(p.noverify && p.source.is_none() && p.warnings.is_empty());
        // Only a bare `--` counts.
        assert!(Params::parse("--=x \"--\"x reimage.noprompt").noprompt);
        assert!(!Params::parse("\"--\" reimage.noprompt").noprompt);
    }

    #[test]
    fn bad_values_warn_and_name_the_parameter() {
        for (line, key) in [
            ("reimage.after=foo", "reimage.after=foo"),
            ("reimage.timeout=abc", "reimage.timeout=abc"),
            ("reimage.timeout=-1", "reimage.timeout=-1"),
            ("reimage.timeout", "reimage.timeout"),
            (
                "reimage.target=relative/path",
                "reimage.target=relative/path",
            ),
            ("reimage.target=", "reimage.target="),
            ("reimage.source=", "reimage.source="),
            ("reimage.source", "reimage.source"),
            ("reimage.pubkey=", "reimage.pubkey="),
            ("reimage.cacert", "reimage.cacert"),
            ("reimage.catalog=", "reimage.catalog="),
            ("reimage.noprompt=maybe", "reimage.noprompt=maybe"),
            ("reimage.noverify=", "reimage.noverify="),
            ("reimage.shell=2", "reimage.shell=2"),
            ("reimage.colour=blue", "reimage.colour=blue"),
            ("reimage.", "reimage."),
        ] {
            let w = warned(line);
            assert_eq!(w.len(), 1, "{line}: {w:?}");
            assert!(w[0].starts_with(&format!("{key}: ")), "{line}: {w:?}");
        }
    }

    #[test]
    fn last_one_wins_but_bad_values_do_not_clobber() {
        let p = Params::parse(
            "reimage.after=shell reimage.source=/a reimage.source=/b reimage.after=menu \
             reimage.timeout=5 reimage.timeout=x",
        );
        assert_eq!(p.source.as_deref(), Some("/b"));
        assert_eq!((p.after, p.timeout), (After::Menu, Some(5)));
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn empty_and_unrelated_lines() {
        for line in [
            "",
            "   \n",
            "quiet splash",
            "root=/dev/sda1 ro",
            "noreimage.source=/x",
        ] {
            assert_eq!(Params::parse(line), Params::default(), "{line:?}");
        }
        assert!(!Params::default().unattended());
        assert!(!Params::parse("reimage.source=/img").unattended());
    }

    #[test]
    fn garbage_never_panics() {
        let long = format!("reimage.source={}", "é".repeat(100_000));
        let lines = [
            "\"",
            "\"\"",
            "=",
            "\"=\"",
            "reimage.source=\"",
            "\"reimage.source=\"",
            "reimage.\u{1b}[2J=\u{0}\u{7f}",
            "\u{0}\u{1}\u{2}\"\u{b}\u{c}\r\n\t",
            "\"é\"ü=\"ö reimage.after=\"é",
            &long,
            &"\" ".repeat(10_000),
        ];
        for line in lines {
            for w in Params::parse(line).warnings {
                assert!(!w.chars().any(char::is_control), "{w:?}");
                assert!(w.chars().count() < 200);
            }
        }
        assert_eq!(Params::parse(&long).source.map(|s| s.len()), Some(200_000));
    }
}
