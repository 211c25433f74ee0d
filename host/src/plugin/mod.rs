//! The plugin sandbox: compiling components, instantiating them, calling them
//! under a deadline and a memory cap, and reusing instances.
//!
//! Three lifetimes, visible in the types:
//! - process: [`Runtime`] (Engine, Linker, epoch ticker, kv store);
//! - pipeline generation: [`Stage`] (compiled component, `InstancePre`, idle instances);
//! - call: a head pushed into one instance's resource table and taken back.

mod bindings;
pub mod heads;
pub(crate) mod health;
mod host;
pub mod report;
pub(crate) mod wasi;
mod worlds;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, StoreLimitsBuilder, Trap, UpdateDeadline,
};

use crate::kv::Kv;
use crate::manifest::{self, ManifestError, PluginSource};
use crate::metrics::StageMetrics;
use crate::role::Role;
use crate::upstream::Upstreams;
use heads::{HeaderLimits, RequestHead, ResponseHead};
use health::StageHealth;
use host::{StageShared, StageState};

pub use bindings::portier::plugin::types::Response as PluginResponse;
pub use worlds::{BalancerWorld, CachePolicyWorld, FilterWorld, RouterWorld, World};

/// How often the epoch ticks: the granularity of call deadlines.
pub(crate) const EPOCH_TICK: Duration = crate::clock::TICK;
/// The least budget a stage's `init` gets (a larger `call_timeout` applies).
const INIT_BUDGET: Duration = Duration::from_millis(100);
/// Idle instances kept per stage; more are created under load and dropped after.
const MAX_IDLE_INSTANCES: usize = 64;
/// Live instances across all stages and generations (the pool's size).
const MAX_INSTANCES: u32 = manifest::MAX_STAGE_INSTANCES as u32;
/// Bytes of each memory slot reset by zeroing rather than decommitted.
const KEEP_RESIDENT: usize = 2 << 20;
/// Resources one instance may hold (its WASI handles and the heads it is
/// lent): a plugin leaking handles fails instead of growing the host.
const MAX_RESOURCES: usize = 1024;
/// Core instances, tables and linear memories one component may create.
/// A Rust plugin has one module with one memory, plus the shims its
/// bindings need.
pub(crate) const MAX_CORE_INSTANCES: usize = 16;
pub(crate) const MAX_TABLES: usize = 16;
const MAX_MEMORIES: usize = 1;
/// The most of a request body a filter may ask to read (`request-body`).
pub const MAX_REQUEST_BODY: u32 = 1 << 20;
/// How long a call waits for an instance when all `max_instances` are busy
/// (or its call budget, if shorter).
const MAX_INSTANCE_WAIT: Duration = Duration::from_millis(100);

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasm runtime: {0}")]
pub struct RuntimeError(String);

/// Why one plugin call failed. The request gets the stage's failure policy.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The call ran for longer than its budget.
    #[error("call ran past its {0:?} budget")]
    Timeout(Duration),
    /// The guest trapped (panic, out-of-bounds, out of memory...).
    #[error("plugin trapped: {reason}")]
    Trap {
        /// One line: what trapped, and the plugin's frame where.
        reason: String,
        /// Everything wasmtime says, backtrace included (logged at debug).
        detail: String,
    },
    /// The plugin returned something the host cannot send or use.
    #[error("plugin broke the contract: {0}")]
    Contract(String),
    /// A fresh instance could not be created or its `init` failed.
    #[error("instance could not start: {0}")]
    Start(String),
    /// `init` refused the stage's config: `key` inside it (none: the
    /// config as a whole) and why.
    #[error("init refused the config: {}{message}", key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Refused {
        /// The key inside the stage's `config`, as the plugin named it.
        key: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// The stage failed too often recently and is not being called.
    #[error("stage is quarantined after repeated failures")]
    Quarantined,
    /// Every one of the stage's `max_instances` was busy for the call's
    /// whole budget.
    #[error("all {0} instances of the stage stayed busy")]
    Busy(usize),
    /// The shared kv backend was unavailable and the stage's `kv.outage`
    /// ended the call: not the plugin's failure (no quarantine).
    #[error("kv backend unavailable ({0}); kv.outage applies")]
    KvOutage(String),
}

