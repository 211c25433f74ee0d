//! {{name}}: a router. Each request goes to the upstream of the longest
//! path prefix that matches it, else to the default; with neither, 404.
//!
//! Config (`[pipeline.config]` in the manifest):
//!
//! ```toml
//! default = "web"                              # optional
//! prefixes = { "/api/" = "api", "/static/" = "assets" }
//! ```

use std::collections::BTreeMap;

use portier_sdk::{HttpResponse, Request, Route, Router, config, upstreams};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    default: Option<String>,
    prefixes: BTreeMap<String, String>,
}

struct Plugin {
    default: Option<String>,
    /// Longest prefix first, so the most specific one wins.
    prefixes: Vec<(String, String)>,
}

impl Router for Plugin {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config { default, prefixes } = config::parse(json)?;
        // A typo in an upstream's name is an error at load, not a 502 later.
        let known = upstreams::names();
        let check = |key: String, upstream: &str| {
            if known.iter().any(|k| k == upstream) {
                Ok(())
            } else {
                Err(config::Error::at(key, format!("no upstream named {upstream:?}")))
            }
        };
        if let Some(d) = &default {
            check("default".into(), d)?;
        }
        for (prefix, upstream) in &prefixes {
            if !prefix.starts_with('/') {
                return Err(config::Error::at(format!("prefixes.{prefix}"), "must start with /"));
            }
            check(format!("prefixes.{prefix}"), upstream)?;
        }
        let mut prefixes: Vec<_> = prefixes.into_iter().collect();
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(Plugin { default, prefixes })
    }

    fn route(&self, request: &Request) -> Route {
        let path = request.path();
        let upstream = self
            .prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, upstream)| upstream)
            .or(self.default.as_ref());
        match upstream {
            Some(u) => Route::upstream(u.clone()),
            None => Route::Respond(HttpResponse::text(404, "404 Not Found\n")),
        }
    }
}

portier_sdk::export_router!(Plugin);
