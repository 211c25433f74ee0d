//! `[pipeline.candidate]`: a second version of a stage's plugin, put in
//! front of a share of the clients (canary) or run beside the current one
//! without effect (shadow), and taken out of service by itself when it does
//! worse than the current one (rollback).

use std::time::Duration;

use http::HeaderName;

use super::raw::{RawCandidate, RawRollback};
use super::{ManifestError, Stage, Validator, units};

/// The most stages that may have a candidate before them: a request notes
/// which stages ran their candidate in one 64-bit word.
pub const MAX_CANDIDATE_INDEX: usize = 64;

/// A candidate version of one stage.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The candidate as a stage of its own: named `NAME@candidate`, with
    /// the stage's role, policy, scope and grants, and its own plugin,
    /// config and limits.
    pub stage: Box<Stage>,
    /// Who runs it.
    pub mode: Mode,
    /// When it is taken out of service by itself.
    pub rollback: Rollback,
}

/// How a candidate gets its requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// A share of the clients runs the candidate instead of the current version.
    Canary {
        /// Percent of clients (0 to 100).
        share: f64,
        /// What makes a client the same client from one request to the next.
        sticky: Sticky,
        /// A request header that picks the version for testers:
        /// `candidate` or `current`.
        opt_in: Option<HeaderName>,
    },
    /// The candidate also runs, off the request's path, on a sample of the
    /// requests; its decision is compared with the current one's and never
    /// applied.
    Shadow {
        /// Percent of requests (0 to 100).
        sample: f64,
        /// Shadow calls running at once at most; past it, a sample is skipped.
        max_in_flight: usize,
    },
}

/// What keeps one client on one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The client's address (after trusted proxies).
    Client,
    /// A request header's value (the client's address when it is absent).
    Header(HeaderName),
    /// A cookie's value (the client's address when it is absent).
    Cookie(String),
    /// Nothing: each request is drawn anew.
    Request,
}

/// When a candidate is rolled back: over `window`, once it made
/// `min_calls` calls, its failure ratio exceeds the current version's by
/// more than `failure_ratio`, or its mean call time is more than
/// `latency_ratio` times the current version's (and at least 1 ms more).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollback {
    /// Whether the candidate is ever rolled back by itself.
    pub enabled: bool,
    /// The window the two versions are compared over.
    pub window: Duration,
    /// Calls of the candidate within the window before it is judged.
    pub min_calls: u32,
    /// How much higher its failure ratio may be (0.05: five points).
    pub failure_ratio: f64,
    /// How many times slower its mean call may be.
    pub latency_ratio: f64,
}

impl Default for Rollback {
    fn default() -> Rollback {
        Rollback {
            enabled: true,
            window: Duration::from_secs(60),
            min_calls: 20,
            failure_ratio: 0.05,
            latency_ratio: 3.0,
        }
    }
}

impl Mode {
    /// `canary` or `shadow`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Canary { .. } => "canary",
            Mode::Shadow { .. } => "shadow",
        }
    }
}

