//! The stage's config: parsed, checked, and turned into what a pick needs.
//! Every mistake is an `init` error naming its key, so `portier check`
//! catches it before any request does.

use portier_sdk::config::{self, Error};
use serde::Deserialize;

use crate::cookie::SetCookie;

/// The config table as written in the manifest.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    algorithm: Name,
    hash_on: Option<HashOn>,
    sticky: Option<StickyConfig>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Name {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    PeakEwma,
    ConsistentHash,
}

/// What `consistent-hash` hashes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HashOn {
    /// The client's IP address, without the port.
    Client,
    /// The request path, without the query string.
    Path,
    /// A request header's first value (name lowercased at init).
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { max_age = \"1h\" }"
)]
struct StickyConfig {
    #[serde(default = "default_cookie")]
    cookie: String,
    secret: Option<String>,
    max_age: Option<String>,
    #[serde(default)]
    secure: bool,
}

fn default_cookie() -> String {
    "portier-sticky".to_string()
}

/// Shortest configured secret: shorter ones are guessable offline from
/// one cookie, which would let a client forge another endpoint's cookie.
pub const MIN_SECRET: usize = 16;

/// How endpoints are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Healthy endpoints in turn.
    RoundRobin,
    /// nginx's smooth weighted round-robin.
    WeightedRoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastRequest,
    /// The cheaper of two random endpoints by latency and load.
    PeakEwma,
    /// A hash ring over addresses, keyed by part of the request.
    ConsistentHash(HashOn),
}

/// Sticky sessions, when configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sticky {
    /// The cookie's name and attributes.
    pub cookie: SetCookie,
    /// The configured secret; `None` has one generated and shared through kv.
    pub secret: Option<Vec<u8>>,
}

/// The checked config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How endpoints are chosen.
    pub algorithm: Algorithm,
    /// Sticky sessions on top of the algorithm, if configured.
    pub sticky: Option<Sticky>,
}

/// Parse and check the stage config (JSON text).
pub fn parse(json: &str) -> Result<Settings, Error> {
    let Config {
        algorithm,
        hash_on,
        sticky,
    } = config::parse(json)?;
    let algorithm = match (algorithm, hash_on) {
        (Name::ConsistentHash, Some(on)) => Algorithm::ConsistentHash(check_hash_on(on)?),
        (Name::ConsistentHash, None) => {
            return Err(Error::at(
                "algorithm",
                r#""consistent-hash" needs hash_on: "client", "path", { header = "name" } or { cookie = "name" }"#,
            ));
        }
        (_, Some(_)) => {
            return Err(Error::at(
                "hash_on",
                r#"only used with algorithm = "consistent-hash""#,
            ));
        }
        (Name::RoundRobin, None) => Algorithm::RoundRobin,
        (Name::WeightedRoundRobin, None) => Algorithm::WeightedRoundRobin,
        (Name::LeastRequest, None) => Algorithm::LeastRequest,
        (Name::PeakEwma, None) => Algorithm::PeakEwma,
    };
    let sticky = sticky.map(check_sticky).transpose()?;
    Ok(Settings { algorithm, sticky })
}

fn check_hash_on(on: HashOn) -> Result<HashOn, Error> {
    Ok(match on {
        HashOn::Header(name) if !config::is_token(&name) => {
            return Err(Error::at(
                "hash_on.header",
                format!("invalid header name {name:?}"),
            ));
        }
        // Header names are case-insensitive; one spelling is enough.
        HashOn::Header(name) => HashOn::Header(name.to_ascii_lowercase()),
        HashOn::Cookie(name) if !config::is_token(&name) => {
            return Err(Error::at(
                "hash_on.cookie",
                format!("invalid cookie name {name:?}"),
            ));
        }
        on => on,
    })
}

fn check_sticky(sticky: StickyConfig) -> Result<Sticky, Error> {
    let StickyConfig {
        cookie,
        secret,
        max_age,
        secure,
    } = sticky;
    if !config::is_token(&cookie) {
        return Err(Error::at(
            "sticky.cookie",
            format!("invalid cookie name {cookie:?}"),
        ));
    }
    if let Some(secret) = &secret
        && secret.len() < MIN_SECRET
    {
        return Err(Error::at(
            "sticky.secret",
            format!("at least {MIN_SECRET} characters (or leave it out to have one generated)"),
        ));
    }
    let max_age = max_age
        .map(|text| parse_seconds(&text).map_err(|reason| Error::at("sticky.max_age", reason)))
        .transpose()?;
    Ok(Sticky {
        cookie: SetCookie {
            name: cookie,
            max_age,
            secure,
        },
        secret: secret.map(String::into_bytes),
    })
}

