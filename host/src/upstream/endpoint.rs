//! One endpoint as the process knows it: requests in flight, latency,
//! active health, passive ejections, and its connection pool. It lives in
//! the [`Registry`](super::Registry) for as long as some manifest names it,
//! so a reload keeps all of it.
//!
//! Everything read on the request path is a relaxed atomic; time is the
//! coarse [`clock`](crate::clock) (milliseconds since start).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::uri::Authority;
use tokio::sync::Notify;

use super::pool::Pool;
use crate::clock;
use crate::manifest::{HealthCheck, Outlier};

/// Active health as the checker last decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Active {
    /// No active checks for this endpoint: healthy unless ejected.
    Off = 0,
    /// Checks are configured and none has finished yet: not used.
    Unknown = 1,
    /// The last checks passed.
    Healthy = 2,
    /// The last checks failed.
    Unhealthy = 3,
}

impl Active {
    fn from_u8(v: u8) -> Active {
        match v {
            1 => Active::Unknown,
            2 => Active::Healthy,
            3 => Active::Unhealthy,
            _ => Active::Off,
        }
    }

    /// The name `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Active::Off => "off",
            Active::Unknown => "unknown",
            Active::Healthy => "healthy",
            Active::Unhealthy => "unhealthy",
        }
    }
}

/// What the last active check saw (for `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The endpoint answered with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailed,
    /// No response head within the check's timeout.
    TimedOut,
    /// The connection broke or the answer was not HTTP.
    Broken,
}

impl Probe {
    fn encode(self) -> u32 {
        match self {
            Probe::Status(s) => u32::from(s),
            Probe::ConnectFailed => 1001,
            Probe::TimedOut => 1002,
            Probe::Broken => 1003,
        }
    }

    fn decode(v: u32) -> Option<Probe> {
        Some(match v {
            0 => return None,
            1001 => Probe::ConnectFailed,
            1002 => Probe::TimedOut,
            1003 => Probe::Broken,
            s => Probe::Status(s as u16),
        })
    }

    /// How `/status` shows it.
    pub fn describe(self) -> String {
        match self {
            Probe::Status(s) => s.to_string(),
            Probe::ConnectFailed => "connect failed".into(),
            Probe::TimedOut => "timed out".into(),
            Probe::Broken => "broken".into(),
        }
    }
}

/// The outcome of one forwarded request, as passive health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head whose status is not a failure.
    Success,
    /// A failure status, a reset or a timeout.
    Failure,
    /// No connection could be made.
    ConnectFailure,
}

/// One endpoint's process-lifetime state.
#[derive(Debug)]
pub struct EndpointState {
    /// `host:port`.
    pub address: Authority,
    /// The upstream it belongs to (logs).
    pub upstream: Arc<str>,
    /// Its connections.
    pub pool: Pool,
    in_flight: AtomicU32,
    latency: PeakEwma,
    active: AtomicU8,
    /// Passing (positive) or failing (negative) checks in a row (written by
    /// the endpoint's checker only).
    streak: std::sync::atomic::AtomicI32,
    last_probe: AtomicU32,
    /// Set when the first check after (re)configuration has an answer.
    pub(super) checked: Notify,
    /// Ejected until this clock reading; 0: not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    ejections_total: AtomicU64,
    failures_in_row: AtomicU32,
    connect_failures_in_row: AtomicU32,
    /// No manifest names it any more: its connections are not kept.
    retired: AtomicBool,
}

