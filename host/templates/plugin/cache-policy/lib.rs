//! {{name}}: a cache policy. GET and HEAD requests under the configured
//! path prefixes are looked up by host, path and query; a 200 response is
//! stored for `ttl` seconds unless the upstream says `no-store` or
//! `private`. Everything else bypasses the cache.
//!
//! Config (`[pipeline.config]` in the manifest):
//!
//! ```toml
//! prefixes = ["/static/"]
//! ttl = 60               # seconds (default 60)
//! ```

use portier_sdk::{CachePolicy, Request, Response, config};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    prefixes: Vec<String>,
    #[serde(default = "default_ttl")]
    ttl: u32,
}

fn default_ttl() -> u32 {
    60
}

struct Plugin {
    prefixes: Vec<String>,
    ttl: u32,
}

impl CachePolicy for Plugin {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config { prefixes, ttl } = config::parse(json)?;
        if ttl == 0 {
            return Err(config::Error::at("ttl", "must be at least 1 second"));
        }
        Ok(Plugin { prefixes, ttl })
    }

    fn cache_key(&self, request: &Request) -> Option<String> {
        let method = request.method();
        let path = request.path();
        let cacheable = (method == "GET" || method == "HEAD")
            && self.prefixes.iter().any(|p| path.starts_with(p.as_str()));
        if !cacheable {
            return None;
        }
        let host = request.host().unwrap_or_default();
        let query = request.query().unwrap_or_default();
        Some(format!("{host}{path}?{query}"))
    }

    fn storable(&self, _request: &Request, response: &Response) -> Option<u32> {
        let control = response.header("cache-control").unwrap_or_default();
        let refused = control
            .split(',')
            .any(|d| matches!(d.trim(), "no-store" | "private"));
        (response.status() == 200 && !refused).then_some(self.ttl)
    }
}

portier_sdk::export_cache_policy!(Plugin);
