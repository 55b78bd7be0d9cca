//! The rescue system's PID 1 path, run for real as PID 1 of a PID
//! namespace (`unshare --pid --fork`): reboot(2) there ends the namespace
//! (SIGHUP for reboot, SIGINT for power off) instead of the machine, and a
//! private mount namespace keeps its mounts and unmounts away from the
//! host. Kernel modules are hidden (an empty /lib/modules) so the test never
//! loads any into the host kernel; a fresh network namespace has no NIC.
//! The boot-media QEMU tests run the same code as a real /init.

mod common;

use std::io::Read;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use common::*;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A small GPT disk image and its prepared image.
fn disk_image(dir: &Path) -> (PathBuf, PathBuf) {
    let files = sample_files(dir, 4);
    let disk = dir.join("disk.img");
    make_gpt_disk(&disk, 64, 32, &files);
    let rimg = dir.join("disk.rimg");
    let o = reimage(&["imagecreate", "--source", p(&disk), "--image", p(&rimg)]);
    assert!(o.status.success(), "imagecreate: {}", stderr(&o));
    (disk, rimg)
}

struct Ended {
    /// The signal that ended the namespace: SIGINT for power off, SIGHUP
    /// for reboot.
    signal: Option<i32>,
    code: Option<i32>,
    out: String,
}

/// Boots the rescue system with `cmdline`, typing `input` on its console.
fn rescue(cmdline: &str, input: &str, dir: &Path) -> Ended {
    let mut child = boot(cmdline, dir);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    ended(String::from_utf8_lossy(&o.stdout).into_owned(), o.status)
}

/// Starts the rescue system with `cmdline` as PID 1 of its namespaces;
/// its console is the child's stdin and stdout.
fn boot(cmdline: &str, dir: &Path) -> Child {
    let empty = dir.join("no-modules");
    std::fs::create_dir_all(&empty).unwrap();
    Command::new("timeout")
        .args([
            "-k",
            "5",
            "180",
            "unshare",
            "--mount",
            "--propagation",
            "private",
        ])
        // --uts: PID 1 names the machine (sethostname), this one's own.
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            "--uts",
            "sh",
            "-c",
        ])
        .arg(
            "mount -t sysfs sysfs /sys && \
             { [ ! -d /lib/modules ] || mount --bind \"$2\" /lib/modules; } && \
             exec \"$0\" rescue --cmdline \"$1\"",
        )
        .args([env!("CARGO_BIN_EXE_reimage"), cmdline, p(&empty)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting unshare")
}

fn ended(out: String, status: ExitStatus) -> Ended {
    // util-linux unshare ends itself with the signal that ended its child.
    let (signal, code) = (status.signal(), status.code());
    assert_ne!(code, Some(124), "the rescue system hung:\n{out}");
    Ended { signal, code, out }
}

/// The only child of process `pid`.
fn child_of(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("children of {pid}: {children:?}"))
}

fn assert_lines(out: &str, wanted: &[&str]) {
    let mut rest = out;
    for w in wanted {
        let at = rest
            .find(w)
            .unwrap_or_else(|| panic!("{w:?} missing or out of order in:\n{out}"));
        rest = &rest[at + w.len()..];
    }
}

#[test]
fn unattended_restore_then_power_off() {
    let dir = scratch();
    let (disk, rimg) = disk_image(dir.path());
    let (_f, target) = random_loop(dir.path(), 64);
    let line = format!(
        "BOOT_IMAGE=/vmlinuz console=ttyS0,115200 reimage.source={} reimage.target={} \
         reimage.noprompt reimage.after=poweroff reimage.shell=0 reimage.colour=blue",
        p(&rimg),
        target.dev
    );
    let end = rescue(&line, "", dir.path());
    assert_eq!(
        end.signal,
        Some(libc::SIGINT),
        "expected power off (SIGINT), got {:?}:\n{}",
        end.code,
        end.out
    );
    assert_lines(
        &end.out,
        &[
            "reimage: rescue system",
            "warning: reimage.colour=blue: unknown parameter",
            "reimage: no kernel modules at /lib/modules/",
            "reimage: no wired network interface",
            &format!("reimage: restoring {} onto {}", p(&rimg), target.dev),
            "reimage: restore 100%",
            "reimage: verify",
            "reimage: restore finished",
            "reimage: powering off",
        ],
    );
    assert!(!end.out.contains("[m]enu"), "{}", end.out);
    assert_extents_match(&rimg, &disk, target.path());
}

