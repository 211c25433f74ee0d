//! Time as the host sees it (plugins get no WASI clock of their own).

/// Milliseconds since the Unix epoch (wall clock).
pub fn now_ms() -> u64 {
    crate::wit::clock::now_ms()
}

/// Nanoseconds from an arbitrary fixed point (monotonic: use it for durations).
pub fn monotonic_ns() -> u64 {
    crate::wit::clock::monotonic_ns()
}
