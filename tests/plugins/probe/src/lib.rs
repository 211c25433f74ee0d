//! # probe — a filter that reports what its sandbox lets it reach
//!
//! The capability tests load it to prove a stage sees exactly what its
//! manifest `grants` and nothing else: no host file, no environment variable.
//!
//! A request with `x-probe: KIND:ARG` is answered by the plugin itself, 200
//! with what it read, or 403 with the error text:
//!
//! - `file:/some/path`: `std::fs::read_to_string(path)`;
//! - `env:NAME`: `std::env::var(NAME)`;
//! - `write:/some/path`: `std::fs::write(path, ...)` (answers `written`);
//! - `client-cert:`: the verified client certificate (mutual TLS) as
//!   `subject|dns names|uris|emails|sha256`, or 403 `none`;
//! - `addr:`: the client's address;
//! - `route:`: `route|upstream` as the router chose them (`-` for none);
//! - `context:KEY`: the request context's value for KEY, or 403 `none`;
//! - `body:`: `complete|bytes` of the body prefix the stage asked for
//!   (config `request_body`), or 403 `none`.
//!
//! Requests without `x-probe` continue untouched (so do all with config
//! `answers = false`); an unknown kind is a 400.
//! Any request may carry `x-probe-set: KEY=VALUE` (kept in its context) and
//! `x-probe-echo: KEY`: the response then carries the context's value for
//! KEY and the route, read in `on-response`, as `x-probe-context` and
//! `x-probe-route`.

use portier_sdk::{Action, Filter, HttpResponse, Request, Response, config};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    #[serde(default)]
    request_body: u32,
    /// Whether it answers `x-probe` (a probe before another one may only
    /// keep and echo context values).
    #[serde(default = "yes")]
    answers: bool,
}

fn yes() -> bool {
    true
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_string())
}

impl Filter for Probe {
    fn init(json: &str) -> Result<Self, config::Error> {
        config::parse(json)
    }

    fn request_body(&self) -> u32 {
        self.request_body
    }

    fn on_request(&self, request: &Request) -> Action {
        if let Some((key, value)) = request
            .header("x-probe-set")
            .as_deref()
            .and_then(|s| s.split_once('='))
            && let Err(e) = request.context_set(key, value)
        {
            return Action::Respond(HttpResponse::text(507, e));
        }
        let Some(probe) = request.header("x-probe").filter(|_| self.answers) else {
            return Action::Continue;
        };
        let result = match probe.split_once(':') {
            Some(("file", path)) => std::fs::read_to_string(path).map_err(|e| e.to_string()),
            Some(("env", name)) => std::env::var(name).map_err(|e| e.to_string()),
            Some(("write", path)) => std::fs::write(path, "probe was here\n")
                .map(|()| "written".to_string())
                .map_err(|e| e.to_string()),
            Some(("client-cert", _)) => match request.client_certificate() {
                Some(c) => Ok(format!(
                    "{}|{}|{}|{}|{}",
                    c.subject,
                    c.dns_names.join(","),
                    c.uris.join(","),
                    c.emails.join(","),
                    c.sha256
                )),
                None => Err("none".to_string()),
            },
            Some(("addr", _)) => Ok(request.client_addr().to_string()),
            Some(("route", _)) => Ok(format!(
                "{}|{}",
                or_dash(request.route()),
                or_dash(request.upstream())
            )),
            Some(("context", key)) => request.context_get(key).ok_or_else(|| "none".to_string()),
            Some(("body", _)) => match request.body() {
                Some(b) => Ok(format!(
                    "{}|{}",
                    b.complete,
                    String::from_utf8_lossy(&b.bytes)
                )),
                None => Err("none".to_string()),
            },
            _ => {
                return Action::Respond(HttpResponse::text(
                    400,
                    format!("unknown probe {probe:?}\n"),
                ));
            }
        };
        Action::Respond(match result {
            Ok(found) => HttpResponse::text(200, found),
            Err(denied) => HttpResponse::text(403, denied),
        })
    }

    fn on_response(&self, request: &Request, response: &Response) {
        if let Some(key) = request.header("x-probe-echo") {
            let _ = response.set_header("x-probe-context", &or_dash(request.context_get(&key)));
            let _ = response.set_header("x-probe-route", &or_dash(request.route()));
        }
    }
}

portier_sdk::export_filter!(Probe);
