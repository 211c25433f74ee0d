//! What the host settles on every client request before any plugin sees it.
//!
//! - **Validation** (RFC 9110, 9112): exactly one Host on HTTP/1.1; an
//!   absolute-form or HTTP/2 authority replaces Host (RFC 9112 §3.2.2), so
//!   routing, plugins and the upstream all see one; no CONNECT tunnels; the
//!   target within `max_uri`. (hyper settles Transfer-Encoding with
//!   Content-Length as RFC 9112 §6.1 allows: the length is the chunked
//!   coding's, Content-Length is dropped, and the connection closes after.)
//! - **One path**: dot-segments removed (RFC 3986 §5.2.4), percent-encoded
//!   unreserved characters decoded (`%61` is `a`, `%2E` is `.`, §6.2.2.2),
//!   other escapes upper-cased, repeated slashes merged (as nginx does,
//!   `merge_slashes`). `%2F` and `%5C` stay encoded: they are data, not
//!   separators, for the router and the backend alike. A raw `\`, a NUL
//!   (raw or `%00`) or a malformed escape is refused.
//! - **Hop-by-hop headers** (and those `Connection` names) are dropped, and
//!   `Proxy-Authorization` is never forwarded.
//! - **Forwarding headers**: X-Forwarded-For/-Host/-Proto, Forwarded and
//!   X-Real-IP are believed only from a `trusted_proxies` peer; from anyone
//!   else they are replaced by what the proxy itself saw. The client address
//!   plugins and the access log see is the peer's, or, behind trusted
//!   proxies, the nearest untrusted address of X-Forwarded-For.
//!
//! All of it is pure: unit-tested here, no I/O.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri, Version};
use ipnet::IpNet;

/// X-Forwarded-For.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// X-Forwarded-Host.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// X-Forwarded-Proto.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message (RFC 9110
/// §7.6.1), plus the proxy credentials meant for this hop only.
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// How ingress treats requests: from the manifest's `[server]`.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest request target (path and query, or absolute form), in bytes.
    pub max_uri: usize,
    /// Merge repeated slashes in the path.
    pub merge_slashes: bool,
}

/// Why a request is refused before any plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed or ambiguous: 400.
    BadRequest(&'static str),
    /// The target is longer than `max_uri`: 414.
    UriTooLong,
    /// CONNECT: the proxy opens no tunnels: 405.
    MethodNotAllowed,
}

impl Rejection {
    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::UriTooLong => StatusCode::URI_TOO_LONG,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Why, for the log (the client gets only the status line's text).
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::BadRequest(r) => r,
            Rejection::UriTooLong => "request target longer than limits.max_uri",
            Rejection::MethodNotAllowed => "CONNECT is not supported",
        }
    }
}

/// The listener a request arrived on, as X-Forwarded-Proto names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