impl StageError {
    /// A word for the failure's kind (the `kind` label of
    /// `portier_stage_failures_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            StageError::Timeout(_) => "timeout",
            StageError::Trap { .. } => "trap",
            StageError::Contract(_) => "contract",
            StageError::Start(_) | StageError::Refused { .. } => "start",
            StageError::Quarantined => "quarantined",
            StageError::Busy(_) => "busy",
            StageError::KvOutage(_) => "kv_outage",
        }
    }
}

/// Process-wide wasm state: one per `portier` process, shared by every pipeline generation.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StageState>,
    kv: Kv,
    rollouts: crate::rollout::Rollouts,
    handlers: Linker<crate::handler::HandlerState>,
}

impl Runtime {
    /// Engine with async calls, epoch deadlines and an on-disk compilation cache.
    pub fn new(cache_dir: Option<&Path>) -> Result<Runtime, RuntimeError> {
        let err = |e: wasmtime::Error| RuntimeError(format!("{e:#}"));
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.allocation_strategy(pooling());
        let dir = cache_dir.map(Path::to_owned).or_else(default_cache_dir);
        if let Some(dir) = dir {
            // wasmtime's cache wants an absolute directory; a manifest in
            // the current directory makes a relative one.
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(Cache::new(cache).map_err(err)?));
        }
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            Err(e) => {
                // The pool reserves address space up front; where that is not
                // allowed (a ulimit -v, say), instances are allocated on demand.
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config).map_err(err)?
            }
        };
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(err)?;
        bindings::Host_::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(err)?;
        let handlers = crate::handler::linker(&engine).map_err(err)?;
        spawn_epoch_ticker(&engine);
        Ok(Runtime {
            handlers,
            engine,
            linker,
            kv: Kv::default(),
            rollouts: crate::rollout::Rollouts::default(),
        })
    }

    /// The process's kv (its in-memory store and shared backends).
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// The engine every component of the process runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker of handler components (`wasi:http/proxy`).
    pub fn handler_linker(&self) -> &Linker<crate::handler::HandlerState> {
        &self.handlers
    }

    /// The process's candidate trackers, by stage name.
    pub fn rollouts(&self) -> &crate::rollout::Rollouts {
        &self.rollouts
    }

    /// Compile, link, type-check and start one stage; errors name the manifest key.
    pub async fn load_stage(
        &self,
        manifest: &Path,
        spec: &manifest::Stage,
        upstreams: Arc<Upstreams>,
        header_limits: HeaderLimits,
        kv: &crate::kv::Store,
    ) -> Result<Step, ManifestError> {
        let err = |key: String, reason: String| ManifestError {
            file: manifest.to_owned(),
            key,
            reason,
        };
        let plugin_key = format!("{}.plugin", spec.key());
        let bytes: Vec<u8> = match &spec.source {
            PluginSource::Builtin(b) => b.wasm.to_vec(),
            PluginSource::File(p) => std::fs::read(p).map_err(|e| {
                err(
                    plugin_key.clone(),
                    format!("cannot read {}: {e}", p.display()),
                )
            })?,
        };
        let engine = self.engine.clone();
        // Compiling is CPU-bound (and may take a while cold): keep it off the async workers.
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| err(plugin_key.clone(), format!("compilation aborted: {e}")))?
            .map_err(|e| err(plugin_key.clone(), format!("not a valid component: {e:#}")))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            err(
                plugin_key.clone(),
                format!("imports something portier does not grant: {e:#}"),
            )
        })?;
        let loaded = match spec.role {
            Role::Filter => Step::Filter(
                self.start::<FilterWorld>(manifest, spec, pre, upstreams, header_limits, kv)
                    .await?,
            ),
            Role::Router => Step::Router(
                self.start::<RouterWorld>(manifest, spec, pre, upstreams, header_limits, kv)
                    .await?,
            ),
            Role::Balancer => Step::Balancer(
                self.start::<BalancerWorld>(manifest, spec, pre, upstreams, header_limits, kv)
                    .await?,
            ),
            Role::CachePolicy => Step::CachePolicy(
                self.start::<CachePolicyWorld>(manifest, spec, pre, upstreams, header_limits, kv)
                    .await?,
            ),
        };
        Ok(loaded)
    }

    /// Check a linked component against world `W`, and start its stage.
    async fn start<W: World>(
        &self,
        manifest: &Path,
        spec: &manifest::Stage,
        pre: wasmtime::component::InstancePre<StageState>,
        upstreams: Arc<Upstreams>,
        header_limits: HeaderLimits,
        kv: &crate::kv::Store,
    ) -> Result<Stage<W>, ManifestError> {
        let err = |key: String, reason: String| ManifestError {
            file: manifest.to_owned(),
            key,
            reason,
        };
        let pre = W::pre(pre).map_err(|e| {
            err(
                format!("{}.plugin", spec.key()),
                format!("does not implement world `{}`: {e:#}", spec.role),
            )
        })?;
        let stage = Stage {
            name: spec.name.clone(),
            policy: spec.on_error,
            scope: spec.routes.clone(),
            isolation: spec.isolation,
            call_timeout: spec.call_timeout,
            memory_limit: spec.memory_limit,
            engine: self.engine.clone(),
            pre,
            shared: StageShared {
                name: spec.name.as_str().into(),
                config_json: spec.config_json.as_str().into(),
                kv: kv.namespace(&spec.kv_name, spec.kv_quota),
                kv_outage: spec.kv_outage,
                upstreams,
                grants: Arc::new(spec.grants.clone()),
                header_limits,
                log_budget: Arc::new(report::LogBudget::default()),
                request_body: Arc::default(),
            },
            idle: ArrayQueue::new(MAX_IDLE_INSTANCES),
            slots: Arc::new(Semaphore::new(spec.max_instances)),
            max_instances: spec.max_instances,
            freed: Arc::new(Notify::new()),
            health: StageHealth::new(spec.quarantine),
            failure_log: report::FailureLog::default(),
            wants_response: AtomicBool::new(true),
            routes: std::sync::OnceLock::new(),
            breach_logged: AtomicBool::new(false),
            metrics: StageMetrics::new(&spec.name),
        };
        // Start one instance now: this runs the plugin's `init`, so bad config
        // rejects the manifest instead of failing the first request.
        let slot = stage
            .slot()
            .expect("a new stage has all its max_instances (at least 1) free");
        match stage.start_instance(slot).await {
            Ok(inst) => {
                stage.put_back(inst);
                Ok(stage)
            }
            Err(StageError::Refused { key, message }) => {
                Err(init_error(manifest, spec, key, message))
            }
            Err(e) => Err(err(
                format!("{}.config", spec.key()),
                format!("init failed: {e}"),
            )),
        }
    }
}

