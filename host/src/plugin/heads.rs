//! The request and response heads plugins see, as host-owned resources.
//!
//! For a plugin call the head is moved into the instance's resource table and
//! moved back out afterwards: no header is copied unless the guest asks for it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;

/// A request head plus what the proxy knows about its client.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, URI, version, headers.
    pub parts: http::request::Parts,
    /// The client's socket address.
    pub client: SocketAddr,
    /// Endpoints of the chosen upstream this request already tried (bit
    /// `i` for endpoint `i`, first 64 only): a retry's pick leaves them out.
    pub tried: u64,
    /// Stages (bit `i` for stage `i`) whose candidate ran for this request
    /// instead of their current version: their later calls (a filter's
    /// `on-response`, a retry's pick) run the same version.
    pub candidates: u64,
    /// Headers stages asked to add to this request's response
    /// (`add-response-header`), whoever answers it.
    pub response_headers: Option<Box<HeaderMap>>,
    /// The name of the route the router chose, if the rule has one: stages
    /// scoped to routes run only under theirs.
    pub route: Option<String>,
    /// The upstream the router chose.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Values stages keep for the rest of the request, and the start of its
    /// body (boxed: most requests have neither, and the head moves a lot).
    pub context: Option<Box<Context>>,
}

/// Keys a request's context holds at most.
pub const MAX_CONTEXT_KEYS: usize = 64;
/// Bytes of keys and values a request's context holds at most.
pub const MAX_CONTEXT_BYTES: usize = 16 << 10;

/// What stages keep for the rest of one request (`context-set`), and the
/// body prefix read for the filters that asked for one.
#[derive(Debug, Default, Clone)]
pub struct Context {
    values: Vec<(String, String)>,
    bytes: usize,
    /// The start of the request body, when a filter asked for it.
    pub body: Option<BodyPrefix>,
}

/// The first bytes of a request body, read before the request stages ran.
#[derive(Debug, Clone, Default)]
pub struct BodyPrefix {
    /// As many bytes as the most demanding filter asked for (or more: a
    /// frame is not split), fewer when the body is shorter.
    pub bytes: Bytes,
    /// Whether `bytes` holds the whole body.
    pub complete: bool,
}

impl Context {
    /// The value kept under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Keep `value` under `key`, within [`MAX_CONTEXT_KEYS`] and
    /// [`MAX_CONTEXT_BYTES`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), EditError> {
        if key.is_empty() {
            return Err("a context key must not be empty".to_string());
        }
        let old = self.values.iter().position(|(k, _)| k == key);
        let freed = old.map_or(0, |i| self.values[i].0.len() + self.values[i].1.len());
        let bytes = self.bytes - freed + key.len() + value.len();
        if bytes > MAX_CONTEXT_BYTES {
            return Err(format!(
                "the request's context would hold {bytes} bytes, over its {MAX_CONTEXT_BYTES}"
            ));
        }
        match old {
            Some(i) => self.values[i].1 = value.to_owned(),
            None if self.values.len() >= MAX_CONTEXT_KEYS => {
                return Err(format!(
                    "the request's context holds {MAX_CONTEXT_KEYS} keys already"
                ));
            }
            None => self.values.push((key.to_owned(), value.to_owned())),
        }
        self.bytes = bytes;
        Ok(())
    }
}

/// An upstream (or generated) response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version, headers.
    pub parts: http::response::Parts,
}

/// Why a plugin's edit of a head was refused (sent to the guest as text).
pub type EditError = String;

impl RequestHead {
    /// A request head as ingress settled it.
    pub fn new(parts: http::request::Parts, client: SocketAddr) -> RequestHead {
        RequestHead {
            parts,
            client,
            tried: 0,
            candidates: 0,
            response_headers: None,
            route: None,
            upstream: None,
            context: None,
        }
    }