impl Ingress {
    /// Check and settle a request head; returns the client address (the
    /// peer, or behind trusted proxies the client they name, with port 0).
    pub fn admit(
        &self,
        parts: &mut http::request::Parts,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> Result<SocketAddr, Rejection> {
        if parts.method == Method::CONNECT {
            return Err(Rejection::MethodNotAllowed);
        }
        if target_len(&parts.uri) > self.max_uri {
            return Err(Rejection::UriTooLong);
        }
        settle_host(parts)?;
        if let Some(path) = normalize_path(parts.uri.path(), self.merge_slashes)? {
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let pq = PathAndQuery::try_from(pq)
                .map_err(|_| Rejection::BadRequest("path not valid after normalisation"))?;
            parts.uri = Uri::from(pq);
        }
        let trusted = self.trusts(peer.ip());
        // Kept aside before the hop-by-hop headers go: the forwarding step
        // asks the upstream for the same upgrade.
        if let Some(upgrade) = upgrade_request(parts) {
            parts.extensions.insert(upgrade);
        }
        // Whatever an untrusted client claims about earlier hops is a lie as
        // far as anyone behind us knows: those go with the hop-by-hop ones.
        strip(&mut parts.headers, !trusted);
        Ok(self.forwarding(parts, peer, scheme, trusted))
    }

    /// Set the forwarding headers; returns the client address.
    fn forwarding(
        &self,
        parts: &mut http::request::Parts,
        peer: SocketAddr,
        scheme: Scheme,
        trusted: bool,
    ) -> SocketAddr {
        let h = &mut parts.headers;
        let client = if trusted {
            self.client_behind(h, peer)
        } else {
            peer
        };
        append_forwarded_for(h, peer.ip(), trusted);
        h.entry(X_FORWARDED_PROTO)
            .or_insert_with(|| scheme.header_value());
        if let Some(host) = h.get(header::HOST).cloned() {
            h.entry(X_FORWARDED_HOST).or_insert(host);
        }
        h.append(header::VIA, via(parts.version));
        client
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The nearest address in X-Forwarded-For that is not itself a trusted
    /// proxy (nginx's `real_ip_recursive`); the peer when there is none.
    fn client_behind(&self, h: &HeaderMap, peer: SocketAddr) -> SocketAddr {
        let hops: Vec<&str> = h
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // Garbage in the chain: trust nothing before it.
                return peer;
            };
            if !self.trusts(ip) {
                return SocketAddr::new(canonical(ip), 0);
            }
        }
        peer
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` with `Upgrade: websocket`, say), which the proxy tunnels once
/// the upstream agrees (101).
#[derive(Debug, Clone)]
pub struct UpgradeRequest(pub HeaderValue);

/// The upgrade a request asks for, if it is one the proxy tunnels: never
/// `h2c` (a request smuggling path through proxies), and only over HTTP/1.1
/// (HTTP/2 has no Upgrade; a GET without a body, per RFC 6455).
fn upgrade_request(parts: &http::request::Parts) -> Option<UpgradeRequest> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let upgrade = parts.headers.get(header::UPGRADE)?;
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let h2c = upgrade.to_str().map_or(true, |u| {
        u.split(',')
            .any(|p| p.trim().to_ascii_lowercase().starts_with("h2c"))
    });
    (asks && !h2c).then(|| UpgradeRequest(upgrade.clone()))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The request target's length as received.
fn target_len(uri: &Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    pq + uri.authority().map_or(0, |a| a.as_str().len())
}

/// Exactly one authority: the URI's (absolute form, HTTP/2 `:authority`)
/// replaces any Host; otherwise HTTP/1.1 needs exactly one Host. The URI is
/// left in origin form, the authority in Host.
fn settle_host(parts: &mut http::request::Parts) -> Result<(), Rejection> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest("more than one Host header"));
    }
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(Rejection::BadRequest("userinfo in the request target"));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Rejection::BadRequest("invalid authority"))?;
        parts.headers.insert(header::HOST, host);
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
        return Ok(());
    }
    match host {
        Some(host) if valid_host(host.as_bytes()) => Ok(()),
        Some(_) => Err(Rejection::BadRequest("invalid Host header")),
        // HTTP/1.0 predates Host; HTTP/1.1 and HTTP/2 must name the host.
        None if parts.version == Version::HTTP_10 => Ok(()),
        None => Err(Rejection::BadRequest("no Host header")),
    }
}

/// Whether a header describes one connection, never the message (see
/// [`HOP_BY_HOP`]). A `match` on the name: per request, cheaper than
/// hashing each of the names to look it up.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Whether a header is a client's claim about earlier hops.
fn is_forwarding_claim(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "forwarded"
            | "x-real-ip"
    )
}

/// Remove hop-by-hop headers, those `Connection` names, and with `claims`
/// the forwarding claims, in one look at each header name (most requests
/// carry none of them, and then nothing is allocated).
fn strip(h: &mut HeaderMap, claims: bool) {
    let doomed = |name: &str| is_hop_by_hop(name) || (claims && is_forwarding_claim(name));
    // Most messages carry none or only Connection/Keep-Alive: look before
    // collecting anything.
    if !h.keys().any(|k| doomed(k.as_str())) {
        return;
    }
    let mut names: Vec<HeaderName> = h.keys().filter(|k| doomed(k.as_str())).cloned().collect();
    // Tokens of Connection name more hop-by-hop headers; "keep-alive" and
    // "close" (the usual ones) need no parsing.
    names.extend(
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
    );
    // `TE: trailers` says the sender takes trailers; it is the one value
    // HTTP/2 allows, and gRPC servers look for it: it goes on, alone.
    let trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        });
    for name in names {
        h.remove(name);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a Host value is `host[:port]` (RFC 9110 §7.2): a name of
/// unreserved, sub-delim and percent characters, or an IPv4 address, or an
/// IPv6 address in brackets; no userinfo, path or whitespace. Checked
/// without parsing into an allocated `Authority`: this runs per request.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        // A colon inside brackets is IPv6's, not the port's.
        Some(i) if !host[i..].contains(&b']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    if port.is_some_and(|p| p.len() > 5 || !p.iter().all(u8::is_ascii_digit)) {
        return false;
    }
    match name {
        [] => false,
        [b'[', inner @ .., b']'] => inner
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
        name => name.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        }),
    }
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including any that
/// `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip(h, false);
}

/// Append the peer's address to X-Forwarded-For, folding repeated headers
/// into one line; `kept` when a trusted peer's X-Forwarded-For may be there.
fn append_forwarded_for(h: &mut HeaderMap, ip: IpAddr, kept: bool) {
    let ip = match canonical(ip) {
        // Written by hand: `Display` for an address costs more than the
        // rest of this function, and it runs on every request.
        IpAddr::V4(v4) => dotted(v4),
        v6 => v6.to_string(),
    };
    let value = if kept && h.contains_key(X_FORWARDED_FOR) {
        let mut all: Vec<&str> = h
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        all.push(&ip);
        all.join(", ")
    } else {
        ip
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// `a.b.c.d`.
fn dotted(ip: std::net::Ipv4Addr) -> String {
    let mut s = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            s.push(char::from(b'0' + octet / 10 % 10));
        }
        s.push(char::from(b'0' + octet % 10));
    }
    s
}

/// Via for the protocol version the client spoke.
fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 portier",
        Version::HTTP_2 => "2 portier",
        _ => "1.1 portier",
    })
}

