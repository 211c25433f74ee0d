//! `[kv]`: which backend holds the plugins' shared state.
//!
//! ```toml
//! [kv]
//! backend = "redis"                  # default "memory"
//! url = "redis://:${REDIS_PASSWORD}@10.0.0.5:6379/0"   # rediss:// for TLS
//! prefix = "portier:"                # default; a deployment's keys start so
//! timeout = "250ms"                  # per command and per connection attempt
//! ```

use std::time::Duration;

use super::raw::RawKv;
use super::{ManifestError, Validator};

/// `[kv]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvConfig {
    /// Where the state lives.
    pub backend: KvBackend,
}

/// A kv backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KvBackend {
    /// In this process (exact within it; gone with it).
    #[default]
    Memory,
    /// A Redis (or Valkey) server shared by a fleet.
    Redis(RedisSettings),
}

/// How to reach a Redis server.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// What every key starts with.
    pub prefix: String,
    /// The longest a command or a connection attempt may take.
    pub timeout: Duration,
}

impl RedisSettings {
    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        match (self.url.split_once("://"), self.url.rfind('@')) {
            (Some((scheme, rest)), Some(at)) => {
                let host = &self.url[at + 1..];
                let user = rest[..rest.find('@').unwrap_or(0)]
                    .split(':')
                    .next()
                    .unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            _ => self.url.clone(),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

impl Validator<'_> {
    pub(super) fn kv(&self, raw: Option<RawKv>) -> Result<KvConfig, ManifestError> {
        let Some(raw) = raw else {
            return Ok(KvConfig::default());
        };
        let backend = match raw.backend.as_deref() {
            None | Some("memory") => {
                for (set, key) in [
                    (raw.url.is_some(), "kv.url"),
                    (raw.prefix.is_some(), "kv.prefix"),
                    (raw.timeout.is_some(), "kv.timeout"),
                ] {
                    if set {
                        return Err(self.err(key, "only for backend = \"redis\""));
                    }
                }
                KvBackend::Memory
            }
            Some("redis") => {
                let Some(url) = raw.url else {
                    return Err(self.err(
                        "kv.url",
                        "missing: backend = \"redis\" needs url = \"redis://host:6379\"",
                    ));
                };
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(
                        self.err("kv.url", "must start with redis:// (or rediss:// for TLS)")
                    );
                }
                let timeout = self.duration("kv.timeout".into(), raw.timeout, DEFAULT_TIMEOUT)?;
                if timeout.is_zero() {
                    return Err(self.err("kv.timeout", "must be greater than zero"));
                }
                KvBackend::Redis(RedisSettings {
                    url,
                    prefix: raw.prefix.unwrap_or_else(|| "portier:".into()),
                    timeout,
                })
            }
            Some(other) => {
                return Err(self.err(
                    "kv.backend",
                    format!("{other:?}: expected \"memory\" or \"redis\""),
                ));
            }
        };
        Ok(KvConfig { backend })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        let s = |url: &str| RedisSettings {
            url: url.into(),
            prefix: String::new(),
            timeout: DEFAULT_TIMEOUT,
        };
        assert_eq!(
            s("redis://:hunter2@10.0.0.5:6379/0").redacted_url(),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            s("rediss://app:hunter2@cache:6380").redacted_url(),
            "rediss://app:***@cache:6380"
        );
        assert_eq!(s("redis://cache:6379").redacted_url(), "redis://cache:6379");
        assert!(!format!("{:?}", s("redis://:hunter2@h:1")).contains("hunter2"));
    }
}
