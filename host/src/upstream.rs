//! Upstreams and the host's live view of their endpoints.
//!
//! The host records what it observes while forwarding (connections refused,
//! requests in flight, response latency); balancers read it through the
//! `upstreams` import and decide. Everything here is lock-free atomics: it is
//! touched on every request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::manifest;

/// Every upstream of one pipeline generation, by name.
#[derive(Debug)]
pub struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
    names: Vec<String>,
    /// Time origin for the millisecond timestamps kept in atomics.
    epoch: Instant,
}

/// A named group of endpoints plus its forwarding settings.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream's name.
    pub name: String,
    /// Endpoints in manifest order.
    pub endpoints: Vec<Endpoint>,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// Response-head deadline.
    pub timeout: Duration,
    refused_cooldown_ms: u64,
    /// Round-robin cursor for the host's fallback balancing.
    cursor: AtomicUsize,
}

/// One endpoint and what the host has observed of it.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`.
    pub address: Authority,
    /// Relative weight.
    pub weight: u32,
    in_flight: AtomicU32,
    /// EWMA of response-head latency in µs (0: no sample yet).
    latency_ewma_us: AtomicU64,
    /// Unhealthy until this many ms after `Upstreams::epoch` (0: never refused).
    refused_until_ms: AtomicU64,
}

/// A snapshot of one endpoint, as plugins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// Index within the upstream.
    pub index: u32,
    /// `host:port`.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Usable now.
    pub healthy: bool,
    /// Requests in flight.
    pub in_flight: u32,
    /// Latency EWMA in µs.
    pub latency_ewma_us: u64,
}

impl Upstreams {
    /// Build from validated manifest upstreams.
    pub fn new(upstreams: &[manifest::Upstream]) -> Upstreams {
        let by_name = upstreams
            .iter()
            .map(|u| {
                let up = Upstream {
                    name: u.name.clone(),
                    endpoints: u
                        .endpoints
                        .iter()
                        .map(|e| Endpoint {
                            address: e.address.clone(),
                            weight: e.weight,
                            in_flight: AtomicU32::new(0),
                            latency_ewma_us: AtomicU64::new(0),
                            refused_until_ms: AtomicU64::new(0),
                        })
                        .collect(),
                    connect_timeout: u.connect_timeout,
                    timeout: u.timeout,
                    refused_cooldown_ms: u.refused_cooldown.as_millis() as u64,
                    cursor: AtomicUsize::new(0),
                };
                (u.name.clone(), Arc::new(up))
            })
            .collect();
        Upstreams {
            by_name,
            names: upstreams.iter().map(|u| u.name.clone()).collect(),
            epoch: Instant::now(),
        }
    }

    /// The upstream with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    /// The only upstream, when there is exactly one.
    pub fn single(&self) -> Option<&Arc<Upstream>> {
        match self.names.as_slice() {
            [only] => self.by_name.get(only),
            _ => None,
        }
    }

    /// Names in manifest order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "never refused".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether an endpoint is usable now.
    pub fn healthy(&self, e: &Endpoint) -> bool {
        e.refused_until_ms.load(Relaxed) <= self.now_ms()
    }

    /// Snapshot of an upstream's endpoints for a balancer.
    pub fn view(&self, upstream: &Upstream) -> Vec<EndpointView> {
        upstream
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| EndpointView {
                index: i as u32,
                address: e.address.to_string(),
                weight: e.weight,
                healthy: self.healthy(e),
                in_flight: e.in_flight.load(Relaxed),
                latency_ewma_us: e.latency_ewma_us.load(Relaxed),
            })
            .collect()
    }

    /// Record that an endpoint refused (or failed) a connection.
    pub fn mark_refused(&self, upstream: &Upstream, e: &Endpoint) {
        e.refused_until_ms
            .store(self.now_ms() + upstream.refused_cooldown_ms, Relaxed);
    }

    /// Host fallback when no balancer stage exists: round-robin over healthy endpoints.
    pub fn round_robin(&self, upstream: &Upstream) -> Option<usize> {
        let n = upstream.endpoints.len();
        let start = upstream.cursor.fetch_add(1, Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.healthy(&upstream.endpoints[i]))
    }
}

impl Endpoint {
    /// Count a request as in flight until the guard drops.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self)
    }

    /// Fold one response-head latency sample into the moving average.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u64::MAX as u128) as u64;
        // alpha = 1/8, like TCP's SRTT: smooth, yet a slow endpoint shows within a few requests.
        let _ = self.latency_ewma_us.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                sample.max(1)
            } else {
                (old * 7 + sample) / 8
            })
        });
    }
}

/// Decrements an endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(cooldown: Duration) -> Upstreams {
        let ep = |a: &str| manifest::Endpoint {
            address: a.parse().unwrap(),
            weight: 1,
        };
        Upstreams::new(&[manifest::Upstream {
            name: "api".into(),
            endpoints: vec![ep("127.0.0.1:1"), ep("127.0.0.1:2"), ep("127.0.0.1:3")],
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            refused_cooldown: cooldown,
        }])
    }

    #[test]
    fn refused_endpoint_is_unhealthy_for_the_cooldown_then_healthy_again() {
        // Long enough that a busy machine cannot pass it between two lines.
        let ups = upstreams(Duration::from_millis(300));
        let api = ups.get("api").unwrap().clone();
        ups.mark_refused(&api, &api.endpoints[1]);
        assert!(!ups.view(&api)[1].healthy);
        assert!(ups.view(&api)[0].healthy);
        std::thread::sleep(Duration::from_millis(310));
        assert!(ups.view(&api)[1].healthy);
    }

    #[test]
    fn fallback_round_robin_takes_each_endpoint_in_turn() {
        let ups = upstreams(Duration::from_secs(60));
        let api = ups.get("api").unwrap().clone();
        let picks: Vec<_> = (0..7).map(|_| ups.round_robin(&api).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn fallback_round_robin_skips_unhealthy_endpoints() {
        let ups = upstreams(Duration::from_secs(60));
        let api = ups.get("api").unwrap().clone();
        ups.mark_refused(&api, &api.endpoints[1]);
        // The turn that would be 1's goes to the next healthy endpoint.
        let picks: Vec<_> = (0..6).map(|_| ups.round_robin(&api).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 0, 2, 2]);
        for e in &api.endpoints {
            ups.mark_refused(&api, e);
        }
        assert_eq!(ups.round_robin(&api), None);
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops_and_latency_averages() {
        let ups = upstreams(Duration::from_secs(1));
        let api = ups.get("api").unwrap().clone();
        let g = api.endpoints[0].start_request();
        assert_eq!(ups.view(&api)[0].in_flight, 1);
        drop(g);
        assert_eq!(ups.view(&api)[0].in_flight, 0);
        api.endpoints[0].record_latency(Duration::from_micros(800));
        api.endpoints[0].record_latency(Duration::from_micros(0));
        assert_eq!(ups.view(&api)[0].latency_ewma_us, 700);
    }
}
