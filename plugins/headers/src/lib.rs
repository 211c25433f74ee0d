//! # headers — set and remove request and response headers
//!
//! A filter that edits headers on the way in (before routing) and on the
//! way out (after the upstream answered). It never answers a request itself.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "headers"
//! config.request.set = { "x-request-source" = "edge" }
//! config.request.remove = ["x-debug"]
//! config.response.set = { "strict-transport-security" = "max-age=31536000" }
//! config.response.remove = ["server", "x-powered-by"]
//! ```
//!
//! Behaviour:
//!
//! - `remove` runs before `set`; `set` replaces every existing value of a name.
//! - Every key is optional; unknown keys are rejected.
//! - Names and values are checked at init: names must be HTTP tokens, values
//!   must not contain control characters, a name may not appear twice in
//!   `set` or in both `set` and `remove`, and `content-length` /
//!   `transfer-encoding` are refused because the proxy owns message framing.
//!   Errors name the key, e.g. `response.set.x-a: invalid header value`.
//!   The host's other own headers (`connection`, `te`, `upgrade`, ...) pass
//!   init; the host refuses a `set` of one on every request (logged as a
//!   warning) and ignores a `remove`.
//! - `X-Forwarded-*`: the host sets them before any stage and never again,
//!   so a `set` here is what the upstream gets, for every request (see
//!   docs/plugins/headers.md before setting `x-forwarded-proto`).

use std::collections::BTreeMap;

use portier_sdk::{Action, Filter, Request, Response, config, log};
use serde::Deserialize;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// The validated edits for one direction, names lowercased.
#[derive(Debug, Default, PartialEq)]
struct Rewrite {
    set: Vec<(String, String)>,
    remove: Vec<String>,
}

/// The headers filter: one rewrite for requests, one for responses.
pub struct Headers {
    request: Rewrite,
    response: Rewrite,
}

impl Filter for Headers {
    fn init(json: &str) -> Result<Self, config::Error> {
        let config: Config = config::parse(json)?;
        Ok(Headers {
            request: Rewrite::validate("request", config.request)?,
            response: Rewrite::validate("response", config.response)?,
        })
    }

    fn on_request(&self, request: &Request) -> Action {
        self.request.apply(
            |name| request.remove_header(name),
            |name, value| request.set_header(name, value),
        );
        Action::Continue
    }

    fn on_response(&self, _request: &Request, response: &Response) {
        self.response.apply(
            |name| response.remove_header(name),
            |name, value| response.set_header(name, value),
        );
    }

    /// Only a config with response edits needs to see responses.
    fn wants_response(&self) -> bool {
        !self.response.set.is_empty() || !self.response.remove.is_empty()
    }
}

portier_sdk::export_filter!(Headers);

impl Rewrite {
    fn validate(key: &str, edits: Edits) -> Result<Self, config::Error> {
        let mut rewrite = Rewrite::default();
        for (i, name) in edits.remove.into_iter().enumerate() {
            let lower = check_name(&name)
                .map_err(|reason| config::Error::at(format!("{key}.remove[{i}]"), reason))?;
            rewrite.remove.push(lower);
        }
        for (name, value) in edits.set {
            let lower = check_name(&name)
                .map_err(|reason| config::Error::at(format!("{key}.set.{name}"), reason))?;
            if rewrite.set.iter().any(|(n, _)| *n == lower) {
                return Err(config::Error::at(
                    format!("{key}.set.{name}"),
                    "header is set twice (names are case-insensitive)",
                ));
            }
            if rewrite.remove.contains(&lower) {
                return Err(config::Error::at(
                    format!("{key}.set.{name}"),
                    format!("header is also listed in {key}.remove"),
                ));
            }
            if let Some(bad) = value
                .bytes()
                .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(config::Error::at(
                    format!("{key}.set.{name}"),
                    format!("invalid header value (control character 0x{bad:02x})"),
                ));
            }
            rewrite.set.push((lower, value));
        }
        Ok(rewrite)
    }

    fn apply(&self, remove: impl Fn(&str), set: impl Fn(&str, &str) -> Result<(), String>) {
        for name in &self.remove {
            remove(name);
        }
        for (name, value) in &self.set {
            if let Err(reason) = set(name, value) {
                log::warn(format!("could not set header {name}: {reason}"));
            }
        }
    }
}

/// The lowercased name, if it is an HTTP token the plugin may edit.
fn check_name(name: &str) -> Result<String, String> {
    let lower = config::header_name(name)?;
    if lower == "content-length" || lower == "transfer-encoding" {
        return Err(format!(
            "{lower} cannot be edited: the proxy owns message framing"
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(json: &str) -> Result<Headers, String> {
        Headers::init(json).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_config_is_valid() {
        let headers = init("{}").unwrap();
        assert_eq!(headers.request, Rewrite::default());
        assert_eq!(headers.response, Rewrite::default());
    }

    #[test]
    fn names_are_lowercased() {
        let headers = init(r#"{"request": {"set": {"X-A": "1"}, "remove": ["X-B"]}}"#).unwrap();
        assert_eq!(headers.request.set, [("x-a".to_string(), "1".to_string())]);
        assert_eq!(headers.request.remove, ["x-b"]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = init(r#"{"request": {"add": {}}}"#).err().unwrap();
        assert_eq!(
            err,
            "request.add: unknown field `add`, expected `set` or `remove`"
        );
        let err = init(r#"{"requests": {}}"#).err().unwrap();
        assert!(
            err.starts_with("requests: unknown field `requests`"),
            "{err}"
        );
    }

    #[test]
    fn invalid_names_and_values_are_keyed() {
        let err = init(r#"{"request": {"remove": ["ok", "x b"]}}"#)
            .err()
            .unwrap();
        assert_eq!(err, r#"request.remove[1]: invalid header name "x b""#);
        let err = init(r#"{"response": {"set": {"x-a": "1\r\nx-evil: 1"}}}"#)
            .err()
            .unwrap();
        assert_eq!(
            err,
            "response.set.x-a: invalid header value (control character 0x0d)"
        );
        let err = init(r#"{"response": {"set": {"": "1"}}}"#).err().unwrap();
        assert_eq!(err, r#"response.set.: invalid header name """#);
    }

    #[test]
    fn conflicting_edits_are_rejected() {
        let err = init(r#"{"request": {"set": {"X-A": "1", "x-a": "2"}}}"#)
            .err()
            .unwrap();
        assert_eq!(
            err,
            "request.set.x-a: header is set twice (names are case-insensitive)"
        );
        let err = init(r#"{"request": {"set": {"x-a": "1"}, "remove": ["X-A"]}}"#)
            .err()
            .unwrap();
        assert_eq!(
            err,
            "request.set.x-a: header is also listed in request.remove"
        );
        let err = init(r#"{"response": {"remove": ["Content-Length"]}}"#)
            .err()
            .unwrap();
        assert_eq!(
            err,
            "response.remove[0]: content-length cannot be edited: the proxy owns message framing"
        );
    }

    #[test]
    fn apply_removes_then_sets() {
        let headers = init(r#"{"request": {"set": {"x-a": "1"}, "remove": ["x-b"]}}"#).unwrap();
        let log = std::cell::RefCell::new(Vec::new());
        headers.request.apply(
            |name| log.borrow_mut().push(format!("remove {name}")),
            |name, value| {
                log.borrow_mut().push(format!("set {name}={value}"));
                Ok(())
            },
        );
        assert_eq!(log.into_inner(), ["remove x-b", "set x-a=1"]);
    }
}
