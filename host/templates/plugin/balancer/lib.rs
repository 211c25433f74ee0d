//! {{name}}: a balancer. It sends each request to the healthy endpoint
//! with the fewest requests in flight; ties take turns, so an idle
//! upstream is served round-robin.
//!
//! No config keys.

use portier_sdk::{Balancer, Request, config, upstreams};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Plugin;

impl Balancer for Plugin {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config {} = config::parse(json)?;
        Ok(Plugin)
    }

    fn pick(&self, _request: &Request, upstream: &str) -> Option<u32> {
        // Healthy endpoints only (and not those a retry already tried).
        let loads = upstreams::loads(upstream)?;
        let fewest = loads.iter().map(|l| l.in_flight).min()?;
        let tied: Vec<u32> = loads
            .iter()
            .filter(|l| l.in_flight == fewest)
            .map(|l| l.index)
            .collect();
        let turn = upstreams::next_turn(upstream) as usize;
        Some(tied[turn % tied.len()])
    }
}

portier_sdk::export_balancer!(Plugin);
