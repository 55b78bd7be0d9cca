//! SIGINT/SIGTERM during a restore: instead of dying with a half-written
//! disk, the pipeline stops at the next piece, erases the target to a
//! valid empty state and exits 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// From now on SIGINT and SIGTERM set a flag instead of killing us.
pub fn catch_interrupts() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// Fails once a signal arrived.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted by a signal");
    }
    Ok(())
}

/// One restore's own stop, for a caller that runs several restores in one
/// process (the menu's "stop the restore?"): unlike a signal it ends only
/// the restore it was given to, and the next restore gets a fresh one.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Fails once a signal arrived or this stop was requested.
    pub fn check(&self) -> anyhow::Result<()> {
        check()?;
        if self.0.load(Ordering::Relaxed) {
            anyhow::bail!("stopped by the user");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Stop;

    #[test]
    fn a_stop_ends_its_restore_only() {
        let first = Stop::default();
        let seen_by_restore = first.clone();
        assert!(seen_by_restore.check().is_ok());
        first.request();
        let e = seen_by_restore.check().unwrap_err();
        assert_eq!(e.to_string(), "stopped by the user");
        // The next restore starts with a fresh stop.
        assert!(Stop::default().check().is_ok());
    }
}
