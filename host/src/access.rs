//! The end of a request: its access log line and its metrics.
//!
//! A [`Finish`] is filled in as the request goes through the pipeline and
//! rides on the response body ([`crate::body::Logged`]); when that body
//! ends or is dropped (the client went away), [`Finish::done`] counts the
//! request and writes one line with the real duration and size, not the
//! time to the first byte.
//!
//! The line's `flags` say why the proxy itself produced a response that is
//! not the upstream's, in the manner of Envoy's response flags:
//!
//! | flag | meaning | status |
//! |---|---|---|
//! | `IR` | the request head broke an ingress rule | 400, 405, 414 |
//! | `BL` | the request body was larger than allowed | 413 |
//! | `BT` | the request body stalled past its idle timeout | 408 |
//! | `BB` | the request body was malformed or cut off | 400 |
//! | `UF` | the upstream could not be connected to | 502 |
//! | `UR` | the upstream reset the request or answered garbage | 502 |
//! | `UT` | the upstream did not answer in time | 504 |
//! | `UH` | no healthy endpoint could take the request | 503 |
//! | `LR` | this process ran out of a local resource reaching the upstream | 503 |
//! | `PF` | a plugin failed and its stage is fail-closed | 503 |
//! | `PC` | a plugin broke the contract (unknown upstream...) | 500 |
//! | `KV` | the shared kv backend was down and the stage's `kv.outage` is `closed` | 503 |
//! | `PA` | a stage answered the request itself (a 401, a 429...) | any |
//! | `CH` | answered from the response cache | any |
//! | `DC` | the response did not reach its end (the client left, or the upstream's body broke) | any |
//!
//! `stage` names the stage that answered or failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode, Uri, Version};

use crate::body::BodyOutcome;
use crate::error::Fault;
use crate::trace::RequestId;
use crate::upstream::Upstream;

/// Why the proxy produced a response itself: a set of the module docs' flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    const NAMES: [&'static str; 15] = [
        "IR", "BL", "BT", "BB", "UF", "UR", "UT", "UH", "LR", "PF", "PC", "PA", "CH", "DC", "KV",
    ];
    /// A stage answered.
    pub const STAGE_ANSWERED: Flags = Flags(1 << 11);
    /// Served from the cache.
    pub const CACHE_HIT: Flags = Flags(1 << 12);
    /// The response was cut short.
    pub const NOT_COMPLETE: Flags = Flags(1 << 13);

    /// The flag of a fault.
    pub fn of(fault: Fault) -> Flags {
        use crate::body::Cut;
        Flags(
            1 << match fault {
                Fault::Refused(_) => 0,
                Fault::ClientBody(Cut::TooLarge) => 1,
                Fault::ClientBody(Cut::Stalled) => 2,
                Fault::ClientBody(Cut::Broken) => 3,
                Fault::UpstreamConnect => 4,
                Fault::Upstream => 5,
                Fault::UpstreamTimeout => 6,
                Fault::NoEndpoint => 7,
                Fault::LocalResources => 8,
                Fault::Plugin => 9,
                Fault::PluginContract => 10,
                Fault::KvUnavailable => 14,
            },
        )
    }

    /// Add `other`'s flags.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `UF,PA`, or `-` when none is set.
    pub fn to_text(self) -> String {
        if self.0 == 0 {
            return "-".to_owned();
        }
        let names: Vec<&str> = (0..Self::NAMES.len())
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| Self::NAMES[i])
            .collect();
        names.join(",")
    }
}

/// What the end of a request needs to know of it.
#[derive(Debug)]
pub struct Finish {
    /// Whether to write the access log line (the metrics count always).
    pub log: bool,
    /// When the request arrived.
    pub start: Instant,
    /// The client (behind trusted proxies: the one they name).
    pub client: SocketAddr,
    /// Method as received.
    pub method: Method,
    /// Target as received (before any rewrite).
    pub uri: Uri,
    /// The client's HTTP version.
    pub version: Version,
    /// The Host (or `:authority`) asked for.
    pub host: Option<HeaderValue>,
    /// The client's User-Agent.
    pub user_agent: Option<HeaderValue>,
    /// The request's id.
    pub request_id: Option<RequestId>,
    /// The request's trace (W3C Trace Context), 0 until known.
    pub trace_id: u128,
    /// Status sent.
    pub status: StatusCode,
    /// The route the router chose.
    pub route: Option<String>,
    /// The upstream asked.
    pub upstream: Option<Arc<Upstream>>,
    /// The endpoint that answered, or the last one tried.
    pub endpoint: Option<http::uri::Authority>,
    /// From the first attempt upstream to the response head (retries included).
    pub upstream_time: Option<Duration>,
    /// The stage that answered or failed the request.
    pub stage: Option<String>,
    /// Why the proxy answered itself.
    pub flags: Flags,
    /// Counts the request body's bytes, when it had one.
    pub body_in: Option<Arc<BodyOutcome>>,
}

impl Finish {
    /// A request that arrived at `start` from `client`.
    pub fn new(
        log: bool,
        start: Instant,
        client: SocketAddr,
        parts: &http::request::Parts,
    ) -> Finish {
        Finish {
            log,
            start,
            client,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            host: parts.headers.get(http::header::HOST).cloned().or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            user_agent: parts.headers.get(http::header::USER_AGENT).cloned(),
            request_id: None,
            trace_id: 0,
            status: StatusCode::OK,
            route: None,
            upstream: None,
            endpoint: None,
            upstream_time: None,
            stage: None,
            flags: Flags::default(),
            body_in: None,
        }
    }

    /// The response ended (`complete`) or was dropped after `bytes_out`
    /// bytes of body: count it, and log it.
    pub fn done(self: Box<Self>, bytes_out: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        let upstream = self.upstream.as_ref().map(|u| u.name.as_str());
        crate::metrics::request(
            self.route.as_deref(),
            upstream,
            self.status.as_u16(),
            elapsed.as_secs_f64(),
        );
        if !self.log {
            return;
        }
        let mut flags = self.flags;
        if !complete {
            flags.insert(Flags::NOT_COMPLETE);
        }
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            request_id = self.request_id.as_ref().map_or("-", RequestId::as_str),
            trace_id = format_args!("{:032x}", self.trace_id),
            client = %self.client,
            method = %self.method,
            path = %self.uri,
            protocol = ?self.version,
            host = text(&self.host),
            status = self.status.as_u16(),
            // A number (in JSON too), to the microsecond.
            duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            bytes_in = self.body_in.as_ref().map_or(0, |b| b.bytes()),
            bytes_out,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = upstream.unwrap_or("-"),
            endpoint = self.endpoint.as_ref().map_or("-", |a| a.as_str()),
            upstream_ms = format_args!("{}", self.upstream_time.map_or_else(|| "-".to_owned(), |t| format!("{:.3}", t.as_secs_f64() * 1000.0))),
            stage = self.stage.as_deref().unwrap_or("-"),
            flags = flags.to_text(),
            user_agent = text(&self.user_agent),
            complete,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_their_names() {
        assert_eq!(Flags::default().to_text(), "-");
        let mut f = Flags::of(Fault::UpstreamTimeout);
        f.insert(Flags::NOT_COMPLETE);
        assert_eq!(f.to_text(), "UT,DC");
        assert!(f.contains(Flags::NOT_COMPLETE));
        assert_eq!(Flags::of(Fault::Plugin).to_text(), "PF");
        assert_eq!(Flags::STAGE_ANSWERED.to_text(), "PA");
        assert_eq!(Flags::CACHE_HIT.to_text(), "CH");
    }
}
