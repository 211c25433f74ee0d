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

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{AccessRecord, Logged, ProxyBody};
use crate::error::Fault;
use crate::forward::{Forwarder, clone_request_parts};
use crate::manifest::{FailurePolicy, Manifest, ManifestError, Role};
use crate::plugin::heads::{RequestHead, ResponseHead};
use crate::plugin::{FilterAction, PluginResponse, RouteDecision, Runtime, Stage, StageError};
use crate::upstream::{Upstream, Upstreams};

/// A complete, immutable pipeline built from one manifest.
pub struct Pipeline {
    /// Counts reloads: 1 for the first pipeline of a process.
    pub generation: u64,
    stages: Vec<Stage>,
    upstreams: Arc<Upstreams>,
    forwarder: Forwarder,
    access_log: bool,
}

/// Where a request's response comes from, as the request stages decided.
#[derive(Debug)]
pub enum Outcome {
    /// Forward to `upstream.endpoints[index]`.
    Forward(Arc<Upstream>, usize),
    /// A stage answered.
    Respond(PluginResponse),
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
}

impl Pipeline {
    /// Load every stage (compile, link, type-check, run `init`).
    pub async fn build(
        manifest: &Manifest,
        runtime: &Runtime,
        generation: u64,
    ) -> Result<Pipeline, ManifestError> {
        let upstreams = Arc::new(Upstreams::new(&manifest.upstreams));
        let mut stages = Vec::with_capacity(manifest.stages.len());
        for spec in &manifest.stages {
            stages.push(
                runtime
                    .load_stage(&manifest.file, spec, upstreams.clone())
                    .await?,
            );
        }
        Ok(Pipeline {
            generation,
            stages,
            forwarder: Forwarder::new(&upstreams, manifest.server.workers),
            upstreams,
            access_log: manifest.server.access_log,
        })
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// What `/status` on the admin listener shows.
    pub fn status(&self) -> serde_json::Value {
        let stages: Vec<_> = self
            .stages
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "role": s.role.as_str(),
                    "failures": s.failures(), "quarantined": s.quarantined(),
                })
            })
            .collect();
        let upstreams: Vec<_> = self
            .upstreams
            .names()
            .iter()
            .filter_map(|n| self.upstreams.get(n))
            .map(|u| {
                let eps: Vec<_> = self
                    .upstreams
                    .view(u)
                    .into_iter()
                    .map(|e| {
                        serde_json::json!({
                            "address": e.address, "weight": e.weight, "healthy": e.healthy,
                            "in_flight": e.in_flight, "latency_ewma_us": e.latency_ewma_us,
                        })
                    })
                    .collect();
                serde_json::json!({ "name": u.name, "endpoints": eps })
            })
            .collect();
        serde_json::json!({ "generation": self.generation, "stages": stages, "upstreams": upstreams })
    }

    /// Serve one request: request stages, upstream, response stages.
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Logged> {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let record = self
            .access_log
            .then(|| (parts.method.clone(), parts.uri.clone()));
        let (mut head, decision) = self.request_stages(RequestHead { parts, client }).await;

        let mut served_by = None;
        let (resp_parts, resp_body) = match decision.outcome {
            Outcome::Forward(up, i) => {
                served_by = Some(up.endpoints[i].address.clone());
                // Filters' on-response see the request as the pipeline left it, so
                // they keep a copy; without such filters the head moves as is.
                let parts = if self.stages[..decision.reached]
                    .iter()
                    .any(Stage::sees_responses)
                {
                    clone_request_parts(&head.parts)
                } else {
                    std::mem::replace(&mut head.parts, Request::new(()).into_parts().0)
                };
                match self
                    .forwarder
                    .forward(&self.upstreams, &up, i, parts, body, client)
                    .await
                {
                    Ok(resp) => {
                        let (p, b) = resp.into_parts();
                        (p, ProxyBody::Streamed(b))
                    }
                    Err(fault) => error_response(fault),
                }
            }
            Outcome::Respond(r) => plugin_response(r),
            Outcome::Fail(fault) => error_response(fault),
        };

        let (resp, body) = self
            .response_stages(
                head,
                ResponseHead { parts: resp_parts },
                resp_body,
                decision.reached,
            )
            .await;
        let record = record.map(|(method, uri)| AccessRecord {
            start,
            client,
            method,
            uri,
            status: resp.parts.status,
            upstream: served_by,
        });
        Response::from_parts(resp.parts, Logged::new(body, record))
    }

    /// Run the request stages in order and decide where the response comes
    /// from. No I/O: usable in-process by tests and benchmarks.
    pub async fn request_stages(&self, mut head: RequestHead) -> (RequestHead, Decision) {
        let mut upstream: Option<Arc<Upstream>> = None;
        let mut picked: Option<usize> = None;
        for (i, stage) in self.stages.iter().enumerate() {
            // A failed call was logged where it happened; here only the policy matters.
            let failed = |_: StageError| match stage.policy {
                FailurePolicy::Open => None,
                FailurePolicy::Closed => Some(Outcome::Fail(Fault::Plugin)),
            };
            let outcome = match stage.role {
                Role::Filter => {
                    let (h, r) = stage.on_request(head).await;
                    head = h;
                    match r {
                        Ok(FilterAction::Continue) => None,
                        Ok(FilterAction::Respond(resp)) => Some(Outcome::Respond(resp)),
                        Err(e) => failed(e),
                    }
                }
                Role::Router => {
                    let (h, r) = stage.route(head).await;
                    head = h;
                    match r {
                        Ok(RouteDecision::Upstream(name)) => match self.upstreams.get(&name) {
                            Some(u) => {
                                upstream = Some(u.clone());
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
                Role::Balancer => {
                    let Some(up) = upstream
                        .clone()
                        .or_else(|| self.upstreams.single().cloned())
                    else {
                        // The router failed open: nothing to balance; decided below.
                        continue;
                    };
                    let (h, r) = stage.pick(head, &up.name).await;
                    head = h;
                    match r {
                        Ok(Some(idx)) if (idx as usize) < up.endpoints.len() => {
                            picked = Some(idx as usize);
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
                Role::CachePolicy => None,
            };
            if let Some(outcome) = outcome {
                return (
                    head,
                    Decision {
                        outcome,
                        reached: i,
                    },
                );
            }
        }
        let outcome = match upstream.or_else(|| self.upstreams.single().cloned()) {
            // Only reachable when the router failed open with several upstreams.
            None => Outcome::Fail(Fault::Plugin),
            Some(up) => match picked.or_else(|| self.upstreams.round_robin(&up)) {
                Some(i) => Outcome::Forward(up, i),
                None => Outcome::Fail(Fault::NoEndpoint),
            },
        };
        (
            head,
            Decision {
                outcome,
                reached: self.stages.len(),
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
    ) -> (ResponseHead, ProxyBody) {
        for stage in self.stages[..reached]
            .iter()
            .rev()
            .filter(|s| s.sees_responses())
        {
            let (h, r, out) = stage.on_response(head, resp).await;
            head = h;
            resp = r;
            if let (Err(_), FailurePolicy::Closed) = (out, stage.policy) {
                let (p, b) = error_response(Fault::Plugin);
                return (ResponseHead { parts: p }, b);
            }
        }
        (resp, body)
    }
}

/// The proxy's own error answer: fixed text, nothing about the backend.
fn error_response(fault: Fault) -> (http::response::Parts, ProxyBody) {
    let status = fault.status();
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    text_response(status, text)
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

/// A response a plugin made. Invalid status or headers are the plugin's bug: 500.
fn plugin_response(p: PluginResponse) -> (http::response::Parts, ProxyBody) {
    let mut r = Response::new(());
    match StatusCode::from_u16(p.status) {
        Ok(s) => *r.status_mut() = s,
        Err(_) => {
            tracing::error!(status = p.status, "plugin responded with an invalid status");
            return error_response(Fault::PluginContract);
        }
    }
    for (k, v) in &p.headers {
        match crate::plugin::heads::header_pair(k, v) {
            Ok((n, v)) => {
                r.headers_mut().append(n, v);
            }
            Err(e) => tracing::warn!(error = %e, "dropping invalid header from a plugin response"),
        }
    }
    (r.into_parts().0, ProxyBody::full(p.body))
}
