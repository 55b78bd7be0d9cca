//! The rescue system: reimage as PID 1 of a RAM-only initramfs, with
//! unattended imaging from the kernel command line (DESIGN §5).

pub mod cmdline;
pub mod console;
pub mod disks;
pub mod init;
pub mod modules;
pub mod net;
pub mod system;
