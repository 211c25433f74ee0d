//! Shared key-value state for plugins: the embedded in-memory backend.
//!
//! Keys are namespaced per stage by [`Namespace`], so two stages never see
//! each other's keys. Operations are atomic per key (a counter incremented by
//! many instances at once stays exact). Expired entries vanish on access and
//! are swept as the store grows, so memory stays bounded by live keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failure of the store itself (not "key absent").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// `increment` on a value that is not a decimal integer.
    #[error("value is not an integer")]
    NotAnInteger,
    /// The counter would overflow an i64.
    #[error("increment overflows")]
    Overflow,
}

const SHARDS: usize = 16;

/// The process-wide store. Cheap to clone.
#[derive(Clone, Default)]
pub struct Kv {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

#[derive(Default)]
struct Shard {
    map: HashMap<Vec<u8>, Entry>,
    /// Sweep expired entries when the map reaches this size.
    sweep_at: usize,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// One stage's view of the store.
#[derive(Clone)]
pub struct Namespace {
    kv: Kv,
    prefix: Vec<u8>,
}

impl Kv {
    /// A view whose keys cannot collide with any other namespace's.
    pub fn namespace(&self, name: &str) -> Namespace {
        // The length prefix makes ("a", "bc") and ("ab", "c") distinct.
        let mut prefix = (name.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(name.as_bytes());
        Namespace {
            kv: self.clone(),
            prefix,
        }
    }

    fn with_entry<R>(
        &self,
        key: Vec<u8>,
        f: impl FnOnce(&mut HashMap<Vec<u8>, Entry>, Vec<u8>, Instant) -> R,
    ) -> R {
        let shard = &self.inner.shards[(self.inner.hasher.hash_one(&key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if shard.map.len() >= shard.sweep_at.max(1024) {
            shard.map.retain(|_, e| e.live(now));
            shard.sweep_at = shard.map.len() * 2;
        }
        f(&mut shard.map, key, now)
    }
}

fn deadline(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|t| now + t)
}

impl Namespace {
    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The live value of a key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.kv.with_entry(self.key(key), |map, k, now| {
            map.get(&k).filter(|e| e.live(now)).map(|e| e.value.clone())
        }))
    }

    /// Store a value with an optional time to live.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        self.kv.with_entry(self.key(key), |map, k, now| {
            map.insert(
                k,
                Entry {
                    value,
                    expires: deadline(now, ttl),
                },
            );
        });
        Ok(())
    }

    /// Delete a key; true when a live value existed.
    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.kv.with_entry(self.key(key), |map, k, now| {
            map.remove(&k).is_some_and(|e| e.live(now))
        }))
    }

    /// Add `delta` to a decimal counter; a missing key starts at 0 with `ttl`.
    pub fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.kv.with_entry(self.key(key), |map, k, now| {
            let e = match map.get_mut(&k) {
                Some(e) if e.live(now) => e,
                _ => map
                    .entry(k)
                    .insert_entry(Entry {
                        value: b"0".to_vec(),
                        expires: deadline(now, ttl),
                    })
                    .into_mut(),
            };
            let current: i64 = std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(KvError::NotAnInteger)?;
            let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
            e.value = next.to_string().into_bytes();
            Ok(next)
        })
    }

    /// Replace the value when it equals `expected` (`None`: must be absent).
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        Ok(self.kv.with_entry(self.key(key), |map, k, now| {
            let current = map
                .get(&k)
                .filter(|e| e.live(now))
                .map(|e| e.value.as_slice());
            if current != expected {
                return false;
            }
            map.insert(
                k,
                Entry {
                    value,
                    expires: deadline(now, ttl),
                },
            );
            true
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_do_not_see_each_others_keys() {
        let kv = Kv::default();
        let (a, b) = (kv.namespace("a"), kv.namespace("ab"));
        a.set("bk", b"1".to_vec(), None).unwrap();
        assert_eq!(b.get("k").unwrap(), None);
        assert_eq!(a.get("bk").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn increment_counts_exactly_across_threads() {
        let ns = Kv::default().namespace("rl");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        ns.increment("n", 1, None).unwrap();
                    }
                });
            }
        });
        assert_eq!(ns.increment("n", 0, None).unwrap(), 4000);
        ns.set("text", b"x".to_vec(), None).unwrap();
        assert_eq!(ns.increment("text", 1, None), Err(KvError::NotAnInteger));
    }

    #[test]
    fn expired_values_are_gone_and_counters_restart() {
        let ns = Kv::default().namespace("t");
        ns.set("k", b"v".to_vec(), Some(Duration::from_millis(1)))
            .unwrap();
        assert_eq!(
            ns.increment("c", 5, Some(Duration::from_millis(1)))
                .unwrap(),
            5
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(ns.get("k").unwrap(), None);
        assert_eq!(ns.increment("c", 1, None).unwrap(), 1);
    }

    #[test]
    fn compare_and_swap_only_swaps_the_expected_value() {
        let ns = Kv::default().namespace("cas");
        assert!(ns.compare_and_swap("k", None, b"1".to_vec(), None).unwrap());
        assert!(!ns.compare_and_swap("k", None, b"2".to_vec(), None).unwrap());
        assert!(
            !ns.compare_and_swap("k", Some(b"0"), b"2".to_vec(), None)
                .unwrap()
        );
        assert!(
            ns.compare_and_swap("k", Some(b"1"), b"2".to_vec(), None)
                .unwrap()
        );
        assert_eq!(ns.get("k").unwrap(), Some(b"2".to_vec()));
    }
}
