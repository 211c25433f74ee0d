//! Handlers: upstreams answered by a standard `wasi:http/proxy` component
//! (the world `wasmtime serve` and Spin run) instead of endpoints; an edge
//! function inside the proxy.
//!
//! Each request gets a fresh instance (as `wasi:http/proxy` components
//! expect) from the process's pooling allocator, in a `Store` of its own
//! with the stages' sandbox: a budget of running time charged per epoch
//! tick, a memory cap, `max_instances` at once, a wall-clock deadline for
//! the whole exchange, and WASI without sockets or preopened directories.
//! The guest runs in a task of its own, so it goes on writing its body
//! after the response head is on its way; request and response bodies
//! stream both ways.
//!
//! Outgoing requests (`wasi:http/outgoing-handler`) reach only the
//! upstreams the manifest grants the handler, named as the request's
//! authority (`http://api/users` goes to upstream `api`), through this
//! worker's pooled connections and the upstream's passive health.
//!
//! A guest that traps or runs out of time ends its store, which would end
//! its response body as if complete: [`GuestBody`] trusts the body's end
//! only once the guest's task finished cleanly, and otherwise breaks the
//! response, so a client never takes a cut body for a whole one.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme as WasiScheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::body::{BoxError, ProxyBody};
use crate::error::Fault;
use crate::forward::Failure;
use crate::ingress::Scheme;
use crate::manifest::{self, ManifestError};
use crate::metrics::StageMetrics;
use crate::plugin::StageError;
use crate::plugin::health::StageHealth;
use crate::plugin::report::{FailureLog, Report};
use crate::upstream::{Upstream, Upstreams};

/// How often the epoch ticks (the plugins' clock): a handler's running
/// time is charged in these.
const TICK: Duration = crate::plugin::EPOCH_TICK;
/// Outgoing requests one request's handler may send.
const MAX_OUTGOING: u32 = 16;
/// Resources (streams, bodies, fields) one instance may hold.
const MAX_RESOURCES: usize = 4096;
/// How long a request waits for one of `max_instances` to free.
const MAX_INSTANCE_WAIT: Duration = Duration::from_millis(100);
/// Header names and values a guest may read or write, in bytes per field.
const MAX_FIELD: usize = 64 << 10;

/// What a handler's store holds: WASI's and wasi:http's state over one
/// resource table, the outgoing-request grants, and the budgets.
pub struct HandlerState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    egress: Egress,
    limits: StoreLimits,
    ticks_left: u64,
}

impl WasiView for HandlerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HandlerState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

/// The process's linker for handlers: the WASI the stages get (no
/// sockets, no preopens) and wasi:http's types and outgoing handler.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HandlerState>> {
    let mut l = Linker::new(engine);
    crate::plugin::wasi::add_to_linker(&mut l)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
    Ok(l)
}

/// A handler's outgoing requests: each to an upstream it was granted, sent
/// by the host.
#[derive(Clone)]
struct Egress {
    granted: Arc<[String]>,
    upstreams: Arc<Upstreams>,
    sent: u32,
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type Sent = Result<(http::Response<WasiBody>, IoFuture), HttpError>;

impl WasiHttpHooks for Egress {
    // The upstream's own settings decide TLS and the Host header.
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _done: IoFuture,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        // Decided here: the future is 'static and cannot borrow the grants.
        self.sent += 1;
        let target = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .filter(|a| self.granted.iter().any(|g| g == a))
            .and_then(|a| self.upstreams.get(a).cloned());
        let over = self.sent > MAX_OUTGOING;
        Box::new(async move {
            match target {
                _ if over => Err(HttpError::ConnectionLimitReached),
                None => Err(HttpError::HttpRequestDenied),
                Some(up) => egress(up, request).await,
            }
        })
    }
}

/// Send a handler's request to `up`: origin-form, Host the endpoint's,
/// the body streamed; the response streams back.
async fn egress(up: Arc<Upstream>, request: http::Request<WasiBody>) -> Sent {
    let (mut parts, body) = request.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    // Host: the endpoint's address (the guest's authority is the upstream's name).
    parts.headers.remove(header::HOST);
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
    let req = http::Request::from_parts(parts, ProxyBody::Boxed(body));
    match crate::outbound::exchange(&up, req).await {
        Ok(resp) => {
            let resp = resp.map(|b| b.map_err(HttpError::from).boxed_unsync());
            Ok((resp, Box::new(async { Ok(()) })))
        }
        Err(None) => Err(HttpError::DestinationUnavailable),
        Err(Some(failure)) => Err(match failure {
            Failure::Connect => HttpError::ConnectionRefused,
            Failure::Timeout => HttpError::HttpResponseTimeout,
            Failure::Busy | Failure::Local => HttpError::ConnectionLimitReached,
            Failure::Reset => HttpError::HttpProtocolError,
        }),
    }
}

