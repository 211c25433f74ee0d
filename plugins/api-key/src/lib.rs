//! # api-key — let through only requests carrying a known API key
//!
//! A filter that answers `401 Unauthorized` unless the request's key header
//! holds one of the configured keys. Keys are kept as SHA-256 digests (the
//! manifest may hold only digests), each may name the client it belongs to,
//! and a valid key is removed before the request goes on: the upstream
//! never sees it, only the client's identity.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "api-key"
//! [pipeline.config]
//! header = "x-api-key"                      # the default
//! realm = "api"
//! identity_header = "x-api-client"          # the key's identity, for the upstream
//! keys = [
//!     { sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", identity = "billing" },
//!     { key = "k-2025-02", identity = "ci" },
//!     "k-2024-11",                          # a bare key: no identity
//! ]
//! ```
//!
//! Behaviour:
//!
//! - `header` defaults to `x-api-key`; `keys` must list at least one key;
//!   `realm` and `identity_header` are optional. Unknown keys are rejected.
//! - The whole first value of the header is the key (with `header =
//!   "authorization"`, list keys as `"Bearer …"`).
//! - Keys are hashed at start, so neither the plugin's memory nor (with
//!   `sha256`) the manifest holds them: `printf %s "$KEY" | sha256sum`
//!   gives the digest. A request's key is hashed once and compared with
//!   every digest, whether or not one already matched, so response timing
//!   says nothing about how close a guess was.
//! - Valid key: the header is removed; the key's `identity` becomes the
//!   request context's `identity` (a later `rate-limit` with
//!   `key = "identity"` limits each client) and, with `identity_header`, a
//!   header for the upstream (a client's own copy is always removed).
//! - Missing or wrong key: `401`, `text/plain` body `401 Unauthorized\n` and
//!   `www-authenticate: ApiKey realm="api", header="x-api-key"` (realm only
//!   when configured).
//! - Checked at init, with the key in the message: the header names are
//!   HTTP tokens; keys are non-empty, without control characters or
//!   surrounding whitespace (HTTP strips it, so such a key could never
//!   match); digests are 64 hex digits; the realm has no quotes,
//!   backslashes or control characters.

use portier_sdk::{Action, Filter, HttpResponse, Request, config, log};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<KeyConfig>,
    realm: Option<String>,
    identity_header: Option<String>,
}

