//! The response cache: the host's store (the mechanism) under the keys and
//! lifetimes a `cache-policy` stage decides (the policy).
//!
//! - [`Store`]: responses in memory, bounded by bytes (`[cache] max_size`,
//!   heads and bodies counted) with moka's TinyLFU admission and LRU
//!   eviction, each kept for the time its policy allowed. One store serves
//!   every pipeline generation while `[cache]` is unchanged ([`Stores`]).
//! - [`record`]: the body that streams an upstream response to its first
//!   client and keeps a copy for the store as it passes; one over
//!   `max_object_size` is passed on and not stored.
//!
//! Whether a response may be stored and for how long is the policy's call
//! (its plugin): the host only never stores a response to a HEAD (it has no
//! body), and serves HEAD from a GET's entry.

pub mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::clock;
use crate::manifest::Cache as CacheConfig;

/// Memory one stored header costs beyond its name and value: its slot in
/// the `HeaderMap` and the value's own allocation.
const HEADER_OVERHEAD: usize = 160;
/// Memory one entry costs beyond its key, head and body: the `Entry`, the
/// map's index, and moka's node, deque and timer links.
const ENTRY_OVERHEAD: usize = 640;

/// One stored response: its head as the upstream sent it (response stages
/// run again on every hit) and its whole body.
#[derive(Debug)]
pub struct Entry {
    /// The status.
    pub status: StatusCode,
    /// The headers, hop-by-hop ones already gone.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// When it was stored (coarse-clock ms).
    stored_at: u64,
    /// How long it is fresh.
    ttl: Duration,
    /// How long it stays in the store once stale (set when stored, from
    /// `[cache]`): for revalidation or to serve when the upstream fails.
    grace: Duration,
    /// Set on the marker stored under a key whose responses vary: the
    /// request headers that pick the variant, stored under its own key.
    variants: Option<Arc<[HeaderName]>>,
    /// How stale it may be served at once while refreshed, and when the
    /// upstream fails (`[cache]`, or longer if its `Cache-Control` says so).
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

impl Entry {
    /// An entry stored now, fresh for `ttl`.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes, ttl: Duration) -> Entry {
        Entry {
            status,
            headers,
            body,
            stored_at: clock::now_ms(),
            ttl,
            grace: Duration::ZERO,
            variants: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        }
    }

    /// How long past its freshness it is served at once while one request
    /// refreshes it (zero: not at all).
    pub fn stale_while_revalidate(&self) -> Duration {
        self.stale_while_revalidate
    }

    /// How long past its freshness it answers when the upstream fails.
    pub fn stale_if_error(&self) -> Duration {
        self.stale_if_error
    }

