//! `[[upstreams]]`: endpoints and how the host reaches them — protocol,
//! connection pool, active health checks, passive outlier detection and
//! retries. Defaults follow what nginx, HAProxy and Envoy ship with;
//! docs/manifest.md lists every key.

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use http::uri::{Authority, PathAndQuery};

use super::handler::Handler;
use super::raw::{RawEndpoint, RawHealth, RawOutlier, RawPool, RawRetry, RawRetryOn};
use super::raw::{RawStatusRange, RawUpstream};
use super::{ManifestError, Validator, units};

/// A named group of endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Unique name, referenced by routers.
    pub name: String,
    /// The endpoints, in file order (a balancer returns an index into this).
    pub endpoints: Vec<Endpoint>,
    /// What the host speaks to the endpoints.
    pub protocol: Protocol,
    /// Deadline for establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline for the response head, from sending the request (per attempt).
    pub timeout: Duration,
    /// Connection reuse and limits.
    pub pool: Pool,
    /// Active health checks; `None`: endpoints are healthy unless ejected.
    pub health: Option<HealthCheck>,
    /// Passive health: ejecting endpoints that fail.
    pub outlier: Outlier,
    /// When a failed request is tried again on another endpoint.
    pub retry: Retry,
    /// TLS to the endpoints; `None`: plain TCP.
    pub tls: Option<UpstreamTls>,
    /// A `wasi:http/proxy` component that answers the upstream's requests
    /// itself (the upstream then has no endpoints).
    pub handler: Option<Handler>,
}

/// `tls`: how the host speaks TLS to an upstream's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM file of the CAs that may sign the endpoints' certificates;
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified against the certificate; `None`:
    /// each endpoint's host (a name or an IP address).
    pub server_name: Option<String>,
    /// Accept any certificate (development only; logged as a warning).
    pub insecure_skip_verify: bool,
}

/// One backend address.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `host:port` as written.
    pub address: Authority,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// The protocol spoken to an upstream's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 over plain TCP (prior knowledge), many requests per connection.
    H2c,
    /// HTTP/2 over TLS (ALPN h2); needs `tls`.
    H2,
}

/// `pool`: connections kept per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Idle connections kept per endpoint and worker (like nginx's `keepalive`).
    pub max_idle: usize,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per endpoint, all workers together; 0: no limit.
    pub max_connections: u32,
    /// How long a request waits for a connection under `max_connections` (503 past it).
    pub queue_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            max_idle: 64,
            idle_timeout: Duration::from_secs(60),
            max_connections: 0,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// `health`: a probe the host sends to every endpoint on an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path (and query) of the probe, a GET.
    pub path: PathAndQuery,
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// Deadline for a probe's response head.
    pub timeout: Duration,
    /// Statuses that count as passing.
    pub expect: Vec<(u16, u16)>,
    /// Passing probes in a row that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Failing probes in a row that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Host header of the probe; `None`: the endpoint's address.
    pub host: Option<String>,
}

impl HealthCheck {
    /// Whether a probe's status passes.
    pub fn passes(&self, status: u16) -> bool {
        in_ranges(&self.expect, status)
    }
}

/// `outlier`: endpoints that keep failing are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Failed responses in a row (a status in `statuses`, a reset, a
    /// timeout) that eject an endpoint; 0: never for these.
    pub consecutive_failures: u32,
    /// Failed connection attempts in a row that eject an endpoint; 0: never.
    pub consecutive_connect_failures: u32,
    /// Statuses that count as failures.
    pub statuses: Vec<(u16, u16)>,
    /// First ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// The most endpoints of the upstream ejected at once, in percent
    /// (at least one may always be ejected).
    pub max_ejected_percent: u8,
}

