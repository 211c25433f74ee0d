//! Rolling out a new version of a stage's plugin beside the running one.
//!
//! A stage with a `[pipeline.candidate]` runs its candidate for a share of
//! its clients (canary) or, off the request's path, beside the current
//! version on a sample of requests (shadow: the candidate's decision is
//! compared with the current one's and never applied). Both versions'
//! calls, failures, timeouts and times are counted apart, over a window
//! and in total; when the candidate fails or slows down more than its
//! `rollback` allows relative to the current version, it is taken out of
//! service by itself and says why. Promotion makes it the current version
//! through a reload.
//!
//! Two lifetimes, as elsewhere: a [`Rollout`] belongs to one pipeline
//! generation (the candidate's loaded stage); its [`Tracker`] belongs to
//! the process ([`Rollouts`]), found again by stage name and candidate
//! digest, so a reload of the same candidate keeps its counts, its
//! rollback and its promotion, and a new candidate starts afresh.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock;
use crate::manifest::{self, Candidate, Rollback, RolloutMode, Sticky};
use crate::plugin::heads::RequestHead;
use crate::plugin::{FilterAction, RouteDecision, StageError, Step};

/// Disagreements a tracker keeps for `/status`, newest last.
const SAMPLES: usize = 16;
/// A disagreement is logged at most once per this many milliseconds per
/// stage; the others are counted and folded into the next line.
const LOG_EVERY_MS: u64 = 1000;
/// Differences of mean call time under this never roll a candidate back:
/// at microseconds, a ratio is noise.
const LATENCY_FLOOR_US: f64 = 1000.0;

/// Which version of a stage ran a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The stage's plugin.
    Current = 0,
    /// The candidate.
    Candidate = 1,
}

impl Version {
    fn as_str(self) -> &'static str {
        match self {
            Version::Current => "current",
            Version::Candidate => "candidate",
        }
    }
}

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// It gets its share (canary) or its sample (shadow).
    Active = 0,
    /// It gets nothing: rolled back by itself or through the admin API.
    RolledBack = 1,
    /// It is the stage's current version (the manifest still names it as
    /// the candidate: editing it makes that permanent).
    Promoted = 2,
}

impl State {
    fn of(v: u8) -> State {
        match v {
            1 => State::RolledBack,
            2 => State::Promoted,
            _ => State::Active,
        }
    }

    /// `active`, `rolled-back` or `promoted`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::RolledBack => "rolled-back",
            State::Promoted => "promoted",
        }
    }
}

/// One call's decision, as two versions' decisions are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// A filter let the request go on.
    Continue,
    /// The stage answered with this status.
    Respond(u16),
    /// A router chose an upstream (and a route).
    Forward(String, Option<String>),
    /// A balancer picked an endpoint (or none).
    Endpoint(Option<u32>),
    /// A cache policy's key (or a bypass).
    Key(Option<String>),
    /// The call failed.
    Failed(&'static str),
}

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Said::Continue => f.write_str("continue"),
            Said::Respond(s) => write!(f, "respond {s}"),
            Said::Forward(u, Some(r)) => write!(f, "forward to {u} (route {r})"),
            Said::Forward(u, None) => write!(f, "forward to {u}"),
            Said::Endpoint(Some(i)) => write!(f, "endpoint {i}"),
            Said::Endpoint(None) => f.write_str("no endpoint"),
            Said::Key(Some(k)) => write!(f, "cache key {k:?}"),
            Said::Key(None) => f.write_str("bypass the cache"),
            Said::Failed(kind) => write!(f, "failed ({kind})"),
        }
    }
}

/// A call's result, said in the terms two versions are compared in.
pub trait Decided {
    /// What the call decided.
    fn said(&self) -> Said;
}

impl Decided for FilterAction {
    fn said(&self) -> Said {
        match self {
            FilterAction::Continue => Said::Continue,
            FilterAction::Respond(r) => Said::Respond(r.status),
        }
    }
}

