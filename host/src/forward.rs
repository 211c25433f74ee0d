//! Forwarding a request to one endpoint: proxy headers, pooled connections,
//! streaming bodies, and failures mapped to who is at fault.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::error::Fault;
use crate::upstream::{Upstream, Upstreams};

/// Pooled HTTP clients per upstream (each with its connect deadline), one per
/// worker: a worker's requests use connections its own event loop drives, so
/// a request never hops threads.
pub struct Forwarder {
    clients: HashMap<String, Vec<Client<HttpConnector, ProxyBody>>>,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tell the forwarder which worker this thread is (set once per worker thread).
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl Forwarder {
    /// Clients for every upstream of a pipeline generation, for `workers` workers.
    pub fn new(upstreams: &Upstreams, workers: usize) -> Forwarder {
        let clients = upstreams
            .names()
            .iter()
            .filter_map(|n| upstreams.get(n))
            .map(|u| {
                let per_worker = (0..workers.max(1))
                    .map(|_| {
                        let mut conn = HttpConnector::new();
                        conn.set_nodelay(true);
                        conn.set_connect_timeout(Some(u.connect_timeout));
                        conn.set_keepalive(Some(Duration::from_secs(60)));
                        Client::builder(TokioExecutor::new())
                            .pool_timer(TokioTimer::new())
                            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                            .build(conn)
                    })
                    .collect();
                (u.name.clone(), per_worker)
            })
            .collect();
        Forwarder { clients }
    }

    fn client(&self, upstream: &str) -> Option<&Client<HttpConnector, ProxyBody>> {
        let clients = self.clients.get(upstream)?;
        clients.get(WORKER.with(|w| w.get()) % clients.len())
    }

    /// Send the request to `upstream.endpoints[index]` and return its response head + streaming body.
    pub async fn forward(
        &self,
        upstreams: &Upstreams,
        upstream: &Arc<Upstream>,
        index: usize,
        mut parts: http::request::Parts,
        body: Incoming,
        client: SocketAddr,
    ) -> Result<Response<Incoming>, Fault> {
        let endpoint = &upstream.endpoints[index];
        let http_client = self.client(&upstream.name).ok_or(Fault::PluginContract)?;
        prepare_request(&mut parts, &endpoint.address, client)?;
        // A pooled connection the upstream already closed fails a request
        // after it was written. One with no body and a repeatable method is
        // replayed once; a new connection also tells a dead endpoint (refused)
        // from a keep-alive race.
        let replay = (body.is_end_stream() && parts.method.is_idempotent())
            .then(|| clone_request_parts(&parts));
        let req = Request::from_parts(parts, ProxyBody::Streamed(body));

        let _in_flight = endpoint.start_request();
        let sent = Instant::now();
        // One deadline for the response head, replay included.
        let deadline = tokio::time::Instant::now() + upstream.timeout;
        let mut result = tokio::time::timeout_at(deadline, http_client.request(req)).await;
        if let (Ok(Err(e)), Some(parts)) = (&result, replay)
            && !e.is_connect()
        {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(e), "replaying on a new connection");
            let req = Request::from_parts(parts, ProxyBody::full(bytes::Bytes::new()));
            result = tokio::time::timeout_at(deadline, http_client.request(req)).await;
        }
        match result {
            Err(_elapsed) => {
                tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.address, "upstream timed out");
                Err(Fault::UpstreamTimeout)
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    upstreams.mark_refused(upstream, endpoint);
                }
                tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "upstream failed");
                Err(Fault::Upstream)
            }
            Ok(Ok(mut resp)) => {
                endpoint.record_latency(sent.elapsed());
                strip_hop_by_hop(resp.headers_mut());
                let version = resp.version();
                append_via(resp.headers_mut(), version);
                // The client's connection has its own version; hyper answers each
                // client in the version it spoke, from this default.
                *resp.version_mut() = Version::HTTP_11;
                Ok(resp)
            }
        }
    }
}

/// Request parts minus extensions (which are not `Clone`).
pub fn clone_request_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Rewrite a client request for the upstream: absolute URI to the endpoint,
/// HTTP/1.1, hop-by-hop headers removed, proxy headers set.
fn prepare_request(
    parts: &mut http::request::Parts,
    endpoint: &http::uri::Authority,
    client: SocketAddr,
) -> Result<(), Fault> {
    // HTTP/2 clients carry the host in :authority; HTTP/1.1 upstreams need a Host header.
    let original_host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(endpoint.clone());
    uri.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(uri).map_err(|_| Fault::PluginContract)?;
    let client_version = parts.version;
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    if let Some(host) = &original_host {
        h.insert(header::HOST, host.clone());
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    append_forwarded_for(h, client);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    append_via(h, client_version);
    Ok(())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Append the client's IP to X-Forwarded-For, folding repeated headers into one.
fn append_forwarded_for(h: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let mut prior: Vec<&str> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        ip
    } else {
        prior.push(&ip);
        prior.join(", ")
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

fn append_via(h: &mut HeaderMap, version: Version) {
    let v = match version {
        Version::HTTP_10 => "1.0 portier",
        Version::HTTP_2 => "2 portier",
        _ => "1.1 portier",
    };
    h.append(header::VIA, HeaderValue::from_static(v));
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including any that
/// `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().uri("/a/b?x=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn upstream_request_gets_proxy_headers_and_loses_hop_by_hop_ones() {
        let mut p = parts(&[
            ("host", "example.com"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ]);
        prepare_request(
            &mut p,
            &"127.0.0.1:9000".parse().unwrap(),
            "192.0.2.7:5555".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(p.uri.to_string(), "http://127.0.0.1:9000/a/b?x=1");
        assert_eq!(
            p.headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        assert_eq!(p.headers["x-forwarded-host"], "example.com");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["host"], "example.com");
        assert_eq!(p.headers["via"], "1.1 portier");
        assert_eq!(p.headers["x-kept"], "yes");
        for gone in ["connection", "x-secret", "keep-alive"] {
            assert!(!p.headers.contains_key(gone), "{gone} was forwarded");
        }
    }
}
