//! Upstreams: the endpoints requests go to, and all the host keeps about them.
//!
//! Two lifetimes meet here. What a manifest says (weights, timeouts, retry
//! and outlier rules) belongs to a pipeline generation: [`Upstreams`].
//! What the host learns and holds (connections, health, ejections, load,
//! the round-robin turn, the retry budget) belongs to the process: the
//! [`Registry`], which a reload diffs the new manifest into, so nothing of
//! it is lost to a SIGHUP.
//!
//! - [`registry`]: the process-lifetime state, keyed by upstream and address.
//! - [`endpoint`]: one endpoint's state: in flight, latency, health, ejections.
//! - [`pool`]: its connections, per worker; connecting.
//! - [`conn`]: one HTTP/1.1 exchange driven from the request's own task.
//! - [`check`]: active health checks.
//! - [`budget`]: the retry budget.
//!
//! Everything read on the request path is lock-free atomics.

pub mod budget;
pub mod check;
pub mod conn;
pub mod endpoint;
pub mod pool;
pub mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use endpoint::{Active, EndpointState, Outcome, Probe};
pub use pool::set_worker;
pub use registry::Registry;

use crate::manifest;

/// Every upstream of one pipeline generation, by name.
#[derive(Debug)]
pub struct Upstreams {
    /// In manifest order. Looked up by a scan, not a hash: a manifest has
    /// a handful of upstreams, names of other lengths are skipped at once,
    /// and a lookup runs several times per request (router, balancer calls).
    list: Vec<Arc<Upstream>>,
}

/// One upstream as a generation configures it. Its endpoints' state is
/// the registry's, shared with every generation that names them.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream's name.
    pub name: String,
    /// What the manifest says of it.
    pub config: manifest::Upstream,
    /// Endpoints in manifest order (a balancer's index points here).
    pub endpoints: Vec<Endpoint>,
    /// TLS to the endpoints, built from `config.tls`.
    pub connector: Option<Arc<crate::tls::UpstreamConnector>>,
    /// Its series in `/metrics`.
    pub metrics: crate::metrics::UpstreamMetrics,
    shared: Arc<Shared>,
}

/// One endpoint of a generation's upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// Relative weight from the manifest.
    pub weight: u32,
    /// The process-lifetime state.
    pub state: Arc<EndpointState>,
}

/// What an upstream keeps across generations besides its endpoints.
#[derive(Debug, Default)]
pub struct Shared {
    turn: AtomicU64,
    budget: budget::RetryBudget,
}

/// A snapshot of one endpoint, as plugins and `/status` see it.
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
    /// Peak-EWMA latency in µs.
    pub latency_us: u64,
}

impl Upstreams {
    fn new(upstreams: Vec<Upstream>) -> Upstreams {
        Upstreams {
            list: upstreams.into_iter().map(Arc::new).collect(),
        }
    }

    /// The upstream with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.list.iter().find(|u| u.name == name)
    }

    /// The only upstream, when there is exactly one.
    pub fn single(&self) -> Option<&Arc<Upstream>> {
        match self.list.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// Names in manifest order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|u| u.name.as_str())
    }

    /// Upstreams in manifest order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter()
    }
}

/// Bit `i` of an exclusion set (endpoints past 64 are never excluded).
pub fn bit(i: usize) -> u64 {
    if i < 64 { 1 << i } else { 0 }
}

impl Upstream {
    /// The next turn of the upstream's round-robin counter.
    pub fn next_turn(&self) -> u64 {
        self.shared.turn.fetch_add(1, Relaxed)
    }

    /// The upstream's retry budget.
    pub fn budget(&self) -> &budget::RetryBudget {
        &self.shared.budget
    }

    /// Whether endpoint `i` may take a request now, leaving out `exclude`.
    pub fn usable(&self, i: usize, exclude: u64) -> bool {
        exclude & bit(i) == 0 && self.endpoints[i].state.healthy()
    }

