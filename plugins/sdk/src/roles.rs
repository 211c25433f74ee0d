//! The four roles a plugin can take, one trait each, and what they decide.

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
    /// Forward to the upstream with this name.
    Upstream(String),
    /// Answer the client now (e.g. 404 when no rule matches).
    Respond(HttpResponse),
}

/// A filter sees every request before routing and every response after the
/// upstream: auth, rate limits, header rewriting, WAF. Export it with
/// [`export_filter!`](crate::export_filter).
pub trait Filter: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, String>
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
}

/// A router chooses the upstream for a request and may rewrite its path.
/// Export it with [`export_router!`](crate::export_router).
pub trait Router: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// Choose where the request goes.
    fn route(&self, request: &Request) -> Route;
}

/// A balancer picks one endpoint of the upstream the router chose.
/// Export it with [`export_balancer!`](crate::export_balancer).
pub trait Balancer: 'static {
    /// Build the plugin from its config (JSON text); an error rejects the manifest.
    fn init(config: &str) -> Result<Self, String>
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
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// The cache key for a request, or `None` to bypass the cache.
    fn cache_key(&self, request: &Request) -> Option<String>;

    /// How many seconds a response may be stored, or `None` to not store it.
    fn storable(&self, request: &Request, response: &Response) -> Option<u32>;
}
