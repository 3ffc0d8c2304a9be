//! Rate limits for refusal logs.

use std::collections::HashMap;
use tracing::warn;

/// Rate limit for refusal logs: a refused peer reconnects every few hundred
/// milliseconds, so each kind of refusal is logged at most once a second, with how
/// many were not.
#[derive(Default)]
pub(super) struct Quiet {
    last: HashMap<u16, (std::time::Instant, u64)>,
}

/// `Quiet` kinds that are not monitor events.
pub(super) const REFUSED_KEY: u16 = 0;
pub(super) const REFUSED_MECHANISM: u16 = 1;

impl Quiet {
    pub(super) fn log(&mut self, kind: u16, log: impl FnOnce()) {
        let now = std::time::Instant::now();
        match self.last.get_mut(&kind) {
            Some((at, skipped)) if now.duration_since(*at) < std::time::Duration::from_secs(1) => {
                *skipped += 1;
            }
            Some((at, skipped)) => {
                if *skipped > 0 {
                    warn!(
                        count = *skipped,
                        "refusals like the next were not logged in the last second"
                    );
                }
                *at = now;
                *skipped = 0;
                log();
            }
            None => {
                self.last.insert(kind, (now, 0));
                log();
            }
        }
    }
}
