//! # rate-limit — at most N requests per client per window
//!
//! A filter that counts requests per client in the stage's `kv` and
//! answers `429 Too Many Requests` once a client is over its budget. With
//! the embedded kv store the count is exact within one proxy process,
//! across the host's instances of the stage; a fleet of proxies shares
//! counts only with `[kv] backend = "redis"` (docs/manifest.md#kv).
//!
//! ```toml
//! [[pipeline]]
//! plugin = "rate-limit"
//! config = { requests = 100, window = "60s" }                        # per client IP
//! # config = { requests = 100, window = "1m", key = { header = "x-api-key" } }
//! # config = { requests = 100, window = "1m", key = "identity" }  # per user, after an auth stage
//! ```
//!
//! Behaviour:
//!
//! - `requests` (at least 1) and `window` (`"500ms"`, `"60s"`, `"1m"`, `"1h"`,
//!   `"1d"`) are required. `key` is `"client-ip"` (default: the client's
//!   address without the port, IPv6 grouped by `ipv6_prefix` bits, default
//!   64) or `{ header = "name" }` (the header's value, hashed; requests
//!   without it, or with one over 256 bytes, are counted by client IP).
//!   Each header value has its own budget: it limits key holders, not key
//!   guessing (a `client-ip` stage before it does that). `"identity"` counts
//!   by the identity an earlier auth stage kept in the request's context
//!   (jwt, api-key, basic-auth, forward-auth), by IP when there is none.
//! - Sliding window, approximated with two fixed-window counters in `kv`:
//!   the previous window's count, weighted by how much of it the sliding
//!   window still covers, plus the current one's. No burst of twice the limit
//!   around a window boundary; two kv calls per request.
//! - Over the limit: `429`, `text/plain` body `429 Too Many Requests\n`,
//!   `retry-after` (seconds until one more request fits, rounded up) and
//!   `ratelimit-limit` / `ratelimit-remaining: 0` / `ratelimit-reset`.
//!   Refused requests do not count against the budget.
//! - **If the stage's kv quota is full**, a client it cannot count gets 429
//!   (a way around the limit otherwise). **If `kv` fails otherwise,
//!   requests go through** (fail open) and the plugin logs a warning, once,
//!   and an info line when `kv` works again: a broken limiter must not take
//!   the site down.
//! - Unknown keys, `requests = 0` and bad durations are rejected at init.

use std::cell::Cell;
use std::time::Duration;

use portier_sdk::{Action, Filter, HttpResponse, Request, clock, config, kv, log};
use serde::Deserialize;

mod client;
mod window;

use window::{Position, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    requests: u32,
    window: String,
    #[serde(default)]
    key: Key,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: u8,
}

fn default_ipv6_prefix() -> u8 {
    64
}

/// What a client is.
#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Key {
    /// The client's IP address.
    #[default]
    ClientIp,
    /// A request header's value (e.g. an API key), else the client's IP.
    Header(String),
    /// The identity an auth stage before this one established (the
    /// request context's `identity`: jwt's subject, an API key's client),
    /// else the client's IP.
    Identity,
}

/// The rate-limit filter.
pub struct RateLimit {
    limit: u64,
    /// Window length in milliseconds.
    window: u64,
    key: Key,
    ipv6_prefix: u8,
    kv_failing: Cell<bool>,
    kv_full: Cell<bool>,
}

impl Filter for RateLimit {
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config {
            requests,
            window,
            key,
            ipv6_prefix,
        } = config::parse(json)?;
        if ipv6_prefix > 128 {
            return Err(config::Error::at("ipv6_prefix", "at most 128 bits"));
        }
        if requests == 0 {
            return Err(config::Error::at("requests", "must be at least 1"));
        }
        let window =
            config::duration_ms(&window).map_err(|reason| config::Error::at("window", reason))?;
        let key = match key {
            Key::Header(name) => Key::Header(
                config::header_name(&name)
                    .map_err(|reason| config::Error::at("key.header", reason))?,
            ),
            Key::ClientIp => Key::ClientIp,
            Key::Identity => Key::Identity,
        };
        Ok(RateLimit {
            limit: u64::from(requests),
            window,
            key,
            ipv6_prefix,
            kv_failing: Cell::new(false),
            kv_full: Cell::new(false),
        })
    }

    /// Requests are counted and refused on the way in; responses are left alone.
    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        let client = self.client(request);
        match self.count(&client) {
            Ok(Verdict::Allow) => Action::Continue,
            Ok(Verdict::Deny { retry_after }) => self.too_many(retry_after),
            Err(e) if e.message().contains("quota exceeded") => {
                // The stage's kv is full of live counters: someone is minting
                // clients. Letting uncountable clients through would hand
                // them the limit's bypass, so they wait a window instead.
                if !self.kv_full.replace(true) {
                    log::warn(format!("{e}; refusing clients it cannot count"));
                }
                self.too_many(self.window)
            }
            Err(e) => {
                if !self.kv_failing.replace(true) {
                    log::warn(format!("{e}; not limiting until kv works again"));
                }
                Action::Continue
            }
        }
    }
}

