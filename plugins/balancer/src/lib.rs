//! # balancer — pick an endpoint of the chosen upstream
//!
//! The built-in balancer. With no endpoint usable it returns none and the
//! host answers `503`. The host decides what is usable: it leaves out
//! unhealthy and ejected endpoints, and on a retry the ones already tried.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "balancer"
//! config = { algorithm = "least-request", sticky = { max_age = "1h" } }
//! ```
//!
//! One algorithm per stage (full reference: `docs/plugins/balancer.md`):
//!
//! - `round-robin` (default) and `weighted-round-robin` (nginx's smooth
//!   WRR): turns come from the host's per-upstream counter
//!   ([`upstreams::next_turn`]), shared by every instance without a lock or
//!   a `kv` round trip, so within one proxy the rotation is exact.
//! - `least-request`: fewest requests in flight per unit of weight; equally
//!   loaded endpoints take turns.
//! - `peak-ewma`: the power of two choices, comparing two random endpoints
//!   by latency × (in flight + 1) / weight.
//! - `consistent-hash` with `hash_on = "client" | "path" | { header = … } |
//!   { cookie = … }`: a hash ring over the endpoints' addresses, so a key
//!   keeps its endpoint and only about 1/N of keys move when one leaves.
//!   Requests without the key are round-robined.
//!
//! `sticky = { … }` adds session cookies to any of them: a client that
//! carries a valid cookie for an endpoint that is usable now goes back to
//! it; any other gets the algorithm's pick and a new cookie. Cookie values
//! are truncated HMACs of the endpoint's address (see `sticky.rs`), with a
//! configured secret or one generated once and shared through `kv`.
//!
//! What never calls the host lives in modules of its own and is unit-tested
//! natively: `pick`, `hash`, `sticky`, `cookie` and `settings`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use portier_sdk::{Balancer, Request, clock, config, kv, log, upstreams};

mod cookie;
mod hash;
mod pick;
mod settings;
mod sticky;

use hash::Ring;
use settings::{Algorithm, HashOn, Settings};

/// An endpoint set as `(index, weight)` pairs, the key of a cached sequence or ring.
type Weighted = Vec<(u32, u32)>;

/// Computed weighted sequences kept per instance; health flapping can only
/// produce a few distinct endpoint sets, but bound it anyway. (BTreeMap, not
/// HashMap: a HashMap's random seed would import `wasi:random` for nothing.)
const MAX_CACHED_SEQUENCES: usize = 64;

/// Hash rings kept per instance, over all upstreams. A ring is at most a
/// few thousand points (16 bytes each), so this bounds them to about 1 MiB.
const MAX_CACHED_RINGS: usize = 16;

/// The kv key of the generated sticky secret.
const SECRET_KEY: &str = "sticky-secret";

/// The balancer plugin.
pub struct LoadBalancer {
    algorithm: Algorithm,
    sticky: Option<Sticky>,
    /// Smooth weighted sequences keyed by the `(index, weight)` list they were built from.
    sequences: RefCell<BTreeMap<Weighted, Rc<[u32]>>>,
    /// Hash rings per upstream, keyed by the healthy `(index, weight)` list they cover.
    rings: RefCell<BTreeMap<String, BTreeMap<Weighted, Rc<Ring>>>>,
    /// peak-ewma's generator, seeded on the first pick that needs it.
    rng: Cell<Option<pick::Rng>>,
}

impl Balancer for LoadBalancer {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Settings { algorithm, sticky } = settings::parse(json)?;
        Ok(LoadBalancer {
            algorithm,
            sticky: sticky.map(Sticky::new),
            sequences: RefCell::default(),
            rings: RefCell::default(),
            rng: Cell::new(None),
        })
    }

    fn pick(&self, request: &Request, upstream: &str) -> Option<u32> {
        let Some(sticky) = &self.sticky else {
            return self.choose(request, upstream);
        };
        // A genuine cookie for an endpoint usable now wins; any other
        // request is picked anew and told where it went.
        let values = sticky.values(upstream)?;
        if let Some(index) = sticky.returning(request, &values, upstream) {
            return Some(index);
        }
        let index = self.choose(request, upstream)?;
        sticky.issue(request, &values, index);
        Some(index)
    }
}

