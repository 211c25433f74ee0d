//! portier: a reverse proxy whose features are WebAssembly components.
//!
//! The host owns sockets, HTTP, forwarding and state; plugins (WASI preview 2
//! components implementing a `portier:plugin` world) own decisions. See
//! `docs/architecture.md` for the request's path through these modules.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod body;
pub mod builtin;
pub mod cache;
pub mod clock;
pub mod error;
pub mod forward;
pub mod handler;
pub mod ingress;
pub mod kv;
pub mod logging;
pub mod manifest;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otel;
pub mod outbound;
pub mod password;
pub mod pipeline;
pub mod plugin;
pub mod reload;
pub mod role;
pub mod rollout;
pub mod scaffold;
pub mod server;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod upstream;
