//! What every end-to-end test stands on: fake backends on real sockets
//! ([`Backend`]), the real `portier` process ([`Portier`], [`check`]), and a
//! keep-alive client ([`Client`]) with the backends' JSON echo ([`Echo`]).
//!
//! Every wait here is bounded, and every test gets its own ports, processes
//! and temp dirs, so tests run in parallel. Set `PORTIER_TEST_LOG` (a
//! `RUST_LOG` filter) to make the proxies log more; a failing test prints its
//! proxy's log.

pub mod body;

mod backend;
mod client;
mod plugins;
mod proxy;

pub use backend::{Backend, HELD_FIRST, HELD_REST, RunningBackend};
pub use client::{Client, Reply};
pub use plugins::test_plugin;
pub use proxy::{Portier, check, check_file, endpoints, free_addr, plugin_path};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Poll `condition` every 10 ms until it holds; fail the test after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Assert an error reply names no backend: neither its IP nor its port appear
/// in the body, nor its address in any header.
pub fn assert_no_backend_leak(reply: &Reply, backend: SocketAddr) {
    let body = reply.text();
    let ip = backend.ip().to_string();
    let port = backend.port().to_string();
    assert!(
        !body.contains(&ip) && !body.contains(&port),
        "error body names the backend {backend}: {body:?}"
    );
    for (name, value) in &reply.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(&ip) && !value.contains(&format!(":{port}")),
            "error header {name}: {value} names the backend {backend}"
        );
    }
}
