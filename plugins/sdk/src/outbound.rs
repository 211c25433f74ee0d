//! Requests of the plugin's own to an upstream of the manifest, one its
//! stage was granted (`grants = { upstreams = ["auth"] }`): forward auth,
//! token introspection, a policy service.
//!
//! The host sends it to a healthy endpoint over its pooled connections and
//! returns the whole response (at most 1 MiB of body), within the deadline
//! (the upstream's `timeout` unless the request asks for less). One plugin
//! call may send at most 8.
//!
//! ```no_run
//! use std::time::Duration;
//! use portier_sdk::outbound::{self, Request};
//!
//! let answer = outbound::send(
//!     "auth",
//!     Request::get("/verify").header("authorization", "Bearer abc").timeout(Duration::from_millis(200)),
//! )?;
//! let allowed = (200..300).contains(&answer.status);
//! # Ok::<(), outbound::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

use crate::http::HttpResponse;
use crate::wit::outbound as host;

/// Why no response came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The stage was not granted this upstream, or there is none by that name.
    NotGranted,
    /// The request cannot be sent: a bad method, path or header.
    Invalid(String),
    /// The upstream failed: no healthy endpoint, refused, reset.
    Unavailable(String),
    /// No whole response within the deadline.
    Timeout,
    /// The response's body was larger than 1 MiB.
    TooLarge,
    /// More than 8 requests in one plugin call.
    BudgetExhausted,
}

impl From<host::OutboundError> for Error {
    fn from(e: host::OutboundError) -> Error {
        use host::OutboundError as E;
        match e {
            E::NotGranted => Error::NotGranted,
            E::Invalid(why) => Error::Invalid(why),
            E::Unavailable(why) => Error::Unavailable(why),
            E::Timeout => Error::Timeout,
            E::TooLarge => Error::TooLarge,
            E::BudgetExhausted => Error::BudgetExhausted,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotGranted => f.write_str("the stage was not granted this upstream"),
            Error::Invalid(why) => write!(f, "invalid request: {why}"),
            Error::Unavailable(why) => write!(f, "upstream unavailable: {why}"),
            Error::Timeout => f.write_str("no response within the deadline"),
            Error::TooLarge => f.write_str("response body larger than 1 MiB"),
            Error::BudgetExhausted => f.write_str("more than 8 requests in one call"),
        }
    }
}

impl std::error::Error for Error {}

/// A request to an upstream, built like an [`HttpResponse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The deadline; `None`: the upstream's `timeout`.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with this method and path, no headers, no body.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` of `path`.
    pub fn get(path: impl Into<String>) -> Request {
        Request::new("GET", path)
    }

    /// Add a header (names may repeat).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replace the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Answer within `timeout` (capped by the upstream's own).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }
}

/// Send `request` to `upstream` and wait for its whole response.
pub fn send(upstream: &str, request: Request) -> Result<HttpResponse, Error> {
    let wire = host::OutboundRequest {
        method: request.method,
        path: request.path,
        headers: request.headers,
        body: request.body,
        timeout_ms: request
            .timeout
            .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
    };
    host::send(upstream, &wire)
        .map(|r| HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
        .map_err(Error::from)
}
