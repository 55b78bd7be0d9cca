//! reimage as PID 1: the rescue system's init.
//!
//! PID 1 must never exit (the kernel panics), so everything that can fail
//! badly — the restore, the menu, the shells — runs as a child process of
//! the same binary, and PID 1 only supervises: it reaps every process
//! (orphans are re-parented to it), restarts the tty2 shell, and after
//! any failure shows what happened and offers menu, shell, reboot or power
//! off. A panic in PID 1 itself is caught and lands in the same offer.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cmdline::{After, Params, TargetSpec};
use super::console::{self, Consoles, ProgressLines};
use super::system::{self, End};
use super::{disks, media, modules, net};

/// How `reimage menu` tells PID 1 what the user chose (see
/// `menu::run::Exit::code`): 0 is the shell.
const MENU_REBOOT: i32 = 10;
const MENU_POWEROFF: i32 = 11;

/// How long an explicitly named target (`reimage.target=/dev/…`) may take
/// to appear: USB and NVMe disks enumerate after their drivers load.
const TARGET_WAIT: Duration = Duration::from_secs(30);
/// How long DHCP gets before the rescue system goes on without it
/// (udhcpc keeps trying in the background).
const DHCP_WAIT: Duration = Duration::from_secs(8);

/// `reimage rescue`'s options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Use this instead of /proc/cmdline, and the inherited stdin/stdout
    /// instead of the consoles: for trying the rescue system in a PID
    /// namespace (`unshare -pf --mount-proc`), as the tests do.
    pub cmdline: Option<String>,
}

/// What to do next; each step of the supervisor returns the one after it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    Unattended,
    Menu,
    Shell,
    /// Something failed: say why and ask what to do.
    Ask(String),
    End(End),
}

/// The supervisor's state.
struct Rescue {
    params: Params,
    consoles: Arc<Consoles>,
    /// Where the menu, the console shell and questions go; None means our
    /// own stdin/stdout.
    primary: Option<PathBuf>,
    /// The tty2 shell and when it last started, for restarting it.
    tty2: Option<(Pid, Instant)>,
    tty2_restarts: u32,
}

/// Runs the rescue system. Refuses unless this process is PID 1: the end
/// of it calls reboot(2), which inside a PID namespace only ends the
/// namespace but on a running system would reboot the machine.
pub fn run(opts: Options) -> Result<std::convert::Infallible> {
    if std::process::id() != 1 {
        bail!(
            "rescue runs only as PID 1 (the initramfs's /init, or under `unshare --pid --fork --mount-proc`)"
        );
    }
    // Before any thread starts, so that every thread inherits the mask
    // and only the waiter below receives these signals.
    let requests = end_requests();
    requests.thread_block()?;
    let mut rescue = Rescue::boot(&opts);
    let consoles = Arc::clone(&rescue.consoles);
    std::thread::spawn(move || end_on_request(requests, &consoles));
    let mut next = if rescue.params.unattended() {
        Next::Unattended
    } else {
        Next::Menu
    };
    loop {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rescue.step(next)));
        next = step.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Next::Ask(format!("internal error: {what}"))
        });
    }
}

/// What busybox `reboot`, `poweroff` and `halt` send to PID 1: SIGTERM,
/// SIGUSR2 and SIGUSR1 (init has no default action for them, so without
/// this they would do nothing).
fn end_requests() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGUSR1, Signal::SIGUSR2] {
        set.add(sig);
    }
    set
}

/// Honours those requests from a thread of its own, whatever the
/// supervisor is blocked in (a prompt, a child's end). Children get an
/// empty signal mask from `Command::spawn`, so a shell's Ctrl-C still works.
fn end_on_request(requests: SigSet, consoles: &Consoles) {
    loop {
        let (how, said) = match requests.wait() {
            Ok(Signal::SIGTERM) => (End::Reboot, "rebooting (asked by a signal: reboot)"),
            // halt: there is nothing to halt for in a RAM-only system.
            Ok(_) => (
                End::PowerOff,
                "powering off (asked by a signal: poweroff or halt)",
            ),
            Err(_) => continue,
        };
        consoles.line(said);
        if let Err(e) = system::end(how, Duration::from_secs(3)) {
            consoles.line(&format!("warning: {e:#}"));
        }
    }
}

