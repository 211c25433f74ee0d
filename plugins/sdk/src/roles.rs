//! The four roles a plugin can take, one trait each, and what they decide.

use crate::config;
use crate::http::{HttpResponse, Request, Response};

/// What a filter decides for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next stage.
    Continue,
    /// Answer the client now; later stages and the upstream are skipped.
    Respond(HttpResponse),
}

/// What a router decides for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Forward to the upstream named `upstream`. `route` names the rule that
    /// matched: stages the manifest scopes to routes (`routes = ["api"]`)
    /// run only for requests routed under one of their names.
    Forward {
        /// The upstream's name.
        upstream: String,
        /// The route's name, one of [`Router::routes`]; `None` for an unnamed rule.
        route: Option<String>,
    },
    /// Answer the client now (e.g. 404 when no rule matches).
    Respond(HttpResponse),
}

impl Route {
    /// Forward to `upstream` under no route name.
    pub fn upstream(upstream: impl Into<String>) -> Route {
        Route::Forward {
            upstream: upstream.into(),
            route: None,
        }
    }
}

/// A filter sees the requests of its routes (all of them when its stage names
/// none) and their responses: auth, rate limits, header rewriting, WAF.
/// Export it with [`export_filter!`](crate::export_filter).
pub trait Filter: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, config::Error>
    where
        Self: Sized;

    /// Called for every request, in pipeline order.
    fn on_request(&self, request: &Request) -> Action;

    /// Called for every upstream response, in reverse pipeline order (default: nothing).
    fn on_response(&self, _request: &Request, _response: &Response) {}

    /// Whether [`on_response`](Filter::on_response) does anything for this
    /// config. Return `false` when it does not: the host then skips the call
    /// (and the request-head copy it needs) on every request. Default `true`.
    fn wants_response(&self) -> bool {
        true
    }

    /// How many bytes of a request's body [`on_request`](Filter::on_request)
    /// reads through [`Request::body`]; default 0, none. The host holds each
    /// request with a body until that much arrived (or the body ended), so
    /// ask only for what the decision needs.
    fn request_body(&self) -> u32 {
        0
    }
}

/// A router chooses the upstream for a request and may rewrite its path.
/// Export it with [`export_router!`](crate::export_router).
pub trait Router: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, config::Error>
    where
        Self: Sized;

    /// Choose where the request goes.
    fn route(&self, request: &Request) -> Route;

    /// Every route name [`route`](Router::route) may return. The host checks
    /// the manifest's scoped stages against them, so a misspelled route
    /// name is an error at load rather than a filter that never runs.
    fn routes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A balancer picks one endpoint of the upstream the router chose.
/// Export it with [`export_balancer!`](crate::export_balancer).
pub trait Balancer: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, config::Error>
    where
        Self: Sized;

    /// The [`index`](crate::upstreams::Endpoint::index) of the endpoint to use,
    /// or `None` when no endpoint is usable (the host answers 503).
    fn pick(&self, request: &Request, upstream: &str) -> Option<u32>;
}

/// A cache policy decides what may be cached and under which key.
/// Export it with [`export_cache_policy!`](crate::export_cache_policy).
pub trait CachePolicy: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, config::Error>
    where
        Self: Sized;

    /// The cache key for a request, or `None` to bypass the cache.
    fn cache_key(&self, request: &Request) -> Option<String>;

    /// How many seconds a response may be stored, or `None` to not store it.
    fn storable(&self, request: &Request, response: &Response) -> Option<u32>;
}
