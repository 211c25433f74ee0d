//! Requests a plugin sends of its own (WIT `outbound`) to an upstream its
//! stage was granted: forward auth, token introspection.
//!
//! They go the way proxied requests go — a healthy endpoint picked by the
//! host's round-robin, this worker's pooled connections, passive health
//! fed by the outcome — but are answered whole, bounded in size and time.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::BodyExt;

use crate::body::ProxyBody;
use crate::forward::{self, Attempt, Failure};
use crate::plugin::heads::{self, HeaderLimits};
use crate::upstream::Upstream;
use crate::upstream::conn::UpstreamBody;
use crate::upstream::endpoint::Outcome;

/// The largest response body a plugin's request gets back.
pub const MAX_BODY: usize = 1 << 20;
/// Requests one plugin call may send.
pub const MAX_PER_CALL: u32 = 8;

/// A plugin's request, as the WIT record gives it.
#[derive(Debug)]
pub struct OutboundRequest {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The deadline the plugin asked for.
    pub timeout: Option<Duration>,
}

/// The whole response.
#[derive(Debug)]
pub struct OutboundResponse {
    /// The status.
    pub status: u16,
    /// Header names and values (values that are not text are left out).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// Why no response came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The request cannot be sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The upstream failed.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// Past the deadline.
    #[error("no response within the deadline")]
    Timeout,
    /// The body was over [`MAX_BODY`].
    #[error("response body over {MAX_BODY} bytes")]
    TooLarge,
}

/// Send `request` to a healthy endpoint of `up` and read the whole answer.
pub async fn send(
    up: &Upstream,
    request: OutboundRequest,
    limits: HeaderLimits,
) -> Result<OutboundResponse, OutboundError> {
    let deadline = request
        .timeout
        .map_or(up.config.timeout, |t| t.min(up.config.timeout));
    let req = build(request, limits)?;
    let exchange = async {
        match exchange(up, req).await {
            Ok(resp) => read(resp).await,
            Err(None) => Err(OutboundError::Unavailable(format!(
                "no healthy endpoint in upstream {:?}",
                up.name
            ))),
            Err(Some(Failure::Timeout)) => Err(OutboundError::Timeout),
            Err(Some(f)) => Err(OutboundError::Unavailable(format!("{f:?}").to_lowercase())),
        }
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .unwrap_or(Err(OutboundError::Timeout))
}

/// A request of the host's own (a plugin's `outbound`, a handler's
/// outgoing request) to a healthy endpoint of `up`, Host set to the
/// endpoint's address unless the request has one; the response head, its
/// body streaming. The outcome feeds passive health; a pooled connection
/// found closed (nothing sent) is replayed once, on another endpoint if one
/// is up. `Err(None)`: no healthy endpoint.
pub(crate) async fn exchange(
    up: &Upstream,
    mut req: Request<ProxyBody>,
) -> Result<http::Response<UpstreamBody>, Option<Failure>> {
    let mut index = up.round_robin(0).ok_or(None)?;
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(up.endpoints[index].state.address.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let mut replayed = false;
    loop {
        match forward::attempt(up, index, req).await {
            Attempt::Response(resp) => {
                up.record(index, Outcome::Success);
                return Ok(resp);
            }
            Attempt::NotSent(again, Failure::Reset) if !replayed => {
                replayed = true;
                req = again;
                index = up.round_robin(0).unwrap_or(index);
            }
            Attempt::NotSent(_, failure) | Attempt::Failed(failure) => {
                if let Some(outcome) = failure.outcome() {
                    up.record(index, outcome);
                }
                return Err(Some(failure));
            }
        }
    }
}

/// The request as the host sends it: a valid method and origin-form path,
/// headers a plugin may set (within the client's limits), Content-Length
/// from the body.
fn build(r: OutboundRequest, limits: HeaderLimits) -> Result<Request<ProxyBody>, OutboundError> {
    let invalid = OutboundError::Invalid;
    let method = Method::from_bytes(r.method.as_bytes())
        .map_err(|_| invalid(format!("bad method {:?}", r.method)))?;
    if !r.path.starts_with('/') {
        return Err(invalid(format!("path {:?} must start with '/'", r.path)));
    }
    let uri: http::Uri = r
        .path
        .parse()
        .map_err(|e| invalid(format!("bad path {:?}: {e}", r.path)))?;
    let mut req = Request::new(ProxyBody::full(r.body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in &r.headers {
        heads::append_header(req.headers_mut(), name, value, limits)
            .map_err(|e| invalid(format!("header {name:?}: {e}")))?;
    }
    Ok(req)
}

async fn read(resp: http::Response<UpstreamBody>) -> Result<OutboundResponse, OutboundError> {
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                OutboundError::TooLarge
            } else {
                OutboundError::Unavailable(format!("the response body broke: {e}"))
            }
        })?
        .to_bytes();
    let headers = parts
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    Ok(OutboundResponse {
        status: parts.status.as_u16(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeaderLimits {
        HeaderLimits {
            max_headers: 100,
            max_bytes: 64 << 10,
        }
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> OutboundRequest {
        OutboundRequest {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: b"{}".to_vec(),
            timeout: None,
        }
    }

    #[test]
    fn requests_are_checked_before_anything_is_sent() {
        let ok = build(request("POST", "/check?x=1", &[("x-a", "1")]), limits()).unwrap();
        assert_eq!(ok.method(), Method::POST);
        assert_eq!(ok.uri(), "/check?x=1");
        assert_eq!(ok.headers()["x-a"], "1");
        for (bad, why) in [
            (request("GE T", "/", &[]), "bad method"),
            (request("GET", "check", &[]), "must start with '/'"),
            (request("GET", "/", &[("content-length", "5")]), "header"),
            (request("GET", "/", &[("x a", "1")]), "header"),
            (request("GET", "/", &[("x-a", "1\r\nx-b: 2")]), "header"),
        ] {
            let e = build(bad, limits()).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