/// Why a handler gave no response head.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// All its `max_instances` were serving requests.
    #[error("all {0} instances are serving requests")]
    Busy(usize),
    /// Most of its recent requests failed: it is not called for a while.
    #[error("quarantined")]
    Quarantined,
    /// Its instance could not be made, or the guest trapped.
    #[error("{0}")]
    Trap(String),
    /// It ran past its budget of running time.
    #[error("ran past its call_timeout of {0:?}")]
    Budget(Duration),
    /// It did not answer within its `timeout`.
    #[error("no response within its timeout of {0:?}")]
    Timeout(Duration),
    /// It answered with a wasi:http error code instead of a response.
    #[error("answered with error code {0}")]
    Code(String),
}

impl HandlerError {
    /// What the client gets.
    pub fn fault(&self) -> Fault {
        match self {
            HandlerError::Timeout(_) => Fault::UpstreamTimeout,
            HandlerError::Code(_) => Fault::Upstream,
            _ => Fault::Plugin,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            HandlerError::Busy(_) => "busy",
            HandlerError::Quarantined => "quarantined",
            HandlerError::Trap(_) => "trap",
            HandlerError::Budget(_) | HandlerError::Timeout(_) => "timeout",
            HandlerError::Code(_) => "contract",
        }
    }
}

/// A handler upstream of one pipeline generation: its component,
/// pre-linked, and its limits.
pub struct Handler {
    name: String,
    pre: ProxyPre<HandlerState>,
    granted: Arc<[String]>,
    upstreams: Arc<Upstreams>,
    slots: Arc<Semaphore>,
    max_instances: usize,
    memory_limit: usize,
    call_timeout: Duration,
    timeout: Duration,
    /// Its failures and successes, shared with the bodies it streams.
    ledger: Arc<Ledger>,
}

/// What a handler's requests came to: the stage series (`NAME@handler`),
/// quarantine by failure ratio, and failure lines folded as the stages'
/// are, so a client making a handler fail on purpose cannot flood the log.
struct Ledger {
    name: String,
    health: StageHealth,
    metrics: StageMetrics,
    log: FailureLog,
}

impl Ledger {
    fn succeeded(&self) {
        self.health.record_success();
    }

    /// Count and report a request the handler failed, before its response
    /// head or (`in_body`) while writing its body.
    fn failed(&self, e: &HandlerError, in_body: bool) {
        self.metrics.failed(e.kind());
        let quarantine = !matches!(e, HandlerError::Busy(_) | HandlerError::Quarantined)
            && self.health.record_failure().is_some();
        if let Report::Log { folded } = self.log.failed(&e.to_string()) {
            tracing::error!(handler = %self.name, error = %e, in_body, repeats_folded = folded, "handler failed");
        }
        if quarantine {
            self.metrics.quarantines.inc();
            tracing::error!(handler = %self.name, "handler quarantined: most of its recent requests failed");
        }
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handler({})", self.name)
    }
}

