//! A coarse process clock: milliseconds since the process started, advanced
//! by one thread every millisecond and read with one relaxed load. The same
//! thread runs other per-tick work ([`on_tick`]: the wasm epoch).
//!
//! Deadlines of seconds (idle connections, stalled bodies) and windows of
//! seconds (quarantine, cooldowns) need no better; reading it costs about a
//! nanosecond where `Instant::now` costs tens, so the request path can note
//! "progress happened" on every read and write for free.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the clock advances.
pub const TICK: Duration = Duration::from_millis(1);

static NOW_MS: AtomicU64 = AtomicU64::new(0);
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Work to do on every tick (advancing the wasm epoch): one thread waking
/// once a millisecond for all of it, not one per purpose. A hook returning
/// `false` is done and removed.
type Hook = Box<dyn FnMut() -> bool + Send>;
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Run `hook` on every tick until it returns `false`.
pub fn on_tick(hook: impl FnMut() -> bool + Send + 'static) {
    start();
    HOOKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(hook));
}

/// Milliseconds since the clock started (at its first use).
pub fn now_ms() -> u64 {
    start();
    NOW_MS.load(Relaxed)
}

/// The `Instant` a clock reading stands for (to arm a timer at it).
pub fn instant_at(ms: u64) -> Instant {
    *start() + Duration::from_millis(ms)
}

/// The first clock reading at or after `at`: a deadline that never comes
/// early, although the clock trails real time by up to a tick.
pub fn ms_at(at: Instant) -> u64 {
    let since = at.saturating_duration_since(*start());
    since.as_millis() as u64 + u64::from(!since.subsec_nanos().is_multiple_of(1_000_000))
}

/// Start the ticking thread once; returns the origin.
fn start() -> &'static Instant {
    ORIGIN.get_or_init(|| {
        let origin = Instant::now();
        std::thread::Builder::new()
            .name("portier-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    // Exact at each tick, so sleeping late never makes it drift.
                    NOW_MS.store(origin.elapsed().as_millis() as u64, Relaxed);
                    HOOKS
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain_mut(|hook| hook());
                }
            })
            .expect("spawning the clock thread");
        origin
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_hooks_run_until_they_say_they_are_done() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        on_tick(move || counter.fetch_add(1, Relaxed) < 4);
        let started = Instant::now();
        while ran.load(Relaxed) < 5 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the hook did not run"
            );
            std::thread::sleep(TICK);
        }
        std::thread::sleep(TICK * 20);
        assert_eq!(ran.load(Relaxed), 5, "ran again after it was done");
    }

    #[test]
    fn the_clock_advances_and_never_runs_ahead_of_real_time() {
        let before = now_ms();
        let started = Instant::now();
        while now_ms() < before + 30 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the clock is stuck"
            );
            std::thread::sleep(TICK);
        }
        // A reading stands for a moment that has passed.
        assert!(instant_at(now_ms()) <= Instant::now());
    }
}
