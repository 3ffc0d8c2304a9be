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
}
