//! One pipeline generation: the stages of a manifest, its upstreams and
//! their connection pools, and the request path through them.
//!
//! ```text
//! request ─▶ filter.on-request ─▶ … ─▶ router.route ─▶ balancer.pick ─▶ forward
//!                                                                        │
//! client ◀─ filter.on-response ◀─ … (reverse order, filters that ran) ◀──┘
//! ```
//! A stage may answer instead of passing the request on; a failing stage
//! gets its failure policy. Reload builds a whole new `Pipeline` and swaps it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::access::{Finish, Flags};
use crate::body::{BodyOutcome, Logged, ProxyBody, Watched};
use crate::cache::record::Recording;
use crate::cache::{Entry, Flight, Lookup, Store, Stores, Verdict};
use crate::error::Fault;
use crate::forward::{self, Attempt, Failure, clone_request_head, clone_request_parts};
use crate::handler::Handler;
use crate::ingress::{Ingress, Scheme, UpgradeRequest};
use crate::manifest::{AccessLog, Manifest, ManifestError, Server};
use crate::plugin::heads::{BodyPrefix, HeaderLimits, RequestHead, ResponseHead};
use crate::plugin::{
    BalancerWorld, CachePolicyWorld, FilterAction, PluginResponse, RouteDecision, Runtime, Stage,
    StageError, Step,
};
use crate::rollout::{Probe, Rollout};
use crate::trace::{RequestId, TRACEPARENT, TraceContext};
use crate::upstream::conn::UpstreamBody;
use crate::upstream::endpoint::Outcome as Health;
use crate::upstream::{Registry, Upstream, Upstreams, bit};
use tracing::Instrument as _;

/// A complete, immutable pipeline built from one manifest.
pub struct Pipeline {
    /// Counts reloads: 1 for the first pipeline of a process.
    pub generation: u64,
    stages: Vec<Step>,
    upstreams: Arc<Upstreams>,
    server: Server,
    ingress: Ingress,
    header_limits: HeaderLimits,
    /// What HTTPS listeners accept new connections with.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The response cache's store, when a cache-policy stage uses it.
    cache: Option<Arc<Store>>,
    /// The most bytes of a request body a filter asked to read: read
    /// before the request stages run (0: bodies stream untouched).
    body_prefix: usize,
    /// Each stage's candidate, if it has one, by stage index.
    rollouts: Vec<Option<Rollout>>,
    /// The upstreams answered by a handler component.
    handlers: Vec<Arc<Handler>>,
}

/// Where a request's response comes from, as the request stages decided.
#[derive(Debug)]
pub enum Outcome {
    /// Forward to `upstream.endpoints[index]`.
    Forward(Arc<Upstream>, usize),
    /// The upstream is a handler component: it answers.
    Handle(Arc<Upstream>, Arc<Handler>),
    /// A stage answered.
    Respond(PluginResponse),
    /// The cache-policy stage found a fresh stored response.
    Cached(Arc<Entry>),
    /// The proxy answers with an error.
    Fail(Fault),
}

/// The request stages' verdict.
#[derive(Debug)]
pub struct Decision {
    /// What to do with the request.
    pub outcome: Outcome,
    /// Stages `[0, reached)` saw the request; their filters see the response.
    pub reached: usize,
    /// The balancer stage that picked the endpoint, asked again for a retry.
    pub balancer: Option<Ran>,
    /// What the cache-policy stage found, if the request reached one.
    pub cache: Option<CacheStep>,
}

/// A stage as one request ran it: its index, and whether its candidate
/// ran instead of its current version (`[pipeline.candidate]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    /// The stage's index in the pipeline.
    pub index: usize,
    /// Whether its candidate ran.
    pub candidate: bool,
}

/// The cache-policy stage's part in a request.
#[derive(Debug)]
pub struct CacheStep {
    /// The stage (asked again whether the response may be stored).
    pub stage: usize,
    /// Hit, miss or bypass: the status header's value.
    pub verdict: Verdict,
    /// The key a miss's response is stored under.
    pub key: Option<String>,
    /// A miss other requests for the key are waiting on, held until its
    /// response is stored or known not to be.
    pub flight: Option<Flight>,
    /// The stale entry a miss found: revalidated, or served if the upstream
    /// fails; with `Verdict::Stale`, served now while it is refreshed.
    pub stale: Option<Arc<Entry>>,
}

/// A GET that missed the cache, on its way upstream.
struct Miss {
    /// The cache-policy stage.
    stage: usize,
    key: String,
    flight: Option<Flight>,
    stale: Option<Arc<Entry>>,
    /// The request asks the upstream conditionally with `stale`'s validators.
    revalidating: bool,
    /// `stale` is served now and refreshed in the background
    /// (`stale_while_revalidate`).
    in_background: bool,
}

