//! The upstreams defined in the manifest, with the host's view of their endpoints.

use crate::wit::upstreams as host;

/// One endpoint of an upstream, as the host sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable index of the endpoint within its upstream; a balancer returns it.
    pub index: u32,
    /// The endpoint's address, `"host:port"`.
    pub address: String,
    /// Relative weight from the manifest (default 1).
    pub weight: u32,
    /// False when health checks failed or it recently refused a connection.
    pub healthy: bool,
    /// Requests the host is forwarding to it right now.
    pub in_flight: u32,
    /// Moving average of its response-head latency in microseconds (0: no sample yet).
    pub latency_ewma_us: u64,
}

impl From<host::Endpoint> for Endpoint {
    fn from(e: host::Endpoint) -> Self {
        Endpoint {
            index: e.index,
            address: e.address,
            weight: e.weight,
            healthy: e.healthy,
            in_flight: e.in_flight,
            latency_ewma_us: e.latency_ewma_us,
        }
    }
}

/// An endpoint usable now: what a round-robin balancer reads on every pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the endpoint within its upstream; a balancer returns it.
    pub index: u32,
    /// Relative weight from the manifest (default 1).
    pub weight: u32,
}

/// Names of every upstream in the manifest.
pub fn names() -> Vec<String> {
    host::names()
}

/// The endpoints of an upstream; `None` when no upstream has that name.
pub fn endpoints(upstream: &str) -> Option<Vec<Endpoint>> {
    host::endpoints(upstream).map(|list| list.into_iter().map(Endpoint::from).collect())
}

/// The healthy endpoints of an upstream, index and weight only, in index
/// order; `None` when no upstream has that name. Cheaper than [`endpoints`]
/// (no address strings cross the boundary): use it when that is all you need.
pub fn healthy(upstream: &str) -> Option<Vec<Candidate>> {
    host::healthy(upstream).map(|list| {
        list.into_iter()
            .map(|c| Candidate {
                index: c.index,
                weight: c.weight,
            })
            .collect()
    })
}
