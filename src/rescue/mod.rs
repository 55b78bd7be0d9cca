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

/// The search path of every program the rescue system starts: the kernel
/// starts PID 1 with none, and busybox's applets live in all four.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
