//! The proxy's metrics, served in Prometheus' text format on the admin
//! listener's `GET /metrics`.
//!
//! Two kinds:
//! - **Events**, counted as they happen: requests, durations, plugin calls
//!   and failures, retries, kv operations, reloads, connections. These are
//!   process state: a reload keeps them, and a stage or an upstream finds
//!   its series again by name. The request path holds pre-resolved handles
//!   ([`StageMetrics`], [`UpstreamMetrics`]) so a call counts with an atomic
//!   add, not a label lookup.
//! - **State**, read from the running pipeline at each scrape: endpoint
//!   health, ejections, in-flight requests and pools, stage quarantine, the
//!   response cache's counters and size ([`Scrape`]).
//!
//! Names and units follow Prometheus' conventions: `portier_` prefix,
//! seconds and bytes, counters ending in `_total`.

use std::sync::{Arc, LazyLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pipeline::Pipeline;

/// The content type of [`render`]'s OpenMetrics output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of Prometheus' classic text format ([`to_text_format`]).
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request's route, upstream and status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route the router chose ("" when none did).
    pub route: String,
    /// The upstream that was asked ("" when none was).
    pub upstream: String,
    /// `2xx`, `3xx`, `4xx` or `5xx` (`1xx` for a switched protocol).
    pub class: &'static str,
}

/// One label: a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route ("" when the router chose none, or there is no router).
    pub route: String,
}

/// One label: an upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// The upstream's name.
    pub upstream: String,
}

/// An upstream and what went wrong with an attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamFailureLabels {
    /// The upstream's name.
    pub upstream: String,
    /// `connect`, `reset` or `timeout`.
    pub kind: &'static str,
}

/// One label: a stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// The stage's name.
    pub stage: String,
}

/// A stage and how a call of it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageFailureLabels {
    /// The stage's name.
    pub stage: String,
    /// `timeout`, `trap`, `contract`, `start`, `quarantined`, `busy` or `kv_outage` (kv down and `kv.outage` not `plugin`).
    pub kind: &'static str,
}

/// A stage and the status it answered a request with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageAnswerLabels {
    /// The stage's name.
    pub stage: String,
    /// The status code it answered with.
    pub code: u16,
}

/// A kv operation on a backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// `get`, `set`, `delete`, `increment` or `compare_and_swap`.
    pub op: &'static str,
}

/// How a reload ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

/// Every event metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// From a request's arrival to its response's last byte.
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Requests being served now.
    pub requests_in_flight: Gauge,
    /// Client connections accepted.
    pub connections: Counter,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// From sending a request upstream to its response head, per attempt.
    pub upstream_response: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    /// Attempts that failed, by kind.
    pub upstream_failures: Family<UpstreamFailureLabels, Counter>,
    /// Requests sent again to another endpoint.
    pub upstream_retries: Family<UpstreamLabel, Counter>,
    /// Plugin calls, by how long they took.
    pub stage_calls: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Failed plugin calls.
    pub stage_failures: Family<StageFailureLabels, Counter>,
    /// Quarantines a stage entered.
    pub stage_quarantines: Family<StageLabel, Counter>,
    /// Requests a stage answered itself (a 401, a rate limit's 429...).
    pub stage_answers: Family<StageAnswerLabels, Counter>,
    /// kv operations.
    pub kv_operations: Family<KvLabels, Counter>,
    /// kv operations that failed for the store's sake (not "absent").
    pub kv_errors: Family<KvLabels, Counter>,
    /// Reloads, by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// The running pipeline's generation.
    pub generation: Gauge,
}

