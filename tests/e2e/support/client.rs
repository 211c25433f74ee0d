//! A keep-alive HTTP/1.1 client (hyper-util's pooled client) for talking to
//! the proxy, and the JSON echo the fake backends answer with.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::body::{self, Body};

/// The longest a request (head and whole body) may take before the test fails;
/// generous because a 10 MiB body crosses an unoptimised debug proxy twice.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled client whose paths are relative to one address (the proxy's).
#[derive(Clone)]
pub struct Client {
    base: SocketAddr,
    inner: legacy::Client<HttpConnector, Body>,
}

/// A whole response: status, headers and the collected body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// What an echoing [`Backend`](super::Backend) saw, parsed from its JSON body.
#[derive(Debug, Deserialize)]
pub struct Echo {
    /// The backend's name.
    pub backend: String,
    /// The request method.
    pub method: String,
    /// The path, without the query string, exactly as received.
    pub path: String,
    /// The query string without `?`, exactly as received.
    pub query: Option<String>,
    /// Every header line in the order hyper keeps them (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Bytes of request body received.
    pub body_len: u64,
    /// Hex SHA-256 of the request body.
    pub body_sha256: String,
}

// === impl Client ===

impl Client {
    /// A client for `http://BASE/...`.
    pub fn new(base: SocketAddr) -> Self {
        let inner = legacy::Client::builder(TokioExecutor::new()).build_http();
        Self { base, inner }
    }

    /// A request builder with method and URI (`http://BASE{path_and_query}`) filled in.
    pub fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path_and_query}", self.base))
    }

    /// GET a path and collect the reply.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.get_with(path_and_query, &[]).await
    }

    /// GET a path with these request headers, added in order (so a name may
    /// repeat), and collect the reply.
    pub async fn get_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
        let request = headers
            .iter()
            .fold(
                self.request(Method::GET, path_and_query),
                |request, &(name, value)| request.header(name, value),
            )
            .body(body::empty())
            .expect("request");
        self.send(request).await
    }

    /// Send a request and collect the whole reply, bounded by [`REQUEST_TIMEOUT`].
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        let collect = async {
            let response = self
                .inner
                .request(request)
                .await
                .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
            let (parts, incoming) = response.into_parts();
            let body = incoming
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e:?}"))
                .to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, collect)
            .await
            .unwrap_or_else(|_| panic!("{what}: no whole reply within {REQUEST_TIMEOUT:?}"))
    }

    /// Send a request and return as soon as the response head arrives (bounded
    /// by [`REQUEST_TIMEOUT`]); the caller reads the body frame by frame.
    pub async fn send_streaming(&self, request: Request<Body>) -> Response<Incoming> {
        let what = format!("{} {}", request.method(), request.uri());
        tokio::time::timeout(REQUEST_TIMEOUT, self.inner.request(request))
            .await
            .unwrap_or_else(|_| panic!("{what}: no response head within {REQUEST_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"))
    }
}

// === impl Reply ===

impl Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a response header, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a response header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The backend's echo; fails the test (showing the reply) unless this is a
    /// 200 carrying one.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected a backend's echo, got {self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not a backend echo ({e}): {}", self.text()))
    }
}

// === impl Echo ===

impl Echo {
    /// The first value of a request header as the backend saw it (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of a request header as the backend saw it, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every value of a header joined with ", ": the same list whether it came
    /// as one line or several (RFC 9110 section 5.3).
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        (!all.is_empty()).then(|| all.join(", "))
    }

    /// The path with `?query` when there is one, as the backend received it.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}
