//! `[cache]`: the response cache's store, shared by the pipeline's
//! `cache-policy` stage (which decides keys and lifetimes) and kept across
//! reloads while these settings are unchanged.

use std::time::Duration;

use http::HeaderName;

use super::raw::RawCache;
use super::{ManifestError, Validator, units};

/// The store's bounds and what it tells clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// Bytes of stored responses (bodies and heads) at most.
    pub max_size: u64,
    /// A response whose body is larger passes through unstored (default
    /// 8 MiB, or `max_size` if that is less).
    pub max_object_size: usize,
    /// The response header saying HIT, MISS or BYPASS (`None`: not sent).
    pub status_header: Option<HeaderName>,
    /// How long a miss waits for another request already fetching the same
    /// key before going upstream itself.
    pub lock_timeout: Duration,
    /// Whether a stale entry with a validator (`ETag`, `Last-Modified`) is
    /// revalidated with a conditional request instead of fetched anew.
    pub revalidate: bool,
    /// How long past its freshness such an entry is kept for revalidation.
    pub keep_stale: Duration,
    /// How long past its freshness an entry is served when the upstream
    /// fails (connect error, timeout, 5xx); zero: never.
    pub stale_if_error: Duration,
    /// How long past its freshness an entry is served at once while one
    /// request refreshes it in the background; zero: never.
    pub stale_while_revalidate: Duration,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache {
            max_size: 256 << 20,
            max_object_size: 8 << 20,
            status_header: Some(HeaderName::from_static("x-cache")),
            lock_timeout: Duration::from_secs(5),
            revalidate: true,
            keep_stale: Duration::from_secs(600),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        }
    }
}

impl Validator<'_> {
    pub(super) fn cache(&self, raw: Option<RawCache>) -> Result<Cache, ManifestError> {
        let d = Cache::default();
        let Some(raw) = raw else { return Ok(d) };
        let size = |name: &str, v: Option<String>, default: usize| match v {
            None => Ok(default),
            Some(s) => match units::bytes(&s) {
                Ok(0) => Err(self.err(format!("cache.{name}"), "must be more than 0")),
                Ok(n) => Ok(n),
                Err(r) => Err(self.err(format!("cache.{name}"), r)),
            },
        };
        let max_size = size("max_size", raw.max_size, d.max_size as usize)? as u64;
        // Unset, it shrinks with a small store; set, it must fit.
        let fits = (d.max_object_size as u64).min(max_size) as usize;
        let max_object_size = size("max_object_size", raw.max_object_size, fits)?;
        if max_object_size as u64 > max_size {
            return Err(self.err(
                "cache.max_object_size",
                "must not be more than cache.max_size",
            ));
        }
        let status_header = match raw.status_header.as_deref() {
            None => d.status_header,
            Some("") => None,
            Some(name) => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                self.err(
                    "cache.status_header",
                    format!("{name:?} is not a header name (\"\" turns the header off)"),
                )
            })?),
        };
        let lock_timeout = self.duration(
            "cache.lock_timeout".into(),
            raw.lock_timeout,
            d.lock_timeout,
        )?;
        let keep_stale = self.duration("cache.keep_stale".into(), raw.keep_stale, d.keep_stale)?;
        let stale_if_error = self.duration(
            "cache.stale_if_error".into(),
            raw.stale_if_error,
            d.stale_if_error,
        )?;
        Ok(Cache {
            max_size,
            max_object_size,
            status_header,
            lock_timeout,
            revalidate: raw.revalidate.unwrap_or(d.revalidate),
            keep_stale,
            stale_if_error,
            stale_while_revalidate: self.duration(
                "cache.stale_while_revalidate".into(),
                raw.stale_while_revalidate,
                d.stale_while_revalidate,
            )?,
        })
    }
}
