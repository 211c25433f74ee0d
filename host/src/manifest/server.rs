//! `[server]`: the listeners and what the edge allows (`[server.limits]`)
//! and waits for (`[server.timeouts]`). Defaults are in the range nginx and
//! Envoy ship with; docs/manifest.md lists each with the status it answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawLimits, RawServer, RawTimeouts};
use super::{ManifestError, Validator, units};

/// Listener and process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Addresses served over plain HTTP (HTTP/1.1 and h2c).
    pub listen: Vec<SocketAddr>,
    /// Worker threads, each an event loop with its own listening sockets
    /// (default: one per CPU).
    pub workers: usize,
    /// Whether to write an access-log line per request.
    pub access_log: bool,
    /// Where compiled plugins are cached; `None` means the user cache dir.
    pub cache_dir: Option<PathBuf>,
    /// Peers whose X-Forwarded-* / Forwarded headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Merge repeated slashes in request paths.
    pub merge_slashes: bool,
    /// Size and count limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// HTTPS listeners and certificates.
    pub tls: Option<super::Tls>,
}

/// `[server.limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers together, in bytes (431 past it).
    pub max_request_head: usize,
    /// Request header fields (431 past it).
    pub max_headers: usize,
    /// Request target, in bytes (414 past it).
    pub max_uri: usize,
    /// Request body, in bytes (413 past it); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// Open client connections, all listeners and workers together; more
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// Open client connections from one IP address; more are closed at once.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_head: 32 << 10,
            max_headers: 100,
            max_uri: 8 << 10,
            max_request_body: Some(64 << 20),
            max_connections: 16_384,
            max_connections_per_ip: 1024,
        }
    }
}

/// `[server.timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From a new connection (or the first byte of a request on a kept-alive
    /// one) to the end of the request head; the connection is closed past it.
    pub header: Duration,
    /// How long a keep-alive connection may wait idle for its next request.
    pub keepalive: Duration,
    /// Longest pause while receiving a request body (408 past it).
    pub request_body: Duration,
    /// Longest a write to a client may make no progress (connection closed).
    pub response_write: Duration,
    /// Longest pause while receiving an upstream's response body
    /// (connection closed, logged).
    pub upstream_body: Duration,
    /// HTTP/2: how often to ping a connection that is quiet.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: how long to wait for the ping's answer before closing.
    pub http2_keepalive_timeout: Duration,
    /// HTTP/2: how long a connection with no open stream is kept.
    pub http2_idle: Duration,
    /// On SIGTERM/SIGINT: how long requests in flight may take to finish.
    pub shutdown: Duration,
    /// An upgraded connection (WebSocket) with no byte either way this long is closed.
    pub upgrade_idle: Duration,
    /// An upgraded connection is closed at this age, if set.
    pub upgrade_max: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            header: s(60),
            keepalive: s(75),
            request_body: s(60),
            response_write: s(60),
            upstream_body: s(60),
            http2_keepalive_interval: s(30),
            http2_keepalive_timeout: s(20),
            http2_idle: s(180),
            shutdown: s(30),
            upgrade_idle: s(3600),
            upgrade_max: None,
        }
    }
}

/// The smallest request-head limit hyper can buffer.
const MIN_REQUEST_HEAD: usize = 8192;