impl Default for Outlier {
    fn default() -> Outlier {
        Outlier {
            consecutive_failures: 5,
            consecutive_connect_failures: 1,
            statuses: vec![(500, 599)],
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl Outlier {
    /// Whether a response status counts as a failure.
    pub fn fails(&self, status: u16) -> bool {
        in_ranges(&self.statuses, status)
    }
}

/// `retry`: trying a request again on another endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Tries in all, the first included; 1: no retries.
    pub attempts: u32,
    /// Retry (a retryable method) when the connection failed after the
    /// request was sent, before a response head.
    pub on_reset: bool,
    /// Retry (a retryable method) when the response head did not come in time.
    pub on_timeout: bool,
    /// Retry (a retryable method) on these response statuses.
    pub statuses: Vec<u16>,
    /// Methods whose requests may be sent twice.
    pub methods: Vec<Method>,
    /// A request body up to this size is kept so that a request whose body
    /// was sent can be retried; 0: requests with a body are retried only
    /// when nothing of them was sent.
    pub body_buffer: u64,
    /// Retries at most this share of the upstream's requests (over 10 s)...
    pub budget: f64,
    /// ...plus this many a second, so that a quiet upstream can retry at all.
    pub min_per_second: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 2,
            on_reset: false,
            on_timeout: false,
            statuses: Vec::new(),
            methods: [
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ]
            .into(),
            body_buffer: 0,
            budget: 0.2,
            min_per_second: 5,
        }
    }
}

impl Retry {
    /// Whether a request may be retried after (part of) it was sent.
    pub fn may_resend(&self, method: &Method) -> bool {
        self.attempts > 1
            && (self.on_reset || self.on_timeout || !self.statuses.is_empty())
            && self.methods.contains(method)
    }
}

fn in_ranges(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
}

