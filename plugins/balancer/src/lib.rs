//! # balancer — pick an endpoint of the chosen upstream
//!
//! The built-in balancer. It asks the host for the upstream's endpoints,
//! keeps the healthy ones and picks one; with none healthy it returns no
//! endpoint and the host answers `503`.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "balancer"
//! config = { algorithm = "weighted-round-robin" }   # default: "round-robin"
//! ```
//!
//! Behaviour:
//!
//! - `round-robin`: healthy endpoints in turn, exactly: the turn is a counter
//!   in the stage's shared `kv` (`rr:<upstream>`), so the host's concurrent
//!   instances of the stage (and a fleet sharing a kv backend) never pick
//!   the same endpoint twice in a row. 300 requests over 3 endpoints give
//!   exactly 100 each.
//! - `weighted-round-robin`: nginx's smooth weighted round-robin over the
//!   healthy endpoints' `weight`s, driven by the same shared counter. Weights
//!   3:1 give exactly 300:100 over 400 requests, interleaved (A A B A …),
//!   never in blocks. Endpoints of weight 0 are skipped unless all are 0.
//! - If `kv` fails, the balancer keeps serving with a per-instance counter
//!   (still round-robin per instance, no longer exact across instances) and
//!   logs a warning; it logs again when `kv` recovers.
//! - Unknown config keys or algorithms are rejected at init.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use portier_sdk::{Balancer, Request, config, kv, log, upstreams};
use serde::Deserialize;

mod pick;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    algorithm: Algorithm,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
}

/// Computed weighted sequences kept per instance; health flapping can only
/// produce a few distinct endpoint sets, but bound it anyway. (BTreeMap, not
/// HashMap: a HashMap's random seed would import `wasi:random` for nothing.)
const MAX_CACHED_SEQUENCES: usize = 64;

/// An endpoint set as `(index, weight)` pairs, the key of a computed sequence.
type Weighted = Vec<(u32, u32)>;

/// The balancer plugin.
pub struct RoundRobin {
    algorithm: Algorithm,
    /// Smooth weighted sequences keyed by the `(index, weight)` list they were built from.
    sequences: RefCell<BTreeMap<Weighted, Rc<[u32]>>>,
    /// Per-upstream turns used only while `kv` is failing.
    local_turns: RefCell<BTreeMap<String, u64>>,
    kv_failing: Cell<bool>,
}

impl Balancer for RoundRobin {
    fn init(json: &str) -> Result<Self, String> {
        let Config { algorithm } = config::parse(json)?;
        Ok(RoundRobin {
            algorithm,
            sequences: RefCell::default(),
            local_turns: RefCell::default(),
            kv_failing: Cell::new(false),
        })
    }

    fn pick(&self, _request: &Request, upstream: &str) -> Option<u32> {
        let healthy: Weighted = upstreams::healthy(upstream)?
            .into_iter()
            .map(|c| (c.index, c.weight))
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let turn = self.next_turn(upstream);
        match self.algorithm {
            Algorithm::RoundRobin => Some(healthy[pick::slot(turn, healthy.len())].0),
            Algorithm::WeightedRoundRobin => {
                let sequence = self.sequence(healthy);
                Some(sequence[pick::slot(turn, sequence.len())])
            }
        }
    }
}

portier_sdk::export_balancer!(RoundRobin);

impl RoundRobin {
    /// This request's turn (0, 1, 2, …) for `upstream`, shared by every instance.
    fn next_turn(&self, upstream: &str) -> u64 {
        match kv::increment(&format!("rr:{upstream}"), 1, None) {
            Ok(count) => {
                if self.kv_failing.replace(false) {
                    log::info(
                        "kv is available again; round-robin is shared across instances again",
                    );
                }
                // The first increment returns 1: make that turn 0.
                (count as u64).wrapping_sub(1)
            }
            Err(e) => {
                if !self.kv_failing.replace(true) {
                    log::warn(format!(
                        "{e}; round-robin falls back to a per-instance counter"
                    ));
                }
                let mut turns = self.local_turns.borrow_mut();
                let turn = turns.entry(upstream.to_string()).or_insert(0);
                let current = *turn;
                *turn = turn.wrapping_add(1);
                current
            }
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
}