impl Decided for RouteDecision {
    fn said(&self) -> Said {
        match self {
            RouteDecision::Upstream { upstream, route } => {
                Said::Forward(upstream.clone(), route.clone())
            }
            RouteDecision::Respond(r) => Said::Respond(r.status),
        }
    }
}

impl Decided for Option<u32> {
    fn said(&self) -> Said {
        Said::Endpoint(*self)
    }
}

impl Decided for Option<String> {
    fn said(&self) -> Said {
        Said::Key(self.clone())
    }
}

impl Decided for Said {
    fn said(&self) -> Said {
        self.clone()
    }
}

impl<T: Decided> Decided for Result<T, StageError> {
    fn said(&self) -> Said {
        match self {
            Ok(t) => t.said(),
            Err(e) => Said::Failed(e.kind()),
        }
    }
}

/// The process's trackers, by stage name: kept across reloads.
#[derive(Default)]
pub struct Rollouts {
    trackers: Mutex<HashMap<String, Arc<Tracker>>>,
}

impl Rollouts {
    /// The tracker of `stage`'s candidate: the one it had if the candidate
    /// is the same (`digest`), else a new one.
    pub fn track(&self, stage: &str, digest: u64, rollback: Rollback) -> Arc<Tracker> {
        let mut trackers = self.trackers.lock().expect("rollouts lock");
        match trackers.get(stage) {
            Some(t) if t.digest == digest && t.rollback == rollback => t.clone(),
            _ => {
                let t = Arc::new(Tracker::new(stage, digest, rollback));
                trackers.insert(stage.to_owned(), t.clone());
                t
            }
        }
    }

    /// The tracker of `stage`'s candidate, if it has one.
    pub fn get(&self, stage: &str) -> Option<Arc<Tracker>> {
        self.trackers
            .lock()
            .expect("rollouts lock")
            .get(stage)
            .cloned()
    }

    /// Forget the trackers of stages that no longer have a candidate (after
    /// a generation without them was built).
    pub fn retain(&self, stages: &[&str]) {
        self.trackers
            .lock()
            .expect("rollouts lock")
            .retain(|name, _| stages.contains(&name.as_str()));
    }
}

/// A digest of what makes a candidate this candidate: its plugin's bytes,
/// its config and how it is rolled out.
pub fn digest(candidate: &Candidate) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    match &candidate.stage.source {
        manifest::PluginSource::Builtin(b) => b.name.hash(&mut h),
        // Unreadable now: the load that follows reports it.
        manifest::PluginSource::File(p) => std::fs::read(p).unwrap_or_default().hash(&mut h),
    }
    candidate.stage.config_json.hash(&mut h);
    format!("{:?}", candidate.mode).hash(&mut h);
    h.finish()
}

/// Counts of one version since the candidate was loaded.
#[derive(Default)]
struct Totals {
    calls: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    micros: AtomicU64,
}

/// Both versions' calls within the current window.
#[derive(Default)]
struct Window {
    start_ms: u64,
    calls: [u64; 2],
    failures: [u64; 2],
    micros: [u64; 2],
}

/// A shadow call that decided otherwise than the current version.
#[derive(Debug, Clone)]
struct Disagreement {
    at_ms: u64,
    request: String,
    current: Said,
    candidate: Said,
}

/// A candidate's process-lifetime state: where it stands and how both
/// versions did.
pub struct Tracker {
    stage: String,
    digest: u64,
    rollback: Rollback,
    state: AtomicU8,
    /// Why it was rolled back (or promoted), and when (Unix ms).
    why: Mutex<Option<(String, u64)>>,
    window: Mutex<Window>,
    totals: [Totals; 2],
    rollbacks: AtomicU64,
    compared: AtomicU64,
    disagreed: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicUsize,
    samples: Mutex<VecDeque<Disagreement>>,
    /// When a disagreement was last logged (coarse clock ms + 1; 0: never).
    last_log_ms: AtomicU64,
    folded: AtomicU64,
}

