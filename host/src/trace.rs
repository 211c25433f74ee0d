//! A request's identity across hops: the W3C Trace Context `traceparent`
//! (<https://www.w3.org/TR/trace-context/>) and a request id.
//!
//! Each request gets a span of its own in the caller's trace: a valid
//! `traceparent` from the client keeps its trace id and sampled flag (the
//! client's span becomes the parent); otherwise a new trace starts. The
//! upstream gets `traceparent` naming the proxy's span, so the backend's
//! spans hang under the proxy's. `tracestate` passes through untouched.
//!
//! The request id names the request in every log line of it and in the
//! access log: the client's `x-request-id` (or the configured header) when
//! it is sane and trusted; else the trace id when the proxy started the
//! trace, or a random id when the client's trace goes on (a client may send
//! one `traceparent` with many requests: ids must differ).

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::manifest::RequestIdConfig;

/// The request header of W3C Trace Context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// One request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace: the client's, or new.
    pub trace_id: u128,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent_id: Option<u64>,
    /// The proxy's span for this request.
    pub span_id: u64,
    /// The client's sampled flag (new traces: not sampled, as nothing
    /// records them unless an exporter is configured).
    pub sampled: bool,
}

impl TraceContext {
    /// The trace a request with these headers belongs to.
    pub fn of(headers: &HeaderMap) -> TraceContext {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let span_id = nonzero(fastrand::u64(..));
        match parent {
            Some((trace_id, parent_id, sampled)) => TraceContext {
                trace_id,
                parent_id: Some(parent_id),
                span_id,
                sampled,
            },
            None => TraceContext {
                trace_id: nonzero(fastrand::u128(..)),
                parent_id: None,
                span_id,
                sampled: false,
            },
        }
    }

    /// The `traceparent` the upstream gets: this trace, the proxy's span.
    pub fn traceparent(&self) -> HeaderValue {
        // Written into a stack buffer: this runs on every request, and
        // `fmt` machinery plus a String cost more than the hex itself.
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut b[3..35], self.trace_id);
        hex_into(&mut b[36..52], u128::from(self.span_id));
        hex_into(&mut b[53..55], u128::from(self.sampled));
        HeaderValue::from_bytes(&b).expect("hex digits and dashes are a valid header value")
    }
}

/// `v`'s low `out.len() * 4` bits as lower-case hex, zero-padded, into `out`.
fn hex_into(out: &mut [u8], mut v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for c in out.iter_mut().rev() {
        *c = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// All-zero ids are invalid in Trace Context.
fn nonzero<T: PartialEq + From<u8>>(v: T) -> T {
    if v == T::from(0) { T::from(1) } else { v }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: the trace id, parent id and sampled
/// flag; `None` when malformed, all-zero, or of version `ff`. A later
/// version's header is read by its version-00 prefix, as the spec asks.
fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, bool)> {
    fn hex(b: &[u8]) -> Option<&str> {
        b.iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            .then(|| std::str::from_utf8(b).ok())
            .flatten()
    }
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])?;
    if version == "ff" || (version == "00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = u128::from_str_radix(hex(&v[3..35])?, 16).ok()?;
    let parent_id = u64::from_str_radix(hex(&v[36..52])?, 16).ok()?;
    let flags = u8::from_str_radix(hex(&v[53..55])?, 16).ok()?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags & 1 == 1))
}

/// A request's id: the client's, or the trace id in hex.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id of a request with `headers` in trace `trace`, under `config`.
    pub fn of(headers: &HeaderMap, trace: &TraceContext, config: &RequestIdConfig) -> RequestId {
        let given = config
            .header
            .as_ref()
            .filter(|_| config.trust)
            .and_then(|h| headers.get(h))
            .filter(|v| sane(v.as_bytes()));
        match given {
            Some(v) => RequestId(v.clone()),
            None => {
                let id = match trace.parent_id {
                    None => trace.trace_id,
                    Some(_) => nonzero(fastrand::u128(..)),
                };
                let mut hex = [0u8; 32];
                hex_into(&mut hex, id);
                RequestId(
                    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value"),
                )
            }
        }
    }

    /// As a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        // Sane ids and hex are visible ASCII.
        self.0.to_str().unwrap_or("-")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A client's id is taken when it is short visible ASCII with no quotes,
/// backslashes or spaces: it goes into log lines as it is.
fn sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_becomes_the_parent() {
        let t = TraceContext::of(&headers(&[("traceparent", VALID)]));
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert!(t.sampled);
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        let out = t.traceparent();
        let out = out.to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_eq!(out.len(), 55);
    }

    #[test]
    fn malformed_or_zero_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let t = TraceContext::of(&headers(&[("traceparent", bad)]));
            assert_eq!(t.parent_id, None, "{bad:?}");
            assert_ne!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736, "{bad:?}");
            assert!(!t.sampled);
            assert!(parse_traceparent(t.traceparent().as_bytes()).is_some());
        }
    }

    #[test]
    fn a_later_versions_traceparent_is_read_by_its_prefix() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert_eq!(
            parse_traceparent(v.as_bytes()),
            Some((
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                false
            ))
        );
    }

    #[test]
    fn the_request_id_is_the_clients_when_sane_else_the_trace_id() {
        let config = RequestIdConfig::default();
        let t = TraceContext::of(&HeaderMap::new());
        let id = |h: &[(&str, &str)]| RequestId::of(&headers(h), &t, &config).to_string();
        assert_eq!(id(&[("x-request-id", "abc-123")]), "abc-123");
        assert_eq!(id(&[]), format!("{:032x}", t.trace_id));
        assert_eq!(id(&[("x-request-id", "has space")]).len(), 32);
        assert_eq!(id(&[("x-request-id", "quo\"te")]).len(), 32);
        assert_eq!(id(&[("x-request-id", &"a".repeat(129))]).len(), 32);
        let untrusted = RequestIdConfig {
            trust: false,
            ..RequestIdConfig::default()
        };
        let id = RequestId::of(&headers(&[("x-request-id", "abc")]), &t, &untrusted);
        assert_eq!(id.to_string().len(), 32);
        // Two requests of one client trace get different ids.
        let continued = TraceContext::of(&headers(&[("traceparent", VALID)]));
        let a = RequestId::of(&HeaderMap::new(), &continued, &config);
        let b = RequestId::of(&HeaderMap::new(), &continued, &config);
        assert_ne!(a, b);
    }
}
