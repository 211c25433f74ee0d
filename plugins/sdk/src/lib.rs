//! The guest SDK for portier plugins.
//!
//! A portier plugin is a Rust crate compiled to `wasm32-wasip2` that takes
//! one role in the proxy's pipeline: [`Filter`], [`Router`], [`Balancer`] or
//! [`CachePolicy`]. It implements that role's trait and exports it with the
//! matching macro; this crate hides the WIT bindings and the component ABI.
//!
//! - [`Request`] and [`Response`] are the heads the host lends for one call;
//!   each accessor asks the host, so read only what you need.
//!   [`Request::add_response_header`] adds a header to whatever response the
//!   request gets (a balancer's session cookie, say).
//! - [`HttpResponse`] is a response the plugin sends instead of forwarding.
//! - [`log`], [`clock`], [`kv`] and [`upstreams`] are the host
//!   capabilities. A plugin never has sockets; files (read-only) and
//!   environment variables only as the manifest grants its stage
//!   (`grants.dirs`, `grants.env`), through `std::fs` and `std::env`;
//!   [`config`] parses the stage's config that `init` receives, and
//!   [`outbound`] sends requests of the plugin's own to the upstreams the
//!   manifest granted its stage (forward auth, token introspection);
//!   [`crypto`] checks signatures in the host's native code.
//! - Every call of one request shares its context: [`Request::route`] and
//!   [`Request::upstream`] say what the router chose, and
//!   [`Request::context_set`] keeps a value for later stages (an identity)
//!   or for the filter's own `on_response`.
//!   A balancer reads [`upstreams::healthy`] (index and weight),
//!   [`upstreams::loads`] (plus in-flight requests and latency) or
//!   [`upstreams::endpoints`] (everything, with addresses), and takes turns
//!   from [`upstreams::next_turn`], a per-upstream counter the host keeps.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "api-key"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! portier-sdk = { path = "../portier/plugins/sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! //! Rejects requests that do not carry one of the configured API keys.
//! use portier_sdk::{config, Action, Filter, HttpResponse, Request};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default = "default_header")]
//!     header: String,
//!     keys: Vec<String>,
//! }
//!
//! fn default_header() -> String {
//!     "x-api-key".to_string()
//! }
//!
//! struct ApiKey {
//!     header: String,
//!     keys: Vec<String>,
//! }
//!
//! impl Filter for ApiKey {
//!     fn init(json: &str) -> Result<Self, config::Error> {
//!         let Config { header, keys } = config::parse(json)?;
//!         if keys.is_empty() {
//!             return Err(config::Error::at("keys", "must list at least one key"));
//!         }
//!         Ok(ApiKey { header, keys })
//!     }
//!
//!     fn on_request(&self, request: &Request) -> Action {
//!         match request.header(&self.header) {
//!             Some(key) if self.keys.contains(&key) => {
//!                 // The upstream has no business seeing the key.
//!                 request.remove_header(&self.header);
//!                 Action::Continue
//!             }
//!             _ => Action::Respond(HttpResponse::text(401, "401 Unauthorized\n")),
//!         }
//!     }
//! }
//!
//! portier_sdk::export_filter!(ApiKey);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and load
//! `target/wasm32-wasip2/release/api_key.wasm` from a manifest:
//!
//! ```toml
//! [[pipeline]]
//! plugin = "plugins/api_key.wasm"
//! role = "filter"
//! config = { keys = ["s3cret"] }
//! ```
//!
//! # Lifecycle
//!
//! The host runs several instances of every stage. Each instance calls the
//! role's `init` once with the stage's config (JSON text) and keeps the value
//! it returns for every later call; an `Err` rejects the manifest (a
//! [`config::Error`] names the key), so validate everything there. State shared between instances (counters,
//! windows, sessions) belongs in [`kv`], not in the plugin value.
//!
//! # Native builds
//!
//! The crate compiles for the host target too, so a plugin's pure logic can
//! have ordinary `cargo test` unit tests. The host capabilities and heads
//! exist only inside portier: calling them outside wasm panics.

#![deny(missing_docs)]

mod http;
mod roles;

pub mod clock;
pub mod config;
pub mod crypto;
pub mod kv;
pub mod log;
pub mod outbound;
pub mod upstreams;

pub use http::{BodyPrefix, ClientCertificate, HttpResponse, Request, Response};
pub use roles::{Action, Balancer, CachePolicy, Filter, Route, Router};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// The generated bindings; use the wrappers above instead.
#[doc(hidden)]
#[allow(unsafe_code)]
pub mod wit;

