//! The menu driven the way a user drives it: the real binary in a tmux
//! pane (a real pseudo-terminal), keys typed with `send-keys`, the screen
//! read back with `capture-pane`. The disk offered is a real loop device,
//! named in a fake sysfs tree so that no real disk is ever listed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A GPT disk image, and its prepared image alone in a directory for the
/// menu to find.
struct Fixtures {
    disk: PathBuf,
    images: PathBuf,
    rimg: PathBuf,
}

/// The disk image's and the target's size.
const DISK_MIB: u64 = 64;

/// Built in each test's own directory (a second or so), so nothing is
/// left behind.
fn fixtures(dir: &Path) -> Fixtures {
    let files = sample_files(dir, 4);
    let disk = dir.join("disk.img");
    make_gpt_disk(&disk, DISK_MIB, 40, &files);
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let rimg = images.join("lab.rimg");
    let o = reimage(&[
        "imagecreate",
        "--source",
        s(&disk),
        "--image",
        s(&rimg),
        "--name",
        "menu-lab",
    ]);
    assert!(o.status.success(), "imagecreate: {}", stderr(&o));
    Fixtures { disk, images, rimg }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tmux server of the test's own (its socket in the test's directory, so
/// no other tmux is touched) running one 80×24 session; killed on drop,
/// which also ends the menu if a check failed midway.
struct Tmux {
    socket: PathBuf,
}

const SESSION: &str = "menu";

/// What the pane runs around the program: a shell that waits for it and
/// prints its exit status, then stays so the screen can still be read.
/// (tmux's own `remain-on-exit` and `#{pane_dead_status}` are not used:
/// tmux 3.3 sometimes never reaps a pane's process whose exit coincides
/// with libutempter's SIGCHLD handler, tmux/tmux#311.)
const WRAPPER: &str = r#""$@"; echo "exited with status $?"; exec sleep 600"#;

impl Tmux {
    fn start(dir: &Path, cmd: &[&str]) -> Tmux {
        let t = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let mut args = vec!["new-session", "-d", "-x", "80", "-y", "24", "-s", SESSION];
        args.extend(["sh", "-c", WRAPPER, "sh"]);
        args.extend_from_slice(cmd);
        t.tmux(&args);
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let mut all = vec!["-S", s(&self.socket)];
        all.extend_from_slice(args);
        sh("tmux", &all)
    }

    /// Keys by tmux's names: `Enter`, `Down`, `BSpace`, `C-u`...
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Text typed as it is.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", SESSION, "-l", text]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", SESSION])
    }

    /// Polls the screen until `done` holds for it; fails with the last
    /// screen once `secs` have passed.
    fn wait_for(&self, what: &str, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after {secs} s; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_text(&self, text: &str, secs: u64) -> String {
        self.wait_for(&format!("{text:?}"), secs, |screen| screen.contains(text))
    }

    /// The program's exit status, once it has ended, and the screen then.
    fn exit_status(&self) -> (i32, String) {
        const SAID: &str = "exited with status ";
        let screen = self.wait_for("the end of the menu", 10, |s| s.contains(SAID));
        let status = screen.split(SAID).nth(1).unwrap().split_whitespace().next();
        (status.unwrap().parse().unwrap(), screen)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = run("tmux", &["-S", s(&self.socket), "kill-server"]);
    }
}

/// A device node in /dev for a loop device, under a name that is not
/// `loop*` (the disk list leaves loop devices out) and is what the user
/// types to confirm; removed on drop.
struct DevNode {
    name: String,
    path: PathBuf,
}