impl Validator<'_> {
    pub(super) fn upstream(&self, i: usize, raw: RawUpstream) -> Result<Upstream, ManifestError> {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        if raw.name.is_empty() {
            return Err(self.err(key("name"), "must not be empty"));
        }
        let handler = match raw.handler {
            None if raw.endpoints.is_empty() => {
                return Err(self.err(
                    key("endpoints"),
                    "at least one endpoint is required (or a `handler` component)",
                ));
            }
            None => None,
            Some(_) if !raw.endpoints.is_empty() => {
                return Err(self.err(
                    key("handler"),
                    "an upstream has endpoints or a handler, not both",
                ));
            }
            Some(h) => {
                for (set, name) in [
                    (raw.health.is_some(), "health"),
                    (raw.tls.is_some(), "tls"),
                    (raw.protocol.is_some(), "protocol"),
                    (raw.pool.is_some(), "pool"),
                    (raw.retry.is_some(), "retry"),
                    (raw.outlier.is_some(), "outlier"),
                ] {
                    if set {
                        return Err(self.err(
                            key(name),
                            "a handler upstream has no endpoints to apply it to",
                        ));
                    }
                }
                Some(self.handler(&key("handler"), h)?)
            }
        };
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.endpoints.len());
        for (j, e) in raw.endpoints.into_iter().enumerate() {
            let (address, weight, akey) = match e {
                RawEndpoint::Address(a) => (a, None, key(&format!("endpoints[{j}]"))),
                RawEndpoint::Table(t) => {
                    (t.address, t.weight, key(&format!("endpoints[{j}].address")))
                }
            };
            let address = parse_endpoint(&address).map_err(|r| self.err(akey.clone(), r))?;
            if endpoints.iter().any(|e| e.address == address) {
                return Err(self.err(akey, format!("{address} is listed twice")));
            }
            if weight == Some(0) {
                return Err(self.err(key(&format!("endpoints[{j}].weight")), "must be at least 1"));
            }
            endpoints.push(Endpoint {
                address,
                weight: weight.unwrap_or(1),
            });
        }
        let protocol = match raw.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("h2c") => Protocol::H2c,
            Some("h2") => Protocol::H2,
            Some(other) => {
                return Err(self.err(
                    key("protocol"),
                    format!("unknown protocol {other:?}; expected \"http1\", \"h2\" or \"h2c\""),
                ));
            }
        };
        match (protocol, raw.tls.is_some()) {
            (Protocol::H2, false) => {
                return Err(self.err(
                    key("protocol"),
                    "\"h2\" is HTTP/2 over TLS: add a `tls` table (or use \"h2c\")",
                ));
            }
            (Protocol::H2c, true) => {
                return Err(self.err(
                    key("protocol"),
                    "\"h2c\" is HTTP/2 without TLS; with `tls`, use \"h2\"",
                ));
            }
            _ => {}
        }
        let tls = match raw.tls {
            None => None,
            Some(t) => {
                if let Some(n) = &t.server_name
                    && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
                {
                    return Err(self.err(
                        key("tls.server_name"),
                        format!("{n:?} is not a server name"),
                    ));
                }
                Some(UpstreamTls {
                    ca: t.ca.map(|c| self.base.join(c)),
                    server_name: t.server_name,
                    insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
                })
            }
        };
        Ok(Upstream {
            connect_timeout: self.duration(
                key("connect_timeout"),
                raw.connect_timeout,
                super::DEFAULT_CONNECT_TIMEOUT,
            )?,
            timeout: self.duration(key("timeout"), raw.timeout, super::DEFAULT_TIMEOUT)?,
            pool: self.pool(&key("pool"), raw.pool)?,
            health: raw
                .health
                .map(|h| self.health(&key("health"), h))
                .transpose()?,
            outlier: self.outlier(&key("outlier"), raw.outlier)?,
            retry: self.retry(&key("retry"), raw.retry)?,
            tls,
            name: raw.name,
            endpoints,
            protocol,
            handler,
        })
    }

    fn pool(&self, key: &str, raw: Option<RawPool>) -> Result<Pool, ManifestError> {
        let d = Pool::default();
        let Some(raw) = raw else { return Ok(d) };
        let k = |f: &str| format!("{key}.{f}");
        Ok(Pool {
            max_idle: raw.max_idle.unwrap_or(d.max_idle),
            idle_timeout: self.positive(k("idle_timeout"), raw.idle_timeout, d.idle_timeout)?,
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
            queue_timeout: self.duration(k("queue_timeout"), raw.queue_timeout, d.queue_timeout)?,
        })
    }

    fn health(&self, key: &str, raw: RawHealth) -> Result<HealthCheck, ManifestError> {
        let k = |f: &str| format!("{key}.{f}");
        if !raw.path.starts_with('/') {
            return Err(self.err(k("path"), "must start with '/'"));
        }
        let path = raw
            .path
            .parse()
            .map_err(|e| self.err(k("path"), format!("not a valid path: {e}")))?;
        let interval = self.positive(k("interval"), raw.interval, Duration::from_secs(5))?;
        let timeout = self.positive(k("timeout"), raw.timeout, Duration::from_secs(1))?;
        if timeout > interval {
            return Err(self.err(k("timeout"), "must not be longer than health.interval"));
        }
        let threshold = |f: &str, v: Option<u32>, default| match v {
            Some(0) => Err(self.err(k(f), "must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        };
        if let Some(h) = &raw.host
            && h.parse::<Authority>().is_err()
        {
            return Err(self.err(k("host"), format!("{h:?} is not a host name")));
        }
        Ok(HealthCheck {
            path,
            interval,
            timeout,
            expect: match raw.expect {
                Some(e) => self.statuses(&k("expect"), e)?,
                None => vec![(200, 399)],
            },
            healthy_threshold: threshold("healthy_threshold", raw.healthy_threshold, 2)?,
            unhealthy_threshold: threshold("unhealthy_threshold", raw.unhealthy_threshold, 3)?,
            host: raw.host,
        })
    }

    fn outlier(&self, key: &str, raw: Option<RawOutlier>) -> Result<Outlier, ManifestError> {
        let d = Outlier::default();
        let Some(raw) = raw else { return Ok(d) };
        let k = |f: &str| format!("{key}.{f}");
        let base_ejection =
            self.positive(k("base_ejection"), raw.base_ejection, d.base_ejection)?;
        let max_ejection = self.positive(k("max_ejection"), raw.max_ejection, d.max_ejection)?;
        if max_ejection < base_ejection {
            return Err(self.err(k("max_ejection"), "must not be shorter than base_ejection"));
        }
        let max_ejected_percent = raw.max_ejected_percent.unwrap_or(d.max_ejected_percent);
        if max_ejected_percent > 100 {
            return Err(self.err(k("max_ejected_percent"), "must be at most 100"));
        }
        Ok(Outlier {
            consecutive_failures: raw.consecutive_failures.unwrap_or(d.consecutive_failures),
            consecutive_connect_failures: raw
                .consecutive_connect_failures
                .unwrap_or(d.consecutive_connect_failures),
            statuses: match raw.statuses {
                Some(s) => self.statuses(&k("statuses"), s)?,
                None => d.statuses,
            },
            base_ejection,
            max_ejection,
            max_ejected_percent,
        })
    }

    fn retry(&self, key: &str, raw: Option<RawRetry>) -> Result<Retry, ManifestError> {
        let d = Retry::default();
        let Some(raw) = raw else { return Ok(d) };
        let k = |f: &str| format!("{key}.{f}");
        let attempts = raw.attempts.unwrap_or(d.attempts);
        if attempts == 0 || attempts > 10 {
            return Err(self.err(k("attempts"), "must be from 1 to 10 (tries in all)"));
        }
        let mut r = Retry { attempts, ..d };
        for (j, on) in raw.on.unwrap_or_default().into_iter().enumerate() {
            match on {
                RawRetryOn::Status(s) if (500..=599).contains(&s) => r.statuses.push(s),
                RawRetryOn::Status(s) => {
                    return Err(self.err(
                        format!("{key}.on[{j}]"),
                        format!("{s} is not a 5xx status; only those are retried"),
                    ));
                }
                RawRetryOn::Condition(c) if c == "reset" => r.on_reset = true,
                RawRetryOn::Condition(c) if c == "timeout" => r.on_timeout = true,
                RawRetryOn::Condition(c) => {
                    return Err(self.err(
                        format!("{key}.on[{j}]"),
                        format!("unknown condition {c:?}; expected \"reset\", \"timeout\" or a 5xx status"),
                    ));
                }
            }
        }
        if let Some(methods) = raw.methods {
            r.methods = Vec::with_capacity(methods.len());
            for (j, m) in methods.into_iter().enumerate() {
                let m: Method = m.parse().map_err(|_| {
                    self.err(
                        format!("{key}.methods[{j}]"),
                        format!("{m:?} is not a method"),
                    )
                })?;
                r.methods.push(m);
            }
        }
        if let Some(b) = raw.body_buffer {
            r.body_buffer = units::bytes(&b).map_err(|e| self.err(k("body_buffer"), e))? as u64;
        }
        if let Some(b) = raw.budget {
            if !(0.0..=1.0).contains(&b) {
                return Err(self.err(k("budget"), "must be from 0.0 to 1.0 (a share of requests)"));
            }
            r.budget = b;
        }
        r.min_per_second = raw.min_per_second.unwrap_or(r.min_per_second);
        Ok(r)
    }

    fn statuses(
        &self,
        key: &str,
        raw: Vec<RawStatusRange>,
    ) -> Result<Vec<(u16, u16)>, ManifestError> {
        let mut out = Vec::with_capacity(raw.len());
        for (j, s) in raw.into_iter().enumerate() {
            let bad = |what: String| self.err(format!("{key}[{j}]"), what);
            let (lo, hi) = match s {
                RawStatusRange::One(s) => (s, s),
                RawStatusRange::Range(r) => {
                    let parsed = match r.split_once('-') {
                        Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                        None => r.trim().parse().ok().map(|s| (s, s)),
                    };
                    parsed.ok_or_else(|| {
                        bad(format!("{r:?} is not a status or a range like \"200-399\""))
                    })?
                }
            };
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad(format!(
                    "{lo}-{hi} is not a range of statuses (100-599)"
                )));
            }
            out.push((lo, hi));
        }
        Ok(out)
    }

    /// A duration that must not be zero.
    fn positive(
        &self,
        key: String,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ManifestError> {
        let d = self.duration(key.clone(), v, default)?;
        if d.is_zero() {
            return Err(self.err(key, "must be longer than 0"));
        }
        Ok(d)
    }
}

fn parse_endpoint(s: &str) -> Result<Authority, String> {
    let bad =
        || format!("{s:?} is not an endpoint of the form host:port (e.g. \"127.0.0.1:3001\")");
    let a: Authority = s.parse().map_err(|_| bad())?;
    if a.port_u16().is_none() || a.host().is_empty() || a.as_str().contains('@') {
        return Err(bad());
    }
    Ok(a)
}
