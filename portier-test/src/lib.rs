//! Run a portier plugin in `cargo test`: the built component, in-process,
//! against requests, upstream lists and kv the test makes up. No sockets,
//! no proxy: the host's own pipeline code calls the plugin exactly as
//! `portier run` would (same sandbox, same failure policies, same checks of
//! what the plugin returns), and the test asserts on its decisions.
//!
//! ```no_run
//! use portier_test::{Harness, Request, Stage};
//!
//! #[tokio::test]
//! async fn refuses_a_request_without_a_key() {
//!     // Builds this crate to wasm32-wasip2 (release) and returns the .wasm.
//!     let wasm = portier_test::component!();
//!     let proxy = Harness::builder()
//!         .stage(Stage::filter(&wasm).config(r#"keys = ["k1"]"#))
//!         .start()
//!         .await
//!         .unwrap();
//!
//!     let refused = proxy.request(Request::get("/")).await;
//!     assert_eq!(refused.status(), Some(401));
//!
//!     let passed = proxy.request(Request::get("/").header("x-api-key", "k1")).await;
//!     assert!(passed.forwarded());
//! }
//! ```
//!
//! - [`Harness`] is a pipeline of one or more [`Stage`]s (your plugin, and
//!   built-in ones such as `router` around it) with the upstreams you name.
//! - [`Harness::request`] runs the request stages and returns an
//!   [`Outcome`]: forwarded (to which upstream, endpoint and route, with
//!   which head) or answered (by which stage, with which [`Response`]).
//! - [`Harness::response`] runs the filters' `on-response` on a response
//!   you make up, as if the upstream had sent it.
//! - [`Harness::kv`] reads and seeds a stage's kv namespace.
//! - [`Harness::storable`] asks a cache policy about a response;
//!   [`Harness::store`] keeps it as the proxy would, for later hits.

mod build;
mod outcome;
mod request;

use std::path::Path;
use std::sync::OnceLock;

use portier::cache::{Entry, Stores};
use portier::kv::Namespace;
use portier::manifest::Manifest;
use portier::pipeline::Pipeline;
use portier::plugin::heads::ResponseHead;
use portier::plugin::{Runtime, Step};
use portier::upstream::Registry;
pub use portier::upstream::endpoint::InFlight;

pub use build::{BuildError, build_component};
pub use outcome::{Outcome, Response};
pub use request::Request;

/// What went wrong starting a [`Harness`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest the harness made (shown) is not valid, or a stage
    /// failed to load: what `portier check` would say of it.
    #[error("{error}\n--- the manifest the harness made ---\n{manifest}")]
    Manifest {
        /// The proxy's error (file, key and reason).
        error: String,
        /// The manifest text.
        manifest: String,
    },
    /// The wasm runtime could not start.
    #[error("the wasm runtime could not start: {0}")]
    Runtime(String),
}

/// One stage of the pipeline under test, as a `[[pipeline]]` entry of a
/// manifest would give it.
#[derive(Debug, Clone)]
pub struct Stage {
    plugin: String,
    role: Option<&'static str>,
    lines: Vec<String>,
    config: String,
}

impl Stage {
    fn new(plugin: String, role: Option<&'static str>) -> Stage {
        Stage {
            plugin,
            role,
            lines: Vec::new(),
            config: String::new(),
        }
    }

    fn file(path: &Path, role: &'static str) -> Stage {
        Stage::new(path.display().to_string(), Some(role))
    }

    /// A filter from a component file.
    pub fn filter(wasm: impl AsRef<Path>) -> Stage {
        Stage::file(wasm.as_ref(), "filter")
    }

    /// A router from a component file.
    pub fn router(wasm: impl AsRef<Path>) -> Stage {
        Stage::file(wasm.as_ref(), "router")
    }

    /// A balancer from a component file.
    pub fn balancer(wasm: impl AsRef<Path>) -> Stage {
        Stage::file(wasm.as_ref(), "balancer")
    }

    /// A cache policy from a component file.
    pub fn cache_policy(wasm: impl AsRef<Path>) -> Stage {
        Stage::file(wasm.as_ref(), "cache-policy")
    }

    /// A built-in plugin by name (`router`, `balancer`, `rate-limit`...), in
    /// its own role.
    pub fn builtin(name: &str) -> Stage {
        Stage::new(name.to_owned(), None)
    }

    /// The stage's config: the body of its `[pipeline.config]` table, in
    /// TOML (`keys = ["k1"]`), as it would appear in a manifest.
    pub fn config(mut self, toml: &str) -> Stage {
        self.config = toml.to_owned();
        self
    }

    /// The stage's name (its kv namespace, its name in logs; default: the
    /// plugin's file stem or built-in name).
    pub fn name(self, name: &str) -> Stage {
        self.set(&format!("name = {}", quote(name)))
    }

    /// Any other key of the stage, one TOML line as in a manifest:
    /// `on_error = "fail-open"`, `routes = ["api"]`, `call_timeout = "5ms"`,
    /// `grants.env = ["TOKEN"]`, `kv.outage = "closed"`.
    pub fn set(mut self, toml_line: &str) -> Stage {
        self.lines.push(toml_line.to_owned());
        self
    }