impl Handler {
    /// Compile and link upstream `index`'s handler component; errors name
    /// its manifest key.
    pub async fn load(
        file: &Path,
        index: usize,
        name: &str,
        spec: &manifest::Handler,
        engine: &Engine,
        linker: &Linker<HandlerState>,
        upstreams: Arc<Upstreams>,
    ) -> Result<Handler, ManifestError> {
        let err = |reason: String| ManifestError {
            file: file.to_owned(),
            key: format!("upstreams[{index}].handler.component"),
            reason,
        };
        let path = &spec.component;
        let bytes =
            std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let engine_ = engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine_, &bytes))
            .await
            .map_err(|e| err(format!("compilation aborted: {e}")))?
            .map_err(|e| err(format!("not a valid component: {e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            err(format!(
                "imports something portier does not grant a handler: {e:#}"
            ))
        })?;
        let pre = ProxyPre::new(pre).map_err(|e| {
            err(format!(
                "does not export wasi:http/incoming-handler (the wasi:http/proxy world): {e:#}"
            ))
        })?;
        Ok(Handler {
            name: name.to_owned(),
            pre,
            granted: spec.upstreams.clone().into(),
            upstreams,
            slots: Arc::new(Semaphore::new(spec.max_instances)),
            max_instances: spec.max_instances,
            memory_limit: spec.memory_limit,
            call_timeout: spec.call_timeout,
            timeout: spec.timeout,
            ledger: Arc::new(Ledger {
                name: name.to_owned(),
                health: StageHealth::new(manifest::Quarantine::default()),
                metrics: StageMetrics::new(&format!("{name}@handler")),
                log: FailureLog::default(),
            }),
        })
    }

    /// The upstream it answers for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is quarantined right now.
    pub fn quarantined(&self) -> bool {
        self.ledger.health.quarantined()
    }

    /// Its failed requests since it was loaded.
    pub fn failures(&self) -> u64 {
        self.ledger.health.failures()
    }

    /// A store for one request, with the handler's limits.
    fn store(&self) -> Store<HandlerState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .memories(1)
            .instances(crate::plugin::MAX_CORE_INSTANCES)
            .tables(crate::plugin::MAX_TABLES)
            .trap_on_grow_failure(true)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELD);
        let ticks = self
            .call_timeout
            .as_nanos()
            .div_ceil(TICK.as_nanos())
            .max(1) as u64;
        let state = HandlerState {
            table,
            wasi: WasiCtx::builder().build(),
            http,
            egress: Egress {
                granted: self.granted.clone(),
                upstreams: self.upstreams.clone(),
                sent: 0,
            },
            limits,
            ticks_left: ticks,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        // As for stages: a tick that finds the guest running costs it one
        // tick of budget, and lets the worker's other requests run.
        crate::plugin::charge_running_time(&mut store, |s| &mut s.ticks_left);
        store.set_epoch_deadline(1);
        store
    }

    /// Serve `req`: a response whose body streams from the guest, or why
    /// there is none (logged and counted here).
    pub async fn serve(
        &self,
        req: http::Request<ProxyBody>,
        scheme: Scheme,
    ) -> Result<http::Response<ProxyBody>, HandlerError> {
        let started = Instant::now();
        let result = self.respond(req, scheme).await;
        self.ledger
            .metrics
            .calls
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.ledger.failed(e, false);
        }
        result
    }

    async fn respond(
        &self,
        req: http::Request<ProxyBody>,
        scheme: Scheme,
    ) -> Result<http::Response<ProxyBody>, HandlerError> {
        if self.ledger.health.quarantined() {
            return Err(HandlerError::Quarantined);
        }
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(MAX_INSTANCE_WAIT, self.slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(HandlerError::Busy(self.max_instances))?,
        };
        let mut store = self.store();
        let req = req.map(|b| {
            b.map_err(|e| HttpError::InternalError(Some(e.to_string())))
                .boxed_unsync()
        });
        let scheme = match scheme {
            Scheme::Http => WasiScheme::Http,
            Scheme::Https => WasiScheme::Https,
        };
        let trap = |e: wasmtime::Error| HandlerError::Trap(format!("{e:#}"));
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(scheme, req)
            .map_err(trap)?;
        let (head_tx, head_rx) = oneshot::channel();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(head_tx)
            .map_err(trap)?;
        let (pre, timeout, budget) = (self.pre.clone(), self.timeout, self.call_timeout);
        let (done_tx, done_rx) = oneshot::channel();
        // The guest runs in a task of its own: it writes the body after the
        // head is returned. Its store (and instance slot) ends with it.
        let task = tokio::spawn(async move {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(())) => Ok(()),
                // Classified as the stages' traps are: the guest's own frame.
                Ok(Err(e)) => Err(match crate::plugin::classify(e, budget) {
                    StageError::Trap { reason, .. } => HandlerError::Trap(reason),
                    _ => HandlerError::Budget(budget),
                }),
                Err(_) => Err(HandlerError::Timeout(timeout)),
            };
            drop(store);
            drop(permit);
            let _ = done_tx.send(result);
        });
        let task = AbortOnDrop(task);
        match head_rx.await {
            Ok(Ok(resp)) => Ok(resp.map(|inner| {
                ProxyBody::Boxed(
                    GuestBody {
                        inner,
                        done: Some(done_rx),
                        ledger: self.ledger.clone(),
                        _task: task,
                    }
                    .boxed_unsync(),
                )
            })),
            Ok(Err(code)) => Err(HandlerError::Code(format!("{code:?}"))),
            // The guest ended (returned, trapped, ran out of time) without
            // setting a response.
            Err(_) => Err(match done_rx.await {
                Ok(Err(e)) => e,
                _ => HandlerError::Trap("returned without setting a response".into()),
            }),
        }
    }
}

/// A handler's response body. Its end is trusted only once the guest's
/// task finished cleanly: a trap or a deadline drops the guest's store,
/// which ends the inner body as if it were complete.
struct GuestBody {
    inner: HyperOutgoingBody,
    done: Option<oneshot::Receiver<Result<(), HandlerError>>>,
    ledger: Arc<Ledger>,
    /// The client going away stops the guest.
    _task: AbortOnDrop,
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            return Poll::Ready(Some(frame.map_err(|e| Box::new(e) as BoxError)));
        }
        let Some(done) = this.done.as_mut() else {
            return Poll::Ready(None);
        };
        let verdict = ready!(Pin::new(done).poll(cx));
        this.done = None;
        match verdict {
            Ok(Ok(())) => {
                this.ledger.succeeded();
                Poll::Ready(None)
            }
            // An error instead of the end: the client's connection breaks
            // (HTTP/1.1 without the last chunk, HTTP/2 a reset stream).
            Ok(Err(e)) => {
                this.ledger.failed(&e, true);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Err(_) => Poll::Ready(Some(Err("the handler's task was lost".into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never before the guest's verdict.
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A task stopped when its handle drops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
