//! What the stages decided for a request, and responses.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use portier::access::Flags;
use portier::body::ProxyBody;
use portier::forward::clone_request_parts;
use portier::pipeline::{Decision, Outcome as Verdict};
use portier::plugin::PluginResponse;
use portier::plugin::heads::{RequestHead, ResponseHead};

/// What the request stages decided: forward (to which upstream and
/// endpoint, with the head as the stages left it) or answer (a stage's
/// response, or the proxy's own error when a stage failed closed).
#[derive(Debug)]
pub struct Outcome {
    head: RequestHead,
    decision: Decision,
    stopped_at: Option<String>,
}

impl Outcome {
    pub(crate) fn new(
        head: RequestHead,
        decision: Decision,
        stopped_at: Option<String>,
    ) -> Outcome {
        Outcome {
            head,
            decision,
            stopped_at,
        }
    }

    /// Whether the request goes on to an upstream (a handler upstream's
    /// component included).
    pub fn forwarded(&self) -> bool {
        matches!(
            self.decision.outcome,
            Verdict::Forward(..) | Verdict::Handle(..)
        )
    }

    /// The upstream it is forwarded to.
    pub fn upstream(&self) -> Option<&str> {
        match &self.decision.outcome {
            Verdict::Forward(up, _) | Verdict::Handle(up, _) => Some(&up.name),
            _ => None,
        }
    }

    /// The index, in its upstream's `endpoints`, of the endpoint it is
    /// forwarded to.
    pub fn endpoint_index(&self) -> Option<usize> {
        match &self.decision.outcome {
            Verdict::Forward(_, i) => Some(*i),
            _ => None,
        }
    }

    /// The address (`host:port`) of the endpoint it is forwarded to.
    pub fn endpoint(&self) -> Option<String> {
        match &self.decision.outcome {
            Verdict::Forward(up, i) => Some(up.endpoints[*i].state.address.to_string()),
            _ => None,
        }
    }

    /// The route the router chose (its `name`), if it named one.
    pub fn route(&self) -> Option<&str> {
        self.head.route.as_deref()
    }

    /// The status the client gets when the proxy answers (a stage's
    /// response or the proxy's error); `None` when forwarded.
    pub fn status(&self) -> Option<u16> {
        match &self.decision.outcome {
            Verdict::Respond(r) => Some(r.status),
            Verdict::Fail(fault) => Some(fault.status().as_u16()),
            Verdict::Cached(entry) => Some(entry.status.as_u16()),
            Verdict::Forward(..) | Verdict::Handle(..) => None,
        }
    }

    /// The response a stage sent instead of forwarding.
    pub fn response(&self) -> Option<Response> {
        match &self.decision.outcome {
            Verdict::Respond(r) => Some(Response::from_plugin(r)),
            _ => None,
        }
    }

    /// The access log's flag for the proxy's own error (`PF`: a stage
    /// failed closed; `PC`: a stage broke the contract; `UH`: no endpoint;
    /// `KV`: kv down and `kv.outage = "closed"`), or `None`.
    pub fn fault(&self) -> Option<String> {
        match &self.decision.outcome {
            Verdict::Fail(fault) => Some(Flags::of(*fault).to_text()),
            _ => None,
        }
    }

    /// The stage that answered or failed closed (its name), when the
    /// request stopped before the end of the pipeline.
    pub fn stopped_at(&self) -> Option<&str> {
        self.stopped_at.as_deref()
    }

    /// The cache-policy stage's verdict, as the `x-cache` header says it:
    /// `HIT`, `STALE`, `MISS` or `BYPASS`.
    pub fn cache(&self) -> Option<String> {
        let verdict = self.decision.cache.as_ref()?.verdict.header_value();
        Some(String::from_utf8_lossy(verdict.as_bytes()).into_owned())
    }

    /// The cache key a miss will store its response under.
    pub fn cache_key(&self) -> Option<&str> {
        self.decision.cache.as_ref()?.key.as_deref()
    }

    /// The request's method, as the stages left it.
    pub fn method(&self) -> &str {
        self.head.parts.method.as_str()
    }

    /// The request's path, as the stages left it (a router may strip a prefix).
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The request's query, as the stages left it.
    pub fn query(&self) -> Option<&str> {
        self.head.query()
    }

    /// A request header as the stages left it (the first value), if
    /// present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.parts.headers.get(name)?.to_str().ok()
    }

    /// Every value of a request header, as the stages left it.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// Headers stages added to whatever response the request gets
    /// (`add-response-header`: a balancer's session cookie).
    pub fn response_headers(&self) -> Vec<(String, String)> {
        self.head
            .response_headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }

    /// A value a stage kept in the request's context (`context-set`).
    pub fn context(&self, key: &str) -> Option<&str> {
        self.head.context.as_ref()?.get(key)
    }

    /// The head, the number of stages the request reached, and the
    /// response headers stages added.
    pub(crate) fn into_parts(mut self) -> (RequestHead, usize, Option<Box<http::HeaderMap>>) {
        let added = self.head.response_headers.take();
        (self.head, self.decision.reached, added)
    }

    /// The request's headers, as the stages left them.
    pub(crate) fn request_headers(&self) -> &http::HeaderMap {
        &self.head.parts.headers
    }

    /// A copy of the head (for a call that takes one by value).
    pub(crate) fn head_copy(&self) -> RequestHead {
        let mut head = RequestHead::new(clone_request_parts(&self.head.parts), self.head.client);
        head.route.clone_from(&self.head.route);
        head.upstream.clone_from(&self.head.upstream);
        head
    }
}

/// A response: a stage's answer, one a test makes up as the upstream's, or
/// what the filters' `on-response` made of it.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers in order (names lower-case).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Set the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case).
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn from_plugin(r: &PluginResponse) -> Response {
        Response {
            status: r.status,
            headers: r.headers.clone(),
            body: Bytes::from(r.body.clone()),
        }
    }

    /// The head and body the host's response stages take.
    ///
    /// # Panics
    ///
    /// When the status or a header is not valid HTTP: a test's mistake.
    pub(crate) fn into_parts(self) -> (http::response::Parts, ProxyBody) {
        let (parts, ()) = self
            .head_builder()
            .body(())
            .expect("a valid response")
            .into_parts();
        (parts, ProxyBody::full(self.body))
    }

    pub(crate) fn head_copy(&self) -> ResponseHead {
        let (parts, ()) = self
            .head_builder()
            .body(())
            .expect("a valid response")
            .into_parts();
        ResponseHead { parts }
    }

    fn head_builder(&self) -> http::response::Builder {
        let mut b = http::Response::builder().status(self.status);
        for (name, value) in &self.headers {
            b = b.header(name.as_str(), value.as_str());
        }
        b
    }

    pub(crate) async fn from_parts(parts: http::response::Parts, body: ProxyBody) -> Response {
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => panic!("the response body failed: {e}"),
        };
        Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        }
    }
}
