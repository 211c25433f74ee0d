//! # forward-auth — ask an auth service whether a request may pass
//!
//! A filter in the shape of nginx's `auth_request` and Traefik's
//! ForwardAuth: for every request it sends a request of its own to an
//! upstream of the manifest (granted to the stage), with the original
//! method, URI and selected headers. A 2xx answer lets the request through,
//! carrying the headers the service chose to add (the user's name, roles);
//! any other answer goes back to the client as the service wrote it (a 401
//! with its challenge, a 302 to a login page).
//!
//! ```toml
//! [[pipeline]]
//! plugin = "forward-auth"
//! grants = { upstreams = ["auth"] }       # the stage may call this upstream
//! [pipeline.config]
//! upstream = "auth"
//! path = "/verify"                        # default "/"
//! request_headers = ["authorization", "cookie"]   # the default
//! response_headers = ["x-user", "x-roles"]        # copied onto the request
//! identity_header = "x-user"              # kept as the request's "identity"
//! timeout = "500ms"                       # default: the upstream's timeout
//! ```
//!
//! Behaviour:
//!
//! - The auth request has the original method (no body), the path `path`,
//!   the `request_headers` the client sent, and `x-forwarded-method`,
//!   `x-forwarded-uri` (path and query), `x-forwarded-host`,
//!   `x-forwarded-proto` and `x-forwarded-for` (the client's IP).
//! - 2xx: each of `response_headers` is set on the request from the auth
//!   response, and removed from it when the service did not send one, so a
//!   client can never supply `x-user` itself. With `identity_header`, its
//!   value becomes the request context's `identity`, which later stages (a
//!   rate limit per user) read.
//! - Anything else: the client gets the service's status, headers and body.
//! - The service failing (no healthy endpoint, reset, past the deadline):
//!   `503`, logged, unless `allow_when_unavailable = true` lets requests
//!   through (then none of `response_headers` is trusted: all are removed).
//! - Checked at init: `upstream` is an upstream of the manifest, `path`
//!   starts with `/`, header names are tokens, `timeout` is a duration.

use std::time::Duration;

use portier_sdk::outbound::{self, Request as AuthRequest};
use portier_sdk::{Action, Filter, HttpResponse, Request, config, log, upstreams};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    upstream: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default = "default_request_headers")]
    request_headers: Vec<String>,
    #[serde(default)]
    response_headers: Vec<String>,
    identity_header: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    allow_when_unavailable: bool,
}

fn root() -> String {
    "/".to_string()
}

fn default_request_headers() -> Vec<String> {
    vec!["authorization".to_string(), "cookie".to_string()]
}

/// The forward-auth filter.
pub struct ForwardAuth {
    upstream: String,
    path: String,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    identity_header: Option<String>,
    timeout: Option<Duration>,
    allow_when_unavailable: bool,
}

impl Filter for ForwardAuth {
    fn init(json: &str) -> Result<Self, config::Error> {
        let c: Config = config::parse(json)?;
        if !upstreams::names().contains(&c.upstream) {
            return Err(config::Error::at(
                "upstream",
                format!("no upstream named {:?}", c.upstream),
            ));
        }
        if !c.path.starts_with('/') {
            return Err(config::Error::at("path", "must start with \"/\""));
        }
        let lower = |key: &str, names: Vec<String>| -> Result<Vec<String>, config::Error> {
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    config::header_name(&n).map_err(|e| config::Error::at(format!("{key}[{i}]"), e))
                })
                .collect()
        };
        let response_headers = lower("response_headers", c.response_headers)?;
        let identity_header = match c.identity_header {
            Some(h) => {
                let h =
                    config::header_name(&h).map_err(|e| config::Error::at("identity_header", e))?;
                if !response_headers.contains(&h) {
                    return Err(config::Error::at(
                        "identity_header",
                        "must be one of response_headers (only those are trusted)",
                    ));
                }
                Some(h)
            }
            None => None,
        };
        let timeout = c
            .timeout
            .map(|t| config::duration_ms(&t).map_err(|e| config::Error::at("timeout", e)))
            .transpose()?
            .map(Duration::from_millis);
        Ok(ForwardAuth {
            upstream: c.upstream,
            path: c.path,
            request_headers: lower("request_headers", c.request_headers)?,
            response_headers,
            identity_header,
            timeout,
            allow_when_unavailable: c.allow_when_unavailable,
        })
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        let answer = outbound::send(&self.upstream, self.ask(request));
        match answer {
            Ok(r) if (200..300).contains(&r.status) => {
                self.admit(request, &r);
                Action::Continue
            }
            // The service's own answer: a challenge, a redirect to log in.
            Ok(r) => Action::Respond(r),
            Err(e) => {
                log::warn(format!("auth service {:?}: {e}", self.upstream));
                if self.allow_when_unavailable {
                    for name in &self.response_headers {
                        request.remove_header(name);
                    }
                    Action::Continue
                } else {
                    Action::Respond(HttpResponse::text(503, "503 Service Unavailable\n"))
                }
            }
        }
    }
}

impl ForwardAuth {
    /// The question for the auth service.
    fn ask(&self, request: &Request) -> AuthRequest {
        let mut uri = request.path();
        if let Some(q) = request.query() {
            uri.push('?');
            uri.push_str(&q);
        }
        let mut ask = AuthRequest::new(request.method(), self.path.clone())
            .header("x-forwarded-method", request.method())
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", request.client_addr().ip().to_string())
            .header(
                "x-forwarded-proto",
                request
                    .header("x-forwarded-proto")
                    .unwrap_or_else(|| "http".into()),
            );
        if let Some(host) = request.host() {
            ask = ask.header("x-forwarded-host", host);
        }
        for name in &self.request_headers {
            for value in request.header_all(name) {
                ask = ask.header(name.as_str(), value);
            }
        }
        if let Some(t) = self.timeout {
            ask = ask.timeout(t);
        }
        ask
    }

    /// A 2xx: the service's chosen headers replace whatever the client sent
    /// under those names.
    fn admit(&self, request: &Request, answer: &HttpResponse) {
        for name in &self.response_headers {
            request.remove_header(name);
            for (n, v) in answer
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                if let Err(e) = request.append_header(n, v) {
                    log::warn(format!("cannot pass {name} on: {e}"));
                }
            }
        }
        if let Some(h) = &self.identity_header
            && let Some((_, id)) = answer
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(h))
            && let Err(e) = request.context_set("identity", id)
        {
            log::warn(format!("cannot keep the identity: {e}"));
        }
    }
}

portier_sdk::export_filter!(ForwardAuth);