impl Rescue {
    /// Everything before the first job: filesystems, consoles, modules,
    /// disks and NICs settled, DHCP, the tty2 shell.
    fn boot(opts: &Options) -> Rescue {
        let mount_warnings = system::mount_basics();
        let raw = opts
            .cmdline
            .clone()
            .unwrap_or_else(|| std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        let params = Params::parse(&raw);
        let (consoles, primary) = if opts.cmdline.is_some() {
            (Consoles::stdout(), None)
        } else {
            let devices = console::devices(&params.consoles);
            (Consoles::open(&devices), devices.last().cloned())
        };
        let mut rescue = Rescue {
            params,
            consoles: Arc::new(consoles),
            primary,
            tty2: None,
            tty2_restarts: 0,
        };
        let say = |m: &str| rescue.consoles.line(m);
        say(&format!(
            "rescue system {} starting",
            env!("CARGO_PKG_VERSION")
        ));
        for w in mount_warnings.iter().chain(&rescue.params.warnings) {
            say(&format!("warning: {w}"));
        }
        rescue.load_modules();
        rescue.network();
        if rescue.params.shell {
            rescue.start_tty2();
        }
        rescue
    }

    fn say(&self, msg: &str) {
        self.consoles.line(msg);
    }

    /// Loads what the hardware asks for, in rounds: a controller's driver
    /// makes the disks or the USB devices behind it appear, and those ask
    /// for more. Stops when the set of devices holds still.
    fn load_modules(&self) {
        let sys = Path::new("/sys");
        let dir = match modules::modules_dir() {
            Ok(d) if d.is_dir() => d,
            Ok(d) => {
                self.say(&format!(
                    "no kernel modules at {}: using built-in drivers only",
                    d.display()
                ));
                return settle();
            }
            Err(e) => {
                self.say(&format!("warning: {e:#}"));
                return settle();
            }
        };
        let mut loaded = Vec::new();
        for _ in 0..3 {
            let before = modules::modaliases(sys);
            match modules::load_for_hardware(sys, &dir) {
                Ok(report) => {
                    for (name, why) in &report.failed {
                        self.say(&format!("warning: module {name}: {why}"));
                    }
                    loaded.extend(report.loaded);
                }
                Err(e) => self.say(&format!("warning: loading modules: {e:#}")),
            }
            settle();
            if modules::modaliases(sys) == before {
                break;
            }
        }
        self.say(&format!("loaded {} kernel modules", loaded.len()));
    }

    /// DHCP on every wired NIC; shows the addresses it got.
    fn network(&self) {
        if let Err(e) = net::link_up("lo") {
            self.say(&format!("warning: {e:#}"));
        }
        let class_net = Path::new("/sys/class/net");
        let nics = net::wired_nics(class_net);
        let name = net::machine_name(class_net, &nics);
        if let Err(e) = nix::unistd::sethostname(&name) {
            self.say(&format!("warning: naming this machine {name}: {e}"));
        }
        if nics.is_empty() {
            self.say("no wired network interface");
            return;
        }
        let script = Path::new("/run/reimage/udhcpc.script");
        if let Err(e) = write_script(script) {
            self.say(&format!("warning: no DHCP: {e:#}"));
            return;
        }
        let mut started = Vec::new();
        for nic in &nics {
            let up = net::link_up(nic).and_then(|()| net::start_dhcp(nic, script, &name));
            match up {
                Ok(()) => started.push(nic.clone()),
                Err(e) => self.say(&format!("warning: {nic}: {e:#}")),
            }
        }
        let found = net::await_addresses(&started, DHCP_WAIT);
        for nic in &nics {
            match found.get(nic) {
                Some(ip) => self.say(&format!("{nic}: {ip}")),
                None => self.say(&format!(
                    "{nic}: no address yet (DHCP goes on in the background)"
                )),
            }
        }
    }

    fn start_tty2(&mut self) {
        let mut sh = shell_command();
        match spawn_on(Some(Path::new("/dev/tty2")), &mut sh) {
            Ok(pid) => self.tty2 = Some((pid, Instant::now())),
            Err(e) => self.say(&format!("warning: no shell on tty2: {e:#}")),
        }
    }

    /// A child ended; restart the tty2 shell if it was that one, unless it
    /// keeps dying at once (no /bin/sh, no tty2).
    fn reaped(&mut self, pid: Pid) {
        let Some((shell, since)) = self.tty2 else {
            return;
        };
        if shell != pid {
            return;
        }
        self.tty2 = None;
        if since.elapsed() < Duration::from_secs(2) {
            self.tty2_restarts += 1;
        } else {
            self.tty2_restarts = 0;
        }
        if self.tty2_restarts < 5 {
            self.start_tty2();
        } else {
            self.say("warning: the tty2 shell keeps exiting; not restarting it");
        }
    }

    /// Waits for `child` to end, reaping everything else meanwhile.
    fn wait_for(&mut self, child: Pid) -> WaitStatus {
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(st @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))) => {
                    if pid == child {
                        return st;
                    }
                    self.reaped(pid);
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                // No children at all: `child` is gone already.
                Err(_) => return WaitStatus::Exited(child, -1),
            }
        }
    }

    fn step(&mut self, next: Next) -> Next {
        match next {
            Next::Unattended => match self.unattended() {
                Ok(()) => match self.params.after {
                    After::Reboot => Next::End(End::Reboot),
                    After::Poweroff => Next::End(End::PowerOff),
                    After::Menu => Next::Menu,
                    After::Shell => Next::Shell,
                },
                Err(e) => Next::Ask(format!("{e:#}")),
            },
            Next::Menu => self.menu(),
            Next::Shell => {
                self.say("rescue shell; leave it (exit) to get the menu back");
                match spawn_on(self.primary.as_deref(), &mut shell_command()) {
                    Ok(pid) => {
                        self.wait_for(pid);
                        Next::Menu
                    }
                    Err(e) => Next::Ask(format!("no shell: {e:#}")),
                }
            }
            Next::Ask(why) => self.ask(&why),
            Next::End(how) => {
                self.say(match how {
                    End::Reboot => "rebooting",
                    End::PowerOff => "powering off",
                });
                match system::end(how, Duration::from_secs(3)) {
                    Ok(()) => Next::Ask("reboot(2) returned".into()),
                    Err(e) => Next::Ask(format!("{e:#}")),
                }
            }
        }
    }

    fn menu(&mut self) -> Next {
        // The menu wants a PEM file; a URL is fetched here, once.
        let cacert = self.params.cacert.as_deref().and_then(|ca| {
            fetch_cacert(ca)
                .map_err(|e| self.say(&format!("warning: reimage.cacert: {e:#}")))
                .ok()
        });
        let mut cmd = self_command();
        cmd.args(menu_args(&self.params, cacert.as_deref()));
        let pid = match spawn_on(self.primary.as_deref(), &mut cmd) {
            Ok(pid) => pid,
            Err(e) => return Next::Ask(format!("the menu did not start: {e:#}")),
        };
        match self.wait_for(pid) {
            WaitStatus::Exited(_, 0) => Next::Shell,
            WaitStatus::Exited(_, MENU_REBOOT) => Next::End(End::Reboot),
            WaitStatus::Exited(_, MENU_POWEROFF) => Next::End(End::PowerOff),
            other => Next::Ask(format!(
                "the menu ended unexpectedly ({})",
                describe(&other)
            )),
        }
    }

    /// The unattended restore of `reimage.source` onto `reimage.target`.
    fn unattended(&mut self) -> Result<()> {
        let (Some(source), Some(spec)) = (self.params.source.clone(), self.params.target.clone())
        else {
            bail!("reimage.source and reimage.target are both needed");
        };
        let source = self.resolve_source(source)?;
        let target = self.resolve_target(&spec)?;
        if !self.params.noprompt && !self.confirm(&target)? {
            bail!("not erasing {}: the restore was declined", target.display());
        }
        let mut cmd = self_command();
        cmd.args(["restore", "--source", &source, "--target"])
            .arg(&target)
            .args(["--erase", "--noprompt", "--puppetstrings"]);
        if self.params.noverify {
            cmd.arg("--noverify");
        }
        if let Some(key) = &self.params.pubkey {
            cmd.args(["--pubkey", key]);
        }
        if let Some(ca) = &self.params.cacert {
            cmd.arg("--cacert").arg(fetch_cacert(ca)?);
        }
        if let Some(secs) = self.params.timeout {
            cmd.args(["--timeout", &secs.to_string()]);
        }
        self.say(&format!("restoring {source} onto {}", target.display()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the restore")?;
        let lines = Arc::new(Mutex::new(ProgressLines::new(Instant::now())));
        let readers = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|out| {
            let (consoles, lines) = (Arc::clone(&self.consoles), Arc::clone(&lines));
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let shown = lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .feed(&line, Instant::now());
                    if let Some(shown) = shown {
                        consoles.line(&shown);
                    }
                }
            })
        })
        .collect::<Vec<_>>();
        let status = self.wait_for(Pid::from_raw(child.id() as i32));
        for r in readers {
            let _ = r.join();
        }
        match status {
            WaitStatus::Exited(_, 0) => {
                self.say("restore finished");
                Ok(())
            }
            other => bail!(
                "the restore of {source} onto {} failed ({})",
                target.display(),
                describe(&other)
            ),
        }
    }

    /// `stick:PATH` is a file on the boot stick, which (on USB) may take a
    /// while to appear; anything else goes to `restore --source` as it is.
    fn resolve_source(&self, source: String) -> Result<String> {
        let Some(rel) = source.strip_prefix("stick:") else {
            return Ok(source);
        };
        when_present(|| media::stick_file(Path::new("/sys"), rel))
            .map(|path| path.display().to_string())
    }

    /// `auto`, or a path that may take a while to appear.
    fn resolve_target(&self, spec: &TargetSpec) -> Result<PathBuf> {
        match spec {
            TargetSpec::Path(p) => when_present(|| {
                if !p.exists() {
                    bail!("reimage.target={}: no such device", p.display());
                }
                Ok(p.clone())
            }),
            TargetSpec::Auto => {
                let mut all = disks::list(Path::new("/sys"))?;
                disks::probe_labels(&mut all, Path::new("/dev"));
                let boot = disks::boot_disk(&all).map(|d| d.name.clone());
                let chosen = disks::auto_target(&all, boot.as_deref())?;
                self.say(&format!("reimage.target=auto chose {}", chosen.describe()));
                Ok(chosen.path.clone())
            }
        }
    }

    /// asr's question, on the primary console.
    fn confirm(&self, target: &Path) -> Result<bool> {
        let answer = self.prompt(&format!("Erase contents of {}? [ny]: ", target.display()))?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }

    /// Says what went wrong and offers the ways on.
    fn ask(&mut self, why: &str) -> Next {
        self.say(why);
        loop {
            let answer = self.prompt("[m]enu, [s]hell, [r]eboot or [p]ower off? ");
            match answer.as_deref().map(str::trim) {
                Ok("m") => return Next::Menu,
                Ok("s") => return Next::Shell,
                Ok("r") => return Next::End(End::Reboot),
                Ok("p") => return Next::End(End::PowerOff),
                Ok(_) => {}
                // No console to ask on: keep reaping, and try again later
                // (a console may come back; there is nothing else to do).
                Err(_) => {
                    self.reap_for(Duration::from_secs(5));
                }
            }
        }
    }

    /// Reaps children for a while (no job is running).
    fn reap_for(&mut self, d: Duration) {
        use nix::sys::wait::WaitPidFlag;
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => {
                    self.reaped(pid)
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// One line typed on the primary console (stdin in test mode).
    fn prompt(&self, question: &str) -> Result<String> {
        let mut line = String::new();
        let n = match &self.primary {
            Some(tty) => {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(tty)
                    .with_context(|| format!("opening {}", tty.display()))?;
                f.write_all(question.as_bytes())?;
                BufReader::new(f).read_line(&mut line)?
            }
            None => {
                print!("{question}");
                std::io::stdout().flush()?;
                std::io::stdin().read_line(&mut line)?
            }
        };
        if n == 0 {
            bail!("the console gave end-of-file");
        }
        Ok(line)
    }
}

/// Retries `attempt` until it succeeds or [`TARGET_WAIT`] has passed (a
/// USB stick or a disk may appear after PID 1 first looks); then its last
/// error stands.
fn when_present<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + TARGET_WAIT;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Waits until the disks and network interfaces hold still: no change in
/// /sys/block and /sys/class/net for a second, at most ten seconds.
fn settle() {
    let snapshot = || -> Vec<String> {
        ["/sys/block", "/sys/class/net"]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (snapshot(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

fn write_script(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, net::DHCP_SCRIPT)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("writing {}", path.display()))
}

/// `reimage.cacert=` is a file in the initramfs or a URL to fetch it from
/// (plain http: there is no trust to check an https one with yet).
fn fetch_cacert(spec: &str) -> Result<PathBuf> {
    if !spec.contains("://") {
        return Ok(PathBuf::from(spec));
    }
    let pem = crate::source::fetch_small(spec, &Default::default(), 1 << 20)?
        .with_context(|| format!("reimage.cacert={spec}: not found (404)"))?;
    let path = PathBuf::from("/run/reimage/cacert.pem");
    std::fs::create_dir_all("/run/reimage")?;
    std::fs::write(&path, pem).context("writing /run/reimage/cacert.pem")?;
    Ok(path)
}

/// The menu's arguments from the kernel parameters, with the CA bundle
/// already fetched to `cacert`.
fn menu_args(p: &Params, cacert: Option<&Path>) -> Vec<String> {
    let mut args = vec!["menu".to_string(), "--rescue".to_string()];
    let pairs = [
        ("--catalog", p.catalog.clone()),
        ("--pubkey", p.pubkey.clone()),
        ("--cacert", cacert.map(|c| c.display().to_string())),
    ];
    for (flag, val) in pairs {
        if let Some(v) = val {
            args.extend([flag.to_string(), v]);
        }
    }
    args
}

/// This very binary, with the environment every child gets.
fn self_command() -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    with_env(super::command(exe))
}

fn shell_command() -> Command {
    let mut sh = with_env(super::command("/bin/sh"));
    sh.arg("-l");
    sh
}

/// The kernel starts init with almost no environment.
fn with_env(mut cmd: Command) -> Command {
    cmd.env("HOME", "/root")
        .env_remove("LINES")
        .env_remove("COLUMNS");
    cmd
}

/// Starts `cmd` on the terminal `tty` (stdin, stdout, stderr; a session
/// of its own with the tty as its controlling terminal, so Ctrl-C and job
/// control work there), or on our own stdio when None.
fn spawn_on(tty: Option<&Path>, cmd: &mut Command) -> Result<Pid> {
    if let Some(tty) = tty {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tty)
            .with_context(|| format!("opening {}", tty.display()))?;
        give_size(&f);
        let serial = tty.to_string_lossy().contains("ttyS");
        cmd.env("TERM", if serial { "vt100" } else { "linux" })
            .stdin(f.try_clone()?)
            .stdout(f.try_clone()?)
            .stderr(f);
        // SAFETY: between fork and exec only async-signal-safe calls:
        // setsid(2) and ioctl(2) on fd 0.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 1) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().context("starting a process")?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// A serial line reports 0×0; full-screen programs need a size, and 80×24
/// is what every serial terminal can show.
fn give_size(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: winsize is plain old data; the ioctls read and write only it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(f.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0
            && (ws.ws_row == 0 || ws.ws_col == 0)
        {
            ws.ws_row = 24;
            ws.ws_col = 80;
            libc::ioctl(f.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_gets_the_catalog_and_trust_parameters() {
        let p = Params::parse(
            "reimage.catalog=http://srv/images.json reimage.pubkey=RWQkey reimage.cacert=/ca.pem",
        );
        assert_eq!(
            menu_args(&p, Some(Path::new("/ca.pem"))),
            [
                "menu",
                "--rescue",
                "--catalog",
                "http://srv/images.json",
                "--pubkey",
                "RWQkey",
                "--cacert",
                "/ca.pem"
            ]
        );
        assert_eq!(menu_args(&Params::parse(""), None), ["menu", "--rescue"]);
    }

    #[test]
    fn a_cacert_path_is_used_as_it_is() {
        assert_eq!(
            fetch_cacert("/etc/ca.pem").unwrap(),
            PathBuf::from("/etc/ca.pem")
        );
    }

    #[test]
    fn outside_pid_1_it_refuses() {
        let e = run(Options::default()).unwrap_err();
        assert!(e.to_string().contains("only as PID 1"), "{e}");
    }
}