impl Pipeline {
    /// Load every stage (compile, link, type-check, run `init`), then make
    /// the manifest's upstreams the registry's (nothing in the registry
    /// changes unless every stage loaded).
    pub async fn build(
        manifest: &Manifest,
        runtime: &Runtime,
        registry: &Registry,
        caches: &Stores,
        generation: u64,
    ) -> Result<Pipeline, ManifestError> {
        let upstreams =
            Arc::new(
                registry
                    .prepare(&manifest.upstreams)
                    .map_err(|e| ManifestError {
                        file: manifest.file.clone(),
                        key: e.key.clone(),
                        reason: format!("{}: {}", e.file, e.reason),
                    })?,
            );
        let limits = manifest.server.limits;
        let header_limits = HeaderLimits {
            max_headers: limits.max_headers,
            max_bytes: limits.max_request_head,
        };
        let kv = runtime
            .kv()
            .store(&manifest.kv)
            .map_err(|reason| ManifestError {
                file: manifest.file.clone(),
                key: "kv.url".into(),
                reason,
            })?;
        let mut handlers = Vec::new();
        for (i, u) in manifest.upstreams.iter().enumerate() {
            let Some(spec) = &u.handler else { continue };
            let h = Handler::load(
                &manifest.file,
                i,
                &u.name,
                spec,
                runtime.engine(),
                runtime.handler_linker(),
                upstreams.clone(),
            )
            .await?;
            handlers.push(Arc::new(h));
        }
        let mut stages = Vec::with_capacity(manifest.stages.len());
        let mut rollouts = Vec::with_capacity(manifest.stages.len());
        for spec in &manifest.stages {
            let load = |spec| {
                runtime.load_stage(&manifest.file, spec, upstreams.clone(), header_limits, &kv)
            };
            let (step, rollout) = match &spec.candidate {
                None => (load(spec).await?, None),
                Some(candidate) => {
                    let tracker = runtime.rollouts().track(
                        &spec.name,
                        crate::rollout::digest(candidate),
                        candidate.rollback,
                    );
                    if tracker.state() == crate::rollout::State::Promoted {
                        // Promoted through the admin API: the candidate is the
                        // stage's current version, under the stage's name and kv.
                        let mut promoted = (*candidate.stage).clone();
                        promoted.name.clone_from(&spec.name);
                        promoted.kv_name.clone_from(&spec.kv_name);
                        let rollout = Rollout::promoted(candidate, tracker);
                        (load(&promoted).await?, Some(rollout))
                    } else {
                        let step = load(spec).await?;
                        let loaded = load(&candidate.stage).await?;
                        let rollout = Rollout::new(&spec.name, candidate, loaded, tracker);
                        (step, Some(rollout))
                    }
                }
            };
            stages.push(step);
            rollouts.push(rollout);
        }
        check_scopes(&manifest.file, &stages, &rollouts)?;
        let body_prefix = stages
            .iter()
            .filter_map(|s| match s {
                Step::Filter(f) => Some(f.request_body() as usize),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // Certificates are read before the registry changes: a bad file
        // rejects the manifest without a trace.
        let tls = match &manifest.server.tls {
            Some(t) => Some(crate::tls::server_config(t).map_err(|e| ManifestError {
                file: manifest.file.clone(),
                key: e.key.clone(),
                reason: format!("{}: {}", e.file, e.reason),
            })?),
            None => None,
        };
        registry.commit(&upstreams).await;
        let with_candidates: Vec<&str> = manifest
            .stages
            .iter()
            .filter(|s| s.candidate.is_some())
            .map(|s| s.name.as_str())
            .collect();
        runtime.rollouts().retain(&with_candidates);
        let cache = stages
            .iter()
            .any(|s| matches!(s, Step::CachePolicy(_)))
            .then(|| caches.store_for(&manifest.cache));
        let server = manifest.server.clone();
        Ok(Pipeline {
            generation,
            stages,
            upstreams,
            ingress: Ingress {
                trusted_proxies: server.trusted_proxies.clone(),
                max_uri: server.limits.max_uri,
                merge_slashes: server.merge_slashes,
            },
            header_limits,
            server,
            tls,
            cache,
            body_prefix,
            rollouts,
            handlers,
        })
    }

    /// How many bytes of a request body the filters asked to see (0: none).
    pub fn body_prefix(&self) -> usize {
        self.body_prefix
    }

    /// The TLS configuration new HTTPS connections are accepted with.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.clone()
    }

    /// The `[server]` settings of this generation: new connections take
    /// their limits and timeouts from the generation current when they open.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// This generation's upstreams.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Step] {
        &self.stages
    }

