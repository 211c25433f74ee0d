//! `[server]`: the listeners and what the edge allows (`[server.limits]`)
//! and waits for (`[server.timeouts]`). Defaults are in the range nginx and
//! Envoy ship with; docs/manifest.md lists each with the status it answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawHttp2, RawLimits, RawServer, RawTimeouts};
use super::{ManifestError, Validator, units};

/// Listener and process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Addresses served over plain HTTP (HTTP/1.1 and h2c).
    pub listen: Vec<SocketAddr>,
    /// Worker threads, each an event loop with its own listening sockets
    /// (default: one per CPU).
    pub workers: usize,
    /// Where the access log goes, if anywhere.
    pub access_log: super::AccessLog,
    /// The request id's header and where it goes.
    pub request_id: super::RequestIdConfig,
    /// Propagate W3C `traceparent` to upstreams (starting a trace when the
    /// client sent none).
    pub traceparent: bool,
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
    /// HTTP/2 windows and abuse limits.
    pub http2: Http2,
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

/// `[server.http2]`: what one client HTTP/2 connection may have open or
/// buffered, and when it is closed for abuse (`crate::server` has the
/// frame-level rules; the header list limit is `limits.max_request_head`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Http2 {
    /// Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more are
    /// refused with REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// Request body bytes a stream may send before the proxy reads them.
    pub stream_window: u32,
    /// The same for all streams of the connection together.
    pub connection_window: u32,
    /// The largest frame the proxy accepts (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame_size: u32,
    /// Response bytes buffered per stream for a client that reads slowly.
    pub send_buffer: usize,
    /// Streams the client may reset before the proxy accepted them, at once
    /// (rapid reset).
    pub max_pending_resets: usize,
    /// Streams the proxy may have to reset for the client's protocol errors,
    /// per connection (MadeYouReset).
    pub max_error_resets: usize,
    /// Client resets past this share of the streams it opened (judged after
    /// 100 streams) close the connection (rapid reset).
    pub max_reset_ratio: f64,
    /// Control frames (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA)
    /// a connection may send beyond what its traffic earns back.
    pub control_frame_budget: u32,
}

impl Default for Http2 {
    fn default() -> Http2 {
        Http2 {
            max_concurrent_streams: 128,
            stream_window: 1 << 20,
            connection_window: 1 << 20,
            max_frame_size: 16 << 10,
            send_buffer: 400 << 10,
            max_pending_resets: 20,
            max_error_resets: 1024,
            max_reset_ratio: 0.5,
            control_frame_budget: 1000,
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
            access_log: self.access_log(raw.access_log)?,
            request_id: self.request_id(raw.request_id)?,
            traceparent: raw.traceparent.unwrap_or(true),
            cache_dir: raw.cache_dir.map(|d| self.base.join(d)),
            trusted_proxies,
            merge_slashes: raw.merge_slashes.unwrap_or(true),
            limits: self.limits(raw.limits)?,
            timeouts: self.timeouts(raw.timeouts)?,
            http2: self.http2(raw.http2)?,
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

    fn http2(&self, raw: Option<RawHttp2>) -> Result<Http2, ManifestError> {
        let d = Http2::default();
        let Some(raw) = raw else { return Ok(d) };
        let key = |name: &str| format!("server.http2.{name}");
        // A size within [min, max] (both inclusive, in bytes).
        let size = |name: &str, v: Option<String>, default: usize, min: usize, max: usize| {
            let Some(s) = v else { return Ok(default) };
            let n = units::bytes(&s).map_err(|r| self.err(key(name), r))?;
            if n < min || n > max {
                return Err(self.err(
                    key(name),
                    format!("{s:?} is out of range ({min} to {max} bytes)"),
                ));
            }
            Ok(n)
        };
        let at_least_one = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(self.err(key(name), "must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        };
        // RFC 9113: windows up to 2^31-1; frames from 16KiB to 16MiB-1. A
        // window under the protocol's initial 65535 would stall uploads.
        const MAX_WINDOW: usize = (1 << 31) - 1;
        let max_reset_ratio = raw.max_reset_ratio.unwrap_or(d.max_reset_ratio);
        if !(max_reset_ratio > 0.0 && max_reset_ratio <= 1.0) {
            return Err(self.err(
                key("max_reset_ratio"),
                "must be more than 0 and at most 1 (a share of the streams opened)",
            ));
        }
        let max_concurrent_streams = at_least_one(
            "max_concurrent_streams",
            raw.max_concurrent_streams.map(|n| n as usize),
            d.max_concurrent_streams as usize,
        )?;
        Ok(Http2 {
            max_concurrent_streams: u32::try_from(max_concurrent_streams).unwrap_or(u32::MAX),
            stream_window: size(
                "stream_window",
                raw.stream_window,
                d.stream_window as usize,
                65_535,
                MAX_WINDOW,
            )? as u32,
            connection_window: size(
                "connection_window",
                raw.connection_window,
                d.connection_window as usize,
                65_535,
                MAX_WINDOW,
            )? as u32,
            max_frame_size: size(
                "max_frame_size",
                raw.max_frame_size,
                d.max_frame_size as usize,
                16 << 10,
                (16 << 20) - 1,
            )? as u32,
            send_buffer: size(
                "send_buffer",
                raw.send_buffer,
                d.send_buffer,
                16 << 10,
                MAX_WINDOW,
            )?,
            max_pending_resets: at_least_one(
                "max_pending_resets",
                raw.max_pending_resets,
                d.max_pending_resets,
            )?,
            max_error_resets: at_least_one(
                "max_error_resets",
                raw.max_error_resets,
                d.max_error_resets,
            )?,
            max_reset_ratio,
            control_frame_budget: at_least_one(
                "control_frame_budget",
                raw.control_frame_budget.map(|n| n as usize),
                d.control_frame_budget as usize,
            )? as u32,
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
