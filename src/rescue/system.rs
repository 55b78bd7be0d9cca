//! What PID 1 does to the system itself: the pseudo-filesystems at start,
//! and an orderly end (every process stopped, block-device filesystems
//! unmounted, caches synced) before reboot or power off.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::blockdev::mounts;

/// (source, mount point, type, flags): what the rescue system needs before
/// anything else. devtmpfs gives /dev its nodes without udev.
const BASICS: [(&str, &str, &str, MsFlags); 6] = [
    (
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
    ),
    ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID),
    ("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
    ),
];

/// Mounts /proc, /sys, /dev, /dev/pts, /run and /tmp where nothing is
/// mounted yet (a boot loader or a test may have done some). Returns one
/// warning per mount that failed; the rescue system goes on without it.
pub fn mount_basics() -> Vec<String> {
    let mut warnings = Vec::new();
    for (source, target, fstype, flags) in BASICS {
        // /proc itself answers the question for the others, so it is first.
        let mounted =
            mounts().is_ok_and(|m| m.iter().any(|m| Path::new(&m.point) == Path::new(target)));
        if mounted {
            continue;
        }
        let _ = std::fs::create_dir_all(target);
        let data = (fstype == "devpts").then_some("gid=5,mode=620,ptmxmode=666");
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            warnings.push(format!("mounting {fstype} on {target} failed: {e}"));
        }
    }
    warnings
}

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Reboot,
    PowerOff,
}

/// Stops every other process (TERM, up to `grace`, then KILL), unmounts
/// the block-device filesystems (the USB stick's data partition, anything
/// mounted from the shell) newest first, syncs, and reboots or powers off.
/// Returns only if the final call fails.
pub fn end(how: End, grace: Duration) -> Result<()> {
    // kill(-1) from PID 1 reaches every process but PID 1 itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && others_alive() {
        reap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap();
    nix::unistd::sync();
    // Only filesystems on block devices hold data that must reach a disk;
    // the pseudo-filesystems go away with the machine.
    let mut on_disks: Vec<_> = mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.source.starts_with("/dev/"))
        .collect();
    on_disks.reverse();
    for m in on_disks {
        // A busy one (the root of a test run) stays; sync covered it.
        let _ = umount2(m.point.as_str(), MntFlags::empty());
    }
    nix::unistd::sync();
    let mode = match how {
        End::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        End::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
    };
    nix::sys::reboot::reboot(mode).context("reboot(2)")?;
    Ok(())
}

/// Reaps whatever has ended, without waiting.
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Whether any process but us is left (our children are the only ones
/// waitpid can see, and as PID 1 every orphan is our child).
fn others_alive() -> bool {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    matches!(
        waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
        Ok(nix::sys::wait::WaitStatus::StillAlive)
    )
}
