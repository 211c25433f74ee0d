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
//!   `subject|dns names|uris|emails|sha256`, or 403 `none`.
//!
//! Requests without `x-probe` continue untouched; an unknown kind is a 400.

use portier_sdk::{Action, Filter, HttpResponse, Request};

struct Probe;

impl Filter for Probe {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Probe)
    }

    fn on_request(&self, request: &Request) -> Action {
        let Some(probe) = request.header("x-probe") else {
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
}

portier_sdk::export_filter!(Probe);