    /// Whether it carries a validator a conditional request can use.
    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    /// The conditional headers that ask the upstream whether it changed.
    pub fn validators(&self) -> impl Iterator<Item = (http::HeaderName, HeaderValue)> + '_ {
        use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
        [(ETAG, IF_NONE_MATCH), (LAST_MODIFIED, IF_MODIFIED_SINCE)]
            .into_iter()
            .filter_map(|(have, ask)| Some((ask, self.headers.get(have)?.clone())))
    }

    /// Whether it is stale by at most `within` (so `stale_if_error` allows it).
    pub fn stale_within(&self, within: Duration) -> bool {
        self.age() < self.ttl + within
    }

    /// This entry brought up to date by a `304 Not Modified` with headers
    /// `update` (RFC 9111 §4.3.4: its headers replace the stored ones of
    /// the same names, framing aside), fresh for `ttl` from now.
    pub fn refreshed(&self, update: &HeaderMap, ttl: Duration) -> Entry {
        let mut headers = self.headers.clone();
        for name in update.keys() {
            if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
                continue;
            }
            headers.remove(name);
            for v in update.get_all(name) {
                headers.append(name.clone(), record::owned_value(v));
            }
        }
        Entry::new(self.status, headers, self.body.clone(), ttl)
    }

    /// How long ago it was stored: the `Age` header's value.
    pub fn age(&self) -> Duration {
        Duration::from_millis(clock::now_ms().saturating_sub(self.stored_at))
    }

    /// Whether it may still be served without asking the upstream.
    pub fn fresh(&self) -> bool {
        self.age() < self.ttl
    }

    /// Whether a request with these headers is answered `304 Not Modified`
    /// by this entry (RFC 9110 §13.1): `If-None-Match` against its `ETag`
    /// (weak comparison), else `If-Modified-Since` against its
    /// `Last-Modified`.
    pub fn not_modified(&self, request: &HeaderMap) -> bool {
        use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
        fn text(h: &HeaderMap, name: http::HeaderName) -> Option<&str> {
            h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
        }
        if request.contains_key(IF_NONE_MATCH) {
            let Some(etag) = text(&self.headers, ETAG) else {
                return false;
            };
            let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
            return request
                .get_all(IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim() == "*" || opaque(t) == opaque(etag));
        }
        let date =
            |h: &HeaderMap, name| text(h, name).and_then(|d| httpdate::parse_http_date(d).ok());
        match (
            date(request, IF_MODIFIED_SINCE),
            date(&self.headers, LAST_MODIFIED),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }

    /// The head of its `304 Not Modified`: the headers RFC 9110 §15.4.5
    /// asks to repeat (and `Last-Modified`), no body.
    pub fn not_modified_headers(&self) -> HeaderMap {
        use http::header::{
            CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY,
        };
        let mut h = HeaderMap::new();
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
        ] {
            for v in self.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h
    }

    /// Bytes it holds under a key of `key_len` bytes, as the store's bound
    /// counts them: what the process really spends on it, bookkeeping
    /// included (measured: a flood of tiny responses kept RSS growth near
    /// the bound only once these overheads were counted).
    fn weight(&self, key_len: usize) -> u32 {
        let head: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        u32::try_from(self.body.len() + head + key_len + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// What the store did since it was made (`/status`).
#[derive(Debug, Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stale: AtomicU64,
    revalidated: AtomicU64,
    stored: AtomicU64,
    too_large: AtomicU64,
    evictions: AtomicU64,
}

/// How a request met the cache, as the status header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Served from the store.
    Hit,
    /// Not in the store (or stale): forwarded, and stored if the policy allows.
    Miss,
    /// The policy gave no key: the cache was not consulted.
    Bypass,
    /// A stale entry, served because the upstream failed.
    Stale,
    /// A stale entry the upstream confirmed unchanged (304), served.
    Revalidated,
}

impl Verdict {
    /// The status header's value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Verdict::Hit => "HIT",
            Verdict::Miss => "MISS",
            Verdict::Bypass => "BYPASS",
            Verdict::Stale => "STALE",
            Verdict::Revalidated => "REVALIDATED",
        })
    }
}

/// Stored responses by cache key.
pub struct Store {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    config: CacheConfig,
    stats: Arc<Stats>,
    /// Misses being fetched now, by key: a later miss of the same key waits
    /// for the first one's response (up to `lock_timeout`) instead of
    /// asking the upstream too. The channel closes when the first is done.
    flights: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh entry.
    Hit(Arc<Entry>),
    /// A stale entry within `stale_while_revalidate`: served at once. With a
    /// [`Flight`], this request refreshes it in the background (nobody else
    /// is); without, another request already does.
    StaleWhileRevalidate {
        /// The entry to serve.
        entry: Arc<Entry>,
        /// This request leads the refresh.
        flight: Option<Flight>,
    },
    /// Nothing fresh: go upstream. With a [`Flight`], this request is the
    /// one fetching the key and others wait for it, until it is dropped;
    /// with a stale entry, it may be revalidated or served if the upstream
    /// fails.
    Miss {
        /// This request leads the fetch of the key.
        flight: Option<Flight>,
        /// What the store still holds for the key, past its freshness.
        stale: Option<Arc<Entry>>,
    },
}

