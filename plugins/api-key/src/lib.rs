//! # api-key — let through only requests carrying a known API key
//!
//! A filter that answers `401 Unauthorized` unless the request's key header
//! holds one of the configured keys. A valid key is removed before the
//! request goes on: the upstream never sees it.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "api-key"
//! config = { header = "x-api-key", keys = ["k-2024-11", "k-2025-02"], realm = "api" }
//! ```
//!
//! Behaviour:
//!
//! - `header` defaults to `x-api-key`; `keys` must list at least one key;
//!   `realm` is optional. Unknown keys are rejected.
//! - The whole first value of the header is the key (with `header =
//!   "authorization"`, list keys as `"Bearer …"`).
//! - Missing or wrong key: `401`, `text/plain` body `401 Unauthorized\n` and
//!   `www-authenticate: ApiKey realm="api", header="x-api-key"` (realm only
//!   when configured).
//! - Keys are compared byte by byte over every configured key, whether or not
//!   one already matched, so response timing says nothing about how close a
//!   guess was.
//! - Checked at init, with the key in the message: the header name is an
//!   HTTP token; keys are non-empty, without control characters or
//!   surrounding whitespace (HTTP strips it, so such a key could never
//!   match); the realm has no quotes, backslashes or control characters.

use portier_sdk::{Action, Filter, HttpResponse, Request, config};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
    realm: Option<String>,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

/// The api-key filter.
pub struct ApiKey {
    /// Lowercased header name.
    header: String,
    keys: Vec<Vec<u8>>,
    /// The `www-authenticate` value of every 401.
    challenge: String,
}

impl Filter for ApiKey {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config {
            header,
            keys,
            realm,
        } = config::parse(json)?;
        let header = check_header(&header).map_err(|reason| config::Error::at("header", reason))?;
        if keys.is_empty() {
            return Err(config::Error::at("keys", "must list at least one key"));
        }
        for (i, key) in keys.iter().enumerate() {
            check_key(key).map_err(|reason| config::Error::at(format!("keys[{i}]"), reason))?;
        }
        let challenge = match realm {
            Some(realm) => {
                check_realm(&realm).map_err(|reason| config::Error::at("realm", reason))?;
                format!("ApiKey realm=\"{realm}\", header=\"{header}\"")
            }
            None => format!("ApiKey header=\"{header}\""),
        };
        Ok(ApiKey {
            header,
            keys: keys.into_iter().map(String::into_bytes).collect(),
            challenge,
        })
    }

    /// Keys are checked on requests only.
    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        match request.header(&self.header) {
            Some(key) if matches_any(&self.keys, key.as_bytes()) => {
                // The upstream has no business seeing the key.
                request.remove_header(&self.header);
                Action::Continue
            }
            _ => Action::Respond(
                HttpResponse::text(401, "401 Unauthorized\n")
                    .header("www-authenticate", &self.challenge),
            ),
        }
    }
}

portier_sdk::export_filter!(ApiKey);

/// True when `candidate` equals one of `keys`. Every byte of every key is
/// compared, with no early exit, so the time taken depends only on the keys'
/// lengths, never on how much of a guess was right.
fn matches_any(keys: &[Vec<u8>], candidate: &[u8]) -> bool {
    let mut found = 0u8;
    for key in keys {
        found |= equal(key, candidate);
    }
    std::hint::black_box(found) == 1
}

/// 1 when equal, 0 otherwise, after looking at every byte of `key`.
fn equal(key: &[u8], candidate: &[u8]) -> u8 {
    let mut diff = u8::from(key.len() != candidate.len());
    for (i, &k) in key.iter().enumerate() {
        diff |= k ^ candidate.get(i).copied().unwrap_or(0);
    }
    u8::from(std::hint::black_box(diff) == 0)
}

/// The lowercased name, if it is an HTTP token.
fn check_header(name: &str) -> Result<String, String> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(name.to_ascii_lowercase())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(bad) = key.bytes().find(|&b| b < 0x20 || b == 0x7f) {
        return Err(format!(
            "control character 0x{bad:02x} cannot appear in a header"
        ));
    }
    if key.trim() != key {
        return Err(
            "leading or trailing whitespace is stripped by HTTP, so it could never match"
                .to_string(),
        );
    }
    Ok(())
}

fn check_realm(realm: &str) -> Result<(), String> {
    match realm
        .bytes()
        .find(|&b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
    {
        Some(bad) => Err(format!("must not contain {:?}", char::from(bad))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    #[test]
    fn matches_exactly_one_of_the_keys() {
        let keys = keys(&["alpha-1", "beta-22"]);
        assert!(matches_any(&keys, b"alpha-1"));
        assert!(matches_any(&keys, b"beta-22"));
        for wrong in [
            "", "alpha-", "alpha-12", "Alpha-1", "beta-2", "beta-222", "alpha-1 ",
        ] {
            assert!(!matches_any(&keys, wrong.as_bytes()), "{wrong:?}");
        }
    }

    #[test]
    fn defaults_and_challenge() {
        let plugin = ApiKey::init(r#"{"keys": ["k"]}"#).unwrap();
        assert_eq!(plugin.header, "x-api-key");
        assert_eq!(plugin.challenge, r#"ApiKey header="x-api-key""#);
        let plugin =
            ApiKey::init(r#"{"header": "X-Token", "keys": ["k"], "realm": "api"}"#).unwrap();
        assert_eq!(plugin.header, "x-token");
        assert_eq!(plugin.challenge, r#"ApiKey realm="api", header="x-token""#);
    }

    #[test]
    fn bad_config_is_keyed() {
        let err = |json: &str| ApiKey::init(json).err().unwrap().to_string();
        assert_eq!(err("{}"), "missing field `keys`");
        assert_eq!(err(r#"{"keys": []}"#), "keys: must list at least one key");
        assert_eq!(err(r#"{"keys": ["a", ""]}"#), "keys[1]: must not be empty");
        assert_eq!(
            err(r#"{"keys": ["a\nb"]}"#),
            "keys[0]: control character 0x0a cannot appear in a header"
        );
        assert!(err(r#"{"keys": [" a"]}"#).starts_with("keys[0]: leading or trailing whitespace"));
        assert_eq!(
            err(r#"{"header": "x key", "keys": ["a"]}"#),
            r#"header: invalid header name "x key""#
        );
        assert_eq!(
            err(r#"{"keys": ["a"], "realm": "a\"b"}"#),
            r#"realm: must not contain '"'"#
        );
        assert_eq!(
            err(r#"{"keys": ["a"], "key": "b"}"#),
            "key: unknown field `key`, expected one of `header`, `keys`, `realm`"
        );
    }
}