    /// The stage's `[[pipeline]]` table. `Err`: TOML that does not parse.
    fn table(&self) -> Result<toml::Table, String> {
        let mut table: toml::Table = self
            .lines
            .join("\n")
            .parse()
            .map_err(|e| format!("stage keys ({}): {e}", self.plugin))?;
        table.insert("plugin".into(), self.plugin.clone().into());
        if let Some(role) = self.role {
            table.insert("role".into(), role.into());
        }
        if !self.config.trim().is_empty() {
            let config: toml::Table = self
                .config
                .parse()
                .map_err(|e| format!("config of {}: {e}", self.plugin))?;
            table.insert("config".into(), config.into());
        }
        Ok(table)
    }
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::from(s).to_string()
}

/// Collects the stages and upstreams of a [`Harness`]; [`Builder::start`]
/// loads them.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct Builder {
    stages: Vec<Stage>,
    upstreams: Vec<(String, Vec<String>)>,
    extra: String,
}

impl Builder {
    /// Add a stage after those added so far (the pipeline's order).
    pub fn stage(mut self, stage: Stage) -> Builder {
        self.stages.push(stage);
        self
    }

    /// Declare an upstream and its endpoints (`host:port`); for weights and
    /// upstream options, write its `[[upstreams]]` table with
    /// [`Builder::manifest`]. No connection is ever made to them. Without
    /// any upstream, the harness declares `default` at `127.0.0.1:9`.
    pub fn upstream<I, S>(mut self, name: &str, endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.upstreams.push((
            name.to_owned(),
            endpoints.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// More manifest text, added after the upstreams the builder declares
    /// and before its stages: `[[upstreams]]` tables with options,
    /// `[cache]`, `[kv]`.
    pub fn manifest(mut self, toml: &str) -> Builder {
        self.extra += toml;
        self.extra.push('\n');
        self
    }

    /// The manifest the harness will load. `Err`: a stage's keys or
    /// config are not TOML.
    pub fn manifest_text(&self) -> Result<String, String> {
        let mut s = String::from("[server]\nlisten = \"127.0.0.1:1\"\naccess_log = false\n\n");
        let declares_upstreams = !self.upstreams.is_empty() || self.extra.contains("[[upstreams]]");
        if !declares_upstreams {
            s += "[[upstreams]]\nname = \"default\"\nendpoints = [\"127.0.0.1:9\"]\n\n";
        }
        for (name, endpoints) in &self.upstreams {
            let list: Vec<String> = endpoints.iter().map(|e| quote(e)).collect();
            s += &format!(
                "[[upstreams]]\nname = {}\nendpoints = [{}]\n\n",
                quote(name),
                list.join(", ")
            );
        }
        s += &self.extra;
        let stages = self
            .stages
            .iter()
            .map(|stage| stage.table().map(toml::Value::Table))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pipeline = toml::Table::new();
        pipeline.insert("pipeline".into(), stages.into());
        s.push('\n');
        s += &toml::to_string(&pipeline).map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// Compile and start every stage (running each plugin's `init` with its
    /// config), as `portier run` would.
    pub async fn start(self) -> Result<Harness, Error> {
        let text = self.manifest_text().map_err(|error| Error::Manifest {
            error,
            manifest: String::new(),
        })?;
        Harness::from_manifest(&text).await
    }
}

/// A pipeline under test. Calls run the plugins for real (instance pools,
/// call budgets, failure policies) on the test's tokio runtime.
pub struct Harness {
    pipeline: Pipeline,
    kv: portier::kv::Store,
    /// Each stage's name and kv quota, as the manifest gave them.
    stages: Vec<(String, portier::kv::Quota)>,
}

/// One runtime per test process: each engine reserves its own instance pool.
fn runtime() -> Result<&'static Runtime, Error> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| Runtime::new(None).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Runtime(e.clone()))
}

impl Harness {
    /// Start describing a pipeline: add [`Stage`]s and upstreams, then
    /// [`Builder::start`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A pipeline from whole manifest text (relative plugin paths are
    /// relative to the current directory, the crate's root under
    /// `cargo test`). `[server]` keys about sockets are ignored.
    pub async fn from_manifest(text: &str) -> Result<Harness, Error> {
        let err = |error: String| Error::Manifest {
            error,
            manifest: text.to_owned(),
        };
        let file = std::env::current_dir()
            .unwrap_or_default()
            .join("portier-test.toml");
        let manifest = Manifest::parse(&file, text).map_err(|e| err(e.to_string()))?;
        let runtime = runtime()?;
        let kv = runtime
            .kv()
            .store(&manifest.kv)
            .map_err(|e| err(format!("kv.url: {e}")))?;
        let pipeline = Pipeline::build(
            &manifest,
            runtime,
            &Registry::offline(1),
            &Stores::default(),
            1,
        )
        .await
        .map_err(|e| err(e.to_string()))?;
        Ok(Harness {
            pipeline,
            kv,
            stages: manifest
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.kv_quota))
                .collect(),
        })
    }

    /// Run the request stages on `request`: what the proxy would do with it.
    pub async fn request(&self, request: Request) -> Outcome {
        let head = request.into_head(self.pipeline.body_prefix());
        let (head, decision) = self.pipeline.request_stages(head).await;
        // Which stage answered or failed closed, if the request stopped early.
        let stopped_at = self
            .pipeline
            .stages()
            .get(decision.reached)
            .map(|s| s.name().to_owned());
        Outcome::new(head, decision, stopped_at)
    }

    /// Run the filters' `on-response` (those the request reached, in
    /// reverse order) on `response`, as if the upstream had sent it for the
    /// request of `outcome`. Headers stages added for any response (a
    /// balancer's cookie) are added too, as the proxy does.
    pub async fn response(&self, outcome: Outcome, response: Response) -> Response {
        let (head, reached, added) = outcome.into_parts();
        let (parts, body) = response.into_parts();
        let (resp, body, failed) = self
            .pipeline
            .response_stages(head, ResponseHead { parts }, body, reached)
            .await;
        let mut parts = resp.parts;
        if failed.is_none()
            && let Some(added) = added
        {
            for (name, value) in added.iter() {
                parts.headers.append(name.clone(), value.clone());
            }
        }
        Response::from_parts(parts, body).await
    }

    /// Ask the cache-policy stage whether `response` to the request of
    /// `outcome` may be stored, and for how many seconds (`Ok(None)`: not
    /// stored). `Err` says how the call failed.
    pub async fn storable(
        &self,
        outcome: &Outcome,
        response: &Response,
    ) -> Result<Option<u32>, String> {
        let stage = self
            .pipeline
            .stages()
            .iter()
            .find_map(|s| match s {
                Step::CachePolicy(c) => Some(c),
                _ => None,
            })
            .ok_or("the pipeline has no cache-policy stage")?;
        let (_, _, r) = stage
            .storable(outcome.head_copy(), response.head_copy())
            .await;
        r.map_err(|e| e.to_string())
    }

    /// Store `response` as the proxy does after a cache miss: ask the
    /// cache-policy stage whether it may be stored and, if so, keep it under
    /// the miss's key (a response with `Vary` as the variant for the
    /// request's values), so that later requests for it are `HIT`s. Returns
    /// the lifetime in seconds the policy gave (`Ok(None)`: not stored).
    /// `Err`: the request was not a cache miss, or the call failed.
    ///
    /// It takes the outcome because a miss holds its key's fetch until
    /// dropped: another request for the key waits for it (up to `[cache]
    /// lock_timeout`, default 5 s) before looking again.
    ///
    /// # Panics
    ///
    /// When the status or a header is not valid HTTP: a test's mistake.
    pub async fn store(
        &self,
        outcome: Outcome,
        response: &Response,
    ) -> Result<Option<u32>, String> {
        let key = outcome
            .cache_key()
            .ok_or("the request was not a cache miss")?
            .to_owned();
        let store = self
            .pipeline
            .cache()
            .ok_or("the pipeline has no cache store")?;
        let Some(secs) = self.storable(&outcome, response).await?.filter(|s| *s > 0) else {
            return Ok(None);
        };
        let lifetime = std::time::Duration::from_secs(u64::from(secs));
        let head = response.head_copy().parts;
        let key = match portier::cache::vary_names(&head.headers) {
            Some(names) => {
                let variant = portier::cache::variant_key(&key, &names, outcome.request_headers());
                store.mark_variants(&key, names, lifetime);
                variant
            }
            None => key,
        };
        let entry = Entry::new(head.status, head.headers, response.body.clone(), lifetime);
        store.insert(key, entry);
        // The miss's fetch ends after the insert, as the proxy's does.
        drop(outcome);
        Ok(Some(secs))
    }

    /// The kv namespace of stage `name`: seed it before a request, or read
    /// what the plugin stored. `None` when no stage has that name.
    pub fn kv(&self, stage: &str) -> Option<Namespace> {
        self.stages
            .iter()
            .find(|(name, _)| name == stage)
            .map(|(name, quota)| self.kv.namespace(name, *quota))
    }

    /// How many calls of stage `name` have failed (trapped, timed out,
    /// broke the contract) so far.
    pub fn failures(&self, stage: &str) -> Option<u64> {
        self.pipeline
            .stages()
            .iter()
            .find(|s| s.name() == stage)
            .map(|s| s.failures())
    }

    /// Count a request in flight to endpoint `index` of `upstream` until
    /// the guard is dropped, as the proxy does while it forwards one (what
    /// a least-request balancer reads).
    ///
    /// # Panics
    ///
    /// When there is no such upstream or endpoint.
    pub fn in_flight(&self, upstream: &str, index: usize) -> InFlight {
        let up = self
            .pipeline
            .upstreams()
            .get(upstream)
            .unwrap_or_else(|| panic!("no upstream named {upstream:?}"));
        up.endpoints
            .get(index)
            .unwrap_or_else(|| panic!("{upstream} has no endpoint {index}"))
            .state
            .start_request()
    }

    /// The pipeline itself, for what the harness does not wrap (upstream
    /// endpoint state, stage metrics).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
}
