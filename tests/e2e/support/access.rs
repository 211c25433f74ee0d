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
    /// The endpoint that served it; `None` (`-`) when the proxy or a plugin answered.
    pub upstream: Option<SocketAddr>,
    /// Response-body bytes sent.
    pub bytes: u64,
    /// Whether the whole response body was sent.
    pub complete: bool,
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
            upstream: match field("upstream") {
                "-" => None,
                address => Some(address.parse().unwrap_or_else(|e| {
                    panic!("access line's upstream is not ip:port or - ({e}): {line}")
                })),
            },
            bytes: parsed("bytes"),
            complete: match field("complete") {
                "true" => true,
                "false" => false,
                other => panic!("access line's complete is {other:?}: {line}"),
            },
        })
    }

    /// Every access line in `logs`, in order.
    pub fn all(logs: &str) -> Vec<AccessLine> {
        logs.lines().filter_map(AccessLine::parse).collect()
    }
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