impl Tracker {
    fn new(stage: &str, digest: u64, rollback: Rollback) -> Tracker {
        Tracker {
            stage: stage.to_owned(),
            digest,
            rollback,
            state: AtomicU8::new(State::Active as u8),
            why: Mutex::new(None),
            window: Mutex::default(),
            totals: Default::default(),
            rollbacks: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            disagreed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            samples: Mutex::default(),
            last_log_ms: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        }
    }

    /// Where the candidate stands.
    pub fn state(&self) -> State {
        State::of(self.state.load(Relaxed))
    }

    /// Take the candidate out of service; false if it was not active.
    pub fn roll_back(&self, why: String) -> bool {
        if self
            .state
            .compare_exchange(
                State::Active as u8,
                State::RolledBack as u8,
                Relaxed,
                Relaxed,
            )
            .is_err()
        {
            return false;
        }
        self.rollbacks.fetch_add(1, Relaxed);
        tracing::error!(stage = %self.stage, reason = %why, "candidate rolled back: it gets no more requests");
        *self.why.lock().expect("why lock") = Some((why, unix_ms()));
        true
    }

    /// Put a rolled-back candidate back in service, with a fresh window;
    /// false if it was not rolled back.
    pub fn resume(&self) -> bool {
        *self.window.lock().expect("window lock") = Window::default();
        let resumed = self
            .state
            .compare_exchange(
                State::RolledBack as u8,
                State::Active as u8,
                Relaxed,
                Relaxed,
            )
            .is_ok();
        if resumed {
            *self.why.lock().expect("why lock") = None;
            tracing::info!(stage = %self.stage, "candidate resumed");
        }
        resumed
    }

    /// Mark the candidate to be loaded as the current version from the
    /// next generation on (see [`Tracker::unpromote`] if that build fails).
    pub fn promote(&self) -> State {
        let was = State::of(self.state.swap(State::Promoted as u8, Relaxed));
        *self.why.lock().expect("why lock") = Some(("promoted".into(), unix_ms()));
        was
    }

    /// Undo [`Tracker::promote`]: the generation that would have made the
    /// candidate current was not built.
    pub fn unpromote(&self, was: State) {
        let _ = self
            .state
            .compare_exchange(State::Promoted as u8, was as u8, Relaxed, Relaxed);
        if was == State::Active {
            *self.why.lock().expect("why lock") = None;
        }
    }

    /// Count a call of `version` that took `took`, and judge the candidate.
    pub fn record<T>(&self, version: Version, result: &Result<T, StageError>, took: Duration) {
        let v = version as usize;
        let micros = took.as_micros() as u64;
        let totals = &self.totals[v];
        totals.calls.fetch_add(1, Relaxed);
        totals.micros.fetch_add(micros, Relaxed);
        let failed = match result {
            Ok(_) => false,
            // Not the plugin's doing: the stage had no instance free, or the
            // shared kv backend is down.
            Err(StageError::Busy(_) | StageError::KvOutage(_)) => return,
            Err(e) => {
                totals.failures.fetch_add(1, Relaxed);
                if let StageError::Timeout(_) = e {
                    totals.timeouts.fetch_add(1, Relaxed);
                }
                true
            }
        };
        if !self.rollback.enabled || self.state() != State::Active {
            return;
        }
        let verdict = {
            let now = clock::now_ms();
            let mut w = self.window.lock().expect("window lock");
            if now.saturating_sub(w.start_ms) >= self.rollback.window.as_millis() as u64 {
                *w = Window {
                    start_ms: now,
                    ..Window::default()
                };
            }
            w.calls[v] += 1;
            w.failures[v] += u64::from(failed);
            w.micros[v] += micros;
            match version {
                Version::Candidate => self.judge(&w),
                Version::Current => None,
            }
        };
        if let Some(why) = verdict {
            self.roll_back(why);
        }
    }