    /// A copy of the head as it is now (for a shadow call, which must see
    /// what the current version saw): method, target, headers, the client,
    /// the route, upstream and context so far, the client certificate.
    pub fn snapshot(&self) -> RequestHead {
        let mut copy = RequestHead::new(
            crate::forward::clone_request_parts(&self.parts),
            self.client,
        );
        if let Some(cert) = self.parts.extensions.get::<Arc<crate::tls::ClientCert>>() {
            copy.parts.extensions.insert(cert.clone());
        }
        copy.route.clone_from(&self.route);
        copy.upstream.clone_from(&self.upstream);
        copy.context.clone_from(&self.context);
        copy
    }

    /// The request's context, made on first use.
    pub fn context_mut(&mut self) -> &mut Context {
        self.context.get_or_insert_with(Box::default)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The query string without `?`.
    pub fn query(&self) -> Option<&str> {
        self.parts.uri.query()
    }

    /// The requested host without port: Host header, else the URI authority.
    pub fn host(&self) -> Option<&str> {
        let raw = match self.parts.headers.get(http::header::HOST) {
            Some(h) => h.to_str().ok()?,
            None => self.parts.uri.host()?,
        };
        Some(strip_port(raw))
    }

    /// Replace path and/or query, keeping the URI's scheme and authority.
    pub fn set_path_and_query(&mut self, path: &str, query: Option<&str>) -> Result<(), EditError> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with '/'"));
        }
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let pq: PathAndQuery = pq
            .parse()
            .map_err(|e| format!("invalid path or query: {e}"))?;
        let mut uri = std::mem::take(&mut self.parts.uri).into_parts();
        uri.path_and_query = Some(pq);
        self.parts.uri = http::Uri::from_parts(uri).map_err(|e| format!("invalid URI: {e}"))?;
        Ok(())
    }
}

/// `host:port` -> `host`, `[::1]:80` -> `[::1]`.
fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map(|i| &h[..=i]).unwrap_or(h);
    }
    match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    }
}

/// Header access shared by both heads.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Every value of a header (values that are not text are skipped).
pub fn header_all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// Headers a plugin may not set, append or remove: message framing and
/// hop-by-hop headers belong to the proxy, which re-derives them (a plugin
/// that could edit them could split a response or desynchronise a pooled
/// upstream connection).
const PROXY_OWNED: [http::HeaderName; 10] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::header::UPGRADE,
    http::header::TE,
    http::header::TRAILER,
    http::HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

/// Whether a plugin may edit this header.
pub fn proxy_owned(name: &HeaderName) -> bool {
    PROXY_OWNED.contains(name)
}

/// The limits a plugin's header edits obey: the client's (`[server.limits]`).
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    /// Header fields per message.
    pub max_headers: usize,
    /// Bytes of all names and values together.
    pub max_bytes: usize,
}