portier_sdk::export_filter!(RateLimit);

impl RateLimit {
    /// The kv key prefix of this request's client (see `client`).
    fn client(&self, request: &Request) -> String {
        let by = match &self.key {
            Key::Header(name) => request.header(name),
            Key::Identity => request.context_get("identity"),
            Key::ClientIp => None,
        };
        if let Some(key) = by.as_deref().and_then(client::by_header) {
            return key;
        }
        client::by_ip(request.client_addr().ip(), self.ipv6_prefix)
    }

    /// 429, with when to come back.
    fn too_many(&self, retry_after_ms: u64) -> Action {
        let seconds = retry_after_ms.div_ceil(1000).to_string();
        Action::Respond(
            HttpResponse::text(429, "429 Too Many Requests\n")
                .header("retry-after", &seconds)
                .header("ratelimit-limit", self.limit.to_string())
                .header("ratelimit-remaining", "0")
                .header("ratelimit-reset", seconds),
        )
    }

    /// Count the request in the current window and decide.
    fn count(&self, client: &str) -> Result<Verdict, kv::Error> {
        let Position { index, elapsed } = Position::at(clock::now_ms(), self.window);
        let current_key = format!("{client}@{index}");
        // The counter is read as "previous" all through the next window.
        let ttl = Duration::from_millis(self.window.saturating_mul(2) - elapsed);
        let current = kv::increment(&current_key, 1, Some(ttl))?;
        let current = u64::try_from(current).unwrap_or(0);
        let previous = if current > self.limit {
            0 // over on this window alone: the previous one cannot help
        } else {
            let previous_key = format!("{client}@{}", index.wrapping_sub(1));
            kv::get(&previous_key)?
                .and_then(|bytes| String::from_utf8(bytes).ok()?.parse().ok())
                .unwrap_or(0)
        };
        if self.kv_failing.replace(false) {
            log::info("kv is available again; limiting again");
        }
        if self.kv_full.replace(false) {
            log::info("kv has room again; counting every client again");
        }
        let verdict = window::decide(self.limit, self.window, elapsed, previous, current);
        if verdict != Verdict::Allow {
            // Refused requests do not use up the budget. If this fails, the
            // request merely counts, which errs on the strict side.
            let _ = kv::increment(&current_key, -1, None);
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_key_forms() {
        let plugin = RateLimit::init(r#"{"requests": 5, "window": "10s"}"#).unwrap();
        assert_eq!((plugin.limit, plugin.window), (5, 10_000));
        assert!(matches!(plugin.key, Key::ClientIp));
        let plugin =
            RateLimit::init(r#"{"requests": 5, "window": "1m", "key": {"header": "X-Api-Key"}}"#)
                .unwrap();
        assert!(matches!(&plugin.key, Key::Header(name) if name == "x-api-key"));
        let plugin =
            RateLimit::init(r#"{"requests": 5, "window": "1m", "key": "client-ip"}"#).unwrap();
        assert!(matches!(plugin.key, Key::ClientIp));
    }

    #[test]
    fn bad_config_is_keyed() {
        let err = |json: &str| RateLimit::init(json).err().unwrap().to_string();
        assert_eq!(err(r#"{"window": "1s"}"#), "missing field `requests`");
        assert_eq!(
            err(r#"{"requests": 0, "window": "1s"}"#),
            "requests: must be at least 1"
        );
        assert_eq!(
            err(r#"{"requests": 1, "window": "soon"}"#),
            r#"window: expected a duration like "500ms", "60s", "1m" or "1h" (got "soon")"#
        );
        assert_eq!(
            err(r#"{"requests": 1, "window": "0ms"}"#),
            "window: must be longer than 0"
        );
        assert_eq!(
            err(r#"{"requests": 1, "window": "1s", "key": "ip"}"#),
            "key: unknown variant `ip`, expected one of `client-ip`, `header`, `identity`"
        );
        assert_eq!(
            err(r#"{"requests": 1, "window": "1s", "ipv6_prefix": 129}"#),
            "ipv6_prefix: at most 128 bits"
        );
        assert_eq!(
            err(r#"{"requests": 1, "window": "1s", "key": {"header": "a b"}}"#),
            r#"key.header: invalid header name "a b""#
        );
        assert_eq!(
            err(r#"{"requests": 1, "window": "1s", "per_ip": 3}"#),
            "per_ip: unknown field `per_ip`, expected one of `requests`, `window`, `key`, `ipv6_prefix`"
        );
    }
}