/// Latency buckets from 100 µs to ~52 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Plugin call buckets from 1 µs to ~1 s, quadrupling (calls are short;
/// the tail is what matters).
fn call_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_001, 4.0, 11))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portier");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds as fn() -> Histogram),
            requests_in_flight: Gauge::default(),
            connections: Counter::default(),
            connections_open: Gauge::default(),
            upstream_response: Family::new_with_constructor(seconds as fn() -> Histogram),
            upstream_failures: Family::default(),
            upstream_retries: Family::default(),
            stage_calls: Family::new_with_constructor(call_seconds as fn() -> Histogram),
            stage_failures: Family::default(),
            stage_quarantines: Family::default(),
            stage_answers: Family::default(),
            kv_operations: Family::default(),
            kv_errors: Family::default(),
            reloads: Family::default(),
            generation: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests answered, by route, upstream and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From a request's arrival to its response's last byte",
            m.request_duration.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests being served now",
            m.requests_in_flight.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "upstream_response_seconds",
            "From sending a request upstream to its response head, per attempt",
            m.upstream_response.clone(),
        );
        r.register(
            "upstream_failures",
            "Upstream attempts that failed: connect, reset or timeout",
            m.upstream_failures.clone(),
        );
        r.register(
            "upstream_retries",
            "Requests sent again, to another endpoint or the same one",
            m.upstream_retries.clone(),
        );
        r.register(
            "stage_call_seconds",
            "Plugin calls, by how long they took",
            m.stage_calls.clone(),
        );
        r.register(
            "stage_failures",
            "Plugin calls that failed: timeout, trap, contract, start, quarantined, busy or kv_outage",
            m.stage_failures.clone(),
        );
        r.register(
            "stage_quarantines",
            "Quarantines a stage entered after repeated failures",
            m.stage_quarantines.clone(),
        );
        r.register(
            "stage_answers",
            "Requests a stage answered itself, by status (a rate limit's 429s are here)",
            m.stage_answers.clone(),
        );
        r.register(
            "kv_operations",
            "kv operations by backend and operation",
            m.kv_operations.clone(),
        );
        r.register(
            "kv_errors",
            "kv operations the store failed (unreachable, over quota...)",
            m.kv_errors.clone(),
        );
        r.register("reloads", "Pipeline reloads, by result", m.reloads.clone());
        r.register(
            "pipeline_generation",
            "The running pipeline's generation (1 at start, +1 per reload)",
            m.generation.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `2xx`, `4xx`...: the label of a status code's class.
pub fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A stage's series, resolved once when the stage loads.
#[derive(Debug, Clone)]
pub struct StageMetrics {
    name: String,
    /// Its calls' durations.
    pub calls: Histogram,
    /// Its quarantines.
    pub quarantines: Counter,
}

impl StageMetrics {
    /// The series of the stage named `name`.
    pub fn new(name: &str) -> StageMetrics {
        let m = get();
        let label = StageLabel {
            stage: name.to_owned(),
        };
        StageMetrics {
            name: name.to_owned(),
            calls: m.stage_calls.get_or_create_owned(&label),
            quarantines: m.stage_quarantines.get_or_create_owned(&label),
        }
    }

    /// Count a failed call (rare: resolved when it happens).
    pub fn failed(&self, kind: &'static str) {
        get()
            .stage_failures
            .get_or_create(&StageFailureLabels {
                stage: self.name.clone(),
                kind,
            })
            .inc();
    }

    /// Count a request the stage answered with `code`.
    pub fn answered(&self, code: u16) {
        get()
            .stage_answers
            .get_or_create(&StageAnswerLabels {
                stage: self.name.clone(),
                code,
            })
            .inc();
    }
}

/// An upstream's series, resolved once per pipeline generation.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    /// Response-head latency per attempt.
    pub response: Histogram,
    /// Requests sent again.
    pub retries: Counter,
    /// Failed attempts: connect, reset, timeout.
    pub failures: [Counter; 3],
}

impl UpstreamMetrics {
    /// The series of the upstream named `name`.
    pub fn new(name: &str) -> UpstreamMetrics {
        let m = get();
        let label = UpstreamLabel {
            upstream: name.to_owned(),
        };
        let failure = |kind| {
            m.upstream_failures
                .get_or_create_owned(&UpstreamFailureLabels {
                    upstream: name.to_owned(),
                    kind,
                })
        };
        UpstreamMetrics {
            response: m.upstream_response.get_or_create_owned(&label),
            retries: m.upstream_retries.get_or_create_owned(&label),
            failures: [failure("connect"), failure("reset"), failure("timeout")],
        }
    }
}

/// Count a kv operation on `backend`, and its failure if it failed.
pub fn kv(backend: &'static str, op: &'static str, failed: bool) {
    let m = get();
    let labels = KvLabels { backend, op };
    m.kv_operations.get_or_create(&labels).inc();
    if failed {
        m.kv_errors.get_or_create(&labels).inc();
    }
}

/// Count a reload.
pub fn reloaded(result: Result<u64, ()>) {
    let m = get();
    let result = match result {
        Ok(generation) => {
            m.generation.set(generation as i64);
            "ok"
        }
        Err(()) => "rejected",
    };
    m.reloads.get_or_create(&ReloadLabels { result }).inc();
}

