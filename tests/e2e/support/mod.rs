//! What every end-to-end test stands on: fake backends on real sockets
//! ([`Backend`]), the real `portier` process ([`Portier`], [`check`]), a
//! client that is exactly one keep-alive connection and never retries
//! ([`Client`]) with the backends' JSON echo ([`Echo`]), access-log lines
//! ([`AccessLine`]) and the manifest scaffold most tests share
//! ([`manifest::one_upstream`]).
//!
//! Every wait here is bounded, and every test gets its own ports, processes
//! and temp dirs, so tests run in parallel. Nothing fails silently: a proxy
//! that died or panicked, or a backend task that panicked, fails the test
//! when it is dropped. Set `PORTIER_TEST_LOG` (a filter in `PORTIER_LOG`
//! syntax, e.g. `debug`) to make the proxies log more; a failing test prints
//! its proxy's log.

pub mod body;
pub mod manifest;
pub mod raw;
pub mod tls;

mod access;
mod backend;
mod client;
mod plugins;
mod proxy;
mod redis;

pub use access::AccessLine;
pub use backend::{Backend, HELD_FIRST, HELD_REST, RunningBackend};
pub use client::{Client, Echo, Reply};
pub use manifest::{endpoint, endpoints, one_upstream, one_upstream_with_admin};
pub use plugins::{build_wasm, test_handler, test_plugin};
pub use proxy::{
    Launch, Portier, check, check_file, free_addr, plugin_path, run_command, run_expecting_exit,
};
pub use redis::RedisServer;

use std::net::SocketAddr;
use std::process::{Child, ExitStatus};
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

/// Run `command` to its exit, its output (stdout and stderr) going to a
/// file, for at most `timeout` (then the test fails). Returns the status
/// and the output.
pub fn run_bounded(command: &mut std::process::Command, timeout: Duration) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("output.log");
    let file = std::fs::File::create(&log).expect("output.log");
    let mut child = command
        .stdout(file.try_clone().expect("output.log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let output = || std::fs::read_to_string(&log).unwrap_or_default();
    match wait_or_kill(&mut child, timeout) {
        Some(status) => (status, output()),
        None => panic!("{command:?} still running after {timeout:?}:\n{}", output()),
    }
}

/// Wait (blocking, polling every 20 ms) for `child` to exit, for at most
/// `timeout`. Past it, kill and reap the child and return `None`, so the
/// caller can fail the test with what it knows (a log, a path).
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
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
