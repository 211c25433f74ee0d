//! The embedded in-memory kv backend (the default): exact within one
//! process, gone with it.
//!
//! Keys are namespaced per stage by [`Namespace`], so two stages never see
//! each other's keys. Operations are atomic per key (a counter incremented by
//! many instances at once stays exact).
//!
//! Memory is bounded per stage by its [`Quota`]: keys and values have
//! maximum sizes, and a write that would take the stage past its bytes or
//! entries fails with [`KvError::QuotaExceeded`] (nothing is evicted: the
//! plugin decides what to do, e.g. a rate limiter fails open or closed).
//! Expired entries vanish on access and a background sweep frees them
//! without waiting for new writes. A stage's usage belongs to its name, so
//! it survives reloads with the entries it counts.

use std::collections::{HashMap, hash_map};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{KvError, Quota};

/// What an entry costs beyond its key and value: the map slot, the entry's
/// fields, allocator headers. Counted so a million empty values still count.
const ENTRY_OVERHEAD: usize = 96;

const SHARDS: usize = 16;

/// How often the background sweep visits each shard.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The process-wide store. Cheap to clone.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

impl Default for Memory {
    fn default() -> Memory {
        let inner = Arc::new(Inner::default());
        spawn_sweeper(Arc::downgrade(&inner));
        Memory { inner }
    }
}

#[derive(Default)]
struct Inner {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// Usage per stage name, kept across reloads.
    usage: Mutex<HashMap<String, Arc<Usage>>>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Vec<u8>, Entry>,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
    /// The stage it counts against.
    usage: Arc<Usage>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }

    fn cost(key: &[u8], value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }
}

/// One stage's usage and quota (atomics: read on every operation).
#[derive(Debug)]
struct Usage {
    bytes: AtomicUsize,
    entries: AtomicUsize,
    max_bytes: AtomicUsize,
    max_entries: AtomicUsize,
    max_key: AtomicUsize,
    max_value: AtomicUsize,
}

impl Usage {
    fn new(quota: Quota) -> Usage {
        let usage = Usage {
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            max_bytes: AtomicUsize::new(0),
            max_entries: AtomicUsize::new(0),
            max_key: AtomicUsize::new(0),
            max_value: AtomicUsize::new(0),
        };
        usage.set_quota(quota);
        usage
    }

    fn set_quota(&self, q: Quota) {
        self.max_bytes.store(q.max_bytes, Relaxed);
        self.max_entries.store(q.max_entries, Relaxed);
        self.max_key.store(q.max_key, Relaxed);
        self.max_value.store(q.max_value, Relaxed);
    }

    /// Reserve room for a change of `bytes` and `entries`; fails past the quota.
    fn reserve(&self, bytes: isize, entries: isize) -> Result<(), KvError> {
        let now_bytes = self.bytes.load(Relaxed);
        let now_entries = self.entries.load(Relaxed);
        let grows = bytes > 0 || entries > 0;
        if grows
            && (now_bytes.saturating_add_signed(bytes) > self.max_bytes.load(Relaxed)
                || now_entries.saturating_add_signed(entries) > self.max_entries.load(Relaxed))
        {
            return Err(KvError::QuotaExceeded {
                entries: now_entries,
                bytes: now_bytes,
            });
        }
        self.adjust(bytes, entries);
        Ok(())
    }

    fn adjust(&self, bytes: isize, entries: isize) {
        if bytes >= 0 {
            self.bytes.fetch_add(bytes as usize, Relaxed);
        } else {
            self.bytes.fetch_sub(bytes.unsigned_abs(), Relaxed);
        }
        if entries >= 0 {
            self.entries.fetch_add(entries as usize, Relaxed);
        } else {
            self.entries.fetch_sub(entries.unsigned_abs(), Relaxed);
        }
    }

    /// An entry left the store.
    fn release(&self, key: &[u8], e: &Entry) {
        self.adjust(-(Entry::cost(key, &e.value) as isize), -1);
    }
}

/// One stage's view of the store.
#[derive(Clone)]
pub struct Namespace {
    kv: Memory,
    prefix: Vec<u8>,
    usage: Arc<Usage>,
}