    /// The stages that have a candidate, with their index.
    pub fn rollouts(&self) -> impl Iterator<Item = (usize, &Rollout)> {
        self.rollouts
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.as_ref()?)))
    }

    /// The handler answering for upstream `up`, if it is a handler upstream.
    fn handler(&self, up: &Upstream) -> Option<&Arc<Handler>> {
        // Only a handler upstream has no endpoints.
        if !up.endpoints.is_empty() {
            return None;
        }
        self.handlers.iter().find(|h| h.name() == up.name)
    }

    /// The candidate of stage `i`, if it has one.
    fn rollout(&self, i: usize) -> Option<&Rollout> {
        self.rollouts.get(i)?.as_ref()
    }

    /// Stage `i` in the version a request ran: its candidate if
    /// `candidates` (a request's [`RequestHead::candidates`]) says so.
    fn version(&self, i: usize, candidates: u64) -> &Step {
        match self.rollout(i).and_then(|r| r.candidate.as_deref()) {
            Some(candidate) if candidates & bit(i) != 0 => candidate,
            _ => &self.stages[i],
        }
    }

    /// The response cache's store, if a cache-policy stage uses one.
    pub fn cache(&self) -> Option<&Arc<Store>> {
        self.cache.as_ref()
    }

    /// What `/status` on the admin listener shows.
    pub fn status(&self) -> serde_json::Value {
        let stages: Vec<_> = self
            .stages
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name(), "role": s.role().as_str(),
                    "failures": s.failures(), "quarantined": s.quarantined(),
                })
            })
            .collect();
        let upstreams: Vec<_> = self.upstreams.iter().map(|u| u.status()).collect();
        let handlers: Vec<_> = self
            .handlers
            .iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name(), "failures": h.failures(), "quarantined": h.quarantined(),
                })
            })
            .collect();
        let rollouts: serde_json::Map<String, serde_json::Value> = self
            .rollouts()
            .map(|(i, r)| (self.stages[i].name().to_owned(), r.status()))
            .collect();
        serde_json::json!({
            "generation": self.generation,
            "stages": stages,
            "rollouts": rollouts,
            "handlers": handlers,
            "upstreams": upstreams,
            "tls_handshake_failures": crate::server::TLS_HANDSHAKE_FAILURES.load(std::sync::atomic::Ordering::Relaxed),
            "http2_abuse": crate::server::http2_abuse_status(),
            "cache": self.cache.as_ref().map(|c| c.status()),
        })
    }

    /// Serve one request: ingress checks, request stages, upstream,
    /// response stages. `peer` is the TCP peer; `scheme` the listener's.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> Response<Logged> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        let log = self.server.access_log != AccessLog::Off;
        let mut finish = Box::new(Finish::new(log, start, peer, &parts));
        let client = match self.admit(&mut parts, peer, scheme) {
            Ok(client) => client,
            Err(fault) => {
                let (parts, body) = error_response(fault, is_grpc(&parts.headers));
                finish.status = parts.status;
                finish.flags.insert(Flags::of(fault));
                return Response::from_parts(parts, Logged::new(body, Some(finish)));
            }
        };
        finish.client = client;
        // Who the request is, across hops and in every log line of it.
        let trace = TraceContext::of(&parts.headers);
        let config = &self.server.request_id;
        let id = RequestId::of(&parts.headers, &trace, config);
        if let Some(name) = config.header.as_ref().filter(|_| config.upstream) {
            parts.headers.insert(name, id.header_value().clone());
        }
        // Displayed, not debugged: an id needs no quoting or escaping, and
        // the Debug form escapes it char by char (~1,400 instructions).
        let span = tracing::info_span!("request", id = %id.as_str());
        // Exported traces: the span hangs under the client's, with our ids.
        #[cfg(feature = "otlp")]
        let trace = crate::otel::adopt(&span, trace);
        if self.server.traceparent {
            parts.headers.insert(&TRACEPARENT, trace.traceparent());
        }
        finish.request_id = Some(id);
        finish.trace_id = trace.trace_id;
        Box::pin(self.serve(parts, body, client, scheme, finish))
            .instrument(span)
            .await
    }

    /// [`Pipeline::handle`] once the request is admitted and named.
    async fn serve(
        self: &Arc<Self>,
        parts: http::request::Parts,
        body: Incoming,
        client: SocketAddr,
        scheme: Scheme,
        mut finish: Box<Finish>,
    ) -> Response<Logged> {
        let mut prefix = None;
        let (body, outcome) = if body.is_end_stream() {
            (ProxyBody::full(bytes::Bytes::new()), None)
        } else {
            let outcome = Arc::new(BodyOutcome::default());
            let mut watched = Watched::request(
                body,
                self.server.limits.max_request_body,
                self.server.timeouts.request_body,
                outcome.clone(),
            );
            // A body broken from its first bytes (a bad chunk size, say) is
            // refused here, before any plugin or upstream sees the request.
            let read = match self.body_prefix {
                0 => watched.first_frame().await,
                // A gRPC stream may wait for responses before it sends more:
                // holding it for a prefix could stall it, so filters see none
                // of it (and are told it is not complete).
                _ if is_grpc(&parts.headers) => {
                    prefix = Some(BodyPrefix::default());
                    watched.first_frame().await
                }
                // Filters asked to see the body's start: read that much
                // ahead (under the body's own limits), then stream it all.
                want => watched.read_prefix(want).await.map(|p| prefix = Some(p)),
            };
            if let Err(cut) = read {
                let fault = Fault::ClientBody(cut);
                let (parts, body) = error_response(fault, is_grpc(&parts.headers));
                finish.status = parts.status;
                finish.flags.insert(Flags::of(fault));
                return Response::from_parts(parts, Logged::new(body, Some(finish)));
            }
            finish.body_in = Some(outcome.clone());
            (ProxyBody::Streamed(watched), Some(outcome))
        };
        let mut head = RequestHead::new(parts, client);
        if prefix.is_some() {
            head.context_mut().body = prefix;
        }
        let (mut head, mut decision) = self.request_stages(head).await;
        self.note_decision(&decision, head.candidates, &mut finish);
        let mut added = head.response_headers.take();
        // Taken before the head may move on: an upgrade goes its own way.
        let upgrade = head.parts.extensions.remove::<UpgradeRequest>();

        // gRPC clients get the proxy's own errors as gRPC statuses.
        let grpc = is_grpc(&head.parts.headers);
        // A cache miss on a GET: its response may be stored (never a HEAD's:
        // it has no body).
        let mut miss = decision
            .cache
            .as_mut()
            .and_then(|c| {
                Some(Miss {
                    stage: c.stage,
                    key: c.key.take()?,
                    flight: c.flight.take(),
                    stale: c.stale.take(),
                    revalidating: false,
                    in_background: c.verdict == Verdict::Stale,
                })
            })
            .filter(|_| head.parts.method == http::Method::GET);
        // What the cache made of the request, if it changes after the stages.
        let mut verdict = None;
        let (mut resp_parts, resp_body) = match decision.outcome {
            // stale-while-revalidate: the stale entry now, the refresh after.
            Outcome::Forward(up, i)
                if let Some(m) = miss.take_if(|m| m.in_background)
                    && let Some(stale) = m.stale.clone() =>
            {
                self.refresh_in_background(up, i, &head, client, decision.balancer, m);
                finish.flags.insert(Flags::CACHE_HIT);
                cached_response(&stale, &head.parts.headers)
            }
            Outcome::Forward(up, i) => {
                finish.upstream = Some(up.clone());
                let asked = Instant::now();
                // Filters' on-response see the request as the pipeline left it, so
                // they keep a copy (so does the cache policy asked whether to
                // store); without such stages the head moves as is.
                let mut parts = if miss.is_some() {
                    clone_request_parts(&head.parts)
                } else {
                    self.request_parts(&mut head, decision.reached)
                };
                if let (Some(m), Some(store)) = (&mut miss, &self.cache) {
                    m.revalidating = revalidate(m, store, &mut parts.headers);
                }
                let req = Request::from_parts(parts, body);
                let (forwarded, last) = match upgrade {
                    // An upgrade the stages let through (they saw it, and
                    // may refuse it: auth applies to WebSockets too).
                    Some(UpgradeRequest(protocol)) => {
                        let tunnel =
                            Box::pin(self.upgrade(&up, i, req, protocol, &mut head, client));
                        (tunnel.await, i)
                    }
                    None => {
                        self.forward(&up, i, req, client, decision.balancer, &mut added)
                            .await
                    }
                };
                // The endpoint that answered, or the last one tried.
                finish.endpoint = Some(up.endpoints[last].state.address.clone());
                finish.upstream_time = Some(asked.elapsed());
                match forwarded {
                    Ok(resp) => {
                        let (p, b) = resp.into_parts();
                        let b = Watched::response(b, self.server.timeouts.upstream_body);
                        let b = ProxyBody::Upstream(b);
                        match (miss, &self.cache) {
                            (Some(m), Some(store)) => {
                                let (h, p, b, v) =
                                    Box::pin(self.settle(head, p, b, m, store)).await;
                                head = h;
                                verdict = v;
                                (p, b)
                            }
                            _ => (p, b),
                        }
                    }
                    // The upstream failed: a stale entry within stale_if_error
                    // answers instead.
                    Err(_) if let Some(entry) = stale_for_error(miss.as_ref(), &self.cache) => {
                        verdict = Some(Verdict::Stale);
                        finish.flags.insert(Flags::CACHE_HIT);
                        cached_response(&entry, &head.parts.headers)
                    }
                    Err(fault) => {
                        // A request body the client broke or overfilled is
                        // the client's fault, not the upstream's.
                        let fault = outcome
                            .and_then(|o| o.cut())
                            .map_or(fault, Fault::ClientBody);
                        finish.flags.insert(Flags::of(fault));
                        error_response(fault, grpc)
                    }
                }
            }
            Outcome::Handle(up, handler) => {
                finish.upstream = Some(up);
                let asked = Instant::now();
                let parts = self.request_parts(&mut head, decision.reached);
                let served = handler
                    .serve(Request::from_parts(parts, body), scheme)
                    .await;
                finish.upstream_time = Some(asked.elapsed());
                match served {
                    Ok(resp) => resp.into_parts(),
                    Err(e) => {
                        let fault = e.fault();
                        finish.flags.insert(Flags::of(fault));
                        error_response(fault, grpc)
                    }
                }
            }
            Outcome::Respond(r) => plugin_response(r, self.header_limits),
            Outcome::Cached(entry) => cached_response(&entry, &head.parts.headers),
            Outcome::Fail(fault) => error_response(fault, grpc),
        };
        if let (Some(step), Some(store)) = (&decision.cache, &self.cache)
            && let Some(name) = &store.config().status_header
        {
            resp_parts
                .headers
                .insert(name.clone(), verdict.unwrap_or(step.verdict).header_value());
        }

        finish.route.clone_from(&head.route);
        let candidates = head.candidates;
        let (mut resp, body, failed) = self
            .response_stages(
                head,
                ResponseHead { parts: resp_parts },
                resp_body,
                decision.reached,
            )
            .await;
        if let Some((i, fault)) = failed {
            finish.stage = Some(self.version(i, candidates).name().to_owned());
            finish.flags.insert(Flags::of(fault));
        }
        if let Some(added) = added {
            for (name, value) in added.iter() {
                resp.parts.headers.append(name, value.clone());
            }
        }
        let config = &self.server.request_id;
        if let (true, Some(name), Some(id)) = (config.response, &config.header, &finish.request_id)
        {
            resp.parts.headers.insert(name, id.header_value().clone());
        }
        finish.status = resp.parts.status;
        Response::from_parts(resp.parts, Logged::new(body, Some(finish)))
    }

    /// The request as it goes on: filters' on-response see the request as
    /// the pipeline left it, so they keep a copy; without such stages among
    /// `[0, reached)` the head moves as is.
    fn request_parts(&self, head: &mut RequestHead, reached: usize) -> http::request::Parts {
        if (0..reached)
            .map(|i| self.version(i, head.candidates))
            .any(|s| s.sees_responses() && s.applies_to(head.route.as_deref()))
        {
            clone_request_parts(&head.parts)
        } else {
            std::mem::replace(&mut head.parts, Request::new(()).into_parts().0)
        }
    }

    /// What the request stages decided, as the access log and the metrics
    /// tell it: the stage that answered or failed, and why.
    fn note_decision(&self, decision: &Decision, candidates: u64, finish: &mut Finish) {
        let stage = (decision.reached < self.stages.len())
            .then(|| self.version(decision.reached, candidates));
        let flags = match &decision.outcome {
            Outcome::Forward(..) | Outcome::Handle(..) => return,
            Outcome::Respond(r) => {
                if let Some(s) = stage {
                    s.metrics().answered(r.status);
                }
                Flags::STAGE_ANSWERED
            }
            Outcome::Cached(_) => Flags::CACHE_HIT,
            Outcome::Fail(fault) => Flags::of(*fault),
        };
        finish.flags.insert(flags);
        finish.stage = stage.map(|s| s.name().to_owned());
    }

    /// Refresh a stale entry served under `stale_while_revalidate`: the
    /// request, as a body-less GET (conditional when the entry has
    /// validators), goes to `up.endpoints[index]` in a task of its own, and
    /// its answer settles as a miss's would; the flight ends with it.
    fn refresh_in_background(
        self: &Arc<Self>,
        up: Arc<Upstream>,
        index: usize,
        head: &RequestHead,
        client: SocketAddr,
        balancer: Option<Ran>,
        mut miss: Miss,
    ) {
        let Some(store) = self.cache.clone() else {
            return;
        };
        let mut parts = clone_request_parts(&head.parts);
        miss.revalidating = revalidate(&miss, &store, &mut parts.headers);
        let mut asked = RequestHead::new(clone_request_parts(&head.parts), client);
        asked.candidates = head.candidates;
        let pipeline = self.clone();
        tokio::spawn(async move {
            let req = Request::from_parts(parts, ProxyBody::full(bytes::Bytes::new()));
            let (forwarded, _) = pipeline
                .forward(&up, index, req, client, balancer, &mut None)
                .await;
            let Ok(resp) = forwarded else {
                // The stale entry stays; the next request in the window tries again.
                return;
            };
            let (p, b) = resp.into_parts();
            let b =
                ProxyBody::Upstream(Watched::response(b, pipeline.server.timeouts.upstream_body));
            miss.in_background = false;
            let (_, _, body, _) = pipeline.settle(asked, p, b, miss, &store).await;
            // Read it to its end: that is what stores it.
            let _ = http_body_util::BodyExt::collect(body).await;
        });
    }

    /// What a cache miss's upstream response becomes: a 304 to a
    /// revalidation refreshes the stale entry and serves it (`REVALIDATED`);
    /// a 5xx with a stale entry within `stale_if_error` serves that instead
    /// (`STALE`); anything else is offered to the store as it streams.
    async fn settle(
        &self,
        head: RequestHead,
        parts: http::response::Parts,
        body: ProxyBody,
        miss: Miss,
        store: &Arc<Store>,
    ) -> (
        RequestHead,
        http::response::Parts,
        ProxyBody,
        Option<Verdict>,
    ) {
        if parts.status == StatusCode::NOT_MODIFIED
            && miss.revalidating
            && let Some(stale) = &miss.stale
        {
            store.revalidated();
            // The policy decides the new lifetime from the refreshed head;
            // the entry is that head with the stored body, merged once.
            let merged = stale.refreshed(&parts.headers, std::time::Duration::ZERO);
            let mut asked = Response::new(());
            *asked.status_mut() = merged.status;
            *asked.headers_mut() = merged.headers.clone();
            let (head, _, ttl) = self
                .cache_policy(miss.stage, head.candidates)
                .storable(
                    head,
                    ResponseHead {
                        parts: asked.into_parts().0,
                    },
                )
                .await;
            let ttl = std::time::Duration::from_secs(match ttl {
                Ok(Some(secs)) => u64::from(secs),
                _ => 0,
            });
            let entry = Entry::new(merged.status, merged.headers, merged.body, ttl);
            let (p, b) = cached_response(&entry, &head.parts.headers);
            if !ttl.is_zero() {
                let key = storage_key(store, miss.key, &entry.headers, &head.parts.headers, ttl);
                store.insert(key, entry);
            }
            // `miss.flight` drops here, after the insert: waiters find it.
            return (head, p, b, Some(Verdict::Revalidated));
        }
        if parts.status.is_server_error()
            && let Some(entry) = stale_for_error(Some(&miss), &self.cache)
        {
            let (p, b) = cached_response(&entry, &head.parts.headers);
            return (head, p, b, Some(Verdict::Stale));
        }
        let (head, p, b) = self
            .offer(
                miss.stage,
                head,
                parts,
                body,
                (miss.key, miss.flight),
                store,
            )
            .await;
        (head, p, b, None)
    }

    /// Ask the cache policy (stage `stage`) whether a miss's response may be
    /// stored; if so, its body is recorded under `key` as it streams, and
    /// the requests waiting on its `flight` are let go when it is stored.
    async fn offer(
        &self,
        stage: usize,
        head: RequestHead,
        parts: http::response::Parts,
        body: ProxyBody,
        (key, flight): (String, Option<Flight>),
        store: &Arc<Store>,
    ) -> (RequestHead, http::response::Parts, ProxyBody) {
        let (head, resp, ttl) = self
            .cache_policy(stage, head.candidates)
            .storable(head, ResponseHead { parts })
            .await;
        let parts = resp.parts;
        match ttl {
            Ok(Some(secs)) if secs > 0 => {
                let lifetime = std::time::Duration::from_secs(u64::from(secs));
                let key = storage_key(store, key, &parts.headers, &head.parts.headers, lifetime);
                let recording = Recording::new(
                    body,
                    store.clone(),
                    (key, flight),
                    parts.status,
                    &parts.headers,
                    std::time::Duration::from_secs(u64::from(secs)),
                );
                (head, parts, ProxyBody::Recorded(Box::new(recording)))
            }
            // Not storable, or the policy failed: the response passes as is.
            _ => (head, parts, body),
        }
    }

    /// Forward to `up.endpoints[index]`, retrying on another endpoint as
    /// the upstream's `retry` rules and budget allow: always when nothing of
    /// the request was sent, and for a retryable method with nothing to
    /// resend but its head, after a reset, a timeout or a listed status.
    /// Every attempt's outcome feeds passive health. Returns the response
    /// (or the fault) and the endpoint last tried.
    async fn forward(
        &self,
        up: &Upstream,
        mut index: usize,
        mut req: Request<ProxyBody>,
        client: SocketAddr,
        balancer: Option<Ran>,
        added: &mut Option<Box<http::HeaderMap>>,
    ) -> (Result<http::Response<UpstreamBody>, Fault>, usize) {
        let retry = &up.config.retry;
        if retry.attempts > 1 {
            up.budget().deposit();
        }
        // A request that may have to go out again after (part of) it was
        // sent keeps a copy: its head, and its body when it declares a
        // length within `retry.body_buffer` (read whole before sending).
        let resendable = retry.may_resend(req.method());
        let mut kept = bytes::Bytes::new();
        let whole = req.body().is_end_stream();
        if resendable && !req.body().is_end_stream() && fits(req.headers(), retry.body_buffer) {
            match Box::pin(http_body_util::BodyExt::collect(req.body_mut())).await {
                Ok(body) => kept = body.to_bytes(),
                // The client's body broke: the caller answers for it.
                Err(_) => return (Err(Fault::Upstream), index),
            }
            *req.body_mut() = ProxyBody::full(kept.clone());
        }
        let copy = (resendable && (whole || !kept.is_empty())).then(|| clone_request_head(&req));
        let resend = |copy: &http::request::Parts| {
            Request::from_parts(clone_request_parts(copy), ProxyBody::full(kept.clone()))
        };
        let mut tried = 0u64;
        let mut attempt = 1;
        let mut replayed = false;
        loop {
            tried |= bit(index);
            let (again, failure) = match forward::attempt(up, index, req).await {
                Attempt::Response(resp) => {
                    let status = resp.status().as_u16();
                    let failed = up.config.outlier.fails(status);
                    up.record(
                        index,
                        if failed {
                            Health::Failure
                        } else {
                            Health::Success
                        },
                    );
                    let retryable = retry.statuses.contains(&status) && attempt < retry.attempts;
                    let next = match &copy {
                        Some(copy) if retryable => {
                            let retry =
                                self.retry_to(up, resend(copy), client, tried, balancer, added);
                            Box::pin(retry).await
                        }
                        _ => None,
                    };
                    let Some((again, next)) = next else {
                        return (Ok(resp), index);
                    };
                    tracing::debug!(upstream = %up.name, status, from = %up.endpoints[index].state.address, to = %up.endpoints[next].state.address, "retrying on another endpoint");
                    up.metrics.retries.inc();
                    req = again;
                    index = next;
                    attempt += 1;
                    continue;
                }
                // A pooled connection the endpoint had closed: not the
                // endpoint's failure, and nothing was sent. Once per request,
                // it goes again to the same endpoint.
                Attempt::NotSent(again, Failure::Reset) if !replayed => {
                    replayed = true;
                    req = again;
                    continue;
                }
                Attempt::NotSent(req, failure) => (Some(req), failure),
                Attempt::Failed(failure) => {
                    let allowed = match failure {
                        Failure::Reset => retry.on_reset,
                        Failure::Timeout => retry.on_timeout,
                        _ => false,
                    };
                    (copy.as_ref().filter(|_| allowed).map(resend), failure)
                }
            };
            if let Some(outcome) = failure.outcome() {
                up.record(index, outcome);
            }
            let Some(again) =
                again.filter(|_| attempt < retry.attempts && failure != Failure::Local)
            else {
                return (Err(failure.fault()), index);
            };
            // Boxed: a retry is the rare path, and a balancer call's future
            // would otherwise make every request's future larger.
            let retry = self.retry_to(up, again, client, tried, balancer, added);
            let Some((again, next)) = Box::pin(retry).await else {
                return (Err(failure.fault()), index);
            };
            tracing::debug!(upstream = %up.name, ?failure, from = %up.endpoints[index].state.address, to = %up.endpoints[next].state.address, "retrying on another endpoint");
            up.metrics.retries.inc();
            req = again;
            index = next;
            attempt += 1;
        }
    }

    /// Forward an upgrade request; on the upstream's 101, start the tunnel
    /// between the client's connection and the upstream's.
    async fn upgrade(
        &self,
        up: &Upstream,
        index: usize,
        mut req: Request<ProxyBody>,
        protocol: http::HeaderValue,
        head: &mut RequestHead,
        client: SocketAddr,
    ) -> Result<http::Response<UpstreamBody>, Fault> {
        // hyper's handle on the client's socket, and the connection's
        // activity, wherever the head's extensions went.
        let mut take = |req: &mut Request<ProxyBody>| {
            (
                req.extensions_mut()
                    .remove::<hyper::upgrade::OnUpgrade>()
                    .or_else(|| head.parts.extensions.remove()),
                req.extensions_mut()
                    .remove::<Arc<crate::server::Activity>>()
                    .or_else(|| head.parts.extensions.remove()),
            )
        };
        let (client_side, activity) = take(&mut req);
        match forward::upgrade(up, index, req, protocol).await {
            Ok((resp, tunnel)) => {
                up.record(index, Health::Success);
                if let (Some((upstream_side, in_flight)), Some(client_side)) = (tunnel, client_side)
                {
                    let timeouts = self.server.timeouts;
                    tokio::spawn(
                        crate::tunnel::Tunnel {
                            client: client_side,
                            upstream: upstream_side,
                            idle: timeouts.upgrade_idle,
                            max: timeouts.upgrade_max,
                            busy: activity.map(|a| a.begin()),
                            in_flight,
                            client_addr: client,
                        }
                        .run(),
                    );
                }
                Ok(resp)
            }
            Err(failure) => {
                if let Some(outcome) = failure.outcome() {
                    up.record(index, outcome);
                }
                Err(failure.fault())
            }
        }
    }

    /// Where a retry goes, if anywhere: the balancer that picked the first
    /// endpoint is asked again with the endpoints already `tried` left out
    /// of its view (without a balancer, the host's round-robin), and the
    /// upstream's retry budget must allow one more.
    async fn retry_to(
        &self,
        up: &Upstream,
        req: Request<ProxyBody>,
        client: SocketAddr,
        tried: u64,
        balancer: Option<Ran>,
        added: &mut Option<Box<http::HeaderMap>>,
    ) -> Option<(Request<ProxyBody>, usize)> {
        let (req, picked) = match balancer.map(|b| self.balancer_stage(b)) {
            None => (req, None),
            Some(stage) => {
                let (parts, body) = req.into_parts();
                let mut head = RequestHead::new(parts, client);
                head.tried = tried;
                head.response_headers = added.take();
                let (head, picked) = stage.pick(head, &up.name).await;
                *added = head.response_headers;
                let picked = match picked {
                    Ok(Some(i))
                        if (i as usize) < up.endpoints.len() && tried & bit(i as usize) == 0 =>
                    {
                        Some(i as usize)
                    }
                    _ => None,
                };
                (Request::from_parts(head.parts, body), picked)
            }
        };
        // Without a balancer, or when it failed or insisted on an endpoint
        // already tried, the host's round-robin over the others decides.
        let next = picked.or_else(|| up.round_robin(tried))?;
        let retry = &up.config.retry;
        up.budget()
            .withdraw(retry.budget, retry.min_per_second)
            .then_some((req, next))
    }

    /// The cache-policy stage at `i`, an index the request stages recorded
    /// from a `Step::CachePolicy`.
    fn cache_policy(&self, i: usize, candidates: u64) -> &Stage<CachePolicyWorld> {
        match self.version(i, candidates) {
            Step::CachePolicy(s) => s,
            _ => unreachable!("stage {i} was recorded as the cache policy"),
        }
    }

    /// The balancer stage at `i`, an index the request stages recorded
    /// from a `Step::Balancer`.
    fn balancer_stage(&self, b: Ran) -> &Stage<BalancerWorld> {
        let candidates = if b.candidate { bit(b.index) } else { 0 };
        match self.version(b.index, candidates) {
            Step::Balancer(s) => s,
            _ => unreachable!("stage {} was recorded as the balancer", b.index),
        }
    }

    /// Ingress checks, and a declared body over the limit refused before
    /// any plugin runs or a byte of it is read.
    fn admit(
        &self,
        parts: &mut http::request::Parts,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> Result<SocketAddr, Fault> {
        let client = self.ingress.admit(parts, peer, scheme).map_err(|r| {
            tracing::debug!(client = %peer, reason = r.reason(), "request refused at ingress");
            Fault::Refused(r)
        })?;
        if let (Some(limit), Some(declared)) = (
            self.server.limits.max_request_body,
            parts.headers.get(header::CONTENT_LENGTH),
        ) && declared
            .to_str()
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|d| d > limit)
        {
            return Err(Fault::ClientBody(crate::body::Cut::TooLarge));
        }
        Ok(client)
    }

    /// Run the request stages in order and decide where the response comes
    /// from. No I/O: usable in-process by tests and benchmarks.
    pub async fn request_stages(&self, mut head: RequestHead) -> (RequestHead, Decision) {
        let mut upstream: Option<Arc<Upstream>> = None;
        let mut picked: Option<usize> = None;
        let mut balancer = None;
        let mut cache = None;
        for (i, current) in self.stages.iter().enumerate() {
            // Scoped stages come after the router (checked at load), so the
            // route is decided by the time one is reached.
            if !current.applies_to(head.route.as_deref()) {
                continue;
            }
            // A stage with a candidate: which version runs, and whether a
            // shadow call follows.
            let mut probe = self.rollout(i).map(|r| Probe::new(r, &mut head, i));
            let stage = probe.as_ref().map_or(current, |p| p.step(current));
            // A failed call was logged where it happened; here only the policy matters.
            let failed = |e: StageError| stage.on_failure(&e).map(Outcome::Fail);
            let outcome = match stage {
                Step::Filter(stage) => {
                    let (h, r) = stage.on_request(head).await;
                    head = h;
                    if let Some(p) = probe.take() {
                        p.done(&r, None);
                    }
                    match r {
                        Ok(FilterAction::Continue) => None,
                        Ok(FilterAction::Respond(resp)) => Some(Outcome::Respond(resp)),
                        Err(e) => failed(e),
                    }
                }
                Step::Router(stage) => {
                    let (h, r) = stage.route(head).await;
                    head = h;
                    if let Some(p) = probe.take() {
                        p.done(&r, None);
                    }
                    match r {
                        Ok(RouteDecision::Upstream {
                            upstream: name,
                            route,
                        }) => match self.upstreams.get(&name) {
                            Some(u) => {
                                upstream = Some(u.clone());
                                head.upstream = Some(u.clone());
                                head.route = route;
                                None
                            }
                            None => {
                                tracing::error!(stage = %stage.name, upstream = %name, "router chose an upstream that does not exist");
                                Some(Outcome::Fail(Fault::PluginContract))
                            }
                        },
                        Ok(RouteDecision::Respond(resp)) => Some(Outcome::Respond(resp)),
                        Err(e) => failed(e),
                    }
                }
                Step::Balancer(stage) => {
                    let Some(up) = upstream
                        .clone()
                        .or_else(|| self.upstreams.single().cloned())
                    else {
                        // The router failed open: nothing to balance; decided below.
                        continue;
                    };
                    if self.handler(&up).is_some() {
                        // A handler has no endpoints to pick from.
                        continue;
                    }
                    let (h, r) = stage.pick(head, &up.name).await;
                    head = h;
                    if let Some(p) = probe.take() {
                        p.done(&r, Some(&up.name));
                    }
                    match r {
                        Ok(Some(idx)) if (idx as usize) < up.endpoints.len() => {
                            picked = Some(idx as usize);
                            balancer = Some(Ran {
                                index: i,
                                candidate: head.candidates & bit(i) != 0,
                            });
                            None
                        }
                        Ok(Some(idx)) => {
                            tracing::error!(stage = %stage.name, index = idx, upstream = %up.name, "balancer picked an endpoint that does not exist");
                            Some(Outcome::Fail(Fault::PluginContract))
                        }
                        Ok(None) => Some(Outcome::Fail(Fault::NoEndpoint)),
                        Err(e) => failed(e),
                    }
                }
                Step::CachePolicy(stage) => {
                    let Some(store) = &self.cache else { continue };
                    // A handler's responses are its own to make: not stored.
                    let target = upstream.as_ref().or(self.upstreams.single());
                    if target.is_some_and(|u| self.handler(u).is_some()) {
                        continue;
                    }
                    let (h, r) = stage.cache_key(head).await;
                    head = h;
                    if let Some(p) = probe.take() {
                        p.done(&r, None);
                    }
                    // Only a GET's response is stored, so only a GET leads a fetch
                    // that other misses of the key wait for.
                    let lead = head.parts.method == http::Method::GET;
                    let (verdict, key, flight, stale, outcome) = match r {
                        Ok(Some(key)) => {
                            match store.lookup(&key, lead, &head.parts.headers).await {
                                Lookup::Hit(entry) => {
                                    (Verdict::Hit, None, None, None, Some(Outcome::Cached(entry)))
                                }
                                // Served stale at once; someone else refreshes it.
                                Lookup::StaleWhileRevalidate {
                                    entry,
                                    flight: None,
                                } => (
                                    Verdict::Stale,
                                    None,
                                    None,
                                    None,
                                    Some(Outcome::Cached(entry)),
                                ),
                                // Served stale at once, and refreshed by this
                                // request in the background once the stages
                                // chose the upstream.
                                Lookup::StaleWhileRevalidate {
                                    entry,
                                    flight: Some(f),
                                } => (Verdict::Stale, Some(key), Some(f), Some(entry), None),
                                Lookup::Miss { flight, stale } => {
                                    (Verdict::Miss, Some(key), flight, stale, None)
                                }
                            }
                        }
                        Ok(None) => {
                            store.bypassed();
                            (Verdict::Bypass, None, None, None, None)
                        }
                        Err(e) => (Verdict::Bypass, None, None, None, failed(e)),
                    };
                    cache = Some(CacheStep {
                        stage: i,
                        verdict,
                        key,
                        flight,
                        stale,
                    });
                    outcome
                }
            };
            if let Some(outcome) = outcome {
                return (
                    head,
                    Decision {
                        outcome,
                        reached: i,
                        balancer,
                        cache,
                    },
                );
            }
        }
        let outcome = match upstream.or_else(|| self.upstreams.single().cloned()) {
            // Only reachable when the router failed open with several upstreams.
            None => Outcome::Fail(Fault::Plugin),
            Some(up) => match picked.or_else(|| up.round_robin(0)) {
                Some(i) => Outcome::Forward(up, i),
                None => match self.handler(&up) {
                    Some(h) => Outcome::Handle(up.clone(), h.clone()),
                    None => Outcome::Fail(Fault::NoEndpoint),
                },
            },
        };
        (
            head,
            Decision {
                outcome,
                reached: self.stages.len(),
                balancer,
                cache,
            },
        )
    }

    /// Run `on-response` of the filters among stages `[0, reached)` that asked
    /// for responses at `init`, in reverse order. A fail-closed failure replaces the response with 503.
    pub async fn response_stages(
        &self,
        mut head: RequestHead,
        mut resp: ResponseHead,
        body: ProxyBody,
        reached: usize,
    ) -> (ResponseHead, ProxyBody, Option<(usize, Fault)>) {
        for i in (0..reached).rev() {
            let Step::Filter(stage) = self.version(i, head.candidates) else {
                continue;
            };
            if !(stage.sees_responses() && stage.applies_to(head.route.as_deref())) {
                continue;
            }
            let started = Instant::now();
            let (h, r, out) = stage.on_response(head, resp).await;
            head = h;
            resp = r;
            if let Some(rollout) = self.rollout(i) {
                rollout.record(head.candidates & bit(i) != 0, &out, started.elapsed());
            }
            if let Err(e) = out
                && let Some(fault) = self.stages[i].on_failure(&e)
            {
                let (p, b) = error_response(fault, is_grpc(&head.parts.headers));
                return (ResponseHead { parts: p }, b, Some((i, fault)));
            }
        }
        (resp, body, None)
    }
}