/// The fetch of one key by the first request that missed it. Dropped when
/// its response was stored, or turned out not to be storable, or failed:
/// the requests waiting for it then look again.
#[derive(Debug)]
pub struct Flight {
    store: Arc<Store>,
    key: String,
    done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self.store.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.done.subscribe()))
        {
            flights.remove(&self.key);
        }
        // Dropping `done` closes the channel: the waiters wake.
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

/// Each entry leaves the store when its policy's time is up; a stale entry
/// is never served, so it need not stay.
struct Lifetime;

impl moka::Expiry<String, Arc<Entry>> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl + entry.grace)
    }
}

impl Store {
    /// An empty store bounded as `config` says.
    pub fn new(config: CacheConfig) -> Store {
        let stats = Arc::new(Stats::default());
        let evicted = stats.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_size)
            .weigher(|key: &String, entry: &Arc<Entry>| entry.weight(key.len()))
            .expire_after(Lifetime)
            .eviction_listener(move |_key, _entry, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.evictions.fetch_add(1, Relaxed);
                }
            })
            .build();
        Store {
            entries,
            config,
            stats,
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The entry under `key`, fresh or not; for a key whose responses vary,
    /// the variant `request` would get, under the key returned with it.
    fn get(&self, key: &str, request: &HeaderMap) -> (Option<String>, Option<Arc<Entry>>) {
        match self.entries.get(key) {
            Some(marker) if marker.variants.is_some() => {
                let names = marker.variants.as_deref().unwrap_or_default();
                let variant = variant_key(key, names, request);
                let found = self.entries.get(&variant);
                (Some(variant), found)
            }
            found => (None, found),
        }
    }

    /// Note that the responses under `key` vary on `names` (from `Vary`):
    /// lookups then go on to the variant of each request. Kept as long as
    /// the variant stored with it (`lifetime`).
    pub fn mark_variants(&self, key: &str, names: Arc<[HeaderName]>, lifetime: Duration) {
        let mut marker = Entry::new(StatusCode::OK, HeaderMap::new(), Bytes::new(), lifetime);
        marker.variants = Some(names);
        marker.grace = self
            .config
            .keep_stale
            .max(self.config.stale_if_error)
            .max(self.config.stale_while_revalidate);
        self.entries.insert(key.to_owned(), Arc::new(marker));
    }

    /// Look `key` up. On a miss, when another request is already fetching
    /// the key, wait for it (up to `lock_timeout`) and look again; otherwise,
    /// with `lead` (a GET, whose response may be stored), become the one
    /// fetching it. Counts a hit or a miss.
    pub async fn lookup(self: &Arc<Self>, key: &str, lead: bool, request: &HeaderMap) -> Lookup {
        let (variant, found) = self.get(key, request);
        let key = variant.as_deref().unwrap_or(key);
        let found = match found {
            Some(e) if e.fresh() => Lookup::Hit(e),
            Some(e)
                if lead
                    && !e.stale_while_revalidate.is_zero()
                    && e.stale_within(e.stale_while_revalidate) =>
            {
                let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
                let flight = (!flights.contains_key(key)).then(|| self.lead(&mut flights, key));
                Lookup::StaleWhileRevalidate { entry: e, flight }
            }
            stale => {
                let waiting = {
                    let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
                    match flights.get(key) {
                        Some(rx) => Err(rx.clone()),
                        None if lead => Ok(Some(self.lead(&mut flights, key))),
                        None => Ok(None),
                    }
                };
                match waiting {
                    Ok(flight) => Lookup::Miss { flight, stale },
                    Err(mut rx) => {
                        // Closed (Err) when the first request is done with it.
                        let _ = tokio::time::timeout(self.config.lock_timeout, rx.changed()).await;
                        match self.get(key, request).1 {
                            Some(e) if e.fresh() => Lookup::Hit(e),
                            stale => Lookup::Miss {
                                flight: None,
                                stale,
                            },
                        }
                    }
                }
            }
        };
        let counter = match &found {
            Lookup::Hit(_) => &self.stats.hits,
            Lookup::StaleWhileRevalidate { .. } => &self.stats.stale,
            Lookup::Miss { .. } => &self.stats.misses,
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    /// Make this request the one fetching `key` (no one is yet).
    fn lead(
        self: &Arc<Self>,
        flights: &mut HashMap<String, watch::Receiver<()>>,
        key: &str,
    ) -> Flight {
        let (done, rx) = watch::channel(());
        flights.insert(key.to_owned(), rx);
        Flight {
            store: self.clone(),
            key: key.to_owned(),
            done,
        }
    }

    /// Count a request the policy let bypass the cache.
    pub fn bypassed(&self) {
        self.stats.bypasses.fetch_add(1, Relaxed);
    }

    /// Keep `entry` under `key`, replacing what was there; once stale it
    /// stays `keep_stale` more if it can be revalidated, `stale_if_error`
    /// more if that is longer.
    pub fn insert(&self, key: String, mut entry: Entry) {
        let c = &self.config;
        let revalidate = if c.revalidate && entry.has_validator() {
            c.keep_stale
        } else {
            Duration::ZERO
        };
        // RFC 5861: the response may allow longer windows than `[cache]`.
        let (swr, sie) = stale_directives(&entry.headers);
        entry.stale_while_revalidate = c.stale_while_revalidate.max(swr);
        entry.stale_if_error = c.stale_if_error.max(sie);
        entry.grace = revalidate
            .max(entry.stale_if_error)
            .max(entry.stale_while_revalidate);
        self.stats.stored.fetch_add(1, Relaxed);
        self.entries.insert(key, Arc::new(entry));
    }

    /// Count a stale entry served because the upstream failed.
    pub fn served_stale(&self) {
        self.stats.stale.fetch_add(1, Relaxed);
    }

    /// Count a stale entry the upstream confirmed (304).
    pub fn revalidated(&self) {
        self.stats.revalidated.fetch_add(1, Relaxed);
    }

    /// Count a response not stored because its body passed `max_object_size`.
    pub fn too_large(&self) {
        self.stats.too_large.fetch_add(1, Relaxed);
    }

    /// Remove the entry under `key` (the admin API's purge); whether there was one.
    pub fn purge(&self, key: &str) -> bool {
        // The variants of a key live under keys of their own.
        let variants = self.purge_prefix(&format!("{key}\n\0vary"));
        self.entries.remove(key).is_some() || variants > 0
    }

    /// Remove every entry whose key starts with `prefix` (e.g.
    /// `https://shop.example/static/`); how many there were.
    pub fn purge_prefix(&self, prefix: &str) -> u64 {
        let doomed: Vec<Arc<String>> = self
            .entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(prefix))
            .collect();
        doomed
            .iter()
            .filter(|k| self.entries.remove(k.as_str()).is_some())
            .count() as u64
    }

    /// `/status`: counters since the store was made, and what it holds.
    pub fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.stats()).unwrap_or_default()
    }

    /// The store's counters and size now (`/status` and `/metrics`).
    pub fn stats(&self) -> CacheStats {
        // Evictions and expiries are applied lazily; count them first.
        self.entries.run_pending_tasks();
        let s = &self.stats;
        CacheStats {
            hits: s.hits.load(Relaxed),
            misses: s.misses.load(Relaxed),
            bypasses: s.bypasses.load(Relaxed),
            stale: s.stale.load(Relaxed),
            revalidated: s.revalidated.load(Relaxed),
            stored: s.stored.load(Relaxed),
            too_large: s.too_large.load(Relaxed),
            evictions: s.evictions.load(Relaxed),
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            max_bytes: self.config.max_size,
        }
    }
}

