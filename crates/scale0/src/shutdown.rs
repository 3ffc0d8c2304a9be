//! A flag that asks running servers to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Cloneable stop signal shared between a server loop and whoever controls it.
///
/// Loops check it at least every [`Shutdown::CHECK_INTERVAL_MS`], so a trigger takes
/// effect within that time.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// The longest a loop sleeps before looking at the flag again.
    pub const CHECK_INTERVAL_MS: u64 = 100;

    /// A signal that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every loop holding a clone to stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`Shutdown::trigger`] has been called.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Triggers this shutdown on SIGTERM or SIGINT, so a server stops the way it would
    /// when told to in code (finishing what it promised, within its grace period). A
    /// second signal, for someone who will not wait, ends the process at once with
    /// status 130.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for signal in [SIGTERM, SIGINT] {
            // Registered first, so it sees the flag as it was before this signal.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&self.0))?;
            signal_hook::flag::register(signal, Arc::clone(&self.0))?;
        }
        Ok(())
    }
}