    /// Host fallback when no balancer stage exists: round-robin over the
    /// usable endpoints.
    pub fn round_robin(&self, exclude: u64) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.next_turn() as usize;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.usable(i, exclude))
    }

    /// Count a forwarded request's outcome at endpoint `i`; passive health
    /// may eject it, as long as `outlier.max_ejected_percent` of the
    /// upstream's endpoints are not ejected already (one always may be).
    pub fn record(&self, i: usize, outcome: Outcome) {
        let rules = &self.config.outlier;
        self.endpoints[i].state.record(outcome, rules, || {
            let ejected = self.endpoints.iter().filter(|e| e.state.ejected()).count();
            ejected == 0
                || (ejected + 1) * 100
                    <= usize::from(rules.max_ejected_percent) * self.endpoints.len()
        });
    }

    /// Snapshot of the endpoints.
    pub fn view(&self) -> Vec<EndpointView> {
        self.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| EndpointView {
                index: i as u32,
                address: e.state.address.to_string(),
                weight: e.weight,
                healthy: e.state.healthy(),
                in_flight: e.state.in_flight(),
                latency_us: e.state.latency_us(),
            })
            .collect()
    }

    /// What `/status` shows of the upstream.
    pub fn status(&self) -> serde_json::Value {
        let endpoints: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| {
                let s = &e.state;
                serde_json::json!({
                    "address": s.address.as_str(),
                    "weight": e.weight,
                    "healthy": s.healthy(),
                    "active_health": s.active().as_str(),
                    "last_check": s.last_probe().map(Probe::describe),
                    "ejected": s.ejected(),
                    "ejected_for_ms": s.ejected_for_ms(),
                    "ejections": s.ejections_total(),
                    "in_flight": s.in_flight(),
                    "latency_us": s.latency_us(),
                    "pool": {
                        "open": s.pool.open(),
                        "idle": s.pool.idle_count(),
                        "connects": s.pool.connects(),
                    },
                })
            })
            .collect();
        serde_json::json!({ "name": self.name, "endpoints": endpoints })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        let ep = |a: &str| manifest::Endpoint {
            address: a.parse().unwrap(),
            weight: 1,
        };
        let registry = Registry::offline(1);
        registry
            .prepare(&[manifest::Upstream {
                name: "api".into(),
                endpoints: vec![ep("127.0.0.1:1"), ep("127.0.0.1:2"), ep("127.0.0.1:3")],
                protocol: manifest::Protocol::Http1,
                connect_timeout: std::time::Duration::from_secs(1),
                timeout: std::time::Duration::from_secs(1),
                pool: Default::default(),
                health: None,
                outlier: Default::default(),
                retry: Default::default(),
                tls: None,
                handler: None,
            }])
            .unwrap()
    }

    #[test]
    fn fallback_round_robin_takes_each_endpoint_in_turn() {
        let ups = upstreams();
        let api = ups.get("api").unwrap();
        let picks: Vec<_> = (0..7).map(|_| api.round_robin(0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn fallback_round_robin_skips_ejected_and_excluded_endpoints() {
        let ups = upstreams();
        let api = ups.get("api").unwrap();
        api.record(1, Outcome::ConnectFailure);
        // The turn that would be 1's goes to the next usable endpoint.
        let picks: Vec<_> = (0..6).map(|_| api.round_robin(0).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 0, 2, 2]);
        assert_eq!(api.round_robin(bit(0) | bit(2)), None);
    }

    #[test]
    fn no_more_than_max_ejected_percent_of_endpoints_are_ejected() {
        let ups = upstreams();
        let api = ups.get("api").unwrap();
        // 50 % of 3: one endpoint may be ejected, a second may not.
        for i in 0..3 {
            api.record(i, Outcome::ConnectFailure);
        }
        let ejected = api.endpoints.iter().filter(|e| e.state.ejected()).count();
        assert_eq!(ejected, 1);
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let ups = upstreams();
        let api = ups.get("api").unwrap();
        let g = api.endpoints[0].state.start_request();
        assert_eq!(api.view()[0].in_flight, 1);
        drop(g);
        assert_eq!(api.view()[0].in_flight, 0);
    }
}
