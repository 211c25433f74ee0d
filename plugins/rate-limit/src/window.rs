//! The sliding-window arithmetic, free of host calls so it is unit-tested
//! natively.

/// Where a moment falls: the number of its fixed window (counted from the
/// Unix epoch, so every proxy agrees) and how far into that window it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The window's number.
    pub index: u64,
    /// Milliseconds since the window started.
    pub elapsed: u64,
}

impl Position {
    /// The position of `now_ms` among windows of `window` ms.
    pub fn at(now_ms: u64, window: u64) -> Self {
        Position {
            index: now_ms / window,
            elapsed: now_ms % window,
        }
    }
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it; one more request fits after this many milliseconds.
    Deny {
        /// Milliseconds until a request would be allowed again (at least 1).
        retry_after: u64,
    },
}

/// The sliding-window estimate: the previous window's count, weighted by the
/// part of it the sliding window still covers (rounded up, so a client cannot
/// gain a request right after a boundary), plus the current window's count.
///
/// `current` includes the request being decided.
pub fn decide(limit: u64, window: u64, elapsed: u64, previous: u64, current: u64) -> Verdict {
    if carried(previous, window, elapsed).saturating_add(current) <= limit {
        return Verdict::Allow;
    }
    // Requests this window already let through, not counting this one.
    let admitted = current.saturating_sub(1);
    let retry_after = if admitted < limit {
        // The current window has room; the previous one must fade enough.
        wait_until_fits(limit - admitted - 1, previous, window).saturating_sub(elapsed)
    } else {
        // The current window alone is full: wait for the next one, where this
        // window's count fades in turn.
        (window - elapsed).saturating_add(wait_until_fits(
            limit.saturating_sub(1),
            admitted,
            window,
        ))
    };
    Verdict::Deny {
        retry_after: retry_after.max(1),
    }
}

/// `previous` weighted by the `window - elapsed` ms of it the sliding window
/// still covers, rounded up.
fn carried(previous: u64, window: u64, elapsed: u64) -> u64 {
    let covered = u128::from(window - elapsed);
    let weighted = (u128::from(previous) * covered).div_ceil(u128::from(window));
    u64::try_from(weighted).unwrap_or(u64::MAX)
}

/// How far into a window `carried(previous, ..)` first drops to `room` or less.
fn wait_until_fits(room: u64, previous: u64, window: u64) -> u64 {
    if previous <= room {
        return 0;
    }
    // carried <= room  <=>  window - elapsed <= room * window / previous
    let covered = u128::from(room) * u128::from(window) / u128::from(previous);
    window - covered as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_epoch_aligned() {
        assert_eq!(
            Position::at(25_000, 10_000),
            Position {
                index: 2,
                elapsed: 5_000
            }
        );
        assert_eq!(
            Position::at(30_000, 10_000),
            Position {
                index: 3,
                elapsed: 0
            }
        );
    }

    #[test]
    fn a_fresh_window_allows_exactly_the_limit() {
        let verdicts: Vec<_> = (1..=8).map(|n| decide(5, 10_000, 0, 0, n)).collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Allow));
        assert!(
            verdicts[5..]
                .iter()
                .all(|v| matches!(v, Verdict::Deny { .. }))
        );
    }

    #[test]
    fn no_burst_right_after_a_boundary() {
        // 5 of 5 used just before the boundary: just after it, still none left.
        assert!(matches!(decide(5, 10_000, 1, 5, 1), Verdict::Deny { .. }));
        // Half-way through, half of the previous window still counts.
        assert!(matches!(
            decide(4, 10_000, 5_000, 4, 3),
            Verdict::Deny { .. }
        ));
        assert_eq!(decide(4, 10_000, 5_000, 4, 2), Verdict::Allow);
        // At the very end, the previous window still counts as one request.
        assert_eq!(decide(5, 10_000, 9_999, 5, 4), Verdict::Allow);
        assert!(matches!(
            decide(5, 10_000, 9_999, 5, 5),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn retry_after_waits_for_the_previous_window_to_fade() {
        // Previous 10 of 10, 2s in: 8 of them still count.
        assert_eq!(decide(10, 10_000, 2_000, 10, 2), Verdict::Allow);
        // With this request the 5th of this window, the carried 8 must fall
        // to 5, which happens at 5s: 3s from now.
        assert_eq!(
            decide(10, 10_000, 2_000, 10, 5),
            Verdict::Deny { retry_after: 3_000 }
        );
        assert!(matches!(
            decide(10, 10_000, 4_999, 10, 5),
            Verdict::Deny { retry_after: 1 }
        ));
        assert_eq!(decide(10, 10_000, 5_000, 10, 5), Verdict::Allow);
    }

    #[test]
    fn retry_after_spans_into_the_next_window_when_this_one_is_full() {
        // 5 of 5 used at 0s: the rest of this window, then 5 * (1 - e/10s)
        // must reach 4, at e = 2s: 12s in all.
        assert_eq!(
            decide(5, 10_000, 0, 0, 6),
            Verdict::Deny {
                retry_after: 12_000
            }
        );
        assert_eq!(
            decide(5, 10_000, 9_000, 0, 6),
            Verdict::Deny { retry_after: 3_000 }
        );
        // Sanity: at that moment, a request fits.
        assert_eq!(decide(5, 10_000, 2_000, 5, 1), Verdict::Allow);
        assert!(matches!(
            decide(5, 10_000, 1_999, 5, 1),
            Verdict::Deny { retry_after: 1 }
        ));
    }

    #[test]
    fn limit_one_and_huge_counts_do_not_overflow() {
        assert_eq!(decide(1, 60_000, 0, 0, 1), Verdict::Allow);
        // The one request of this window fades through all of the next.
        assert_eq!(
            decide(1, 60_000, 0, 0, 2),
            Verdict::Deny {
                retry_after: 120_000
            }
        );
        let day = 86_400_000;
        assert_eq!(
            decide(100, day, 0, u64::MAX, u64::MAX),
            Verdict::Deny {
                retry_after: 2 * day
            }
        );
        assert!(matches!(
            decide(100, u64::MAX, 1, u64::MAX, 1),
            Verdict::Deny { .. }
        ));
    }
}
