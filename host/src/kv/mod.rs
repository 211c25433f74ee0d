//! Shared key-value state for plugins, namespaced per stage: two stages
//! never see each other's keys, and every instance of a stage shares its
//! keys.
//!
//! Two backends, chosen by the manifest's `[kv]`:
//! - **memory** (the default, [`Memory`]): exact within one process, gone
//!   with it; bounded per stage by its [`Quota`].
//! - **redis** ([`redis::Redis`]): a Redis or Valkey server every portier
//!   of a fleet shares, so a rate limit holds across all of them. Increment
//!   with a TTL and compare-and-swap are atomic there (Lua scripts).
//!
//! A backend is process state: a reload that keeps `[kv]` keeps its
//! connection, and the in-memory store keeps its entries across reloads.
//! When the shared backend is unreachable, each stage's `kv.outage` says
//! what happens: the plugin gets the error (the default), the stage is
//! skipped (`open`), or the request gets 503 (`closed`).

mod memory;
pub mod redis;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use memory::Memory;

use crate::manifest::{KvBackend, KvConfig};

/// Failure of the store itself (not "key absent").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// `increment` on a value that is not a decimal integer.
    #[error("value is not an integer")]
    NotAnInteger,
    /// The counter would overflow an i64.
    #[error("increment overflows")]
    Overflow,
    /// The key is longer than the stage's `kv.max_key`.
    #[error("key longer than {0} bytes (kv.max_key)")]
    KeyTooLong(usize),
    /// The value is larger than the stage's `kv.max_value`.
    #[error("value larger than {0} bytes (kv.max_value)")]
    ValueTooLarge(usize),
    /// The write would take the stage past `kv.max_bytes` or `kv.max_entries`.
    #[error(
        "quota exceeded: the stage's kv holds {entries} entries, {bytes} bytes (kv.max_entries, kv.max_bytes)"
    )]
    QuotaExceeded {
        /// Entries the stage holds.
        entries: usize,
        /// Bytes the stage holds.
        bytes: usize,
    },
    /// The shared backend did not answer (unreachable, timed out, down).
    #[error("kv backend unavailable: {0}")]
    Unavailable(String),
}

/// What one stage may keep in kv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of keys, values and bookkeeping together.
    pub max_bytes: usize,
    /// Entries.
    pub max_entries: usize,
    /// Bytes of one key.
    pub max_key: usize,
    /// Bytes of one value.
    pub max_value: usize,
}

impl Default for Quota {
    fn default() -> Quota {
        Quota {
            max_bytes: 16 << 20,
            max_entries: 100_000,
            max_key: 1 << 10,
            max_value: 1 << 20,
        }
    }
}

/// What the host does when the shared backend is unavailable during one of
/// a stage's kv calls (`pipeline[N].kv.outage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outage {
    /// The plugin gets the error and decides (the rate limiter lets
    /// requests through, and says so once).
    #[default]
    Plugin,
    /// The call ends and the stage is skipped for this request.
    Open,
    /// The call ends and the request gets 503.
    Closed,
}

/// The process's kv: the in-memory store, and the shared backends the
/// running and recent manifests named (reused while `[kv]` is unchanged).
#[derive(Default)]
pub struct Kv {
    memory: Memory,
    shared: Mutex<Vec<Arc<redis::Redis>>>,
}

/// The backend one pipeline generation uses.
#[derive(Clone)]
pub enum Store {
    /// The in-memory store.
    Memory(Memory),
    /// A Redis server.
    Redis(Arc<redis::Redis>),
}

impl Kv {
    /// The backend `config` names: the in-memory store, or a client of the
    /// Redis it names (the one already made for the same settings, so a
    /// reload keeps its connection). `Err` says what is wrong with the URL.
    pub fn store(&self, config: &KvConfig) -> Result<Store, String> {
        match &config.backend {
            KvBackend::Memory => Ok(Store::Memory(self.memory.clone())),
            KvBackend::Redis(settings) => {
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                // Clients no pipeline uses any more are dropped.
                shared.retain(|r| Arc::strong_count(r) > 1);
                if let Some(r) = shared.iter().find(|r| r.settings() == settings) {
                    return Ok(Store::Redis(r.clone()));
                }
                let r = Arc::new(redis::Redis::new(settings.clone())?);
                shared.push(r.clone());
                Ok(Store::Redis(r))
            }
        }
    }
}

impl Store {
    /// Stage `name`'s view, under `quota`.
    pub fn namespace(&self, name: &str, quota: Quota) -> Namespace {
        match self {
            Store::Memory(m) => Namespace::Memory(m.namespace(name, quota)),
            Store::Redis(r) => Namespace::Redis(r.namespace(name, quota)),
        }
    }
}

/// One stage's view of its backend.
#[derive(Clone)]
pub enum Namespace {
    /// In memory.
    Memory(memory::Namespace),
    /// On Redis.
    Redis(redis::Namespace),
}

impl Namespace {
    /// `memory` or `redis` (the `backend` label in `/metrics`).
    pub fn backend(&self) -> &'static str {
        match self {
            Namespace::Memory(_) => "memory",
            Namespace::Redis(_) => "redis",
        }
    }

    /// The live value of a key.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Namespace::Memory(m) => m.get(key),
            Namespace::Redis(r) => r.get(key).await,
        }
    }

    /// Store a value with an optional time to live.
    pub async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        match self {
            Namespace::Memory(m) => m.set(key, value, ttl),
            Namespace::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Delete a key; true when a live value existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self {
            Namespace::Memory(m) => m.delete(key),
            Namespace::Redis(r) => r.delete(key).await,
        }
    }

    /// Add `delta` to a decimal counter; a missing key starts at 0 with `ttl`.
    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        match self {
            Namespace::Memory(m) => m.increment(key, delta, ttl),
            Namespace::Redis(r) => r.increment(key, delta, ttl).await,
        }
    }

    /// Replace the value when it equals `expected` (`None`: must be absent).
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        match self {
            Namespace::Memory(m) => m.compare_and_swap(key, expected, value, ttl),
            Namespace::Redis(r) => r.compare_and_swap(key, expected, value, ttl).await,
        }
    }
}