#[test]
fn a_declined_restore_asks_what_next_and_leaves_the_disk() {
    let dir = scratch();
    let (_disk, rimg) = disk_image(dir.path());
    let (_f, target) = random_loop(dir.path(), 64);
    let before = digest(target.path());
    let line = format!(
        "reimage.source={} reimage.target={} reimage.after=reboot reimage.shell=0",
        p(&rimg),
        target.dev
    );
    // "n" to asr's question, then an unknown answer, then power off.
    let end = rescue(&line, "n\nx\np\n", dir.path());
    assert_eq!(
        end.signal,
        Some(libc::SIGINT),
        "{:?}:\n{}",
        end.code,
        end.out
    );
    assert_lines(
        &end.out,
        &[
            &format!("Erase contents of {}? [ny]: ", target.dev),
            "the restore was declined",
            "[m]enu, [s]hell, [r]eboot or [p]ower off? ",
            "[m]enu, [s]hell, [r]eboot or [p]ower off? ",
            "reimage: powering off",
        ],
    );
    assert_eq!(digest(target.path()), before, "a declined restore wrote");
}

#[test]
fn a_failed_restore_does_not_reboot_and_leaves_the_disk_empty() {
    let dir = scratch();
    let (_disk, rimg) = disk_image(dir.path());
    // The last extent's payload damaged: many extents are written first.
    let bad = dir.path().join("bad.rimg");
    std::fs::copy(&rimg, &bad).unwrap();
    corrupt_last_extent(&bad);

    let (_f, target) = random_loop(dir.path(), 64);
    let line = format!(
        "reimage.source={} reimage.target={} reimage.noprompt reimage.after=reboot reimage.shell=0",
        p(&bad),
        target.dev
    );
    // reimage.after=reboot must not apply to a failure: it would loop a
    // netbooted machine through the same failing restore forever.
    let end = rescue(&line, "r\n", dir.path());
    assert_eq!(
        end.signal,
        Some(libc::SIGHUP),
        "{:?}:\n{}",
        end.code,
        end.out
    );
    assert_lines(
        &end.out,
        &[
            "erased to a valid empty state",
            &format!(
                "the restore of {} onto {} failed (exit status 1)",
                p(&bad),
                target.dev
            ),
            "[m]enu, [s]hell, [r]eboot or [p]ower off? ",
            "reimage: rebooting",
        ],
    );
    assert_empty_gpt(target.path());
}

/// busybox `reboot` and `poweroff` (typed in the tty2 shell, say) signal
/// PID 1 with SIGTERM and SIGUSR2; PID 1 honours them whatever it is
/// blocked in: here, reading the answer to its question.
#[test]
fn busybox_reboot_and_poweroff_end_the_system() {
    let dir = scratch();
    for (sig, want, said) in [
        (
            libc::SIGTERM,
            libc::SIGHUP,
            "reimage: rebooting (asked by a signal: reboot)",
        ),
        (
            libc::SIGUSR2,
            libc::SIGINT,
            "reimage: powering off (asked by a signal: poweroff or halt)",
        ),
    ] {
        // No source: the menu starts, finds no terminal and ends, so PID 1
        // asks what next and waits for a line that never comes.
        let mut child = boot("reimage.shell=0", dir.path());
        let mut stdout = child.stdout.take().unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains("[m]enu, [s]hell") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "ended before asking:\n{}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
        let pid1 = child_of(child_of(child.id()));
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(pid1 as i32, sig) }, 0);
        stdout.read_to_end(&mut out).unwrap();
        let status = child.wait().unwrap();
        let end = ended(String::from_utf8_lossy(&out).into_owned(), status);
        assert_eq!(
            end.signal,
            Some(want),
            "signal {sig}: {:?}\n{}",
            end.code,
            end.out
        );
        assert!(end.out.contains(said), "{}", end.out);
    }
}

#[test]
fn outside_a_pid_namespace_rescue_refuses() {
    let o = reimage(&["rescue", "--cmdline", "reimage.after=reboot"]);
    assert_fails_with(&o, "rescue runs only as PID 1");
}
