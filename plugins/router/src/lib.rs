//! # router — choose the upstream by path, host and method
//!
//! The built-in router. Rules are tried in order and the first match wins;
//! a matching rule names the upstream and may rewrite the path prefix.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "router"
//! [pipeline.config]
//! default = "web"                    # optional: no match and no default -> 404
//! [[pipeline.config.routes]]
//! name = "api"                       # optional: stages scope themselves to it
//! prefix = "/api/"                   # or `path = "/health"` (exact), or neither (any path)
//! host = "api.example.com"           # optional, case-insensitive, no port
//! method = ["GET", "HEAD"]           # optional, one method or a list
//! upstream = "api"
//! strip_prefix = true                # "/api/users" -> "/users"
//! [[pipeline.config.routes]]
//! prefix = "/old/"
//! upstream = "api"
//! replace_prefix = "/v2/"            # "/old/users" -> "/v2/users"
//! ```
//!
//! Behaviour:
//!
//! - A prefix matches whole path segments: `/api/` and `/api` both match
//!   `/api`, `/api/` and `/api/users`, but not `/apiary`.
//! - `strip_prefix` removes the matched prefix and never leaves an empty
//!   path (`/api` -> `/`); `replace_prefix` puts another in its place. The
//!   query string is never touched.
//! - No match and no `default`: the router answers `404 Not Found` itself.
//! - A route's `name` is what a stage's `routes = ["api"]` in the manifest
//!   refers to; the router tells the host its names at init, so a stage
//!   scoped to a name no rule has is a manifest error. A request sent to
//!   `default` has no route name.
//! - Checked at init, with the key in the message: every `upstream` and
//!   `default` names an upstream of the manifest; names are single words
//!   and unique; `prefix` and `path` are not
//!   both set; `strip_prefix` / `replace_prefix` need a `prefix` and exclude
//!   each other; paths start with `/`; unknown keys are rejected.

use portier_sdk::{HttpResponse, Request, Route, Router, config, upstreams};

mod rules;

use rules::{Decision, Rules};

/// The router plugin: compiled rules plus what to fetch from each request.
pub struct PathRouter {
    rules: Rules,
}

impl Router for PathRouter {
    fn init(json: &str) -> Result<Self, config::Error> {
        let config = config::parse(json)?;
        let rules = Rules::compile(config, &upstreams::names())?;
        Ok(PathRouter { rules })
    }

    fn route(&self, request: &Request) -> Route {
        let path = request.path();
        // Each accessor is a host call: only ask for what some rule reads.
        let method = if self.rules.uses_method() {
            request.method()
        } else {
            String::new()
        };
        let host = if self.rules.uses_host() {
            request.host()
        } else {
            None
        };
        let forward = |upstream: &str, route: Option<&str>| Route::Forward {
            upstream: upstream.to_string(),
            route: route.map(str::to_string),
        };
        match self.rules.decide(&path, &method, host.as_deref()) {
            Decision::Forward {
                upstream,
                route,
                path: Some(new_path),
            } => match request.set_path(&new_path) {
                Ok(()) => forward(upstream, route),
                Err(reason) => {
                    portier_sdk::log::error(format!(
                        "rewriting {path:?} to {new_path:?} failed: {reason}"
                    ));
                    Route::Respond(HttpResponse::text(500, "500 Internal Server Error\n"))
                }
            },
            Decision::Forward {
                upstream,
                route,
                path: None,
            } => forward(upstream, route),
            Decision::NotFound => Route::Respond(HttpResponse::text(404, "404 Not Found\n")),
        }
    }

    fn routes(&self) -> Vec<String> {
        self.rules.names()
    }
}

portier_sdk::export_router!(PathRouter);