impl Validator<'_> {
    /// The candidate of `stage` (validated before it, so its keys, role
    /// and limits are settled).
    pub(super) fn candidate(
        &self,
        stage: &Stage,
        raw: RawCandidate,
    ) -> Result<Candidate, ManifestError> {
        let i = stage.index;
        let key = |k: &str| format!("pipeline[{i}].candidate.{k}");
        if i >= MAX_CANDIDATE_INDEX {
            return Err(self.err(
                format!("pipeline[{i}].candidate"),
                format!("only the first {MAX_CANDIDATE_INDEX} stages may have a candidate"),
            ));
        }
        // A built-in of another role is an error about `plugin` (a
        // candidate has no `role`: it plays its stage's).
        let source_key = |k: &str| key(if k == "role" { "plugin" } else { k });
        let (source, _, _) = self.source(&source_key, &raw.plugin, Some(stage.role))?;
        let percent = |name: &str, v: Option<f64>, default: f64| match v.unwrap_or(default) {
            p if (0.0..=100.0).contains(&p) => Ok(p),
            p => Err(self.err(key(name), format!("{p} is not a percentage in [0, 100]"))),
        };
        let mode = match raw.mode.as_deref() {
            None | Some("canary") => {
                if raw.sample.is_some() || raw.max_in_flight.is_some() {
                    return Err(self.err(
                        key(if raw.sample.is_some() {
                            "sample"
                        } else {
                            "max_in_flight"
                        }),
                        "only a shadow candidate (mode = \"shadow\") has it",
                    ));
                }
                Mode::Canary {
                    share: percent("share", raw.share, 0.0)?,
                    sticky: self.sticky(&key, raw.sticky.as_deref())?,
                    opt_in: match raw.opt_in_header {
                        None => None,
                        Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                            self.err(key("opt_in_header"), format!("{h:?} is not a header name"))
                        })?),
                    },
                }
            }
            Some("shadow") => {
                for (name, set) in [
                    ("share", raw.share.is_some()),
                    ("sticky", raw.sticky.is_some()),
                    ("opt_in_header", raw.opt_in_header.is_some()),
                ] {
                    if set {
                        return Err(self.err(
                            key(name),
                            "only a canary has it: a shadow candidate never answers a request",
                        ));
                    }
                }
                Mode::Shadow {
                    sample: percent("sample", raw.sample, 100.0)?,
                    max_in_flight: match raw.max_in_flight {
                        None => 64,
                        Some(n) if n >= 1 => n,
                        Some(_) => return Err(self.err(key("max_in_flight"), "at least 1")),
                    },
                }
            }
            Some(other) => {
                return Err(self.err(
                    key("mode"),
                    format!("{other:?}: expected \"canary\" or \"shadow\""),
                ));
            }
        };
        let rollback = self.rollback(&key, raw.rollback)?;
        let mut spec = stage.clone();
        spec.name = format!("{}@candidate", stage.name);
        spec.source = source;
        spec.key_suffix = ".candidate";
        // A canary serves the stage's clients: it shares their kv (a rate
        // limit's counters, say). A shadow's writes must not change what
        // the current version reads, so it keeps its own.
        if let Mode::Shadow { .. } = mode {
            spec.kv_name = spec.name.clone();
        }
        if let Some(config) = raw.config {
            spec.config_json = serde_json::to_string(&config).map_err(|e| {
                self.err(key("config"), format!("cannot be expressed as JSON: {e}"))
            })?;
        }
        spec.call_timeout =
            self.duration(key("call_timeout"), raw.call_timeout, stage.call_timeout)?;
        if spec.call_timeout.is_zero() {
            return Err(self.err(key("call_timeout"), "must be greater than zero"));
        }
        if let Some(m) = raw.memory_limit {
            spec.memory_limit = units::bytes(&m).map_err(|r| self.err(key("memory_limit"), r))?;
            if spec.memory_limit > super::MAX_MEMORY_LIMIT {
                return Err(self.err(key("memory_limit"), "at most 1GiB"));
            }
        }
        if let Some(n) = raw.max_instances {
            if !(1..=super::MAX_STAGE_INSTANCES).contains(&n) {
                return Err(self.err(
                    key("max_instances"),
                    format!(
                        "between 1 and {} (the instance pool of the process)",
                        super::MAX_STAGE_INSTANCES
                    ),
                ));
            }
            spec.max_instances = n;
        }
        spec.candidate = None;
        Ok(Candidate {
            stage: Box::new(spec),
            mode,
            rollback,
        })
    }

    fn sticky(
        &self,
        key: &dyn Fn(&str) -> String,
        raw: Option<&str>,
    ) -> Result<Sticky, ManifestError> {
        let bad = |why: &str| {
            self.err(
                key("sticky"),
                format!(
                    "{:?}: {why}; expected \"client\", \"header:NAME\", \"cookie:NAME\" or \"request\"",
                    raw.unwrap_or_default()
                ),
            )
        };
        Ok(match raw {
            None | Some("client") => Sticky::Client,
            Some("request") => Sticky::Request,
            Some(s) => match s.split_once(':') {
                Some(("header", name)) => Sticky::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| bad("not a header name"))?,
                ),
                Some(("cookie", name))
                    if !name.is_empty() && !name.contains([';', '=', ' ', ',']) =>
                {
                    Sticky::Cookie(name.to_owned())
                }
                Some(("cookie", _)) => return Err(bad("not a cookie name")),
                _ => return Err(bad("unknown")),
            },
        })
    }

    fn rollback(
        &self,
        key: &dyn Fn(&str) -> String,
        raw: Option<RawRollback>,
    ) -> Result<Rollback, ManifestError> {
        let d = Rollback::default();
        let Some(raw) = raw else { return Ok(d) };
        let window = self.duration(key("rollback.window"), raw.window, d.window)?;
        if window < Duration::from_millis(100) {
            return Err(self.err(key("rollback.window"), "must be at least 100ms"));
        }
        let failure_ratio = raw.failure_ratio.unwrap_or(d.failure_ratio);
        if !(0.0..1.0).contains(&failure_ratio) {
            return Err(self.err(
                key("rollback.failure_ratio"),
                format!(
                    "{failure_ratio} is not a share of calls in [0, 1): how much more often the candidate may fail, e.g. 0.05"
                ),
            ));
        }
        let latency_ratio = raw.latency_ratio.unwrap_or(d.latency_ratio);
        if !(latency_ratio >= 1.0 && latency_ratio.is_finite()) {
            return Err(self.err(
                key("rollback.latency_ratio"),
                format!("{latency_ratio}: at least 1 (how many times slower the candidate may be)"),
            ));
        }
        Ok(Rollback {
            enabled: raw.enabled.unwrap_or(true),
            window,
            min_calls: raw.min_calls.unwrap_or(d.min_calls).max(1),
            failure_ratio,
            latency_ratio,
        })
    }
}
