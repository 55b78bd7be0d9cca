//! The rescue system: reimage as PID 1 of a RAM-only initramfs, with
//! unattended imaging from the kernel command line (DESIGN §5).

pub mod cmdline;
pub mod console;
pub mod disks;
pub mod init;
pub mod media;
pub mod modules;
pub mod net;
pub mod system;

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The search path of every program the rescue system starts: the kernel
/// starts PID 1 with none, and busybox's applets live in all four.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Every program PID 1 starts: with a search path, and with no signal
/// blocked (PID 1 blocks the ones busybox's reboot/poweroff send it, and a
/// child would inherit that mask: udhcpc or a shell deaf to SIGTERM).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", PATH);
    // SAFETY: pthread_sigmask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)
        });
    }
    cmd
}