portier_sdk::export_balancer!(LoadBalancer);

impl LoadBalancer {
    /// The configured algorithm's pick.
    fn choose(&self, request: &Request, upstream: &str) -> Option<u32> {
        match &self.algorithm {
            Algorithm::RoundRobin => round_robin(&healthy(upstream)?, upstream),
            Algorithm::WeightedRoundRobin => {
                let healthy = healthy(upstream)?;
                if healthy.is_empty() {
                    return None;
                }
                let sequence = self.sequence(healthy);
                Some(sequence[pick::slot(upstreams::next_turn(upstream), sequence.len())])
            }
            Algorithm::LeastRequest => {
                let loads = upstreams::loads(upstream)?;
                pick::least_request(&loads, || upstreams::next_turn(upstream))
            }
            Algorithm::PeakEwma => {
                let loads = upstreams::loads(upstream)?;
                let mut rng = self.rng.get().unwrap_or_else(|| seed(upstream));
                let index = pick::peak_ewma(&loads, &mut rng);
                self.rng.set(Some(rng));
                index
            }
            Algorithm::ConsistentHash(on) => self.consistent_hash(request, upstream, on),
        }
    }

    /// The smooth weighted sequence for these endpoints, computed once.
    fn sequence(&self, weighted: Weighted) -> Rc<[u32]> {
        let mut cache = self.sequences.borrow_mut();
        if let Some(sequence) = cache.get(&weighted) {
            return Rc::clone(sequence);
        }
        if cache.len() >= MAX_CACHED_SEQUENCES {
            cache.clear();
        }
        let sequence: Rc<[u32]> = pick::smooth_weighted_sequence(&weighted).into();
        cache.insert(weighted, Rc::clone(&sequence));
        sequence
    }

    /// The ring owner of the request's key, or round-robin without a key.
    fn consistent_hash(&self, request: &Request, upstream: &str, on: &HashOn) -> Option<u32> {
        let healthy = healthy(upstream)?;
        if let Some(key) = hash_key(request, on)
            && let Some(index) = self.ring(upstream, &healthy)?.get(key.as_bytes())
        {
            return Some(index);
        }
        // No key: spread such requests out rather than pile them on one endpoint.
        round_robin(&healthy, upstream)
    }

    /// The ring over these healthy endpoints, built on first use. Only then
    /// are the addresses fetched: that happens when health changes, not on
    /// every request.
    fn ring(&self, upstream: &str, healthy: &Weighted) -> Option<Rc<Ring>> {
        let cached = self
            .rings
            .borrow()
            .get(upstream)
            .and_then(|r| r.get(healthy).cloned());
        if cached.is_some() {
            return cached;
        }
        let endpoints = upstreams::endpoints(upstream)?;
        // Point counts come from every endpoint, so a member's points do not
        // change when another one's health does.
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let members = endpoints
            .iter()
            .zip(hash::point_counts(&weights))
            .filter(|(e, _)| healthy.iter().any(|&(index, _)| index == e.index))
            .map(|(e, points)| (e.index, e.address.as_str(), points));
        let ring = Rc::new(Ring::new(members));
        let mut rings = self.rings.borrow_mut();
        if rings.values().map(BTreeMap::len).sum::<usize>() >= MAX_CACHED_RINGS {
            rings.clear();
        }
        rings
            .entry(upstream.to_string())
            .or_default()
            .insert(healthy.clone(), Rc::clone(&ring));
        Some(ring)
    }
}

/// The usable endpoints as `(index, weight)`; `None` for an unknown upstream.
fn healthy(upstream: &str) -> Option<Weighted> {
    let healthy = upstreams::healthy(upstream)?;
    Some(healthy.into_iter().map(|c| (c.index, c.weight)).collect())
}

/// The next endpoint in turn; `None` when there is none.
fn round_robin(healthy: &Weighted, upstream: &str) -> Option<u32> {
    if healthy.is_empty() {
        return None;
    }
    Some(healthy[pick::slot(upstreams::next_turn(upstream), healthy.len())].0)
}