impl DevNode {
    fn for_loop(l: &Loop) -> DevNode {
        let number = l.dev.strip_prefix("/dev/loop").unwrap();
        let name = format!("rtest{number}");
        let path = Path::new("/dev").join(&name);
        let _ = std::fs::remove_file(&path);
        sh("mknod", &[s(&path), "b", "7", number]);
        DevNode { name, path }
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A sysfs tree holding one virtio disk, `node`, of `mib` MiB and no
/// partitions: the shape `/sys/block/NAME` → `../devices/...` has. Beside
/// it a read-only disk, `rdonly9` (listed first, were it offered).
fn fake_sys(dir: &Path, node: &DevNode, mib: u64) -> PathBuf {
    let sys = dir.join("sys");
    std::fs::create_dir_all(sys.join("block")).unwrap();
    let sectors = (mib * MIB / 512).to_string();
    for (name, bus, ro) in [
        (node.name.as_str(), "virtio9", "0"),
        ("rdonly9", "virtio8", "1"),
    ] {
        let link = Path::new("../devices/pci0000:00/0000:00:04.0")
            .join(bus)
            .join("block")
            .join(name);
        let device = sys.join("block").join(&link);
        std::fs::create_dir_all(device.join("device")).unwrap();
        for (file, value) in [
            ("size", sectors.as_str()),
            ("serial", "menu-test"),
            ("device/model", "reimage test disk"),
            ("removable", "0"),
            ("ro", ro),
        ] {
            std::fs::write(device.join(file), format!("{value}\n")).unwrap();
        }
        std::os::unix::fs::symlink(link, sys.join("block").join(name)).unwrap();
    }
    sys
}

/// The screen's words as one line, without the frame: a message wrapped
/// over several rows reads as the sentence it is.
fn words(screen: &str) -> String {
    screen
        .replace(['│', '┌', '┐', '└', '┘', '─'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts the menu on `images`, with the loop device as the only disk,
/// and goes as far as the confirm step for it.
fn menu_up_to_confirm(dir: &Path, images: &Path, node: &DevNode) -> Tmux {
    let sys = fake_sys(dir, node, DISK_MIB);
    let t = Tmux::start(
        dir,
        &[
            env!("CARGO_BIN_EXE_reimage"),
            "menu",
            "--no-browse",
            "--images",
            s(images),
            "--sys",
            s(&sys),
        ],
    );
    t.wait_for_text("Step 1 of 3: choose an image", 10);
    let screen = t.wait_for_text("menu-lab", 10);
    assert!(screen.contains("> menu-lab"), "not selected:\n{screen}");
    t.keys(&["Enter"]);
    t.wait_for_text("Step 2 of 3: choose the disk to erase", 5);
    let screen = t.wait_for_text(&node.name, 10);
    assert!(screen.contains("reimage test disk"), "{screen}");
    assert!(
        !screen.contains("/dev/loop"),
        "a loop device is offered:\n{screen}"
    );
    assert!(
        !screen.contains("rdonly9"),
        "a read-only disk is offered:\n{screen}"
    );
    t.keys(&["Enter"]);
    t.wait_for_text("Step 3 of 3: confirm erasing the disk", 5);
    t
}

#[test]
fn restore_from_the_menu_then_shell() {
    let dir = scratch();
    let f = fixtures(dir.path());
    let (_file, l) = random_loop(dir.path(), DISK_MIB);
    let node = DevNode::for_loop(&l);
    let t = menu_up_to_confirm(dir.path(), &f.images, &node);

    // A wrong name is refused and nothing starts.
    t.type_text("sda");
    t.keys(&["Enter"]);
    let screen = t.wait_for_text("is not this disk's name", 5);
    assert!(
        words(&screen).contains(&format!(
            "\"sda\" is not this disk's name. Type {} exactly",
            node.name
        )),
        "{screen}"
    );
    t.keys(&["C-u"]);
    t.type_text(&node.name);
    t.keys(&["Enter"]);

    let screen = t.wait_for("the done screen", 60, |s| {
        s.contains("Restore complete") || s.contains("The restore failed")
    });
    assert!(screen.contains("The restore is complete."), "{screen}");
    assert!(screen.contains("Verified  yes"), "not verified:\n{screen}");
    assert_extents_match(&f.rimg, &f.disk, l.path());

    // Open a shell: the last choice.
    t.keys(&["End", "Enter"]);
    let (status, screen) = t.exit_status();
    assert_eq!(status, 0, "{screen}");
    assert!(screen.contains("reimage: shell chosen"), "{screen}");
}

#[test]
fn a_failed_restore_shows_why_and_leaves_the_disk_empty() {
    let dir = scratch();
    let f = fixtures(dir.path());
    let bad = &f.rimg;
    corrupt_last_extent(bad);
    let (_file, l) = random_loop(dir.path(), DISK_MIB);
    let node = DevNode::for_loop(&l);
    let t = menu_up_to_confirm(dir.path(), &f.images, &node);
    t.type_text(&node.name);
    t.keys(&["Enter"]);

    let screen = t.wait_for("the failure screen", 60, |s| {
        s.contains("Restore complete") || s.contains("The restore failed:")
    });
    let text = words(&screen);
    for needle in [
        "The restore failed:",
        "erased to a valid empty state",
        "the image is corrupt",
        "Retry: same image, same disk",
    ] {
        assert!(text.contains(needle), "no {needle:?}:\n{screen}");
    }
    assert_empty_gpt(l.path());

    // Open a shell: the fourth choice.
    t.keys(&["Down", "Down", "Down", "Enter"]);
    let (status, screen) = t.exit_status();
    assert_eq!(status, 0, "{screen}");
}
