//! The real clock, turned into the core's [`Instant`] values.

use scale0_proto::Instant;

/// Milliseconds since this clock was made, as the core's time.
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self(std::time::Instant::now())
    }

    /// The core's time now.
    pub fn now(self) -> Instant {
        Instant::from_millis(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The real instant of the core's `at`.
    pub(crate) fn instant(self, at: Instant) -> std::time::Instant {
        self.0 + std::time::Duration::from_millis(at.as_millis())
    }

    /// Milliseconds to wait for `deadline`, capped so shutdown is noticed in time.
    pub(crate) fn wait_ms(self, deadline: Option<Instant>) -> i64 {
        let cap = crate::Shutdown::CHECK_INTERVAL_MS;
        let wait = deadline.map_or(cap, |d| {
            // Rounded up: a deadline less than a millisecond away is a short sleep, not
            // a spin of polls with no wait until it passes.
            u64::try_from(d.saturating_since(self.now()).as_micros().div_ceil(1000)).unwrap_or(cap)
        });
        i64::try_from(wait.min(cap)).unwrap_or(0)
    }
}
