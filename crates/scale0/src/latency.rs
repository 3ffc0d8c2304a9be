//! Latency distributions, on `hdrhistogram`: one rank rule for every report (`scale0
//! request`, `scale0 bench`, the demo, the swarm), 3 significant digits, constant memory
//! however many samples.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Recorded latencies, in nanoseconds from 1 ns to about an hour (longer ones count as
/// the longest).
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

/// The largest latency told apart from longer ones: an hour.
const MAX_NS: u64 = 3_600_000_000_000;

impl Default for Latencies {
    fn default() -> Self {
        // Constant, valid bounds (1 ns ..= 1 h, 3 significant digits): this cannot fail,
        // whatever the input; a fixed table of about 200 KiB.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds");
        Self(h)
    }
}

impl PartialEq for Latencies {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Latencies {}

impl Latencies {
    /// Adds one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), 1);
    }

    /// Adds `count` latencies of `ns` nanoseconds each.
    pub fn record_ns(&mut self, ns: u64, count: u64) {
        self.0.saturating_record_n(ns.clamp(1, MAX_NS), count);
    }

    /// Adds every latency of `other`.
    pub fn add(&mut self, other: &Latencies) {
        for v in other.0.iter_recorded() {
            self.record_ns(v.value_iterated_to(), v.count_at_value());
        }
    }

    /// How many were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0.0 to 1.0): the smallest recorded value that at least `q` of all
    /// are at or below; zero when there are none.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.0.value_at_quantile(q.clamp(0.0, 1.0)))
    }

    /// Each distinct recorded value (nanoseconds, as the histogram rounds them) with its
    /// count, for carrying a distribution between processes.
    pub fn values(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_one_rank_rule_and_merge() {
        let mut a = Latencies::default();
        for ms in 1..=100u64 {
            a.record(Duration::from_millis(ms));
        }
        let near = |d: Duration, ms: u64| d.as_micros().abs_diff(u128::from(ms) * 1000) <= 100;
        assert!(near(a.quantile(0.5), 50), "{:?}", a.quantile(0.5));
        assert!(near(a.quantile(0.99), 99), "{:?}", a.quantile(0.99));
        assert!(near(a.quantile(1.0), 100));
        let mut b = Latencies::default();
        for (ns, n) in a.values() {
            b.record_ns(ns, n);
        }
        assert_eq!(a, b, "a distribution survives being carried as values");
        b.add(&a);
        assert_eq!(b.len(), 200);
        assert_eq!(Latencies::default().quantile(0.5), Duration::ZERO);
    }
}