impl HeaderLimits {
    /// Check `headers` would stay within the limits with `extra` more bytes
    /// in `fields` more fields.
    fn check(&self, headers: &HeaderMap, fields: usize, extra: usize) -> Result<(), EditError> {
        if headers.len() + fields > self.max_headers {
            return Err(format!(
                "more than {} header fields (limits.max_headers)",
                self.max_headers
            ));
        }
        let bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if bytes + extra > self.max_bytes {
            return Err(format!(
                "headers over {} bytes (limits.max_request_head)",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

/// Validate a header name and value from a guest: well-formed and not
/// one the proxy owns.
pub fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), EditError> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    if proxy_owned(&n) {
        return Err(format!(
            "{n} cannot be edited: the proxy owns message framing and hop-by-hop headers"
        ));
    }
    let v =
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok((n, v))
}

/// Set a header, replacing existing values.
pub fn set_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    limits: HeaderLimits,
) -> Result<(), EditError> {
    let (n, v) = header_pair(name, value)?;
    let existing: usize = headers
        .get_all(&n)
        .iter()
        .map(|old| n.as_str().len() + old.len())
        .sum();
    let replaced = headers.get_all(&n).iter().count();
    let added = n.as_str().len() + v.len();
    limits.check(
        headers,
        1usize.saturating_sub(replaced),
        added.saturating_sub(existing),
    )?;
    headers.insert(n, v);
    Ok(())
}

/// Append a header value.
pub fn append_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    limits: HeaderLimits,
) -> Result<(), EditError> {
    let (n, v) = header_pair(name, value)?;
    limits.check(headers, 1, n.as_str().len() + v.len())?;
    headers.append(n, v);
    Ok(())
}

/// Remove every value of a header. An invalid name matches nothing; a
/// header the proxy owns is left alone (the WIT call has no error to say
/// so: `set-header` on it does).
pub fn remove_header(headers: &mut HeaderMap, name: &str) {
    if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
        && !proxy_owned(&n)
    {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, host: Option<&str>) -> RequestHead {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        RequestHead::new(parts, "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn context_keeps_values_within_its_bounds() {
        let mut c = Context::default();
        c.set("identity", "alice").unwrap();
        c.set("identity", "bob").unwrap();
        assert_eq!(c.get("identity"), Some("bob"));
        assert_eq!(c.get("other"), None);
        assert!(c.set("", "x").is_err());
        for i in 1..MAX_CONTEXT_KEYS {
            c.set(&format!("k{i}"), "v").unwrap();
        }
        let full = c.set("one-more", "v").unwrap_err();
        assert!(full.contains("64 keys"), "{full}");
        // Replacing a key is not adding one.
        c.set("k1", "w").unwrap();
        let big = "x".repeat(MAX_CONTEXT_BYTES);
        assert!(c.set("k2", &big).unwrap_err().contains("bytes"));
        // Freed bytes count again: a large value replaced by a small one.
        let mut c = Context::default();
        c.set("a", &"x".repeat(MAX_CONTEXT_BYTES - 1)).unwrap();
        c.set("a", "small").unwrap();
        c.set("b", &"y".repeat(1000)).unwrap();
    }

    #[test]
    fn host_comes_from_the_host_header_without_port() {
        assert_eq!(
            head("/", Some("example.com:8080")).host(),
            Some("example.com")
        );
        assert_eq!(head("/", Some("[::1]:80")).host(), Some("[::1]"));
        assert_eq!(head("http://a.test/x", None).host(), Some("a.test"));
    }

    const LIMITS: HeaderLimits = HeaderLimits {
        max_headers: 3,
        max_bytes: 64,
    };

    #[test]
    fn plugins_cannot_edit_framing_or_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5"));
        for name in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "upgrade",
            "te",
        ] {
            let e = set_header(&mut h, name, "x", LIMITS).unwrap_err();
            assert!(e.contains("cannot be edited"), "{name}: {e}");
            assert!(append_header(&mut h, name, "x", LIMITS).is_err(), "{name}");
        }
        remove_header(&mut h, "content-length");
        assert_eq!(h["content-length"], "5");
        assert!(set_header(&mut h, "x-fine", "1", LIMITS).is_ok());
    }

    #[test]
    fn plugin_header_edits_obey_the_count_and_size_limits() {
        let mut h = HeaderMap::new();
        append_header(&mut h, "a", "1", LIMITS).unwrap();
        append_header(&mut h, "b", "2", LIMITS).unwrap();
        append_header(&mut h, "c", "3", LIMITS).unwrap();
        let e = append_header(&mut h, "d", "4", LIMITS).unwrap_err();
        assert!(e.contains("max_headers"), "{e}");
        // Replacing a value adds no field.
        set_header(&mut h, "a", "one", LIMITS).unwrap();
        let e = set_header(&mut h, "b", &"x".repeat(64), LIMITS).unwrap_err();
        assert!(e.contains("max_request_head"), "{e}");
        assert_eq!(h["b"], "2");
    }

    #[test]
    fn rewriting_the_path_keeps_or_replaces_the_query() {
        let mut h = head("/api/users?id=1", None);
        let q = h.query().map(str::to_owned);
        h.set_path_and_query("/users", q.as_deref()).unwrap();
        assert_eq!(h.parts.uri.to_string(), "/users?id=1");
        assert!(h.set_path_and_query("users", None).is_err());
    }
}
