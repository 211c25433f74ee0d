//! Manifest text for the tests: the "one upstream" scaffold most tests stand
//! on, and the TOML arrays of endpoints it takes. The test still writes the
//! part it is about (the pipeline, the upstream's extra keys) itself.

use std::net::SocketAddr;

use super::backend::RunningBackend;
use super::proxy::free_addr;

/// A TOML array of the backends' addresses: `["127.0.0.1:1", "127.0.0.1:2"]`.
pub fn endpoints(backends: &[&RunningBackend]) -> String {
    let quoted: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML array of one address, `["127.0.0.1:1"]`, for an endpoint no
/// [`RunningBackend`] stands behind (nothing listens there, or it is revived later).
pub fn endpoint(addr: SocketAddr) -> String {
    format!("[\"{addr}\"]")
}

/// `[server]` listening on a free port, one upstream `app` over `endpoints`
/// (a TOML array, see [`endpoints`]) followed by the `upstream_extra` keys,
/// then `pipeline` (`[[pipeline]]` tables, or nothing: the host's own
/// forwarding). `[server]` starts its own line, so a test may add keys to it
/// with `.replacen("[server]\n", "[server]\nkey = value\n", 1)`.
pub fn one_upstream(endpoints: &str, upstream_extra: &str, pipeline: &str) -> String {
    render(None, endpoints, upstream_extra, pipeline)
}

/// [`one_upstream`] with an `[admin]` listener on a free port too (for
/// `/status`, `POST /reload`, and [`Portier::admin`](super::Portier::admin)).
pub fn one_upstream_with_admin(endpoints: &str, upstream_extra: &str, pipeline: &str) -> String {
    render(Some(free_addr()), endpoints, upstream_extra, pipeline)
}

fn render(
    admin: Option<SocketAddr>,
    endpoints: &str,
    upstream_extra: &str,
    pipeline: &str,
) -> String {
    let admin = admin
        .map(|admin| format!("\n[admin]\nlisten = \"{admin}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[server]
listen = "{listen}"
{admin}
[[upstreams]]
name = "app"
endpoints = {endpoints}
{upstream_extra}

{pipeline}
"#,
        listen = free_addr(),
    )
}