impl Memory {
    /// A view whose keys cannot collide with any other namespace's, under
    /// `quota` (which replaces the quota an earlier generation gave it).
    pub fn namespace(&self, name: &str, quota: Quota) -> Namespace {
        // The length prefix makes ("a", "bc") and ("ab", "c") distinct.
        let mut prefix = (name.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(name.as_bytes());
        let usage = {
            let mut all = self.inner.usage.lock().unwrap_or_else(|p| p.into_inner());
            let usage = all
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Usage::new(quota)));
            usage.set_quota(quota);
            usage.clone()
        };
        Namespace {
            kv: self.clone(),
            prefix,
            usage,
        }
    }

    fn with_entry<R>(
        &self,
        key: Vec<u8>,
        f: impl FnOnce(&mut HashMap<Vec<u8>, Entry>, Vec<u8>, Instant) -> R,
    ) -> R {
        let shard = &self.inner.shards[(self.inner.hasher.hash_one(&key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut shard.map, key, Instant::now())
    }
}

/// Sweep expired entries out of every shard, one shard at a time, until
/// the store is gone.
fn spawn_sweeper(inner: Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("portier-kv-sweep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SWEEP_EVERY / SHARDS as u32);
                for i in 0..SHARDS {
                    let Some(inner) = inner.upgrade() else { return };
                    sweep(&inner.shards[i]);
                    drop(inner);
                    std::thread::sleep(SWEEP_EVERY / SHARDS as u32);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no background kv sweep: expired entries go when touched");
    }
}

fn sweep(shard: &Mutex<Shard>) {
    let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    shard.map.retain(|k, e| {
        let live = e.live(now);
        if !live {
            e.usage.release(k, e);
        }
        live
    });
    // Give back what a burst of entries left behind.
    if shard.map.capacity() > 64 && shard.map.capacity() > shard.map.len() * 4 {
        shard.map.shrink_to_fit();
    }
}

fn deadline(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|t| now + t)
}

impl Namespace {
    fn key(&self, key: &str) -> Result<Vec<u8>, KvError> {
        let max = self.usage.max_key.load(Relaxed);
        if key.len() > max {
            return Err(KvError::KeyTooLong(max));
        }
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key.as_bytes());
        Ok(k)
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max = self.usage.max_value.load(Relaxed);
        if value.len() > max {
            return Err(KvError::ValueTooLarge(max));
        }
        Ok(())
    }

    /// Put `value` under `k`, replacing what is there, within the quota:
    /// one hash of the key, through the map's entry.
    fn store(
        &self,
        map: &mut HashMap<Vec<u8>, Entry>,
        k: Vec<u8>,
        value: Vec<u8>,
        expires: Option<Instant>,
    ) -> Result<(), KvError> {
        match map.entry(k) {
            hash_map::Entry::Occupied(mut o) => {
                let grows = value.len() as isize - o.get().value.len() as isize;
                self.usage.reserve(grows, 0)?;
                let e = o.get_mut();
                e.value = value;
                e.expires = expires;
            }
            hash_map::Entry::Vacant(v) => {
                self.usage
                    .reserve(Entry::cost(v.key(), &value) as isize, 1)?;
                v.insert(Entry {
                    value,
                    expires,
                    usage: self.usage.clone(),
                });
            }
        }
        Ok(())
    }

    /// The live value of a key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let k = self.key(key)?;
        Ok(self.kv.with_entry(k, |map, k, now| {
            map.get(&k).filter(|e| e.live(now)).map(|e| e.value.clone())
        }))
    }

    /// Store a value with an optional time to live.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let k = self.key(key)?;
        self.check_value(&value)?;
        self.kv.with_entry(k, |map, k, now| {
            self.store(map, k, value, deadline(now, ttl))
        })
    }

    /// Delete a key; true when a live value existed.
    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        let k = self.key(key)?;
        Ok(self.kv.with_entry(k, |map, k, now| {
            map.remove(&k).is_some_and(|e| {
                e.usage.release(&k, &e);
                e.live(now)
            })
        }))
    }

    /// Add `delta` to a decimal counter; a missing key starts at 0 with `ttl`.
    pub fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let k = self.key(key)?;
        self.kv.with_entry(k, |map, k, now| match map.entry(k) {
            hash_map::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                let (current, expires) = if e.live(now) {
                    let current: i64 = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(KvError::NotAnInteger)?;
                    (current, e.expires)
                } else {
                    (0, deadline(now, ttl))
                };
                let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
                let value = next.to_string().into_bytes();
                self.usage
                    .reserve(value.len() as isize - e.value.len() as isize, 0)?;
                e.value = value;
                e.expires = expires;
                Ok(next)
            }
            hash_map::Entry::Vacant(v) => {
                let value = delta.to_string().into_bytes();
                self.usage
                    .reserve(Entry::cost(v.key(), &value) as isize, 1)?;
                v.insert(Entry {
                    value,
                    expires: deadline(now, ttl),
                    usage: self.usage.clone(),
                });
                Ok(delta)
            }
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
        let k = self.key(key)?;
        self.check_value(&value)?;
        self.kv.with_entry(k, |map, k, now| {
            let current = map
                .get(&k)
                .filter(|e| e.live(now))
                .map(|e| e.value.as_slice());
            if current != expected {
                return Ok(false);
            }
            self.store(map, k, value, deadline(now, ttl))?;
            Ok(true)
        })
    }

    /// Entries and bytes this stage holds (expired ones until swept).
    pub fn usage(&self) -> (usize, usize) {
        (
            self.usage.entries.load(Relaxed),
            self.usage.bytes.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Namespace {
        Memory::default().namespace(name, Quota::default())
    }

    #[test]
    fn namespaces_do_not_see_each_others_keys() {
        let kv = Memory::default();
        let (a, b) = (
            kv.namespace("a", Quota::default()),
            kv.namespace("ab", Quota::default()),
        );
        a.set("bk", b"1".to_vec(), None).unwrap();
        assert_eq!(b.get("k").unwrap(), None);
        assert_eq!(a.get("bk").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn increment_counts_exactly_across_threads() {
        let ns = ns("rl");
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
        let ns = ns("t");
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
        let ns = ns("cas");
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

    #[test]
    fn writes_past_the_quota_fail_and_deletes_make_room() {
        let quota = Quota {
            max_bytes: 10 * (ENTRY_OVERHEAD + 100),
            max_entries: 1000,
            max_key: 16,
            max_value: 64,
        };
        let ns = Memory::default().namespace("q", quota);
        assert_eq!(
            ns.set(&"k".repeat(17), vec![], None),
            Err(KvError::KeyTooLong(16))
        );
        assert_eq!(
            ns.set("k", vec![0; 65], None),
            Err(KvError::ValueTooLarge(64))
        );
        let mut stored = 0;
        for i in 0..100 {
            match ns.set(&format!("k{i:02}"), vec![0; 64], None) {
                Ok(()) => stored += 1,
                Err(KvError::QuotaExceeded { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!((10..=15).contains(&stored), "{stored} entries fit");
        let (entries, bytes) = ns.usage();
        assert_eq!(entries, stored);
        assert!(bytes <= quota.max_bytes);
        // Replacing a value with one of the same size needs no new room.
        ns.set("k00", vec![1; 64], None).unwrap();
        assert!(ns.delete("k00").unwrap());
        ns.set("fresh", vec![0; 64], None).unwrap();
        assert_eq!(ns.usage().0, stored);
    }

    #[test]
    fn entry_quota_holds_and_counters_count_against_it() {
        let ns = Memory::default().namespace(
            "e",
            Quota {
                max_entries: 3,
                ..Quota::default()
            },
        );
        for k in ["a", "b", "c"] {
            ns.increment(k, 1, None).unwrap();
        }
        assert!(matches!(
            ns.increment("d", 1, None),
            Err(KvError::QuotaExceeded { entries: 3, .. })
        ));
        // An existing counter still counts.
        assert_eq!(ns.increment("a", 1, None).unwrap(), 2);
    }

    #[test]
    fn the_background_sweep_frees_expired_entries_without_new_writes() {
        let ns = ns("sweep");
        for i in 0..100 {
            ns.set(
                &format!("k{i}"),
                vec![0; 100],
                Some(Duration::from_millis(1)),
            )
            .unwrap();
        }
        assert_eq!(ns.usage().0, 100);
        let started = Instant::now();
        while ns.usage() != (0, 0) {
            assert!(
                started.elapsed() < SWEEP_EVERY * 5,
                "still counted: {:?}",
                ns.usage()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn usage_belongs_to_the_stage_name_across_reloads() {
        let kv = Memory::default();
        let first = kv.namespace("s", Quota::default());
        first.set("k", b"v".to_vec(), None).unwrap();
        let reloaded = kv.namespace("s", Quota::default());
        assert_eq!(reloaded.usage(), first.usage());
        assert_eq!(reloaded.get("k").unwrap(), Some(b"v".to_vec()));
    }
}
