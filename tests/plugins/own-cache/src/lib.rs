//! # own-cache — a cache policy of one's own
//!
//! Shows that the `cache-policy` role is the plugin's to fill: the host's
//! store follows whatever the policy says. This one keys GETs by path alone
//! (host and query ignored) and keeps every answer, whatever its status or
//! headers, for 60 seconds — including the 5xx the built-in `cache` policy
//! never stores, which is this policy's call to make.

use portier_sdk::{CachePolicy, Request, Response};

struct OwnCache;

impl CachePolicy for OwnCache {
    fn init(_config: &str) -> Result<Self, portier_sdk::config::Error> {
        Ok(OwnCache)
    }

    fn cache_key(&self, request: &Request) -> Option<String> {
        (request.method() == "GET").then(|| request.path())
    }

    fn storable(&self, _request: &Request, _response: &Response) -> Option<u32> {
        Some(60)
    }
}

portier_sdk::export_cache_policy!(OwnCache);