/// What `consistent-hash` hashes for this request; `None` when the request
/// lacks it. An empty header or cookie counts as missing: hashing "" would
/// send every such request to one endpoint.
fn hash_key(request: &Request, on: &HashOn) -> Option<String> {
    let key = match on {
        HashOn::Client => request.client_addr().ip().to_string(),
        HashOn::Path => request.path(),
        HashOn::Header(name) => request.header(name)?,
        HashOn::Cookie(name) => cookie::find(&request.header_all("cookie"), name)?.to_string(),
    };
    (!key.is_empty()).then_some(key)
}

/// A generator seeded from the clock, mixed with the upstream's turn so that
/// instances started within the same clock tick still differ.
fn seed(upstream: &str) -> pick::Rng {
    let turn = upstreams::next_turn(upstream);
    pick::Rng::new(clock::monotonic_ns() ^ hash::mix64(turn))
}

/// Sticky sessions: the cookie settings, the secret, and the cookie value
/// of every endpoint, per upstream.
struct Sticky {
    settings: settings::Sticky,
    secret: OnceCell<Vec<u8>>,
    values: RefCell<BTreeMap<String, Rc<sticky::Values>>>,
    /// Whether the host refused our Set-Cookie once (logged once, not per request).
    refused: Cell<bool>,
}

impl Sticky {
    fn new(settings: settings::Sticky) -> Sticky {
        Sticky {
            settings,
            secret: OnceCell::new(),
            values: RefCell::default(),
            refused: Cell::new(false),
        }
    }

    /// The endpoint the request's cookie names, if the cookie is genuine
    /// and that endpoint is usable now.
    fn returning(&self, request: &Request, values: &sticky::Values, upstream: &str) -> Option<u32> {
        let cookies = request.header_all("cookie");
        let value = cookie::find(&cookies, &self.settings.cookie.name)?;
        values.endpoint(value, &upstreams::healthy(upstream)?)
    }

    /// Send the client a cookie for endpoint `index`.
    fn issue(&self, request: &Request, values: &sticky::Values, index: u32) {
        let Some(value) = values.of(index) else {
            return;
        };
        let header = self.settings.cookie.header(value);
        if let Err(e) = request.add_response_header("set-cookie", &header)
            && !self.refused.replace(true)
        {
            log::warn(format!(
                "the host refused the sticky cookie ({e}); clients will not stick"
            ));
        }
    }

    /// The cookie values of `upstream`'s endpoints, computed on first use.
    fn values(&self, upstream: &str) -> Option<Rc<sticky::Values>> {
        if let Some(values) = self.values.borrow().get(upstream) {
            return Some(Rc::clone(values));
        }
        let endpoints = upstreams::endpoints(upstream)?;
        let secret = self.secret.get_or_init(|| match &self.settings.secret {
            Some(secret) => secret.clone(),
            None => shared_secret(),
        });
        let values = Rc::new(sticky::Values::new(
            secret,
            upstream,
            endpoints.iter().map(|e| (e.index, e.address.as_str())),
        ));
        self.values
            .borrow_mut()
            .insert(upstream.to_string(), Rc::clone(&values));
        Some(values)
    }
}

/// The stage's generated secret: the first instance to get here stores its
/// random bytes in kv, and every other instance, reload and proxy sharing
/// the kv backend reads them, so all of them accept each other's cookies.
/// Without kv, this instance's own bytes: its cookies then verify only here.
fn shared_secret() -> Vec<u8> {
    let mut fresh = [0u8; 32];
    // WASI's random interface has no error case.
    getrandom::fill(&mut fresh).expect("wasi:random/random cannot fail");
    let shared = kv::compare_and_swap(SECRET_KEY, None, &fresh, None).and_then(|stored| {
        if stored {
            Ok(Some(fresh.to_vec()))
        } else {
            kv::get(SECRET_KEY)
        }
    });
    match shared {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            log::warn(
                "the sticky secret vanished from kv; this instance's cookies verify only here",
            );
            fresh.to_vec()
        }
        Err(e) => {
            log::warn(format!(
                "{e}; this instance's sticky cookies verify only here"
            ));
            fresh.to_vec()
        }
    }
}