/// The path in normal form, or `None` when it already is (the common case,
/// with no allocation). See the module docs for what normal means.
pub fn normalize_path(path: &str, merge_slashes: bool) -> Result<Option<String>, Rejection> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(Rejection::BadRequest("backslash in the path"));
    }
    if !path.starts_with('/') {
        // `*` (OPTIONS *) is the only target that is not a path here.
        return if path == "*" {
            Ok(None)
        } else {
            Err(Rejection::BadRequest("the path does not start with /"))
        };
    }
    let needs_work =
        bytes.contains(&b'%') || path.contains("/.") || (merge_slashes && path.contains("//"));
    if !needs_work {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    // Split after the leading '/': "/a//b/" -> ["a", "", "b", ""].
    let parts: Vec<&str> = decoded[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, segment) in parts.into_iter().enumerate() {
        match segment {
            "." => {
                if i == last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if i == last {
                    segments.push("");
                }
            }
            "" if merge_slashes && i != last => {}
            s => segments.push(s),
        }
    }
    let normal = format!("/{}", segments.join("/"));
    Ok((normal != path).then_some(normal))
}

/// Decode `%XX` where it stands for an unreserved character; upper-case the
/// hex of the others. `%00` and malformed escapes are refused.
fn decode_unreserved(path: &str) -> Result<String, Rejection> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(Rejection::BadRequest(
                "malformed percent-encoding in the path",
            ))?;
        match hex {
            0 => return Err(Rejection::BadRequest("NUL in the path")),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::dotted;

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.9",
            "192.168.100.255",
            "1.22.103.4",
            "255.255.255.255",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(dotted(ip), ip.to_string());
        }
    }

    use super::*;

    fn ingress(trusted: &[&str]) -> Ingress {
        Ingress {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            max_uri: 64,
            merge_slashes: true,
        }
    }

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const PEER: &str = "192.0.2.7:5555";

    fn admit(
        ing: &Ingress,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Result<(http::request::Parts, SocketAddr), Rejection> {
        let mut p = request(Version::HTTP_11, uri, headers);
        let client = ing.admit(&mut p, PEER.parse().unwrap(), Scheme::Http)?;
        Ok((p, client))
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        let ing = ingress(&[]);
        assert_eq!(
            admit(&ing, "/", &[]).unwrap_err(),
            Rejection::BadRequest("no Host header")
        );
        assert_eq!(
            admit(&ing, "/", &[("host", "a"), ("host", "b")]).unwrap_err(),
            Rejection::BadRequest("more than one Host header")
        );
        for bad in [
            "", "a b", "user@a", "a/b", ":80", "a:99999x", "[::1", "a\\b",
        ] {
            assert_eq!(
                admit(&ing, "/", &[("host", bad)]).unwrap_err(),
                Rejection::BadRequest("invalid Host header"),
                "{bad:?}"
            );
        }
        for good in [
            "shop.example:8080",
            "127.0.0.1",
            "[::1]:80",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
        ] {
            assert!(admit(&ing, "/", &[("host", good)]).is_ok(), "{good}");
        }
        let mut old = request(Version::HTTP_10, "/", &[]);
        assert!(
            ing.admit(&mut old, PEER.parse().unwrap(), Scheme::Http)
                .is_ok()
        );
    }

    #[test]
    fn absolute_form_authority_replaces_host_and_the_target_becomes_origin_form() {
        let (p, _) = admit(
            &ingress(&[]),
            "http://real.example/a?b=1",
            &[("host", "other.example")],
        )
        .unwrap();
        assert_eq!(p.headers.get_all("host").iter().count(), 1);
        assert_eq!(p.headers["host"], "real.example");
        assert_eq!(p.uri, "/a?b=1");
        assert_eq!(p.headers["x-forwarded-host"], "real.example");
        assert_eq!(
            admit(&ingress(&[]), "http://u@real.example/", &[]).unwrap_err(),
            Rejection::BadRequest("userinfo in the request target")
        );
    }

    #[test]
    fn connect_and_long_targets_are_refused() {
        let mut p = request(Version::HTTP_11, "/", &[("host", "a")]);
        p.method = Method::CONNECT;
        assert_eq!(
            ingress(&[]).admit(&mut p, PEER.parse().unwrap(), Scheme::Http),
            Err(Rejection::MethodNotAllowed)
        );
        let long = format!("/{}", "a".repeat(64));
        assert_eq!(
            admit(&ingress(&[]), &long, &[("host", "a")]).unwrap_err(),
            Rejection::UriTooLong
        );
    }

    #[test]
    fn the_name_matches_agree_with_the_header_lists() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str()), "{name}");
            assert!(!is_forwarding_claim(name.as_str()), "{name}");
        }
        for name in [X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO] {
            assert!(is_forwarding_claim(name.as_str()), "{name}");
        }
        assert!(!is_hop_by_hop("x-kept") && !is_forwarding_claim("x-kept"));
    }

    #[test]
    fn paths_are_normalised() {
        let n = |p: &str| normalize_path(p, true).unwrap().unwrap_or_else(|| p.into());
        assert_eq!(n("/a/b/c"), "/a/b/c");
        assert_eq!(n("/api/../internal"), "/internal");
        assert_eq!(n("/api/%2e%2e/internal"), "/internal");
        assert_eq!(n("/api/%2E%2e/%2e/x"), "/x");
        assert_eq!(n("/a/./b/."), "/a/b/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/%61pi/users"), "/api/users");
        assert_eq!(n("//a///b"), "/a/b");
        assert_eq!(n("/a/"), "/a/");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%5Cb"), "/a%5Cb");
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(n("/a/..%2Fb"), "/a/..%2Fb");
        assert_eq!(normalize_path("//a//b", false).unwrap(), None);
        assert_eq!(normalize_path("*", true).unwrap(), None);
        for bad in ["/a\\b", "/a%zz", "/a%0", "/a%00b"] {
            assert!(
                matches!(normalize_path(bad, true), Err(Rejection::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn admitted_path_keeps_its_query() {
        let (p, _) = admit(&ingress(&[]), "/api/../x?q=%2e%2e", &[("host", "a")]).unwrap();
        assert_eq!(p.uri, "/x?q=%2e%2e");
    }

    #[test]
    fn hop_by_hop_headers_and_proxy_credentials_are_dropped() {
        let (p, _) = admit(
            &ingress(&[]),
            "/",
            &[
                ("host", "a"),
                ("connection", "close, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic eDp5"),
                ("te", "gzip"),
                ("upgrade", "websocket"),
                ("x-kept", "yes"),
            ],
        )
        .unwrap();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "te",
            "upgrade",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone} kept");
        }
        assert_eq!(p.headers["x-kept"], "yes");

        // TE: trailers (gRPC's) goes on, without any other TE value.
        let (p, _) = admit(
            &ingress(&[]),
            "/",
            &[
                ("host", "a"),
                ("te", "gzip, trailers;q=1"),
                ("connection", "te"),
            ],
        )
        .unwrap();
        assert_eq!(p.headers["te"], "trailers");
    }

    #[test]
    fn an_untrusted_peers_forwarding_claims_are_replaced() {
        let (p, client) = admit(
            &ingress(&[]),
            "/",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "admin.internal"),
                ("forwarded", "for=1.2.3.4"),
                ("x-real-ip", "1.2.3.4"),
            ],
        )
        .unwrap();
        assert_eq!(client, PEER.parse().unwrap());
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "shop.example");
        assert_eq!(p.headers["via"], "1.1 portier");
        assert!(!p.headers.contains_key("forwarded"));
        assert!(!p.headers.contains_key("x-real-ip"));
    }

    #[test]
    fn a_trusted_peers_chain_names_the_client() {
        let ing = ingress(&["192.0.2.0/24", "10.0.0.0/8"]);
        let (p, client) = admit(
            &ing,
            "/",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .unwrap();
        // 10.1.1.1 is a trusted hop too: the client is the one before it.
        assert_eq!(client, "203.0.113.9:0".parse().unwrap());
        assert_eq!(
            p.headers["x-forwarded-for"],
            "203.0.113.9, 10.1.1.1, 192.0.2.7"
        );
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        // Without a chain, the trusted peer is the client.
        let (_, client) = admit(&ing, "/", &[("host", "a")]).unwrap();
        assert_eq!(client, PEER.parse().unwrap());
        // Garbage in the chain: nothing before it is believed.
        let (_, client) = admit(
            &ing,
            "/",
            &[("host", "a"), ("x-forwarded-for", "203.0.113.9, nonsense")],
        )
        .unwrap();
        assert_eq!(client, PEER.parse().unwrap());
    }
}