/// A snapshot of a store's counters (since it was made) and size.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[allow(missing_docs)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bypasses: u64,
    pub stale: u64,
    pub revalidated: u64,
    pub stored: u64,
    pub too_large: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

/// The `stale-while-revalidate=N` and `stale-if-error=N` of a response's
/// `Cache-Control` (RFC 5861), zero when absent.
fn stale_directives(headers: &HeaderMap) -> (Duration, Duration) {
    let mut found = (Duration::ZERO, Duration::ZERO);
    let directives = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for d in directives {
        let Some((name, secs)) = d.split_once('=') else {
            continue;
        };
        let Ok(secs) = secs.trim().trim_matches('"').parse::<u64>() else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "stale-while-revalidate" => found.0 = Duration::from_secs(secs),
            "stale-if-error" => found.1 = Duration::from_secs(secs),
            _ => {}
        }
    }
    found
}

/// The header names a response's `Vary` lists (lower case), or `None` when
/// it varies on nothing (or on `*`, which the policy never lets be stored).
pub fn vary_names(headers: &HeaderMap) -> Option<Arc<[HeaderName]>> {
    let mut names: Vec<HeaderName> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    (!names.is_empty()).then(|| names.into())
}

/// The key of the variant of `key` a request with these headers gets: the
/// values of the `Vary` headers, each on a line of its own.
pub fn variant_key(key: &str, names: &[HeaderName], request: &HeaderMap) -> String {
    let mut variant = format!("{key}\n\0vary");
    for name in names {
        let values: Vec<&str> = request
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        variant.push_str(&format!("\n{name}: {}", values.join(", ")));
    }
    variant
}