/// Charge a store's guest for the time it runs, from the ticks `left`
/// finds in the store's data: past them, the call traps (`Interrupt`).
///
/// The callback runs only when a tick arrives while guest code is running,
/// so counting its calls charges the guest for the time it ran, not for
/// time spent queued behind other requests after a yield or preempted by
/// the OS: a busy proxy does not fail healthy plugins.
pub(crate) fn charge_running_time<T: 'static>(store: &mut Store<T>, left: fn(&mut T) -> &mut u64) {
    store.epoch_deadline_callback(move |mut ctx| {
        let left = left(ctx.data_mut());
        if *left == 0 {
            return Ok(UpdateDeadline::Interrupt);
        }
        *left -= 1;
        // Let other requests run on this worker, then continue. tokio's
        // yield_now (not a bare re-poll) lets the worker also poll its I/O
        // driver, so a spinning guest does not stall the sockets it shares.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}

/// Turn an init rejection into a manifest error: the plugin's key (say
/// `routes[0].upstream`) under the stage's `config`.
fn init_error(
    manifest: &Path,
    spec: &manifest::Stage,
    key: Option<String>,
    reason: String,
) -> ManifestError {
    let base = format!("{}.config", spec.key());
    let key = match key.filter(|k| !k.is_empty()) {
        Some(k) if k.starts_with('[') => format!("{base}{k}"),
        Some(k) => format!("{base}.{k}"),
        None => base,
    };
    ManifestError {
        file: manifest.to_owned(),
        key,
        reason,
    }
}

/// Pooled instance slots: instantiation becomes a few page-table operations
/// (what makes `isolation = "per-request"` affordable), and memory is reused.
fn pooling() -> InstanceAllocationStrategy {
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 4)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 4)
        .total_stacks(MAX_INSTANCES)
        .max_memory_size(manifest::MAX_MEMORY_LIMIT)
        // A slot going back to the pool is reset by zeroing only the pages the
        // instance dirtied (found with PAGEMAP_SCAN on Linux >= 6.7) instead of
        // madvise: no page faults on reuse and no TLB-shootdown IPIs. Measured
        // on the fresh-instance micro-benchmark (bench/results/latest.md).
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        // What still needs madvise is batched, so one IPI covers many slots.
        .decommit_batch_size(16);
    InstanceAllocationStrategy::Pooling(p)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("portier"))
}

