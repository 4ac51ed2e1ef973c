//! "Per second, now": counts in one-second buckets over a short sliding window. O(1) to add,
//! O(window) to read, fixed memory, and time comes in as an argument so tests are exact.

use std::time::Duration;

/// Seconds the rates look back over: long enough to be steady, short enough to react.
pub const WINDOW_SECS: u64 = 5;
const N: usize = WINDOW_SECS as usize;

#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    buckets: [u64; N],
    /// The second (since the dashboard started) the newest bucket holds.
    head: u64,
}

impl RateWindow {
    /// Count `n` events at `now`.
    pub fn add(&mut self, now: Duration, n: u64) {
        let sec = now.as_secs();
        if sec > self.head {
            // Seconds with nothing in them since the last event: clear their old contents.
            for s in (self.head + 1..=sec).rev().take(N) {
                self.buckets[s as usize % N] = 0;
            }
            self.head = sec;
        }
        // An event stamped before `head` (a delayed message) counts in the current second.
        self.buckets[self.head as usize % N] += n;
    }

    /// Events per second over the window ending at `now` (the current second counts for the
    /// part of it that has passed; the first seconds count as at least one second).
    pub fn per_sec(&self, now: Duration) -> f64 {
        let sec = now.as_secs();
        let lo = (sec + 1).saturating_sub(WINDOW_SECS);
        let hi = sec.min(self.head);
        let sum: u64 = (lo..=hi)
            .filter(|s| self.head - s < WINDOW_SECS)
            .map(|s| self.buckets[s as usize % N])
            .sum();
        let span = (now.as_secs_f64() - lo as f64).max(1.0);
        sum as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_rate() {
        let mut r = RateWindow::default();
        // 10 per second for 20 s.
        for i in 0..200 {
            r.add(ms(i * 100), 1);
        }
        let rate = r.per_sec(ms(20_000));
        assert!((rate - 10.0).abs() < 0.3, "{rate}");
    }

    #[test]
    fn quiet_seconds_bring_it_down() {
        let mut r = RateWindow::default();
        r.add(ms(500), 50);
        assert_eq!(r.per_sec(ms(500)), 50.0, "the first second counts as one");
        assert!((r.per_sec(ms(2_000)) - 25.0).abs() < 1e-9);
        assert_eq!(r.per_sec(ms(5_000)), 0.0, "out of the window");
        // A burst long after: old buckets are not resurrected.
        r.add(ms(12_300), 3);
        let rate = r.per_sec(ms(12_300));
        assert!((rate - 3.0 / 4.3).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn late_events_count_now() {
        let mut r = RateWindow::default();
        r.add(ms(3_000), 1);
        r.add(ms(1_000), 1);
        assert!((r.per_sec(ms(3_000)) - 2.0 / 3.0).abs() < 1e-9);
    }
}
