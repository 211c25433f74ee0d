//! # versioned — a filter that says which version of it answered
//!
//! The rollout tests load two of it, as a stage and as its candidate, and
//! tell the versions apart by what they do.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "versioned.wasm"
//! role = "filter"
//! config = { version = "v1" }
//!
//! [pipeline.candidate]
//! plugin = "versioned.wasm"
//! config = { version = "v2", trap_percent = 30, deny_prefix = "/private" }
//! ```
//!
//! - every response it lets through gets `x-version: VERSION`;
//! - `deny_prefix`: requests whose path starts with it get a 403;
//! - `trap_percent`: that many of every 100 calls trap (counted across its
//!   instances in kv, so the share holds whichever instance runs a call).

use portier_sdk::{Action, Filter, HttpResponse, Request, config, kv};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Versioned {
    version: String,
    #[serde(default)]
    trap_percent: i64,
    deny_prefix: Option<String>,
}

impl Filter for Versioned {
    fn init(json: &str) -> Result<Self, config::Error> {
        config::parse(json)
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        if self.trap_percent > 0 {
            let n = kv::increment(&format!("calls-{}", self.version), 1, None).expect("kv works");
            // Spread over each hundred calls: 30 % traps every third-ish call.
            if (n * self.trap_percent) % 100 < self.trap_percent {
                panic!("{} traps on call {n}", self.version);
            }
        }
        if let Some(prefix) = &self.deny_prefix
            && request.path().starts_with(prefix.as_str())
        {
            return Action::Respond(
                HttpResponse::text(403, "denied\n").header("x-version", self.version.as_str()),
            );
        }
        request
            .add_response_header("x-version", &self.version)
            .expect("x-version may be added");
        Action::Continue
    }
}

portier_sdk::export_filter!(Versioned);