/// The clock's ticker advances the epoch every millisecond (one thread
/// waking for both); stores compare against it, so deadlines cost nothing
/// until they are near.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    crate::clock::on_tick(move || match weak.upgrade() {
        Some(engine) => {
            engine.increment_epoch();
            true
        }
        None => false,
    });
}

/// A ready instance: its own store, so a trap discards only this one.
struct Instance<E> {
    store: Store<StageState>,
    exports: E,
    _slot: Slot,
}

/// One of a stage's `max_instances`, held by a live instance; dropping it
/// (the instance discarded) tells a call waiting for an instance.
struct Slot {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

/// What a filter decided for a request.
#[derive(Debug)]
pub enum FilterAction {
    /// Go on.
    Continue,
    /// Answer now.
    Respond(PluginResponse),
}

/// What a router decided for a request.
#[derive(Debug)]
pub enum RouteDecision {
    /// Forward to the upstream named `upstream`, under the route `route`.
    Upstream {
        /// The upstream's name.
        upstream: String,
        /// The route's name, if the rule has one.
        route: Option<String>,
    },
    /// Answer now.
    Respond(PluginResponse),
}

/// A loaded stage of one pipeline generation, whose plugin implements world `W`.
pub struct Stage<W: World> {
    /// Stage name.
    pub name: String,
    /// Its failure policy.
    pub policy: manifest::FailurePolicy,
    /// The routes it applies to (`None`: every request).
    scope: Option<Vec<String>>,
    isolation: manifest::Isolation,
    call_timeout: Duration,
    memory_limit: usize,
    engine: Engine,
    pre: W::Pre,
    shared: StageShared,
    idle: ArrayQueue<Instance<W::Exports>>,
    /// `max_instances` permits; each live instance holds one.
    slots: Arc<Semaphore>,
    max_instances: usize,
    /// Told when an instance goes back to `idle` or its slot frees.
    freed: Arc<Notify>,
    health: StageHealth,
    failure_log: report::FailureLog,
    /// A filter's answer at `init`: whether it has work on responses.
    wants_response: AtomicBool,
    /// A router's answer at `init`: the route names it may choose.
    routes: std::sync::OnceLock<Vec<String>>,
    /// Whether a contract breach has been logged (it is logged once).
    breach_logged: AtomicBool,
    /// Its series in `/metrics`.
    metrics: StageMetrics,
}

macro_rules! with_instance {
    // Take an instance, lend it `$heads`, run `$call`, take the heads back,
    // and return the instance to the pool unless the call failed.
    ($self:ident, $what:literal, [$($head:ident),*], |$b:ident, $store:ident, $($res:ident),*| $call:expr) => {{
        let mut inst = match $self.take().await {
            Ok(i) => i,
            Err(e) => return ($($head,)* Err(e)),
        };
        $self.arm_deadline(&mut inst.store);
        let table = &mut inst.store.data_mut().table;
        // Room for the heads is checked first: a failed push would lose them.
        if table.iter_mut().count() + [$(stringify!($head)),*].len() > MAX_RESOURCES {
            drop(inst);
            let e = StageError::Contract(format!("holds more than {} resources", MAX_RESOURCES - 2));
            return ($($head,)* Err($self.fail(e)));
        }
        $(let $res = table.push($head).expect("checked: the table has room");)*
        let started = std::time::Instant::now();
        let out = {
            let $b = &inst.exports;
            let $store = &mut inst.store;
            // The guest gets borrows; the host keeps ownership to take the heads back.
            $(let $res = Resource::new_borrow($res.rep());)*
            // A span per call, at debug level: free unless the log filter
            // asks for it (`RUST_LOG=portier::plugin=debug`).
            tracing::Instrument::instrument(
                $call,
                tracing::debug_span!("stage", name = %$self.name, call = $what),
            )
            .await
        };
        $self.metrics.calls.observe(started.elapsed().as_secs_f64());
        let table = &mut inst.store.data_mut().table;
        $(let $head = table.delete($res).expect("the host's resource is still in the table");)*
        ($($head,)* $self.finish(inst, out))
    }};
}

impl Stage<FilterWorld> {
    /// Run a filter's `on-request`.
    pub async fn on_request(
        &self,
        head: RequestHead,
    ) -> (RequestHead, Result<FilterAction, StageError>) {
        let (head, out) = with_instance!(self, "on-request", [head], |f, store, req| f
            .call_on_request(store, req));
        let out = out.and_then(|a| match a {
            bindings::filter::Action::Continue => Ok(FilterAction::Continue),
            bindings::filter::Action::Respond(r) => self.checked(r).map(FilterAction::Respond),
        });
        (head, out)
    }

