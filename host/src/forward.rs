//! Forwarding a request to one endpoint: proxy headers, pooled connections,
//! streaming bodies, and failures mapped to who is at fault.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::error::Fault;
use crate::ingress::strip_hop_by_hop;
use crate::upstream::{Upstream, Upstreams};

/// Pooled HTTP clients per upstream (each with its connect deadline), one per
/// worker: a worker's requests use connections its own event loop drives, so
/// a request never hops threads.
pub struct Forwarder {
    clients: HashMap<String, Vec<Clients>>,
}

/// One worker's clients for one upstream.
struct Clients {
    /// Keeps connections for reuse.
    pooled: Client<HttpConnector, ProxyBody>,
    /// Keeps none: a replay goes over a connection of its own, never over
    /// another pooled one the endpoint may have closed as well.
    fresh: Client<HttpConnector, ProxyBody>,
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
                let client = |idle_per_host: usize| {
                    let mut conn = HttpConnector::new();
                    conn.set_nodelay(true);
                    conn.set_connect_timeout(Some(u.connect_timeout));
                    conn.set_keepalive(Some(Duration::from_secs(60)));
                    Client::builder(TokioExecutor::new())
                        .pool_timer(TokioTimer::new())
                        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                        .pool_max_idle_per_host(idle_per_host)
                        .build(conn)
                };
                let per_worker = (0..workers.max(1))
                    .map(|_| Clients {
                        pooled: client(usize::MAX),
                        fresh: client(0),
                    })
                    .collect();
                (u.name.clone(), per_worker)
            })
            .collect();
        Forwarder { clients }
    }

    fn client(&self, upstream: &str) -> Option<&Clients> {
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
        body: ProxyBody,
    ) -> Result<Response<Incoming>, Fault> {
        let endpoint = &upstream.endpoints[index];
        let http_client = self.client(&upstream.name).ok_or(Fault::PluginContract)?;
        prepare_request(&mut parts, &endpoint.address)?;
        // A pooled connection the upstream already closed fails a request
        // after it was written. One with no body and a repeatable method is
        // replayed once; a new connection also tells a dead endpoint (refused)
        // from a keep-alive race.
        let replay = (body.is_end_stream() && parts.method.is_idempotent())
            .then(|| clone_request_parts(&parts));
        let req = Request::from_parts(parts, body);

        let _in_flight = endpoint.start_request();
        let sent = Instant::now();
        // One deadline for the response head, replay included.
        let deadline = tokio::time::Instant::now() + upstream.timeout;
        let mut result = tokio::time::timeout_at(deadline, http_client.pooled.request(req)).await;
        if let (Ok(Err(e)), Some(parts)) = (&result, replay)
            && !e.is_connect()
        {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(e), "replaying on a new connection");
            let req = Request::from_parts(parts, ProxyBody::full(bytes::Bytes::new()));
            result = tokio::time::timeout_at(deadline, http_client.fresh.request(req)).await;
        }
        match result {
            Err(_elapsed) => {
                tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.address, "upstream timed out");
                Err(Fault::UpstreamTimeout)
            }
            Ok(Err(e)) if e.is_connect() && local_exhaustion(&e) => {
                // Our own file descriptors or ports ran out: the endpoint is
                // not to blame, and marking it would spread the outage.
                tracing::error!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "cannot connect upstream: this process is out of resources");
                Err(Fault::LocalResources)
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

/// Whether a failed connect failed for want of local resources: file
/// descriptors (EMFILE, ENFILE), buffers or memory (ENOBUFS, ENOMEM) or
/// ephemeral ports (EADDRNOTAVAIL). Linux's numbers.
fn local_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    const LOCAL: [i32; 5] = [24, 23, 105, 12, 99];
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| LOCAL.contains(&code))
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Point a request (settled at ingress, edited by the stages) at the
/// endpoint: absolute URI, HTTP/1.1. Host and the forwarding headers were
/// set at ingress, before the plugins, which may have changed them.
fn prepare_request(
    parts: &mut http::request::Parts,
    endpoint: &http::uri::Authority,
) -> Result<(), Fault> {
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
    parts.version = Version::HTTP_11;
    Ok(())
}

fn append_via(h: &mut HeaderMap, version: Version) {
    let v = match version {
        Version::HTTP_10 => "1.0 portier",
        Version::HTTP_2 => "2 portier",
        _ => "1.1 portier",
    };
    h.append(header::VIA, HeaderValue::from_static(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_request_is_pointed_at_the_endpoint_and_keeps_its_headers() {
        let mut p = Request::builder()
            .version(Version::HTTP_2)
            .uri("/a/b?x=1")
            .header("host", "example.com")
            .header("x-forwarded-for", "192.0.2.7")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        prepare_request(&mut p, &"127.0.0.1:9000".parse().unwrap()).unwrap();
        assert_eq!(p.uri.to_string(), "http://127.0.0.1:9000/a/b?x=1");
        assert_eq!(p.version, Version::HTTP_11);
        assert_eq!(p.headers["host"], "example.com");
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn running_out_of_descriptors_is_local_but_a_refusal_is_not() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(local_exhaustion(&emfile));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!local_exhaustion(&refused));
    }
}
