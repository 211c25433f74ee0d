//! Access-log lines, parsed from either log format, so tests compare field
//! values exactly instead of searching the text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The tracing target of access-log lines.
const TARGET: &str = "portier::access";

/// One access-log line: every field the proxy writes per request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine {
    /// The client's address (the TCP peer).
    pub client: SocketAddr,
    /// The method as received.
    pub method: String,
    /// The request target as received (path and query).
    pub path: String,
    /// The status sent.
    pub status: u16,
    /// How long the request took, to the end of the response body.
    pub duration_ms: f64,
    /// The endpoint that served it, or the last one tried; `None` (`-`)
    /// when none was.
    pub endpoint: Option<SocketAddr>,
    /// Response-body bytes sent.
    pub bytes_out: u64,
    /// Request-body bytes read.
    pub bytes_in: u64,
    /// Whether the whole response body was sent.
    pub complete: bool,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub protocol: String,
    /// The Host asked for.
    pub host: Option<String>,
    /// The client's User-Agent.
    pub user_agent: Option<String>,
    /// The route the router chose.
    pub route: Option<String>,
    /// The upstream asked, by name.
    pub upstream: Option<String>,
    /// Milliseconds from the first attempt upstream to the response head.
    pub upstream_ms: Option<f64>,
    /// The stage that answered or failed the request.
    pub stage: Option<String>,
    /// The proxy's reasons (`UF`, `PA`...), `-` when none.
    pub flags: String,
    /// The request's id.
    pub request_id: String,
    /// The W3C trace id (32 hex digits).
    pub trace_id: String,
}

impl AccessLine {
    /// Parse a log line in the text or the JSON format; `None` when it is
    /// not an access-log line. Panics on an access line missing a field or
    /// with a malformed one: the format is the contract.
    pub fn parse(line: &str) -> Option<AccessLine> {
        let fields = if line.trim_start().starts_with('{') {
            json_fields(line)?
        } else {
            text_fields(line)?
        };
        let field = |key: &str| -> &str {
            fields
                .get(key)
                .unwrap_or_else(|| panic!("access line without {key}: {line}"))
        };
        let parsed = |key: &str| -> u64 {
            field(key)
                .parse()
                .unwrap_or_else(|e| panic!("access line's {key} is not a number ({e}): {line}"))
        };
        Some(AccessLine {
            client: field("client")
                .parse()
                .unwrap_or_else(|e| panic!("access line's client is not ip:port ({e}): {line}")),
            method: field("method").to_owned(),
            path: field("path").to_owned(),
            status: u16::try_from(parsed("status")).expect("a status fits u16"),
            duration_ms: field("duration_ms")
                .parse()
                .unwrap_or_else(|e| panic!("access line's duration_ms ({e}): {line}")),
            endpoint: match field("endpoint") {
                "-" => None,
                address => Some(address.parse().unwrap_or_else(|e| {
                    panic!("access line's endpoint is not ip:port or - ({e}): {line}")
                })),
            },
            bytes_out: parsed("bytes_out"),
            bytes_in: parsed("bytes_in"),
            complete: match field("complete") {
                "true" => true,
                "false" => false,
                other => panic!("access line's complete is {other:?}: {line}"),
            },
            protocol: field("protocol").to_owned(),
            host: optional(field("host")),
            user_agent: optional(field("user_agent")),
            route: optional(field("route")),
            upstream: optional(field("upstream")),
            upstream_ms: optional(field("upstream_ms")).map(|ms| {
                ms.parse()
                    .unwrap_or_else(|e| panic!("access line's upstream_ms ({e}): {line}"))
            }),
            stage: optional(field("stage")),
            flags: field("flags").to_owned(),
            request_id: field("request_id").to_owned(),
            trace_id: field("trace_id").to_owned(),
        })
    }

    /// The line without the values no test can predict (durations, ids),
    /// for comparing whole lines.
    pub fn without_volatile(&self) -> AccessLine {
        AccessLine {
            duration_ms: 0.0,
            upstream_ms: self.upstream_ms.map(|_| 0.0),
            request_id: String::new(),
            trace_id: String::new(),
            ..self.clone()
        }
    }

    /// Every access line in `logs`, in order.
    pub fn all(logs: &str) -> Vec<AccessLine> {
        logs.lines().filter_map(AccessLine::parse).collect()
    }
}

/// `-` is how the log writes "none".
fn optional(v: &str) -> Option<String> {
    (v != "-").then(|| v.to_owned())
}

/// `key=value` pairs after `portier::access:` in the text format; values
/// tracing quoted (string fields) are unquoted.
fn text_fields(line: &str) -> Option<BTreeMap<String, String>> {
    let (_, rest) = line.split_once(&format!("{TARGET}: "))?;
    Some(
        rest.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect(),
    )
}

/// The event's fields in the JSON format (flattened, or under `fields`).
fn json_fields(line: &str) -> Option<BTreeMap<String, String>> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value["target"] != TARGET {
        return None;
    }
    let object = value
        .get("fields")
        .filter(|f| f.is_object())
        .unwrap_or(&value)
        .as_object()?;
    Some(
        object
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
    )
}