    /// Run a filter's `on-response`.
    pub async fn on_response(
        &self,
        req: RequestHead,
        resp: ResponseHead,
    ) -> (RequestHead, ResponseHead, Result<(), StageError>) {
        with_instance!(self, "on-response", [req, resp], |f, store, r, s| f
            .call_on_response(store, r, s))
    }

    /// Whether this filter's `on-response` is to be called: it said at
    /// `init` it has response work.
    pub fn sees_responses(&self) -> bool {
        self.wants_response.load(Relaxed)
    }

    /// The bytes of request bodies the filter asked for at `init` (0: none).
    pub fn request_body(&self) -> u32 {
        self.shared.request_body.load(Relaxed)
    }
}

impl Stage<RouterWorld> {
    /// Run a router's `route`.
    pub async fn route(
        &self,
        head: RequestHead,
    ) -> (RequestHead, Result<RouteDecision, StageError>) {
        let (head, out) = with_instance!(self, "route", [head], |r, store, req| r
            .call_route(store, req));
        let out = out.and_then(|d| match d {
            bindings::router::Route::Forward(d) => {
                self.route_named(d.route)
                    .map(|route| RouteDecision::Upstream {
                        upstream: d.upstream,
                        route,
                    })
            }
            bindings::router::Route::Respond(r) => self.checked(r).map(RouteDecision::Respond),
        });
        (head, out)
    }

    /// The route names the router said at `init` it may choose.
    pub fn routes(&self) -> &[String] {
        self.routes.get().map_or(&[], Vec::as_slice)
    }

    /// A route name a router returned must be one it declared: scoping is
    /// checked against the declared names, so an undeclared one would
    /// silently skip the stages scoped to the name the author meant.
    fn route_named(&self, route: Option<String>) -> Result<Option<String>, StageError> {
        match route {
            Some(r) if !self.routes().contains(&r) => Err(self.fail(StageError::Contract(
                format!("chose route {r:?}, not one of the names it declared at init"),
            ))),
            r => Ok(r),
        }
    }
}

impl Stage<BalancerWorld> {
    /// Run a balancer's `pick`.
    pub async fn pick(
        &self,
        head: RequestHead,
        upstream: &str,
    ) -> (RequestHead, Result<Option<u32>, StageError>) {
        let exclude = head.tried;
        with_instance!(self, "pick", [head], |b, store, req| {
            store.data_mut().exclude = exclude;
            b.call_pick(store, req, upstream)
        })
    }
}

impl Stage<CachePolicyWorld> {
    /// Run a cache policy's `cache-key`: the key to look the request up
    /// under, or `None` to bypass the cache.
    pub async fn cache_key(
        &self,
        head: RequestHead,
    ) -> (RequestHead, Result<Option<String>, StageError>) {
        with_instance!(self, "cache-key", [head], |c, store, req| c
            .call_cache_key(store, req))
    }

