//! End-to-end tests: a real `portier` process built by cargo, real compiled
//! plugins, real hyper backends on real sockets, and a real HTTP client.
//!
//! One module per concern, each test named for what it proves. `support`
//! holds the fakes and the process handle. Tests are independent (own ports,
//! processes and temp dirs) and run in parallel; every wait is bounded.

mod support;

mod admin;
mod balancing;
mod boundary;
mod cache;
mod capabilities;
mod edge;
mod failures;
mod forwarding;
mod gateway;
mod grpc;
mod handlers;
mod http2;
mod kv_redis;
mod lifecycle;
mod limits;
mod manifest_errors;
mod observability;
#[cfg(feature = "otlp")]
mod otlp;
mod policy_plugins;
mod quickstart;
mod reload;
mod rollout;
mod routing;
mod sandbox;
mod scaffold;
mod scoping;
mod tls;
mod upgrades;
mod upstreams;
