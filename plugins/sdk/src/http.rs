//! The request and response heads a plugin sees, and the responses it sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wit;

/// A verified client certificate: subject, names by kind, and fingerprint.
pub use crate::wit::types::ClientCertificate;

/// The start of a request body a filter asked for: its `bytes`, and whether
/// they are the `complete` body.
pub use crate::wit::types::BodyPrefix;

// === impl Request ===

/// The request head while a stage runs, borrowed from the host.
///
/// Every accessor is a call into the host, which keeps the head: nothing is
/// copied into the plugin that it does not ask for. Read what you need once.
pub struct Request<'a> {
    head: &'a wit::types::RequestHead,
}

impl<'a> Request<'a> {
    #[doc(hidden)]
    pub fn from_wit(head: &'a wit::types::RequestHead) -> Self {
        Request { head }
    }

    /// The method, e.g. `"GET"`.
    pub fn method(&self) -> String {
        self.head.method()
    }

    /// The path without the query string, e.g. `"/api/users"`.
    pub fn path(&self) -> String {
        self.head.path()
    }

    /// Replace the path the upstream will see; it must start with `/`.
    pub fn set_path(&self, path: &str) -> Result<(), String> {
        self.head.set_path(path)
    }

    /// The query string without the leading `?`, if any.
    pub fn query(&self) -> Option<String> {
        self.head.query()
    }

    /// Replace the query string, or remove it with `None`.
    pub fn set_query(&self, query: Option<&str>) -> Result<(), String> {
        self.head.set_query(query)
    }

    /// The host the client asked for (Host header or URI authority), without port.
    pub fn host(&self) -> Option<String> {
        self.head.host()
    }

    /// The first value of a header (the name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.header(name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.head.header_all(name)
    }

    /// Set a header, replacing every existing value.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.head.set_header(name, value)
    }

    /// Add a value to a header, keeping the existing ones.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.head.append_header(name, value)
    }

    /// Remove every value of a header.
    pub fn remove_header(&self, name: &str) {
        self.head.remove_header(name)
    }

    /// The client's address: the TCP peer, or what a trusted proxy in front
    /// reported. Key per-client state by its [`ip`](SocketAddr::ip): a
    /// client keeps its IP when it opens a new connection from another port.
    pub fn client_addr(&self) -> SocketAddr {
        let wit::types::SocketAddress { ip, port } = self.head.client_addr();
        let ip = match ip {
            wit::types::IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            wit::types::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        };
        SocketAddr::new(ip, port)
    }

    /// The name of the route the router chose for this request, if it has
    /// one (`None` in stages before the router).
    pub fn route(&self) -> Option<String> {
        self.head.route()
    }

    /// The upstream the router chose (`None` in stages before the router).
    pub fn upstream(&self) -> Option<String> {
        self.head.upstream()
    }

    /// A value a stage set for this request with
    /// [`context_set`](Request::context_set). Later stages read what earlier
    /// ones decided (an authenticated identity, say), and a filter reads in
    /// `on_response` what it kept in `on_request`:
    ///
    /// ```no_run
    /// # use portier_sdk::{clock, Request, Response};
    /// # fn on_request(request: &Request) {
    /// let _ = request.context_set("timing.start", &clock::monotonic_ns().to_string());
    /// # }
    /// # fn on_response(request: &Request, response: &Response) {
    /// if let Some(start) = request.context_get("timing.start").and_then(|s| s.parse::<u64>().ok()) {
    ///     let us = (clock::monotonic_ns() - start) / 1000;
    ///     let _ = response.set_header("server-timing", &format!("upstream;dur={}", us / 1000));
    /// }
    /// # }
    /// ```
    pub fn context_get(&self, key: &str) -> Option<String> {
        self.head.context_get(key)
    }

    /// Keep a value for the rest of this request, for every later stage
    /// call to read (keys are shared by all stages: prefix your plugin's
    /// own with its name). At most 64 keys and 16 KiB per request.
    pub fn context_set(&self, key: &str, value: &str) -> Result<(), String> {
        self.head.context_set(key, value)
    }

    /// The first bytes of the request body, when this filter asked for them
    /// ([`Filter::request_body`](crate::Filter::request_body)); `None` for
    /// other stages.
    pub fn body(&self) -> Option<BodyPrefix> {
        self.head.body()
    }

    /// The certificate the client proved it holds on a mutual-TLS listener
    /// (`[server.tls] client_ca`), already verified by the host; `None` on
    /// plain HTTP or when the client sent none (`client_auth = "optional"`).
    ///
    /// ```no_run
    /// # fn check(request: &portier_sdk::Request) -> bool {
    /// request
    ///     .client_certificate()
    ///     .is_some_and(|c| c.uris.iter().any(|u| u == "spiffe://example.org/billing"))
    /// # }
    /// ```
    pub fn client_certificate(&self) -> Option<ClientCertificate> {
        self.head.client_certificate()
    }

    /// Add a header to the response this request will get, whoever answers
    /// it: the upstream, a plugin, or the proxy's own error. A balancer's
    /// session cookie is the typical use:
    ///
    /// ```no_run
    /// # fn pick(request: &portier_sdk::Request) -> Result<(), String> {
    /// request.add_response_header("set-cookie", "backend=a1; Path=/; HttpOnly")?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Like [`set_header`](Request::set_header) it refuses framing and
    /// hop-by-hop headers, and headers past the response's limits. The
    /// header is added, never replacing one of the same name.
    pub fn add_response_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.head.add_response_header(name, value)
    }
}