    /// Run a cache policy's `storable`: how long (seconds) the response may
    /// be stored, or `None` not to store it.
    pub async fn storable(
        &self,
        req: RequestHead,
        resp: ResponseHead,
    ) -> (RequestHead, ResponseHead, Result<Option<u32>, StageError>) {
        with_instance!(self, "storable", [req, resp], |c, store, r, s| c
            .call_storable(store, r, s))
    }
}

impl<W: World> Stage<W> {
    /// Whether the stage runs for a request routed under `route`.
    pub fn applies_to(&self, route: Option<&str>) -> bool {
        match &self.scope {
            None => true,
            Some(names) => route.is_some_and(|r| names.iter().any(|n| n == r)),
        }
    }

    /// The routes the manifest scoped the stage to (`None`: every request).
    pub fn scope(&self) -> Option<&[String]> {
        self.scope.as_deref()
    }

    /// Whether the stage is quarantined right now.
    pub fn quarantined(&self) -> bool {
        self.health.quarantined()
    }

    /// How many calls of this stage have failed since it was loaded.
    pub fn failures(&self) -> u64 {
        self.health.failures()
    }

    async fn take(&self) -> Result<Instance<W::Exports>, StageError> {
        if self.health.quarantined() {
            self.metrics.failed("quarantined");
            return Err(StageError::Quarantined);
        }
        let mut deadline = None;
        loop {
            if let Some(i) = self.idle.pop() {
                return Ok(i);
            }
            if let Some(slot) = self.slot() {
                // A plugin whose instances cannot start fails its calls:
                // counted and logged like any other failure.
                return self.start_instance(slot).await.map_err(|e| {
                    let e = match e {
                        // Accepted at load, refused now: the instance failed to start.
                        StageError::Refused { .. } => StageError::Start(e.to_string()),
                        e => e,
                    };
                    self.fail(e)
                });
            }
            // Registered before looking again, so a return in between is not missed.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(i) = self.idle.pop() {
                return Ok(i);
            }
            let deadline = *deadline.get_or_insert_with(|| {
                tokio::time::Instant::now() + self.call_timeout.min(MAX_INSTANCE_WAIT)
            });
            // Every instance the stage may have is in a call: wait for one,
            // briefly (instances come back within microseconds unless the
            // stage is stuck). Not the plugin's failure: the policy applies,
            // but it does not count towards quarantine.
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let e = StageError::Busy(self.max_instances);
                self.metrics.failed(e.kind());
                if let report::Report::Log { .. } = self.failure_log.failed(&e.to_string()) {
                    tracing::warn!(stage = %self.name, error = %e, "plugin call not made");
                }
                return Err(e);
            }
        }
    }

    /// One of the stage's `max_instances`, if one is free.
    fn slot(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _permit: permit,
            freed: self.freed.clone(),
        })
    }

    /// A response a plugin made must carry a status a proxy can send.
    fn checked(&self, response: PluginResponse) -> Result<PluginResponse, StageError> {
        if final_status(response.status).is_some() {
            return Ok(response);
        }
        let e = StageError::Contract(format!(
            "answered with status {}, outside 200-599",
            response.status
        ));
        Err(self.fail(e))
    }

    /// Count a failed call (perhaps starting a quarantine) and report it:
    /// one line, repeats folded, the backtrace at debug level.
    fn fail(&self, e: StageError) -> StageError {
        let quarantine = self.health.record_failure();
        self.metrics.failed(e.kind());
        if quarantine.is_some() {
            self.metrics.quarantines.inc();
        }
        let line = e.to_string();
        let first_breach =
            matches!(e, StageError::Contract(_)) && !self.breach_logged.swap(true, Relaxed);
        match self.failure_log.failed(&line) {
            report::Report::Log { folded } if folded > 0 => {
                tracing::error!(stage = %self.name, role = %W::ROLE, error = %line, repeats_folded = folded, "plugin call failed")
            }
            report::Report::Log { .. } => {
                tracing::error!(stage = %self.name, role = %W::ROLE, error = %line, "plugin call failed")
            }
            report::Report::Fold if first_breach => {
                tracing::error!(stage = %self.name, role = %W::ROLE, error = %line, "plugin call failed")
            }
            report::Report::Fold => {}
        }
        if let StageError::Trap { detail, .. } = &e {
            tracing::debug!(stage = %self.name, "{detail}");
        }
        if let Some(d) = quarantine {
            tracing::error!(stage = %self.name, for_ms = d.as_millis() as u64, "stage quarantined: most of its recent calls failed; its failure policy applies meanwhile");
        }
        e
    }

    /// After a successful call: keep the instance for the next request, unless
    /// the stage wants isolation or the pool is full (load has dropped).
    fn put_back(&self, inst: Instance<W::Exports>) {
        if self.isolation == manifest::Isolation::Pooled && self.idle.push(inst).is_ok() {
            self.freed.notify_one();
        }
        // Otherwise the instance drops here, and its slot tells a waiter.
    }

    /// A new instance with its `init` run.
    async fn start_instance(&self, slot: Slot) -> Result<Instance<W::Exports>, StageError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .memories(MAX_MEMORIES)
            .instances(MAX_CORE_INSTANCES)
            .tables(MAX_TABLES)
            .trap_on_grow_failure(true)
            .build();
        let start = |e: wasmtime::Error| StageError::Start(format!("{e:#}"));
        let state = StageState::new(self.shared.clone(), limits).map_err(start)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        charge_running_time(&mut store, |s| &mut s.ticks_left);
        // `init` does a stage's one-time work (parsing its config, compiling
        // rules), often on a freshly mapped memory: it gets at least
        // INIT_BUDGET, so a busy machine does not refuse a healthy plugin.
        let init_budget = self.call_timeout.max(INIT_BUDGET);
        self.arm(&mut store, init_budget);
        let config = &*self.shared.config_json;
        let (exports, init) = W::start(&self.pre, &mut store, config)
            .await
            .map_err(start)?;
        let init = init.map(|r| {
            r.map(|info| {
                self.wants_response.store(info.on_response, Relaxed);
                self.shared
                    .request_body
                    .store(info.request_body.min(MAX_REQUEST_BODY), Relaxed);
                let _ = self.routes.set(info.routes);
            })
        });
        match init {
            Ok(Ok(())) => Ok(Instance {
                store,
                exports,
                _slot: slot,
            }),
            Ok(Err(refused)) => Err(StageError::Refused {
                key: refused.key,
                message: refused.message,
            }),
            Err(e) => Err(classify(e, init_budget)),
        }
    }

    /// Give the next call its budget: `call_timeout` in epoch ticks.
    fn arm_deadline(&self, store: &mut Store<StageState>) {
        self.arm(store, self.call_timeout);
    }

    /// Give the next call `budget`, in epoch ticks.
    fn arm(&self, store: &mut Store<StageState>, budget: Duration) {
        let ticks = budget.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1) as u64;
        store.data_mut().ticks_left = ticks;
        store.data_mut().exclude = 0;
        store.data_mut().outbound_sent = 0;
        store.set_epoch_deadline(1);
    }

    fn finish<R>(
        &self,
        inst: Instance<W::Exports>,
        out: wasmtime::Result<R>,
    ) -> Result<R, StageError> {
        match out {
            Ok(r) => {
                self.health.record_success();
                self.put_back(inst);
                Ok(r)
            }
            Err(e) => {
                // The instance's state is unknown after a trap: discard it.
                drop(inst);
                // An unavailable kv backend is not the plugin's failure: no
                // quarantine, and the backend logs the outage once.
                if let Some(outage) = e.downcast_ref::<host::KvOutage>() {
                    self.metrics.failed("kv_outage");
                    return Err(StageError::KvOutage(outage.0.clone()));
                }
                Err(self.fail(classify(e, self.call_timeout)))
            }
        }
    }
}