    /// Why the candidate must be rolled back, if it must.
    fn judge(&self, w: &Window) -> Option<String> {
        let r = &self.rollback;
        let (cand, cur) = (w.calls[1], w.calls[0]);
        if cand < u64::from(r.min_calls) {
            return None;
        }
        let ratio = |f: u64, c: u64| if c == 0 { 0.0 } else { f as f64 / c as f64 };
        let (cand_ratio, cur_ratio) = (ratio(w.failures[1], cand), ratio(w.failures[0], cur));
        let window = humantime::format_duration(r.window);
        if cand_ratio > cur_ratio + r.failure_ratio {
            return Some(format!(
                "{:.1}% of its {cand} calls in the last {window} failed, against {:.1}% of the current version's {cur} (allowed: {:.1} points more)",
                cand_ratio * 100.0,
                cur_ratio * 100.0,
                r.failure_ratio * 100.0
            ));
        }
        if cur < u64::from(r.min_calls) {
            return None;
        }
        let (cand_mean, cur_mean) = (
            w.micros[1] as f64 / cand as f64,
            w.micros[0] as f64 / cur as f64,
        );
        (cand_mean > cur_mean * r.latency_ratio && cand_mean - cur_mean >= LATENCY_FLOOR_US).then(
            || {
                format!(
                    "its mean call took {:.2} ms over the last {window}, against {:.2} ms for the current version (allowed: {}x)",
                    cand_mean / 1000.0,
                    cur_mean / 1000.0,
                    r.latency_ratio
                )
            },
        )
    }

    /// A shadow call of the candidate, started at `started`, ended with
    /// `result`: count it, and say what it decided.
    fn seen(&self, result: Result<Said, StageError>, started: Instant) -> Said {
        self.record(Version::Candidate, &result, started.elapsed());
        result.said()
    }

