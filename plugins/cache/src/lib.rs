//! # cache — what a shared cache may store, and for how long (RFC 9111)
//!
//! The built-in `cache-policy` stage. The host keeps the responses (bounded
//! by `[cache]`); this plugin decides the key of each request and whether,
//! and how long, each response may be stored.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "cache"
//! config.default_ttl = "30s"
//! config.ttl = { "200" = "5m", "404" = "30s" }
//! config.key = { headers = ["accept-language"], cookies = ["lang"] }
//! ```
//!
//! Behaviour:
//!
//! - Only GET and HEAD are looked up; HEAD shares GET's key (the host
//!   answers it from the GET's entry). Other methods, and upgrade requests
//!   (WebSocket), bypass the cache.
//! - The key is scheme (the request's `X-Forwarded-Proto`), host (without
//!   port), path and query, plus the values of `key.headers` and
//!   `key.cookies` when configured.
//! - A request with `Cache-Control: no-store` bypasses the cache; so does one
//!   with `no-cache`, `max-age=0` or `Pragma: no-cache` unless
//!   `bypass_on_no_cache = false`.
//! - Stored: responses with a status listed in `ttl` (default 200, 203, 204,
//!   301 and 404), for the time their own headers give (`s-maxage`, then
//!   `max-age`, then `Expires`), less their `Age`, or else the status's
//!   time from `ttl` (default `default_ttl`, 30 s). A 5xx is never stored
//!   (listing one is an error).
//! - Never stored: `Cache-Control` `no-store`, `private` or `no-cache`
//!   (`no-cache` asks for a check with the upstream before every use; the
//!   host revalidates an entry only once it is stale, so storing one would
//!   gain nothing); a `Set-Cookie` unless
//!   `allow_set_cookie`; an answer to a request with `Authorization` unless
//!   `allow_authorization` or the response says `public`, `s-maxage` or
//!   `must-revalidate` (§3.5); `Vary: *`. A response with `Vary` is stored
//!   as one variant per value of the headers it names (the host keys them).

mod rules;

use std::collections::BTreeMap;

use portier_sdk::{CachePolicy, Request, Response, clock, config};
use rules::Directives;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    ttl: Option<BTreeMap<String, String>>,
    #[serde(default)]
    default_ttl: Option<String>,
    #[serde(default)]
    key: Key,
    #[serde(default = "yes")]
    bypass_on_no_cache: bool,
    #[serde(default)]
    allow_set_cookie: bool,
    #[serde(default)]
    allow_authorization: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    cookies: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The statuses stored when `ttl` is not configured (RFC 9111 §4.2.2's
/// heuristically cacheable ones that a proxy meets).
const DEFAULT_STATUSES: [u16; 5] = [200, 203, 204, 301, 404];

/// The cache policy.
pub struct Cache {
    /// Storable statuses and the seconds each is kept when the response
    /// gives no lifetime.
    ttl: BTreeMap<u16, u64>,
    /// Request headers in the key, lower case.
    key_headers: Vec<String>,
    key_cookies: Vec<String>,
    bypass_on_no_cache: bool,
    allow_set_cookie: bool,
    allow_authorization: bool,
}

fn seconds(key: &str, text: &str) -> Result<u64, config::Error> {
    config::duration_ms(text)
        .map(|ms| ms.div_ceil(1000))
        .map_err(|reason| config::Error::at(key, reason))
}

impl CachePolicy for Cache {
    fn init(json: &str) -> Result<Self, config::Error> {
        let c: Config = config::parse(json)?;
        let default_ttl = match &c.default_ttl {
            Some(t) => seconds("default_ttl", t)?,
            None => 30,
        };
        let ttl = match c.ttl {
            None => DEFAULT_STATUSES.iter().map(|s| (*s, default_ttl)).collect(),
            Some(map) => {
                let mut ttl = BTreeMap::new();
                for (status, time) in map {
                    let key = format!("ttl.{status}");
                    let code = status
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| config::Error::at(&key, "not a status code"))?;
                    if code >= 500 {
                        return Err(config::Error::at(key, "a 5xx is never stored"));
                    }
                    ttl.insert(code, seconds(&key, &time)?);
                }
                ttl
            }
        };
        let key_headers = c
            .key
            .headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Ok(Cache {
            ttl,
            key_headers,
            key_cookies: c.key.cookies,
            bypass_on_no_cache: c.bypass_on_no_cache,
            allow_set_cookie: c.allow_set_cookie,
            allow_authorization: c.allow_authorization,
        })
    }

    fn cache_key(&self, request: &Request) -> Option<String> {
        let method = request.method();
        // An upgrade (WebSocket) is a conversation, never a stored page.
        if (method != "GET" && method != "HEAD") || request.header("upgrade").is_some() {
            return None;
        }
        let cc = request.header_all("cache-control");
        let asked = Directives::parse(cc.iter().map(String::as_str));
        let pragma_no_cache = request
            .header("pragma")
            .is_some_and(|p| p.to_ascii_lowercase().contains("no-cache"));
        if asked.no_store
            || (self.bypass_on_no_cache
                && (asked.no_cache || asked.max_age == Some(0) || pragma_no_cache))
        {
            return None;
        }
        let scheme = request
            .header("x-forwarded-proto")
            .unwrap_or_else(|| "http".into());
        // Host names are case-insensitive: one page, one entry (and one
        // key to purge), however a client spells the name.
        let mut key = format!(
            "{scheme}://{}{}",
            request.host().unwrap_or_default().to_ascii_lowercase(),
            request.path()
        );
        if let Some(q) = request.query() {
            key.push('?');
            key.push_str(&q);
        }
        for h in &self.key_headers {
            key.push_str(&format!("\n{h}: {}", request.header_all(h).join(", ")));
        }
        if !self.key_cookies.is_empty() {
            let cookies = request.header_all("cookie").join("; ");
            for name in &self.key_cookies {
                let value = cookies
                    .split(';')
                    .filter_map(|c| c.trim().split_once('='))
                    .find(|(n, _)| n == name)
                    .map_or("", |(_, v)| v);
                key.push_str(&format!("\ncookie {name}={value}"));
            }
        }
        Some(key)
    }

    fn storable(&self, request: &Request, response: &Response) -> Option<u32> {
        let status_ttl = *self.ttl.get(&response.status())?;
        let cc = response.header_all("cache-control");
        let d = Directives::parse(cc.iter().map(String::as_str));
        if d.no_store || d.private || d.no_cache {
            return None;
        }
        if !self.allow_set_cookie && response.header("set-cookie").is_some() {
            return None;
        }
        if request.header("authorization").is_some()
            && !(self.allow_authorization || d.public || d.s_maxage.is_some() || d.must_revalidate)
        {
            return None;
        }
        // The host keeps one variant per value of the `Vary` headers; `*`
        // (varies on anything) cannot be matched.
        if response
            .header_all("vary")
            .iter()
            .any(|v| v.split(',').any(|n| n.trim() == "*"))
        {
            return None;
        }
        let now = clock::now_ms() / 1000;
        let lifetime = rules::explicit_lifetime(
            &d,
            response.header("expires").as_deref(),
            response.header("date").as_deref(),
            now,
        )
        .unwrap_or(status_ttl);
        let age = response
            .header("age")
            .and_then(|a| a.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let left = lifetime.saturating_sub(age);
        (left > 0).then(|| u32::try_from(left).unwrap_or(u32::MAX))
    }
}

portier_sdk::export_cache_policy!(Cache);