impl Validator<'_> {
    pub(super) fn server(&self, raw: RawServer) -> Result<Server, ManifestError> {
        let listen = match raw.listen {
            Some(l) => self.addresses("server.listen", l.into_vec())?,
            None => Vec::new(),
        };
        let tls = raw.tls.map(|t| self.tls(t)).transpose()?;
        if listen.is_empty() && tls.is_none() {
            return Err(self.err(
                "server.listen",
                "missing (at least one address, here or in [server.tls])",
            ));
        }
        if raw.workers == Some(0) {
            return Err(self.err("server.workers", "must be at least 1"));
        }
        let mut trusted_proxies = Vec::new();
        for (i, t) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            trusted_proxies.push(self.network(format!("server.trusted_proxies[{i}]"), t)?);
        }
        Ok(Server {
            listen,
            workers: raw
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            access_log: raw.access_log.unwrap_or(true),
            cache_dir: raw.cache_dir.map(|d| self.base.join(d)),
            trusted_proxies,
            merge_slashes: raw.merge_slashes.unwrap_or(true),
            limits: self.limits(raw.limits)?,
            timeouts: self.timeouts(raw.timeouts)?,
            tls,
        })
    }

    /// `10.0.0.0/8`, or one address (a /32 or /128).
    fn network(&self, key: String, s: &str) -> Result<IpNet, ManifestError> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                self.err(
                    key,
                    format!("{s:?} is not an address or network (e.g. \"10.0.0.0/8\", \"::1\")"),
                )
            })
    }

    fn limits(&self, raw: Option<RawLimits>) -> Result<Limits, ManifestError> {
        let d = Limits::default();
        let Some(raw) = raw else { return Ok(d) };
        let size = |name: &str, v: Option<String>, default: usize| match v {
            None => Ok(default),
            Some(s) => units::bytes(&s).map_err(|r| self.err(format!("server.limits.{name}"), r)),
        };
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(self.err(format!("server.limits.{name}"), "must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        };
        let max_request_head = size("max_request_head", raw.max_request_head, d.max_request_head)?;
        if max_request_head < MIN_REQUEST_HEAD {
            return Err(self.err(
                "server.limits.max_request_head",
                format!("must be at least {MIN_REQUEST_HEAD} bytes (8KiB)"),
            ));
        }
        let max_request_body = match raw.max_request_body {
            None => d.max_request_body,
            Some(s) if s == "unlimited" => None,
            Some(s) => Some(
                units::bytes(&s).map_err(|r| self.err("server.limits.max_request_body", r))? as u64,
            ),
        };
        Ok(Limits {
            max_request_head,
            max_headers: positive("max_headers", raw.max_headers, d.max_headers)?,
            max_uri: positive(
                "max_uri",
                Some(size("max_uri", raw.max_uri, d.max_uri)?),
                d.max_uri,
            )?,
            max_request_body,
            max_connections: positive("max_connections", raw.max_connections, d.max_connections)?,
            max_connections_per_ip: positive(
                "max_connections_per_ip",
                raw.max_connections_per_ip,
                d.max_connections_per_ip,
            )?,
        })
    }

    fn timeouts(&self, raw: Option<RawTimeouts>) -> Result<Timeouts, ManifestError> {
        let d = Timeouts::default();
        let Some(raw) = raw else { return Ok(d) };
        let t = |name: &str, v: Option<String>, default: Duration| {
            let t = self.duration(format!("server.timeouts.{name}"), v, default)?;
            if t.is_zero() {
                return Err(self.err(format!("server.timeouts.{name}"), "must be longer than 0"));
            }
            Ok(t)
        };
        Ok(Timeouts {
            header: t("header", raw.header, d.header)?,
            keepalive: t("keepalive", raw.keepalive, d.keepalive)?,
            request_body: t("request_body", raw.request_body, d.request_body)?,
            response_write: t("response_write", raw.response_write, d.response_write)?,
            upstream_body: t("upstream_body", raw.upstream_body, d.upstream_body)?,
            http2_keepalive_interval: t(
                "http2_keepalive_interval",
                raw.http2_keepalive_interval,
                d.http2_keepalive_interval,
            )?,
            http2_keepalive_timeout: t(
                "http2_keepalive_timeout",
                raw.http2_keepalive_timeout,
                d.http2_keepalive_timeout,
            )?,
            http2_idle: t("http2_idle", raw.http2_idle, d.http2_idle)?,
            shutdown: t("shutdown", raw.shutdown, d.shutdown)?,
            upgrade_idle: t("upgrade_idle", raw.upgrade_idle, d.upgrade_idle)?,
            upgrade_max: raw
                .upgrade_max
                .map(|m| t("upgrade_max", Some(m), Duration::ZERO))
                .transpose()?,
        })
    }
}