    /// Count a shadow comparison; a disagreement is kept for `/status` and
    /// logged (at most once a second per stage, the rest folded).
    fn compare(&self, request: String, current: Said, candidate: Said) {
        self.compared.fetch_add(1, Relaxed);
        if current == candidate {
            return;
        }
        self.disagreed.fetch_add(1, Relaxed);
        // Stored plus one, so 0 means "never logged" even at the clock's first ms.
        let now = clock::now_ms() + 1;
        let last = self.last_log_ms.load(Relaxed);
        if (last == 0 || now.saturating_sub(last) >= LOG_EVERY_MS)
            && self
                .last_log_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let folded = self.folded.swap(0, Relaxed);
            tracing::warn!(
                stage = %self.stage, request = %request, current = %current,
                candidate = %candidate, disagreements_folded = folded,
                "shadow candidate disagrees"
            );
        } else {
            self.folded.fetch_add(1, Relaxed);
        }
        let mut samples = self.samples.lock().expect("samples lock");
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Disagreement {
            at_ms: unix_ms(),
            request,
            current,
            candidate,
        });
    }

    /// What `/status` shows of the candidate.
    pub fn status(&self) -> serde_json::Value {
        let version = |t: &Totals| {
            let calls = t.calls.load(Relaxed);
            serde_json::json!({
                "calls": calls,
                "failures": t.failures.load(Relaxed),
                "timeouts": t.timeouts.load(Relaxed),
                "mean_call_us": t.micros.load(Relaxed).checked_div(calls).unwrap_or(0),
            })
        };
        let why = self.why.lock().expect("why lock").clone();
        let samples: Vec<_> = self
            .samples
            .lock()
            .expect("samples lock")
            .iter()
            .map(|d| {
                serde_json::json!({
                    "at_unix_ms": d.at_ms, "request": d.request,
                    "current": d.current.to_string(), "candidate": d.candidate.to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "state": self.state().as_str(),
            "reason": why.as_ref().map(|w| &w.0),
            "since_unix_ms": why.as_ref().map(|w| w.1),
            "rollbacks": self.rollbacks.load(Relaxed),
            "current": version(&self.totals[0]),
            "candidate": version(&self.totals[1]),
            "shadow": {
                "compared": self.compared.load(Relaxed),
                "disagreements": self.disagreed.load(Relaxed),
                "skipped": self.skipped.load(Relaxed),
                "recent": samples,
            },
        })
    }

    /// `(version, calls, failures, timeouts, seconds)` per version, for the metrics.
    pub fn totals(&self) -> [(&'static str, u64, u64, u64, f64); 2] {
        [Version::Current, Version::Candidate].map(|v| {
            let t = &self.totals[v as usize];
            (
                v.as_str(),
                t.calls.load(Relaxed),
                t.failures.load(Relaxed),
                t.timeouts.load(Relaxed),
                t.micros.load(Relaxed) as f64 / 1e6,
            )
        })
    }

    /// `(rollbacks, compared, disagreements, skipped)`, for the metrics.
    pub fn shadow_counts(&self) -> (u64, u64, u64, u64) {
        (
            self.rollbacks.load(Relaxed),
            self.compared.load(Relaxed),
            self.disagreed.load(Relaxed),
            self.skipped.load(Relaxed),
        )
    }
}

/// A stage's candidate in one pipeline generation.
pub struct Rollout {
    /// The candidate, loaded (`None` once promoted: it is the stage).
    pub candidate: Option<Arc<Step>>,
    /// Its plugin, as the manifest names it.
    plugin: String,
    /// How it is rolled out.
    pub mode: RolloutMode,
    /// Its process-lifetime state.
    pub tracker: Arc<Tracker>,
    /// Of 10,000: a canary's share, a shadow's sample.
    points: u64,
    /// Mixed into a client's hash so each stage draws its own clients.
    salt: u64,
}

impl Rollout {
    /// The rollout of `candidate`, loaded as `step`.
    pub fn new(stage: &str, candidate: &Candidate, step: Step, tracker: Arc<Tracker>) -> Rollout {
        let mut salt = std::hash::DefaultHasher::new();
        stage.hash(&mut salt);
        Rollout {
            candidate: Some(Arc::new(step)),
            salt: salt.finish(),
            ..Rollout::promoted(candidate, tracker)
        }
    }

    /// A candidate promoted through the admin API, loaded as its stage's
    /// current version: shown in `/status`, never run as a candidate.
    pub fn promoted(candidate: &Candidate, tracker: Arc<Tracker>) -> Rollout {
        let percent = match candidate.mode {
            RolloutMode::Canary { share, .. } => share,
            RolloutMode::Shadow { sample, .. } => sample,
        };
        Rollout {
            candidate: None,
            plugin: candidate.stage.source.to_string(),
            mode: candidate.mode.clone(),
            tracker,
            points: (percent * 100.0).round() as u64,
            salt: 0,
        }
    }

    /// What `/status` shows of the rollout.
    pub fn status(&self) -> serde_json::Value {
        let mut status = self.tracker.status();
        status["mode"] = self.mode.as_str().into();
        status["plugin"] = self.plugin.clone().into();
        status[match self.mode {
            RolloutMode::Canary { .. } => "share",
            RolloutMode::Shadow { .. } => "sample",
        }] = (self.points as f64 / 100.0).into();
        status
    }

    /// Count a call of the candidate (`candidate`) or of the current version.
    pub fn record<T>(&self, candidate: bool, result: &Result<T, StageError>, took: Duration) {
        let version = if candidate {
            Version::Candidate
        } else {
            Version::Current
        };
        self.tracker.record(version, result, took);
    }

    /// Whether this request runs the canary instead of the current version.
    pub fn runs_candidate(&self, head: &RequestHead) -> bool {
        let RolloutMode::Canary { sticky, opt_in, .. } = &self.mode else {
            return false;
        };
        if self.candidate.is_none() || self.tracker.state() != State::Active {
            return false;
        }
        if let Some(v) = opt_in.as_ref().and_then(|h| head.parts.headers.get(h)) {
            match v.as_bytes() {
                b"candidate" => return true,
                b"current" => return false,
                _ => {}
            }
        }
        let mut h = std::hash::DefaultHasher::new();
        self.salt.hash(&mut h);
        let headers = &head.parts.headers;
        let key = match sticky {
            Sticky::Client => None,
            Sticky::Request => return fastrand::u64(..10_000) < self.points,
            Sticky::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            Sticky::Cookie(name) => cookie(headers, name),
        };
        match key {
            Some(k) => k.hash(&mut h),
            None => head.client.ip().hash(&mut h),
        }
        h.finish() % 10_000 < self.points
    }

    /// Whether this request is shadowed: sampled, and the shadow calls in
    /// flight under their bound. Counts a skipped sample.
    pub fn shadows(&self) -> bool {
        let RolloutMode::Shadow { max_in_flight, .. } = self.mode else {
            return false;
        };
        if self.candidate.is_none()
            || self.tracker.state() != State::Active
            || fastrand::u64(..10_000) >= self.points
        {
            return false;
        }
        if self.tracker.in_flight.load(Relaxed) >= max_in_flight {
            self.tracker.skipped.fetch_add(1, Relaxed);
            return false;
        }
        true
    }

    /// Run the candidate on `input` (the request as the current version
    /// saw it) in a task of its own, and compare its decision with the
    /// current version's. The request does not wait for it.
    pub fn shadow(&self, input: RequestHead, upstream: Option<String>, current: Said) {
        let Some(candidate) = self.candidate.clone() else {
            return;
        };
        let tracker = self.tracker.clone();
        tracker.in_flight.fetch_add(1, Relaxed);
        let request = describe(&input);
        let task = async move {
            let started = Instant::now();
            let seen = |r| tracker.seen(r, started);
            let said = match &*candidate {
                Step::Filter(s) => seen(s.on_request(input).await.1.map(|a| a.said())),
                Step::Router(s) => seen(s.route(input).await.1.map(|d| d.said())),
                Step::Balancer(s) => {
                    let upstream = upstream.as_deref().unwrap_or("");
                    seen(s.pick(input, upstream).await.1.map(|p| p.said()))
                }
                Step::CachePolicy(s) => seen(s.cache_key(input).await.1.map(|k| k.said())),
            };
            tracker.compare(request, current, said);
            tracker.in_flight.fetch_sub(1, Relaxed);
        };
        // In the request's span, so its log lines carry the request's id.
        tokio::spawn(tracing::Instrument::in_current_span(task));
    }
}

/// One call of a stage that has a candidate, watched: the version that
/// runs it, how long it takes, and the request as it came in when a
/// shadow call is to follow.
pub struct Probe<'a> {
    rollout: &'a Rollout,
    version: Version,
    started: Instant,
    shadow: Option<RequestHead>,
}

impl<'a> Probe<'a> {
    /// Decide the version stage `index` runs for `head` (noting a
    /// candidate in `head.candidates`), and keep a copy of the head for a
    /// shadow call.
    pub fn new(rollout: &'a Rollout, head: &mut RequestHead, index: usize) -> Probe<'a> {
        let version = if rollout.runs_candidate(head) {
            head.candidates |= 1 << index;
            Version::Candidate
        } else {
            Version::Current
        };
        let shadow = rollout.shadows().then(|| head.snapshot());
        Probe {
            rollout,
            version,
            started: Instant::now(),
            shadow,
        }
    }

    /// The stage to call: the candidate, or `current`.
    pub fn step<'s>(&self, current: &'s Step) -> &'s Step
    where
        'a: 's,
    {
        match (self.version, &self.rollout.candidate) {
            (Version::Candidate, Some(c)) => c,
            _ => current,
        }
    }

    /// The call ended with `result`: count it, and start the shadow call
    /// (`upstream`: the one a balancer was asked about).
    pub fn done<T: Decided>(self, result: &Result<T, StageError>, upstream: Option<&str>) {
        self.rollout
            .tracker
            .record(self.version, result, self.started.elapsed());
        if let Some(input) = self.shadow {
            self.rollout
                .shadow(input, upstream.map(str::to_owned), result.said());
        }
    }
}

/// A request as a disagreement's log line names it.
fn describe(head: &RequestHead) -> String {
    let host = head
        .parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    format!(
        "{} {}{} from {}",
        head.parts.method,
        host,
        head.parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        head.client.ip()
    )
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then_some(&v[1..])
        })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(min_calls: u32) -> Tracker {
        Tracker::new(
            "auth",
            1,
            Rollback {
                enabled: true,
                window: Duration::from_secs(60),
                min_calls,
                failure_ratio: 0.05,
                latency_ratio: 3.0,
            },
        )
    }

    fn ok() -> Result<(), StageError> {
        Ok(())
    }

    fn trap() -> Result<(), StageError> {
        Err(StageError::Trap {
            reason: "unreachable".into(),
            detail: String::new(),
        })
    }

    fn outcome(failed: bool) -> Result<(), StageError> {
        if failed { trap() } else { ok() }
    }

    #[test]
    fn a_candidate_failing_more_than_allowed_is_rolled_back_once_judged() {
        let t = tracker(10);
        let ms = Duration::from_micros(50);
        for _ in 0..100 {
            t.record(Version::Current, &ok(), ms);
        }
        // 3 of 9: not judged yet (fewer than min_calls).
        for i in 0..9 {
            t.record(Version::Candidate, &outcome(i % 3 == 0), ms);
        }
        assert_eq!(t.state(), State::Active);
        t.record(Version::Candidate, &trap(), ms);
        assert_eq!(t.state(), State::RolledBack);
        let status = t.status();
        assert!(
            status["reason"]
                .as_str()
                .unwrap()
                .contains("40.0% of its 10 calls")
        );
    }

    #[test]
    fn a_candidate_failing_like_the_current_version_stays() {
        let t = tracker(10);
        let ms = Duration::from_micros(50);
        for i in 0..100 {
            t.record(Version::Current, &outcome(i % 5 == 0), ms);
        }
        // Every fifth call fails, from the fifth on: never above 20 %.
        for i in 0..50 {
            t.record(Version::Candidate, &outcome(i % 5 == 4), ms);
        }
        assert_eq!(t.state(), State::Active);
    }

    #[test]
    fn a_slower_candidate_is_rolled_back_only_past_the_floor() {
        let t = tracker(10);
        for _ in 0..20 {
            t.record(Version::Current, &ok(), Duration::from_micros(20));
        }
        // 5x slower but 80 µs: noise, kept.
        for _ in 0..20 {
            t.record(Version::Candidate, &ok(), Duration::from_micros(100));
        }
        assert_eq!(t.state(), State::Active);
        for _ in 0..200 {
            t.record(Version::Candidate, &ok(), Duration::from_millis(5));
        }
        assert_eq!(t.state(), State::RolledBack);
    }

    #[test]
    fn busy_and_kv_outages_are_not_the_candidates_failures() {
        let t = tracker(1);
        t.record(Version::Current, &ok(), Duration::ZERO);
        let busy: Result<(), StageError> = Err(StageError::Busy(4));
        for _ in 0..10 {
            t.record(Version::Candidate, &busy, Duration::ZERO);
        }
        assert_eq!(t.state(), State::Active);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; uid=42".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "uid"), Some(&b"42"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "ui"), None);
    }
}