/// Export a [`Filter`] implementation as this component's `filter` world.
///
/// ```no_run
/// use portier_sdk::{Action, Filter, Request};
///
/// struct AllowAll;
///
/// impl Filter for AllowAll {
///     fn init(_config: &str) -> Result<Self, portier_sdk::config::Error> {
///         Ok(AllowAll)
///     }
///     fn on_request(&self, _request: &Request) -> Action {
///         Action::Continue
///     }
/// }
///
/// portier_sdk::export_filter!(AllowAll);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::OnceCell<$plugin> = const { ::std::cell::OnceCell::new() };
            }
            struct Export;
            impl $crate::wit::filter::Guest for Export {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::wit::filter::FilterInfo, $crate::wit::types::ConfigError> {
                    $crate::__private::init(&STATE, &config, <$plugin as $crate::Filter>::init)?;
                    ::std::result::Result::Ok($crate::__private::filter_info(&STATE))
                }
                fn on_request(request: &$crate::wit::types::RequestHead) -> $crate::wit::filter::Action {
                    $crate::__private::filter_on_request(&STATE, request)
                }
                fn on_response(
                    request: &$crate::wit::types::RequestHead,
                    response: &$crate::wit::types::ResponseHead,
                ) {
                    $crate::__private::filter_on_response(&STATE, request, response)
                }
            }
            $crate::wit::filter::export_world!(Export with_types_in $crate::wit::filter);
        };
    };
}

/// Export a [`Router`] implementation as this component's `router` world.
///
/// ```no_run
/// use portier_sdk::{Request, Route, Router};
///
/// struct Everything(String);
///
/// impl Router for Everything {
///     fn init(config: &str) -> Result<Self, portier_sdk::config::Error> {
///         Ok(Everything(portier_sdk::config::parse(config)?))
///     }
///     fn route(&self, _request: &Request) -> Route {
///         Route::upstream(self.0.clone())
///     }
/// }
///
/// portier_sdk::export_router!(Everything);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_router {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::OnceCell<$plugin> = const { ::std::cell::OnceCell::new() };
            }
            struct Export;
            impl $crate::wit::router::Guest for Export {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::wit::router::RouterInfo, $crate::wit::types::ConfigError> {
                    $crate::__private::init(&STATE, &config, <$plugin as $crate::Router>::init)?;
                    ::std::result::Result::Ok($crate::__private::router_info(&STATE))
                }
                fn route(request: &$crate::wit::types::RequestHead) -> $crate::wit::router::Route {
                    $crate::__private::router_route(&STATE, request)
                }
            }
            $crate::wit::router::export_world!(Export with_types_in $crate::wit::router);
        };
    };
}

/// Export a [`Balancer`] implementation as this component's `balancer` world.
///
/// ```no_run
/// use portier_sdk::{upstreams, Balancer, Request};
///
/// struct FirstHealthy;
///
/// impl Balancer for FirstHealthy {
///     fn init(_config: &str) -> Result<Self, portier_sdk::config::Error> {
///         Ok(FirstHealthy)
///     }
///     fn pick(&self, _request: &Request, upstream: &str) -> Option<u32> {
///         upstreams::endpoints(upstream)?.iter().find(|e| e.healthy).map(|e| e.index)
///     }
/// }
///
/// portier_sdk::export_balancer!(FirstHealthy);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_balancer {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::OnceCell<$plugin> = const { ::std::cell::OnceCell::new() };
            }
            struct Export;
            impl $crate::wit::balancer::Guest for Export {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), $crate::wit::types::ConfigError> {
                    $crate::__private::init(&STATE, &config, <$plugin as $crate::Balancer>::init)
                }
                fn pick(
                    request: &$crate::wit::types::RequestHead,
                    upstream: ::std::string::String,
                ) -> ::std::option::Option<u32> {
                    $crate::__private::balancer_pick(&STATE, request, &upstream)
                }
            }
            $crate::wit::balancer::export_world!(Export with_types_in $crate::wit::balancer);
        };
    };
}

/// Export a [`CachePolicy`] implementation as this component's `cache-policy` world.
///
/// ```no_run
/// use portier_sdk::{CachePolicy, Request, Response};
///
/// struct GetsForAMinute;
///
/// impl CachePolicy for GetsForAMinute {
///     fn init(_config: &str) -> Result<Self, portier_sdk::config::Error> {
///         Ok(GetsForAMinute)
///     }
///     fn cache_key(&self, request: &Request) -> Option<String> {
///         (request.method() == "GET").then(|| request.path())
///     }
///     fn storable(&self, _request: &Request, response: &Response) -> Option<u32> {
///         (response.status() == 200).then_some(60)
///     }
/// }
///
/// portier_sdk::export_cache_policy!(GetsForAMinute);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_cache_policy {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::OnceCell<$plugin> = const { ::std::cell::OnceCell::new() };
            }
            struct Export;
            impl $crate::wit::cache_policy::Guest for Export {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), $crate::wit::types::ConfigError> {
                    $crate::__private::init(&STATE, &config, <$plugin as $crate::CachePolicy>::init)
                }
                fn cache_key(request: &$crate::wit::types::RequestHead) -> ::std::option::Option<::std::string::String> {
                    $crate::__private::cache_policy_cache_key(&STATE, request)
                }
                fn storable(
                    request: &$crate::wit::types::RequestHead,
                    response: &$crate::wit::types::ResponseHead,
                ) -> ::std::option::Option<u32> {
                    $crate::__private::cache_policy_storable(&STATE, request, response)
                }
            }
            $crate::wit::cache_policy::export_world!(Export with_types_in $crate::wit::cache_policy);
        };
    };
}