/// A stage of a pipeline, by the world its plugin implements.
pub enum Step {
    /// A filter.
    Filter(Stage<FilterWorld>),
    /// The router.
    Router(Stage<RouterWorld>),
    /// A balancer.
    Balancer(Stage<BalancerWorld>),
    /// A cache policy.
    CachePolicy(Stage<CachePolicyWorld>),
}

/// `$e` on the stage inside a [`Step`], whatever its world.
macro_rules! each {
    ($step:expr, $s:ident => $e:expr) => {
        match $step {
            Step::Filter($s) => $e,
            Step::Router($s) => $e,
            Step::Balancer($s) => $e,
            Step::CachePolicy($s) => $e,
        }
    };
}

impl Step {
    /// The stage's series in `/metrics`.
    pub fn metrics(&self) -> &StageMetrics {
        each!(self, s => &s.metrics)
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        each!(self, s => &s.name)
    }

    /// Its role.
    pub fn role(&self) -> Role {
        match self {
            Step::Filter(_) => Role::Filter,
            Step::Router(_) => Role::Router,
            Step::Balancer(_) => Role::Balancer,
            Step::CachePolicy(_) => Role::CachePolicy,
        }
    }

    /// Its failure policy.
    pub fn policy(&self) -> manifest::FailurePolicy {
        each!(self, s => s.policy)
    }

