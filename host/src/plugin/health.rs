//! Quarantine: when a stage fails for most of its callers, stop calling it
//! for a while and give its requests the failure policy directly.
//!
//! It trips on the failure *ratio* over a sliding window with a minimum
//! call volume (the shape of Envoy's failure-percentage outlier detection),
//! so that one client sending requests that make a plugin trap cannot take
//! the stage down for everyone: with the default ratio of one half, a
//! minority of poisoned requests never trips it, however many there are.
//!
//! Counting is lock-free: the window is ten buckets of atomics, and a race
//! at a bucket's turnover loses at most a few counts.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::clock;
use crate::manifest::Quarantine;

/// Buckets per window.
const BUCKETS: u64 = 10;

#[derive(Default)]
struct Bucket {
    /// The bucket number (time / bucket length) its counts belong to.
    stamp: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
}

/// Calls and failures of one stage, and its quarantine.
pub struct StageHealth {
    policy: Quarantine,
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS as usize],
    /// Failures since the stage was loaded (what `/status` shows).
    total: AtomicU64,
    /// Coarse-clock ms until which the stage is quarantined (0: never was).
    until_ms: AtomicU64,
}

impl StageHealth {
    /// Health under `policy`.
    pub fn new(policy: Quarantine) -> StageHealth {
        StageHealth {
            policy,
            bucket_ms: (policy.window.as_millis() as u64 / BUCKETS).max(1),
            buckets: Default::default(),
            total: AtomicU64::new(0),
            until_ms: AtomicU64::new(0),
        }
    }

    /// Whether the stage is quarantined right now.
    pub fn quarantined(&self) -> bool {
        let until = self.until_ms.load(Relaxed);
        until != 0 && clock::now_ms() < until
    }

    /// Failures since the stage was loaded.
    pub fn failures(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Count a call that succeeded.
    pub fn record_success(&self) {
        if self.policy.enabled {
            self.bucket(clock::now_ms()).calls.fetch_add(1, Relaxed);
        }
    }

    /// Count a call that failed; `Some(duration)` when it starts a quarantine.
    pub fn record_failure(&self) -> Option<Duration> {
        self.total.fetch_add(1, Relaxed);
        if !self.policy.enabled {
            return None;
        }
        let now = clock::now_ms();
        let bucket = self.bucket(now);
        bucket.calls.fetch_add(1, Relaxed);
        bucket.failures.fetch_add(1, Relaxed);
        let (calls, failures) = self.window(now);
        let tripped = calls >= u64::from(self.policy.min_calls)
            && failures as f64 >= self.policy.failure_ratio * calls as f64;
        if !tripped {
            return None;
        }
        self.until_ms
            .store(now + self.policy.duration.as_millis() as u64, Relaxed);
        // Counting starts afresh when the quarantine ends.
        for b in &self.buckets {
            b.stamp.store(0, Relaxed);
        }
        Some(self.policy.duration)
    }

    /// The bucket for `now_ms`, emptied first if it held an older period.
    fn bucket(&self, now_ms: u64) -> &Bucket {
        let number = now_ms / self.bucket_ms + 1;
        let bucket = &self.buckets[(number % BUCKETS) as usize];
        if bucket.stamp.load(Relaxed) != number && bucket.stamp.swap(number, Relaxed) != number {
            bucket.calls.store(0, Relaxed);
            bucket.failures.store(0, Relaxed);
        }
        bucket
    }

    /// Calls and failures within the window ending at `now_ms`.
    fn window(&self, now_ms: u64) -> (u64, u64) {
        let newest = now_ms / self.bucket_ms + 1;
        self.buckets
            .iter()
            .filter(|b| {
                let stamp = b.stamp.load(Relaxed);
                stamp != 0 && newest - stamp.min(newest) < BUCKETS
            })
            .fold((0, 0), |(c, f), b| {
                (
                    c + u64::from(b.calls.load(Relaxed)),
                    f + u64::from(b.failures.load(Relaxed)),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ratio: f64, min_calls: u32) -> Quarantine {
        Quarantine {
            enabled: true,
            failure_ratio: ratio,
            min_calls,
            window: Duration::from_secs(10),
            duration: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_minority_of_failures_never_trips_it() {
        let h = StageHealth::new(policy(0.5, 20));
        for i in 0..10_000 {
            if i % 10 == 0 {
                assert_eq!(h.record_failure(), None, "call {i}");
            } else {
                h.record_success();
            }
        }
        assert!(!h.quarantined());
        assert_eq!(h.failures(), 1000);
    }

    #[test]
    fn failures_below_the_minimum_volume_do_not_trip_it() {
        let h = StageHealth::new(policy(0.5, 20));
        for _ in 0..19 {
            assert_eq!(h.record_failure(), None);
        }
        assert_eq!(h.record_failure(), Some(Duration::from_millis(300)));
        assert!(h.quarantined());
    }

    #[test]
    fn quarantine_ends_after_its_duration_and_counting_starts_afresh() {
        let h = StageHealth::new(policy(0.5, 4));
        for _ in 0..3 {
            assert_eq!(h.record_failure(), None);
        }
        h.record_success();
        assert_eq!(h.record_failure(), Some(Duration::from_millis(300)));
        assert!(h.quarantined());
        let started = std::time::Instant::now();
        while h.quarantined() {
            assert!(started.elapsed() < Duration::from_secs(5), "never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        // The failures before the quarantine no longer count.
        for _ in 0..3 {
            assert_eq!(h.record_failure(), None);
        }
    }

    #[test]
    fn disabled_never_trips_but_still_counts() {
        let h = StageHealth::new(Quarantine {
            enabled: false,
            ..policy(0.5, 1)
        });
        for _ in 0..100 {
            assert_eq!(h.record_failure(), None);
        }
        assert!(!h.quarantined());
        assert_eq!(h.failures(), 100);
    }
}