impl EndpointState {
    /// A new endpoint, healthy until told otherwise, with an empty pool.
    pub fn new(upstream: Arc<str>, address: Authority, workers: usize) -> EndpointState {
        EndpointState {
            pool: Pool::new(workers),
            address,
            upstream,
            in_flight: AtomicU32::new(0),
            latency: PeakEwma::default(),
            active: AtomicU8::new(Active::Off as u8),
            streak: Default::default(),
            last_probe: AtomicU32::new(0),
            checked: Notify::new(),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            failures_in_row: AtomicU32::new(0),
            connect_failures_in_row: AtomicU32::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// Usable now: active checks (if any) pass and it is not ejected.
    pub fn healthy(&self) -> bool {
        matches!(
            Active::from_u8(self.active.load(Relaxed)),
            Active::Off | Active::Healthy
        ) && !self.ejected()
    }

    /// Whether passive detection keeps it out right now.
    pub fn ejected(&self) -> bool {
        self.ejected_until.load(Relaxed) > clock::now_ms()
    }

    /// Active health.
    pub fn active(&self) -> Active {
        Active::from_u8(self.active.load(Relaxed))
    }

    /// What the last active check saw.
    pub fn last_probe(&self) -> Option<Probe> {
        Probe::decode(self.last_probe.load(Relaxed))
    }

    /// Times passive detection ejected it since the process started.
    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    /// Milliseconds until an ejection ends (0: not ejected).
    pub fn ejected_for_ms(&self) -> u64 {
        self.ejected_until
            .load(Relaxed)
            .saturating_sub(clock::now_ms())
    }

    /// Requests being forwarded to it now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Peak-EWMA latency in µs, decayed to now (0: no sample yet).
    pub fn latency_us(&self) -> u64 {
        self.latency.get(clock::now_ms())
    }

    /// Count a request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Fold one response-head latency into the estimate.
    pub fn record_latency(&self, d: Duration) {
        self.latency.observe(d, clock::now_ms());
    }

    /// Count one forwarded request's outcome; eject the endpoint when its
    /// failures in a row reach the upstream's thresholds and `may_eject`
    /// (the upstream's share of ejected endpoints) allows. True when this
    /// call ejected it.
    pub fn record(
        &self,
        outcome: Outcome,
        rules: &Outlier,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        let (row, threshold) = match outcome {
            Outcome::Success => {
                if self.failures_in_row.load(Relaxed) != 0 {
                    self.failures_in_row.store(0, Relaxed);
                }
                if self.connect_failures_in_row.load(Relaxed) != 0 {
                    self.connect_failures_in_row.store(0, Relaxed);
                }
                return false;
            }
            Outcome::Failure => (&self.failures_in_row, rules.consecutive_failures),
            Outcome::ConnectFailure => (
                &self.connect_failures_in_row,
                rules.consecutive_connect_failures,
            ),
        };
        let n = row.fetch_add(1, Relaxed) + 1;
        if threshold == 0 || n < threshold || self.ejected() || !may_eject() {
            return false;
        }
        row.store(0, Relaxed);
        let times = self.ejections.fetch_add(1, Relaxed) + 1;
        let length = (rules.base_ejection * times).min(rules.max_ejection);
        self.ejected_until
            .store(clock::now_ms() + length.as_millis() as u64, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        tracing::warn!(upstream = %self.upstream, endpoint = %self.address, ejection = times, seconds = length.as_secs_f64(), "endpoint ejected after failing {n} times in a row");
        true
    }

    /// Apply one active check's result under `check`'s thresholds.
    pub fn record_probe(&self, probe: Probe, check: &HealthCheck) {
        self.last_probe.store(probe.encode(), Relaxed);
        let passed = matches!(probe, Probe::Status(s) if check.passes(s));
        // Passes in a row count up from 1, failures down from -1.
        let next = |s: i32| match (passed, s) {
            (true, s) if s > 0 => s + 1,
            (true, _) => 1,
            (false, s) if s < 0 => s - 1,
            (false, _) => -1,
        };
        // Only the endpoint's one checker writes it: no read-modify-write race.
        let streak = next(self.streak.load(Relaxed));
        self.streak.store(streak, Relaxed);
        let before = self.active();
        let after = match (before, passed) {
            // The first answer decides at once: a new endpoint is not kept
            // waiting for `healthy_threshold` probes.
            (Active::Unknown | Active::Off, true) => Active::Healthy,
            (Active::Unknown | Active::Off, false) => Active::Unhealthy,
            (Active::Unhealthy, true) if streak >= check.healthy_threshold as i32 => {
                Active::Healthy
            }
            (Active::Healthy, false) if -streak >= check.unhealthy_threshold as i32 => {
                Active::Unhealthy
            }
            (state, _) => state,
        };
        if passed && (self.ejected_until.load(Relaxed) != 0) {
            // A passing check ends an ejection early and forgives past ones.
            self.ejected_until.store(0, Relaxed);
            self.ejections.store(0, Relaxed);
        }
        self.active.store(after as u8, Relaxed);
        match (before, after) {
            (Active::Unknown | Active::Off, _) => {
                tracing::info!(upstream = %self.upstream, endpoint = %self.address, health = after.as_str(), probe = %probe.describe(), "first health check");
            }
            (Active::Healthy, Active::Unhealthy) => {
                tracing::warn!(upstream = %self.upstream, endpoint = %self.address, probe = %probe.describe(), "endpoint is unhealthy: health checks fail");
            }
            (Active::Unhealthy, Active::Healthy) => {
                tracing::info!(upstream = %self.upstream, endpoint = %self.address, "endpoint is healthy again: health checks pass");
            }
            _ => {}
        }
        if before != after || matches!(before, Active::Unknown) {
            self.checked.notify_waiters();
        }
    }

    /// Active checks start (`true`: health unknown until the first answer)
    /// or stop (`false`: healthy unless ejected).
    pub fn set_checked(&self, checked: bool) {
        let now = self.active();
        match (checked, now) {
            (true, Active::Off) => self.active.store(Active::Unknown as u8, Relaxed),
            (false, _) => {
                self.active.store(Active::Off as u8, Relaxed);
                self.streak.store(0, Relaxed);
                self.last_probe.store(0, Relaxed);
            }
            _ => {}
        }
    }

    /// No manifest names it any more: close idle connections now and those
    /// in use when their request ends.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
        self.pool.clear();
    }

    /// Whether it was retired.
    pub fn retired(&self) -> bool {
        self.retired.load(Relaxed)
    }
}

/// Decrements an endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// The endpoint the request is in flight at.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Peak-EWMA of response-head latency, as linkerd and Finagle balance on:
/// a slower sample is taken at once, faster ones pull the estimate down
/// with a weight that grows with the time since the last sample, and
/// without samples it decays toward 0, so a once-slow endpoint is retried.
#[derive(Debug, Default)]
struct PeakEwma {
    /// The estimate in µs, as `f64` bits.
    estimate: AtomicU64,
    /// Clock reading (ms) of the last sample.
    at: AtomicU64,
}

/// Time constant of the decay.
const DECAY_MS: f64 = 10_000.0;

impl PeakEwma {
    fn observe(&self, d: Duration, now: u64) {
        let sample = d.as_secs_f64() * 1e6;
        let last = self.at.swap(now, Relaxed);
        let elapsed = now.saturating_sub(last) as f64;
        let _ = self.estimate.fetch_update(Relaxed, Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if old == 0.0 || sample > old {
                sample
            } else {
                let w = (-elapsed / DECAY_MS).exp();
                old * w + sample * (1.0 - w)
            };
            Some(new.max(1.0).to_bits())
        });
    }

    fn get(&self, now: u64) -> u64 {
        let est = f64::from_bits(self.estimate.load(Relaxed));
        if est == 0.0 {
            return 0;
        }
        let elapsed = now.saturating_sub(self.at.load(Relaxed)) as f64;
        ((est * (-elapsed / DECAY_MS).exp()) as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointState {
        EndpointState::new("api".into(), "127.0.0.1:1".parse().unwrap(), 1)
    }

    #[test]
    fn peak_ewma_takes_a_slow_sample_at_once_and_decays_with_time() {
        let e = PeakEwma::default();
        e.observe(Duration::from_micros(1000), 0);
        assert_eq!(e.get(0), 1000);
        e.observe(Duration::from_micros(5000), 0);
        assert_eq!(e.get(0), 5000, "a slower sample is the new peak");
        // A fast sample 10 s later (one time constant) pulls it most of the way down.
        e.observe(Duration::from_micros(1000), 10_000);
        let v = e.get(10_000);
        assert!((2400..2500).contains(&v), "{v}");
        // No samples for 30 s: the estimate decays toward 0.
        assert!(e.get(40_000) < v / 10);
    }

    #[test]
    fn failures_in_a_row_eject_and_each_ejection_lasts_longer() {
        let e = endpoint();
        let rules = Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            ..Outlier::default()
        };
        assert!(!e.record(Outcome::Failure, &rules, || true));
        assert!(!e.record(Outcome::Failure, &rules, || true));
        assert!(
            !e.record(Outcome::Success, &rules, || true),
            "a success breaks the row"
        );
        assert!(!e.record(Outcome::Failure, &rules, || true));
        assert!(!e.record(Outcome::Failure, &rules, || true));
        assert!(e.healthy());
        assert!(e.record(Outcome::Failure, &rules, || true));
        assert!(!e.healthy());
        let first = e.ejected_for_ms();
        assert!((9_000..=10_000).contains(&first), "{first}");
        // Ended early by hand; the second ejection is twice as long.
        e.ejected_until.store(0, Relaxed);
        for _ in 0..3 {
            e.record(Outcome::Failure, &rules, || true);
        }
        let second = e.ejected_for_ms();
        assert!((19_000..=20_000).contains(&second), "{second}");
        assert_eq!(e.ejections_total(), 2);
    }

    #[test]
    fn an_ejection_the_upstream_cannot_afford_does_not_happen() {
        let e = endpoint();
        let rules = Outlier::default();
        assert!(!e.record(Outcome::ConnectFailure, &rules, || false));
        assert!(e.healthy());
        assert!(e.record(Outcome::ConnectFailure, &rules, || true));
        assert!(!e.healthy());
    }

    #[test]
    fn active_checks_decide_at_the_first_answer_then_need_their_thresholds() {
        let e = endpoint();
        let check = HealthCheck {
            path: "/health".parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            expect: vec![(200, 299)],
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            host: None,
        };
        e.set_checked(true);
        assert!(!e.healthy(), "unknown until the first check");
        e.record_probe(Probe::Status(200), &check);
        assert!(e.healthy());
        e.record_probe(Probe::Status(500), &check);
        e.record_probe(Probe::TimedOut, &check);
        assert!(e.healthy(), "two failures are under the threshold of 3");
        e.record_probe(Probe::ConnectFailed, &check);
        assert!(!e.healthy());
        e.record_probe(Probe::Status(204), &check);
        assert!(!e.healthy(), "one pass is under the threshold of 2");
        e.record_probe(Probe::Status(200), &check);
        assert!(e.healthy());
        e.set_checked(false);
        assert!(e.healthy());
        assert_eq!(e.active(), Active::Off);
    }
}