/// The process's store: kept across reloads while `[cache]` is unchanged,
/// a new one (empty) when it changes.
#[derive(Debug, Default)]
pub struct Stores {
    current: Mutex<Option<Arc<Store>>>,
}

impl Stores {
    /// The store for a generation with `config`: the current one if its
    /// settings are the same, else a new one that becomes current. (A
    /// generation that is then rejected leaves the new, empty store current:
    /// the old one's entries stay with the running generation until it goes.)
    pub fn store_for(&self, config: &CacheConfig) -> Arc<Store> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(s) if s.config() == config => s.clone(),
            _ => {
                let store = Arc::new(Store::new(config.clone()));
                *current = Some(store.clone());
                store
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_size: u64) -> CacheConfig {
        CacheConfig {
            max_size,
            ..CacheConfig::default()
        }
    }

    fn entry(body: usize, ttl: Duration) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body]),
            ttl,
        )
    }

    fn hit(found: Lookup) -> Option<Arc<Entry>> {
        match found {
            Lookup::Hit(e) => Some(e),
            Lookup::StaleWhileRevalidate { .. } | Lookup::Miss { .. } => None,
        }
    }

    #[tokio::test]
    async fn a_stored_entry_is_a_hit_until_its_time_is_up() {
        let store = Arc::new(Store::new(config(1 << 20)));
        assert!(hit(store.lookup("/a", false, &HeaderMap::new()).await).is_none());
        store.insert("/a".into(), entry(10, Duration::from_secs(60)));
        let found = hit(store.lookup("/a", false, &HeaderMap::new()).await).expect("a hit");
        assert_eq!(found.body.len(), 10);
        assert!(found.age() < Duration::from_secs(1));
        store.insert("/b".into(), entry(10, Duration::ZERO));
        assert!(
            hit(store.lookup("/b", false, &HeaderMap::new()).await).is_none(),
            "an entry with no lifetime is stale at once"
        );
        let status = store.status();
        assert_eq!(
            (status["hits"].as_u64(), status["misses"].as_u64()),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn conditional_requests_match_the_etag_weakly_or_the_date() {
        let mut stored = HeaderMap::new();
        stored.insert("etag", HeaderValue::from_static("\"v1\""));
        stored.insert(
            "last-modified",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let e = Entry::new(StatusCode::OK, stored, Bytes::new(), Duration::from_secs(9));
        let ask = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            e.not_modified(&h)
        };
        assert!(ask(&[("if-none-match", "\"v0\", W/\"v1\"")]));
        assert!(ask(&[("if-none-match", "*")]));
        assert!(!ask(&[("if-none-match", "\"v2\"")]));
        // If-None-Match wins over a matching date.
        assert!(!ask(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
        ]));
        assert!(ask(&[(
            "if-modified-since",
            "Mon, 07 Nov 1994 00:00:00 GMT"
        )]));
        assert!(!ask(&[(
            "if-modified-since",
            "Sat, 05 Nov 1994 00:00:00 GMT"
        )]));
        assert!(!ask(&[("if-modified-since", "yesterday")]));
        assert!(!ask(&[]));
        assert_eq!(e.not_modified_headers().len(), 2);
    }

    #[tokio::test]
    async fn a_second_miss_waits_for_the_first_and_gets_what_it_stored() {
        let store = Arc::new(Store::new(config(1 << 20)));
        let Lookup::Miss {
            flight: Some(flight),
            ..
        } = store.lookup("/k", true, &HeaderMap::new()).await
        else {
            panic!("the first miss leads")
        };
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { hit(store.lookup("/k", true, &HeaderMap::new()).await).is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second waits");
        store.insert("/k".into(), entry(3, Duration::from_secs(60)));
        drop(flight);
        assert!(
            waiting.await.unwrap(),
            "and is served what the first stored"
        );

        // A first miss whose response was not stored: the waiter goes on alone.
        let Lookup::Miss {
            flight: Some(flight),
            ..
        } = store.lookup("/n", true, &HeaderMap::new()).await
        else {
            panic!()
        };
        // (A waiter never leads after waiting; `false` keeps this test
        // independent of whether it ran before the drop.)
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.lookup("/n", false, &HeaderMap::new()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(flight);
        assert!(matches!(
            waiting.await.unwrap(),
            Lookup::Miss { flight: None, .. }
        ));
        // And nobody leads it now: the next miss does.
        assert!(matches!(
            store.lookup("/n", true, &HeaderMap::new()).await,
            Lookup::Miss {
                flight: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn a_responses_own_stale_windows_count_when_longer_than_the_stores() {
        let store = Store::new(CacheConfig {
            stale_if_error: Duration::from_secs(30),
            ..config(1 << 20)
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            "cache-control",
            HeaderValue::from_static("max-age=1, stale-while-revalidate=60, stale-if-error=10"),
        );
        store.insert(
            "/s".into(),
            Entry::new(
                StatusCode::OK,
                headers,
                Bytes::new(),
                Duration::from_secs(1),
            ),
        );
        let e = store.entries.get("/s").unwrap();
        assert_eq!(e.stale_while_revalidate(), Duration::from_secs(60));
        assert_eq!(
            e.stale_if_error(),
            Duration::from_secs(30),
            "the longer one"
        );
    }

    #[test]
    fn purge_removes_one_key_or_every_key_under_a_prefix() {
        let store = Store::new(config(1 << 20));
        for k in ["https://a/x/1", "https://a/x/2", "https://a/y/1"] {
            store.insert(k.into(), entry(1, Duration::from_secs(60)));
        }
        assert!(store.purge("https://a/y/1"));
        assert!(!store.purge("https://a/y/1"));
        assert_eq!(store.purge_prefix("https://a/x/"), 2);
        assert_eq!(store.purge_prefix("https://a/"), 0);
    }

    #[test]
    fn the_store_stays_within_its_byte_bound() {
        let bound = 256 << 10;
        let store = Store::new(config(bound));
        for i in 0..1000 {
            store.insert(format!("/{i}"), entry(4096, Duration::from_secs(60)));
        }
        let status = store.status();
        let bytes = status["bytes"].as_u64().unwrap();
        assert!(bytes <= bound, "{bytes} bytes stored, bound {bound}");
        assert!(status["entries"].as_u64().unwrap() < 100);
        assert!(status["evictions"].as_u64().unwrap() > 0, "{status}");
    }

    #[test]
    fn a_reload_keeps_the_store_while_cache_settings_are_unchanged() {
        let stores = Stores::default();
        let a = stores.store_for(&config(1 << 20));
        let b = stores.store_for(&config(1 << 20));
        assert!(Arc::ptr_eq(&a, &b));
        let c = stores.store_for(&config(2 << 20));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
