//! The rescue system's PID 1 path, run for real as PID 1 of a PID
//! namespace (`unshare --pid --fork`): reboot(2) there ends the namespace
//! (SIGHUP for reboot, SIGINT for power off) instead of the machine, and a
//! private mount namespace keeps its mounts and unmounts away from the
//! host. Kernel modules are hidden (an empty /lib/modules) so the test never
//! loads any into the host kernel; a fresh network namespace has no NIC.
//! The boot-media QEMU tests run the same code as a real /init.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    let empty = dir.join("no-modules");
    std::fs::create_dir_all(&empty).unwrap();
    let mut child = Command::new("timeout")
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
        .expect("starting unshare");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // util-linux unshare ends itself with the signal that ended its child.
    let (signal, code) = (o.status.signal(), o.status.code());
    assert_ne!(code, Some(124), "the rescue system hung:\n{out}");
    Ended { signal, code, out }
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

#[test]
fn outside_a_pid_namespace_rescue_refuses() {
    let o = reimage(&["rescue", "--cmdline", "reimage.after=reboot"]);
    assert_fails_with(&o, "rescue runs only as PID 1");
}