/// Count a finished request.
pub fn request(route: Option<&str>, upstream: Option<&str>, status: u16, seconds: f64) {
    let m = get();
    m.requests
        .get_or_create(&RequestLabels {
            route: route.unwrap_or_default().to_owned(),
            upstream: upstream.unwrap_or_default().to_owned(),
            class: class(status),
        })
        .inc();
    m.request_duration
        .get_or_create(&RouteLabel {
            route: route.unwrap_or_default().to_owned(),
        })
        .observe(seconds);
}

/// What a scraper gets: OpenMetrics when its `Accept` header takes it (as
/// Prometheus' does), else the classic text format every other tool reads.
pub fn scrape(pipeline: Arc<Pipeline>, accept: Option<&str>) -> (&'static str, String) {
    let open = render(pipeline);
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, open)
    } else {
        (TEXT_FORMAT, to_text_format(&open))
    }
}

/// OpenMetrics text as Prometheus' classic text format (0.0.4): a counter
/// family is named with its `_total` suffix, and there is no `# EOF` or
/// `# UNIT` line. Samples and labels are written alike in both.
pub fn to_text_format(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match comment {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The OpenMetrics text of every event metric, then the running
/// pipeline's state.
pub fn render(pipeline: Arc<Pipeline>) -> String {
    let mut scrape = Registry::with_prefix("portier");
    scrape.register_collector(Box::new(Scrape(pipeline)));
    let mut out = String::with_capacity(16 << 10);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &get().registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &scrape);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// The running pipeline's state, read at a scrape.
struct Scrape(Arc<Pipeline>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrape(generation {})", self.0.generation)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let endpoints: Vec<_> = p
            .upstreams()
            .iter()
            .flat_map(|u| {
                u.endpoints.iter().map(move |e| {
                    let labels = [
                        ("upstream", u.name.clone()),
                        ("endpoint", e.state.address.to_string()),
                    ];
                    (labels, &e.state)
                })
            })
            .collect();
        family(
            &mut encoder,
            "endpoint_healthy",
            "1 while the endpoint takes requests (active checks pass, not ejected)",
            endpoints
                .iter()
                .map(|(l, s)| (l, ConstGauge::new(i64::from(s.healthy())))),
        )?;
        family(
            &mut encoder,
            "endpoint_ejections",
            "Passive ejections of the endpoint (outlier detection)",
            endpoints
                .iter()
                .map(|(l, s)| (l, ConstCounter::new(s.ejections_total()))),
        )?;
        family(
            &mut encoder,
            "endpoint_in_flight",
            "Requests the endpoint is serving now",
            endpoints
                .iter()
                .map(|(l, s)| (l, ConstGauge::new(i64::from(s.in_flight())))),
        )?;
        family(
            &mut encoder,
            "endpoint_connections_open",
            "Connections to the endpoint, in use and idle",
            endpoints
                .iter()
                .map(|(l, s)| (l, ConstGauge::new(s.pool.open() as i64))),
        )?;
        family(
            &mut encoder,
            "endpoint_connections_idle",
            "Idle pooled connections to the endpoint",
            endpoints
                .iter()
                .map(|(l, s)| (l, ConstGauge::new(s.pool.idle_count() as i64))),
        )?;
        family(
            &mut encoder,
            "endpoint_connects",
            "Connections opened to the endpoint",
            endpoints
                .iter()
                .map(|(l, s)| (l, ConstCounter::new(s.pool.connects()))),
        )?;
        let stages: Vec<_> = p
            .stages()
            .iter()
            .map(|s| ([("stage", s.name().to_owned())], s.quarantined()))
            .collect();
        family(
            &mut encoder,
            "stage_quarantined",
            "1 while the stage is quarantined (its failure policy answers for it)",
            stages
                .iter()
                .map(|(l, q)| (l, ConstGauge::new(i64::from(*q)))),
        )?;
        rollouts(&mut encoder, p)?;
        if let Some(cache) = p.cache() {
            let s = cache.stats();
            let none: [(&str, &str); 0] = [];
            for (name, help, value) in [
                ("cache_hits", "Requests answered from the cache", s.hits),
                (
                    "cache_misses",
                    "Cacheable requests the cache did not hold",
                    s.misses,
                ),
                (
                    "cache_bypasses",
                    "Requests the cache policy passed by",
                    s.bypasses,
                ),
                ("cache_stale", "Stale responses served", s.stale),
                (
                    "cache_revalidated",
                    "Stored responses an upstream's 304 refreshed",
                    s.revalidated,
                ),
                ("cache_stored", "Responses stored", s.stored),
                (
                    "cache_too_large",
                    "Responses too large to store",
                    s.too_large,
                ),
                (
                    "cache_evictions",
                    "Stored responses evicted to make room",
                    s.evictions,
                ),
            ] {
                family(
                    &mut encoder,
                    name,
                    help,
                    [(&none, ConstCounter::new(value))],
                )?;
            }
            for (name, help, value) in [
                ("cache_entries", "Responses stored now", s.entries),
                ("cache_bytes", "Bytes the stored responses take", s.bytes),
                (
                    "cache_max_bytes",
                    "The store's bound (cache.max_size)",
                    s.max_bytes,
                ),
            ] {
                family(
                    &mut encoder,
                    name,
                    help,
                    [(&none, ConstGauge::new(value as i64))],
                )?;
            }
        }
        let tls = crate::server::TLS_HANDSHAKE_FAILURES.load(std::sync::atomic::Ordering::Relaxed);
        let none: [(&str, &str); 0] = [];
        family(
            &mut encoder,
            "tls_handshake_failures",
            "TLS handshakes that failed (bad clients, scanners, distrusted certificates)",
            [(&none, ConstCounter::new(tls))],
        )
    }
}

/// The candidates' series: both versions' calls apart, shadow comparisons,
/// rollbacks and where each candidate stands.
fn rollouts(encoder: &mut DescriptorEncoder, p: &Pipeline) -> Result<(), std::fmt::Error> {
    let rollouts: Vec<_> = p
        .rollouts()
        .map(|(i, r)| (p.stages()[i].name().to_owned(), r))
        .collect();
    let versions: Vec<_> = rollouts
        .iter()
        .flat_map(|(stage, r)| {
            r.tracker
                .totals()
                .map(|(version, calls, failures, timeouts, seconds)| {
                    let labels = [("stage", stage.clone()), ("version", version.to_owned())];
                    (labels, calls, failures, timeouts, seconds)
                })
        })
        .collect();
    family(
        encoder,
        "rollout_calls",
        "Calls of a stage with a candidate, by version (current, candidate)",
        versions.iter().map(|v| (&v.0, ConstCounter::new(v.1))),
    )?;
    family(
        encoder,
        "rollout_failures",
        "Failed calls of a stage with a candidate, by version",
        versions.iter().map(|v| (&v.0, ConstCounter::new(v.2))),
    )?;
    family(
        encoder,
        "rollout_timeouts",
        "Calls of a stage with a candidate that ran out of time, by version",
        versions.iter().map(|v| (&v.0, ConstCounter::new(v.3))),
    )?;
    family(
        encoder,
        "rollout_call_seconds",
        "Time spent in calls of a stage with a candidate, by version",
        versions.iter().map(|v| (&v.0, ConstCounter::new(v.4))),
    )?;
    let stages: Vec<_> = rollouts
        .iter()
        .map(|(stage, r)| {
            (
                [("stage", stage.clone())],
                r.tracker.shadow_counts(),
                r.tracker.state(),
            )
        })
        .collect();
    for (name, help, pick) in [
        (
            "rollout_rollbacks",
            "Times a candidate was rolled back (by itself or through the admin API)",
            (|c: (u64, u64, u64, u64)| c.0) as fn((u64, u64, u64, u64)) -> u64,
        ),
        (
            "rollout_shadow_compared",
            "Shadow calls compared with the current version",
            |c| c.1,
        ),
        (
            "rollout_shadow_disagreements",
            "Shadow calls that decided otherwise than the current version",
            |c| c.2,
        ),
        (
            "rollout_shadow_skipped",
            "Shadow samples skipped: max_in_flight shadow calls were running",
            |c| c.3,
        ),
    ] {
        family(
            encoder,
            name,
            help,
            stages.iter().map(|s| (&s.0, ConstCounter::new(pick(s.1)))),
        )?;
    }
    family(
        encoder,
        "rollout_state",
        "Where a candidate stands: 0 active, 1 rolled back, 2 promoted",
        stages.iter().map(|s| (&s.0, ConstGauge::new(s.2 as i64))),
    )
}

/// Write one metric family of `M`s from `(labels, value)` pairs.
fn family<'a, L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (&'a L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet + 'a,
    M: EncodeMetric + TypedMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}