    /// What its `kv.outage` says.
    pub fn kv_outage(&self) -> crate::kv::Outage {
        each!(self, s => s.shared.kv_outage)
    }

    /// What a request gets when a call of this stage failed with `e`:
    /// nothing (the stage is skipped), or the proxy's answer.
    pub fn on_failure(&self, e: &StageError) -> Option<crate::error::Fault> {
        use crate::error::Fault;
        use crate::kv::Outage;
        match (e, self.kv_outage(), self.policy()) {
            (StageError::KvOutage(_), Outage::Closed, _) => Some(Fault::KvUnavailable),
            (StageError::KvOutage(_), _, _) => None,
            (_, _, manifest::FailurePolicy::Open) => None,
            (_, _, manifest::FailurePolicy::Closed) => Some(Fault::Plugin),
        }
    }

    /// Whether it runs for a request routed under `route`.
    pub fn applies_to(&self, route: Option<&str>) -> bool {
        each!(self, s => s.applies_to(route))
    }

    /// The routes the manifest scoped it to.
    pub fn scope(&self) -> Option<&[String]> {
        each!(self, s => s.scope())
    }

    /// Whether it is quarantined right now.
    pub fn quarantined(&self) -> bool {
        each!(self, s => s.quarantined())
    }

    /// How many of its calls have failed.
    pub fn failures(&self) -> u64 {
        each!(self, s => s.failures())
    }

    /// Whether a filter's `on-response` is to be called for requests it saw.
    pub fn sees_responses(&self) -> bool {
        matches!(self, Step::Filter(f) if f.sees_responses())
    }
}

/// A status a plugin may answer with or set: a final one (RFC 9110 §15),
/// 200-599. 1xx would announce a different protocol or more responses.
pub fn final_status(status: u16) -> Option<http::StatusCode> {
    (200..=599)
        .contains(&status)
        .then(|| http::StatusCode::from_u16(status).ok())
        .flatten()
}

/// Frames of the language runtime's panic and abort machinery (names with
/// their crate hashes removed), skipped to name the plugin's own frame
/// where a trap happened.
const RUNTIME_FRAMES: [&str; 8] = [
    "core::",
    "std::",
    "alloc::",
    "__rustc::",
    "__rust",
    "rust_",
    "abort",
    "<",
];

/// A frame's function name demangled, without crate hashes:
/// `std[d123b7a1a2ed1472]::process::abort` -> `std::process::abort`.
fn readable(name: &str) -> String {
    let name = format!("{:#}", rustc_demangle::demangle(name));
    let mut out = String::with_capacity(name.len());
    let mut depth = 0;
    for c in name.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// What a failed call was: a timeout (the epoch budget ran out) or a trap,
/// named by the guest's own frame (the language runtime's skipped).
pub(crate) fn classify(e: wasmtime::Error, timeout: Duration) -> StageError {
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return StageError::Timeout(timeout);
    }
    let what = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e
            .root_cause()
            .to_string()
            .lines()
            .next()
            .unwrap_or("unknown")
            .to_owned(),
    };
    let backtrace = e.downcast_ref::<wasmtime::WasmBacktrace>();
    let frame = backtrace.and_then(|bt| {
        let names: Vec<String> = bt
            .frames()
            .iter()
            .filter_map(|f| f.func_name())
            .map(readable)
            .collect();
        names
            .iter()
            .find(|n| !RUNTIME_FRAMES.iter().any(|p| n.starts_with(p)))
            .or(names.first())
            .cloned()
    });
    let reason = match frame {
        Some(frame) => format!("{what} (in {frame})"),
        None => what,
    };
    let detail = match backtrace {
        Some(bt) => format!("{reason}\n{bt}"),
        None => format!("{e:#}"),
    };
    StageError::Trap { reason, detail }
}