// === impl Response ===

/// The upstream's response head while response stages run, borrowed from the host.
pub struct Response<'a> {
    head: &'a wit::types::ResponseHead,
}

impl<'a> Response<'a> {
    #[doc(hidden)]
    pub fn from_wit(head: &'a wit::types::ResponseHead) -> Self {
        Response { head }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status()
    }

    /// Replace the status code (100..=999).
    pub fn set_status(&self, status: u16) -> Result<(), String> {
        self.head.set_status(status)
    }

    /// The first value of a header (the name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.header(name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.head.header_all(name)
    }

    /// Set a header, replacing every existing value.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.head.set_header(name, value)
    }

    /// Add a value to a header, keeping the existing ones.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.head.append_header(name, value)
    }

    /// Remove every value of a header.
    pub fn remove_header(&self, name: &str) {
        self.head.remove_header(name)
    }
}

// === impl HttpResponse ===

/// A complete response a plugin sends instead of forwarding (deny, redirect, 404…).
///
/// ```
/// use portier_sdk::HttpResponse;
///
/// let denied = HttpResponse::text(403, "403 Forbidden\n");
/// let moved = HttpResponse::new(308).header("location", "https://example.com/");
/// assert_eq!(denied.status, 403);
/// assert_eq!(moved.headers, [("location".to_string(), "https://example.com/".to_string())]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The body bytes (the host sets `content-length`).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response, e.g. `HttpResponse::text(404, "404 Not Found\n")`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        HttpResponse::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// A redirect (`301`, `302`, `307`, `308`…) to `location`, with an empty body.
    pub fn redirect(status: u16, location: impl Into<String>) -> Self {
        HttpResponse::new(status).header("location", location)
    }

    /// Add a header (names may repeat).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replace the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl From<HttpResponse> for wit::types::Response {
    fn from(response: HttpResponse) -> Self {
        wit::types::Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_sets_content_type_and_body() {
        let response = HttpResponse::text(404, "404 Not Found\n");
        assert_eq!(response.status, 404);
        assert_eq!(
            response.headers,
            [(
                "content-type".to_string(),
                "text/plain; charset=utf-8".to_string()
            )]
        );
        assert_eq!(response.body, b"404 Not Found\n");
    }

    #[test]
    fn builder_keeps_header_order_and_repeats() {
        let response = HttpResponse::new(200)
            .header("a", "1")
            .header("b", "2")
            .header("a", "3")
            .body("x");
        let names: Vec<_> = response
            .headers
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        assert_eq!(names, ["a=1", "b=2", "a=3"]);
        let wire: wit::types::Response = response.into();
        assert_eq!(wire.body, b"x");
    }
}