/// `"90s"`, `"30m"`, `"1h"` or `"7d"` in seconds (never 0): a cookie's
/// `Max-Age` counts whole seconds.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let expected =
        || format!(r#"expected a duration like "90s", "30m", "1h" or "7d" (got {text:?})"#);
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(expected)?;
    if seconds == 0 {
        return Err("must be longer than 0".to_string());
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn algorithm(json: &str) -> Algorithm {
        parse(json).unwrap().algorithm
    }

    #[test]
    fn every_algorithm_parses() {
        assert_eq!(algorithm("{}"), Algorithm::RoundRobin);
        assert_eq!(
            algorithm(r#"{"algorithm": "round-robin"}"#),
            Algorithm::RoundRobin
        );
        assert_eq!(
            algorithm(r#"{"algorithm": "weighted-round-robin"}"#),
            Algorithm::WeightedRoundRobin
        );
        assert_eq!(
            algorithm(r#"{"algorithm": "least-request"}"#),
            Algorithm::LeastRequest
        );
        assert_eq!(
            algorithm(r#"{"algorithm": "peak-ewma"}"#),
            Algorithm::PeakEwma
        );
    }

    #[test]
    fn every_hash_on_form_parses() {
        let on = |hash_on: &str| {
            algorithm(&format!(
                r#"{{"algorithm": "consistent-hash", "hash_on": {hash_on}}}"#
            ))
        };
        assert_eq!(on(r#""client""#), Algorithm::ConsistentHash(HashOn::Client));
        assert_eq!(on(r#""path""#), Algorithm::ConsistentHash(HashOn::Path));
        assert_eq!(
            on(r#"{"header": "X-User"}"#),
            Algorithm::ConsistentHash(HashOn::Header("x-user".to_string()))
        );
        assert_eq!(
            on(r#"{"cookie": "Session"}"#),
            Algorithm::ConsistentHash(HashOn::Cookie("Session".to_string()))
        );
    }

    #[test]
    fn sticky_defaults_and_options() {
        let settings = parse(r#"{"sticky": {}}"#).unwrap();
        assert_eq!(settings.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            settings.sticky,
            Some(Sticky {
                cookie: SetCookie {
                    name: "portier-sticky".to_string(),
                    max_age: None,
                    secure: false,
                },
                secret: None,
            })
        );
        let settings = parse(
            r#"{"algorithm": "least-request", "sticky": {"cookie": "lb", "secret": "0123456789abcdef", "max_age": "1h", "secure": true}}"#,
        )
        .unwrap();
        assert_eq!(settings.algorithm, Algorithm::LeastRequest);
        let sticky = settings.sticky.unwrap();
        assert_eq!(
            sticky.cookie,
            SetCookie {
                name: "lb".to_string(),
                max_age: Some(3_600),
                secure: true,
            }
        );
        assert_eq!(sticky.secret.as_deref(), Some(&b"0123456789abcdef"[..]));
        assert_eq!(parse("{}").unwrap().sticky, None);
    }

    #[test]
    fn bad_config_is_rejected_with_its_key() {
        let err = |json: &str| parse(json).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"algorithm": "fastest"}"#),
            "algorithm: unknown variant `fastest`, expected one of `round-robin`, \
             `weighted-round-robin`, `least-request`, `peak-ewma`, `consistent-hash`"
        );
        assert_eq!(
            err(r#"{"algoritm": "round-robin"}"#),
            "algoritm: unknown field `algoritm`, expected one of `algorithm`, `hash_on`, `sticky`"
        );
        assert_eq!(
            err(r#"{"algorithm": "consistent-hash"}"#),
            r#"algorithm: "consistent-hash" needs hash_on: "client", "path", { header = "name" } or { cookie = "name" }"#
        );
        assert_eq!(
            err(r#"{"hash_on": "client"}"#),
            r#"hash_on: only used with algorithm = "consistent-hash""#
        );
        assert_eq!(
            err(r#"{"algorithm": "least-request", "hash_on": "path"}"#),
            r#"hash_on: only used with algorithm = "consistent-hash""#
        );
        assert_eq!(
            err(r#"{"algorithm": "consistent-hash", "hash_on": "query"}"#),
            "hash_on: unknown variant `query`, expected one of `client`, `path`, `header`, `cookie`"
        );
        assert_eq!(
            err(r#"{"algorithm": "consistent-hash", "hash_on": {"header": "x user"}}"#),
            r#"hash_on.header: invalid header name "x user""#
        );
        assert_eq!(
            err(r#"{"algorithm": "consistent-hash", "hash_on": {"cookie": ""}}"#),
            r#"hash_on.cookie: invalid cookie name """#
        );
        assert_eq!(
            err(r#"{"sticky": {"cookie": "a=b"}}"#),
            r#"sticky.cookie: invalid cookie name "a=b""#
        );
        assert_eq!(
            err(r#"{"sticky": {"secret": "short"}}"#),
            "sticky.secret: at least 16 characters (or leave it out to have one generated)"
        );
        assert_eq!(
            err(r#"{"sticky": {"max_age": "soon"}}"#),
            r#"sticky.max_age: expected a duration like "90s", "30m", "1h" or "7d" (got "soon")"#
        );
        assert_eq!(
            err(r#"{"sticky": {"max_age": "0s"}}"#),
            "sticky.max_age: must be longer than 0"
        );
        assert_eq!(
            err(r#"{"sticky": {"ttl": "1h"}}"#),
            "sticky.ttl: unknown field `ttl`, expected one of `cookie`, `secret`, `max_age`, `secure`"
        );
        assert_eq!(
            err(r#"{"sticky": true}"#),
            r#"sticky: invalid type: boolean `true`, expected a table such as { max_age = "1h" }"#
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("30m"), Ok(1_800));
        assert_eq!(parse_seconds("1h"), Ok(3_600));
        assert_eq!(parse_seconds("7d"), Ok(604_800));
        for bad in [
            "",
            "1",
            "h",
            "1.5h",
            "1 h",
            "-1h",
            "500ms",
            "99999999999999999999d",
        ] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
