//! The upstreams defined in the manifest, with the host's view of their endpoints.
//!
//! Three views of an upstream's endpoints, from cheapest to richest, so a
//! balancer copies across the boundary only what it reads on every pick:
//!
//! - [`healthy`]: the usable endpoints' index and weight (round-robin).
//! - [`loads`]: the same with in-flight requests and latency (least-request,
//!   latency-aware balancing).
//! - [`endpoints`]: every endpoint with its address and health (hashing on
//!   addresses, dashboards); best fetched once and cached.
//!
//! [`healthy`] and [`loads`] leave out the endpoints that a retried request
//! already tried, so a balancer never sends a retry back to them.
//! [`next_turn`] is a round-robin counter the host keeps per upstream.

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
    /// False when active health checks fail (or have not run yet) or passive
    /// outlier detection ejected it.
    pub healthy: bool,
    /// Requests the host is forwarding to it right now.
    pub in_flight: u32,
    /// Its response-head latency in microseconds as a peak-EWMA, like
    /// [`Load::latency_us`] (0: no sample yet).
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
/// When the host retries a request, the endpoints it already tried are left out.
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

/// An endpoint usable now, with the load that least-request and
/// latency-aware balancing weigh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Index of the endpoint within its upstream; a balancer returns it.
    pub index: u32,
    /// Relative weight from the manifest (default 1).
    pub weight: u32,
    /// Requests the host is forwarding to it right now (every worker).
    pub in_flight: u32,
    /// Peak-EWMA of its response-head latency in microseconds: a slower
    /// response raises it at once, faster ones lower it gradually, and it
    /// decays toward 0 (time constant 10 s) while no response arrives, so an
    /// endpoint that was slow gets tried again. 0: no sample yet.
    pub latency_us: u64,
}

/// The healthy endpoints of an upstream with their load, in index order;
/// `None` when no upstream has that name. Like [`healthy`], it leaves out
/// the endpoints a retried request already tried.
pub fn loads(upstream: &str) -> Option<Vec<Load>> {
    host::loads(upstream).map(|list| {
        list.into_iter()
            .map(|l| Load {
                index: l.index,
                weight: l.weight,
                in_flight: l.in_flight,
                latency_us: l.latency_us,
            })
            .collect()
    })
}

/// The upstream's turn: 0, 1, 2, … one per call. The host keeps one counter
/// per upstream in the process, shared by every instance of every stage and
/// kept across reloads, so round-robin needs no `kv` and no lock of its own.
/// An unknown upstream always gets 0.
///
/// ```no_run
/// use portier_sdk::upstreams;
///
/// /// Plain round-robin over the usable endpoints.
/// fn pick(upstream: &str) -> Option<u32> {
///     let healthy = upstreams::healthy(upstream)?;
///     if healthy.is_empty() {
///         return None;
///     }
///     let turn = upstreams::next_turn(upstream);
///     Some(healthy[(turn % healthy.len() as u64) as usize].index)
/// }
/// ```
pub fn next_turn(upstream: &str) -> u64 {
    host::next_turn(upstream)
}