/// Every route a stage is scoped to must be one the router declared at
/// init: a misspelled name would otherwise be a stage (an auth check, say)
/// that silently never runs.
fn check_scopes(
    file: &std::path::Path,
    stages: &[Step],
    rollouts: &[Option<Rollout>],
) -> Result<(), ManifestError> {
    let Some(r) = stages.iter().position(|s| matches!(s, Step::Router(_))) else {
        return Ok(());
    };
    // A router's candidate must declare every scoped route too: a canary
    // router would otherwise take a share of requests past an auth stage.
    let candidate = rollouts
        .get(r)
        .and_then(|o| o.as_ref()?.candidate.as_deref())
        .map(|c| (c, format!("pipeline[{r}].candidate")));
    for (router, which) in std::iter::once((&stages[r], format!("pipeline[{r}]"))).chain(candidate)
    {
        let Step::Router(router) = router else {
            continue;
        };
        let declared = router.routes();
        for (i, stage) in stages.iter().enumerate() {
            for (j, name) in stage.scope().unwrap_or_default().iter().enumerate() {
                if !declared.contains(name) {
                    let known = if declared.is_empty() {
                        "it names none (give its routes a `name`)".to_string()
                    } else {
                        format!("it names {}", declared.join(", "))
                    };
                    return Err(ManifestError {
                        file: file.to_owned(),
                        key: format!("pipeline[{i}].routes[{j}]"),
                        reason: format!("no route named {name:?} in the router ({which}): {known}"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether a request body declares a length within `limit` bytes.
fn fits(headers: &http::HeaderMap, limit: u64) -> bool {
    limit > 0
        && headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len <= limit)
}

/// The proxy's own error answer: fixed text, nothing about the backend.
/// After a request the client got wrong, the connection closes: what is
/// left of it on the wire cannot be trusted to frame the next one.
fn error_response(fault: Fault, grpc: bool) -> (http::response::Parts, ProxyBody) {
    if grpc {
        return grpc_error(fault);
    }
    let status = fault.status();
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let (mut parts, body) = text_response(status, text);
    if fault.closes_connection() {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    (parts, body)
}

/// Where a response to `request` is stored under the policy's `key`: the key
/// itself, or, for a response that varies (`Vary`), the variant's own key,
/// with `key` marked as varying for `lifetime`.
fn storage_key(
    store: &Store,
    key: String,
    response: &http::HeaderMap,
    request: &http::HeaderMap,
    lifetime: std::time::Duration,
) -> String {
    match crate::cache::vary_names(response) {
        Some(names) => {
            let variant = crate::cache::variant_key(&key, &names, request);
            store.mark_variants(&key, names, lifetime);
            variant
        }
        None => key,
    }
}

/// Ask the upstream conditionally (RFC 9111 §4.3.1) with a stale entry's
/// validators, unless `[cache] revalidate` is off or the client's request is
/// conditional itself (its own validators then go as they are). Whether the
/// request now revalidates.
fn revalidate(miss: &Miss, store: &Store, request: &mut http::HeaderMap) -> bool {
    let Some(stale) = &miss.stale else {
        return false;
    };
    if !store.config().revalidate
        || !stale.has_validator()
        || request.contains_key(header::IF_NONE_MATCH)
        || request.contains_key(header::IF_MODIFIED_SINCE)
    {
        return false;
    }
    for (name, value) in stale.validators() {
        request.insert(name, value);
    }
    true
}

/// The stale entry to serve because the upstream failed: one within its
/// `stale_if_error` (`[cache]`'s, or its own `Cache-Control`'s) of freshness.
fn stale_for_error(miss: Option<&Miss>, store: &Option<Arc<Store>>) -> Option<Arc<Entry>> {
    let store = store.as_ref()?;
    let entry = miss?.stale.clone().filter(|e| {
        let window = e.stale_if_error();
        !window.is_zero() && e.stale_within(window)
    })?;
    store.served_stale();
    Some(entry)
}

/// A stored response, served again: its head as stored, with `Age` (RFC
/// 9111 §5.1); hyper leaves the body out for a HEAD. A client whose
/// validators match the stored 200 gets `304 Not Modified` instead.
fn cached_response(entry: &Entry, request: &http::HeaderMap) -> (http::response::Parts, ProxyBody) {
    let mut r = Response::new(());
    let body = if entry.status == StatusCode::OK && entry.not_modified(request) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = entry.not_modified_headers();
        ProxyBody::full(bytes::Bytes::new())
    } else {
        *r.status_mut() = entry.status;
        *r.headers_mut() = entry.headers.clone();
        ProxyBody::full(entry.body.clone())
    };
    r.headers_mut()
        .insert(header::AGE, HeaderValue::from(entry.age().as_secs()));
    (r.into_parts().0, body)
}

/// Whether a request is gRPC's (`application/grpc`, `+proto`, `-web`...).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own error as gRPC's trailers-only answer: HTTP 200 whose
/// head ends the stream and carries `grpc-status` and `grpc-message`, as
/// a gRPC server would send it (the message says the proxy answered).
fn grpc_error(fault: Fault) -> (http::response::Parts, ProxyBody) {
    let status = fault.status();
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(fault.grpc_status())),
    );
    // grpc-message is percent-encoded; these texts need only the spaces.
    let message = format!(
        "portier:%20{}%20{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("").replace(' ', "%20")
    );
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    if fault.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    (r.into_parts().0, ProxyBody::full(bytes::Bytes::new()))
}

fn text_response(status: StatusCode, text: String) -> (http::response::Parts, ProxyBody) {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    (r.into_parts().0, ProxyBody::full(text))
}

/// A response a plugin made. Its stage checked the status (200-599); a
/// header that is malformed, owned by the proxy (framing, hop-by-hop) or
/// past the header limits is dropped, and Content-Length comes from the body.
fn plugin_response(p: PluginResponse, limits: HeaderLimits) -> (http::response::Parts, ProxyBody) {
    let mut r = Response::new(());
    match crate::plugin::final_status(p.status) {
        Some(s) => *r.status_mut() = s,
        None => return error_response(Fault::PluginContract, false),
    }
    for (k, v) in &p.headers {
        if let Err(e) = crate::plugin::heads::append_header(r.headers_mut(), k, v, limits) {
            tracing::debug!(error = %e, "dropping a header from a plugin's response");
        }
    }
    (r.into_parts().0, ProxyBody::full(p.body))
}