/// A key as the manifest writes it.
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyConfig {
    Bare(String),
    Entry(Entry),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: Option<String>,
    sha256: Option<String>,
    identity: Option<String>,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

/// One accepted key, hashed.
struct Key {
    digest: [u8; 32],
    identity: Option<String>,
}

/// The api-key filter.
pub struct ApiKey {
    /// Lowercased header name.
    header: String,
    keys: Vec<Key>,
    identity_header: Option<String>,
    /// The `www-authenticate` value of every 401.
    challenge: String,
}

impl Filter for ApiKey {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config {
            header,
            keys,
            realm,
            identity_header,
        } = config::parse(json)?;
        let header =
            config::header_name(&header).map_err(|reason| config::Error::at("header", reason))?;
        let identity_header = identity_header
            .map(|h| config::header_name(&h).map_err(|r| config::Error::at("identity_header", r)))
            .transpose()?;
        if keys.is_empty() {
            return Err(config::Error::at("keys", "must list at least one key"));
        }
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| key(k).map_err(|e| e.within(&format!("keys[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let challenge = match realm {
            Some(realm) => {
                check_realm(&realm).map_err(|reason| config::Error::at("realm", reason))?;
                format!("ApiKey realm=\"{realm}\", header=\"{header}\"")
            }
            None => format!("ApiKey header=\"{header}\""),
        };
        Ok(ApiKey {
            header,
            keys,
            identity_header,
            challenge,
        })
    }

    /// Keys are checked on requests only.
    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        let found = request
            .header(&self.header)
            .and_then(|k| matching(&self.keys, k.as_bytes()));
        let Some(key) = found else {
            return Action::Respond(
                HttpResponse::text(401, "401 Unauthorized\n")
                    .header("www-authenticate", &self.challenge),
            );
        };
        // The upstream has no business seeing the key.
        request.remove_header(&self.header);
        if let Some(h) = &self.identity_header {
            request.remove_header(h);
        }
        if let Some(id) = &key.identity {
            if let Some(h) = &self.identity_header
                && let Err(e) = request.set_header(h, id)
            {
                log::warn(format!("cannot pass the identity on as {h}: {e}"));
            }
            if let Err(e) = request.context_set("identity", id) {
                log::warn(format!("cannot keep the identity: {e}"));
            }
        }
        Action::Continue
    }
}

portier_sdk::export_filter!(ApiKey);

fn key(k: KeyConfig) -> Result<Key, config::Error> {
    let (plain, sha256, identity) = match k {
        KeyConfig::Bare(key) => (Some(key), None, None),
        KeyConfig::Entry(e) => (e.key, e.sha256, e.identity),
    };
    let digest = match (plain, sha256) {
        (Some(_), Some(_)) => {
            return Err(config::Error::at("sha256", "give key or sha256, not both"));
        }
        (Some(plain), None) => {
            check_key(&plain).map_err(config::Error::from)?;
            Sha256::digest(plain.as_bytes()).into()
        }
        (None, Some(hex)) => from_hex(&hex).ok_or_else(|| {
            config::Error::at(
                "sha256",
                "64 hex digits: the SHA-256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`",
            )
        })?,
        (None, None) => return Err(config::Error::from("give key or sha256")),
    };
    if let Some(id) = &identity
        && (id.is_empty() || id.bytes().any(|b| b < 0x20 || b == 0x7f))
    {
        return Err(config::Error::at(
            "identity",
            "a non-empty text without control characters",
        ));
    }
    Ok(Key { digest, identity })
}

/// The key `candidate` is, if any. Every digest is compared in full, with
/// no early exit, so the time taken says nothing about a guess.
fn matching<'k>(keys: &'k [Key], candidate: &[u8]) -> Option<&'k Key> {
    let digest: [u8; 32] = Sha256::digest(candidate).into();
    let mut found = None;
    for key in keys {
        let mut diff = 0u8;
        for (a, b) in key.digest.iter().zip(digest.iter()) {
            diff |= a ^ b;
        }
        if std::hint::black_box(diff) == 0 {
            found = Some(key);
        }
    }
    found
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
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

    #[test]
    fn keys_match_by_digest_with_their_identity() {
        let digest_of_beta = "0de1d6b8a6e44ba8a7ff7126a8ab17c1fb1f6b8b2f1fb2e3d3a5a5d8e6e3f1aa";
        let plugin = ApiKey::init(&format!(
            r#"{{"keys": ["alpha-1", {{"key": "gamma-3", "identity": "ci"}},
                          {{"sha256": "{}", "identity": "billing"}},
                          {{"sha256": "{digest_of_beta}"}}]}}"#,
            hex(&Sha256::digest(b"beta-22"))
        ))
        .unwrap();
        let id = |k: &str| matching(&plugin.keys, k.as_bytes()).map(|k| k.identity.clone());
        assert_eq!(id("alpha-1"), Some(None));
        assert_eq!(id("gamma-3"), Some(Some("ci".into())));
        assert_eq!(id("beta-22"), Some(Some("billing".into())));
        for wrong in ["", "alpha-", "alpha-12", "Alpha-1", "beta-2", "alpha-1 "] {
            assert_eq!(id(wrong), None, "{wrong:?}");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        assert!(
            err(r#"{"keys": [{"sha256": "abc"}]}"#).starts_with("keys[0].sha256: 64 hex digits")
        );
        assert_eq!(
            err(r#"{"keys": [{"key": "a", "sha256": "b"}]}"#),
            "keys[0].sha256: give key or sha256, not both"
        );
        assert_eq!(
            err(r#"{"keys": [{"identity": "x"}]}"#),
            "keys[0]: give key or sha256"
        );
        assert_eq!(
            err(r#"{"header": "x key", "keys": ["a"]}"#),
            r#"header: invalid header name "x key""#
        );
        assert_eq!(
            err(r#"{"keys": ["a"], "realm": "a\"b"}"#),
            r#"realm: must not contain '"'"#
        );
        assert!(err(r#"{"keys": ["a"], "key": "b"}"#).starts_with("key: unknown field `key`"));
    }
}
