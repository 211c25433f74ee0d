//! The retry budget: retries may add at most a share of an upstream's
//! requests (over the last 10 seconds) plus a few a second, as linkerd's
//! budget does, so that retrying cannot multiply the load on an upstream
//! that is already failing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::clock;

/// Seconds the budget looks back.
const WINDOW: u64 = 10;

/// Requests and retries per second over the last [`WINDOW`] seconds.
#[derive(Debug, Default)]
pub struct RetryBudget {
    slots: [Slot; WINDOW as usize],
}

#[derive(Debug, Default)]
struct Slot {
    /// The second (clock) this slot counts; older counts are stale.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl RetryBudget {
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % WINDOW) as usize];
        let seen = slot.second.load(Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Relaxed);
            slot.retries.store(0, Relaxed);
        }
        slot
    }

    /// Count a request (not a retry).
    pub fn deposit(&self) {
        self.slot(clock::now_ms() / 1000)
            .requests
            .fetch_add(1, Relaxed);
    }

    /// Take one retry if `ratio` of the window's requests plus
    /// `min_per_second` a second leave room for it.
    pub fn withdraw(&self, ratio: f64, min_per_second: u32) -> bool {
        let now = clock::now_ms() / 1000;
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            if now.saturating_sub(s.second.load(Relaxed)) < WINDOW {
                requests += u64::from(s.requests.load(Relaxed));
                retries += u64::from(s.retries.load(Relaxed));
            }
        }
        let allowed = ratio * requests as f64 + f64::from(min_per_second) * WINDOW as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_of_requests() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw(0.2, 0)).count();
        assert_eq!(granted, 20);
        // More requests make room for more retries.
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw(0.2, 0));
        assert!(b.withdraw(0.2, 0));
        assert!(!b.withdraw(0.2, 0));
    }

    #[test]
    fn a_quiet_upstream_may_still_retry_a_few_times_a_second() {
        let b = RetryBudget::default();
        let granted = (0..100).filter(|_| b.withdraw(0.2, 1)).count();
        assert_eq!(granted, WINDOW as usize);
    }
}
