//! The host side of the WIT imports: what a plugin may ask of the proxy.
//!
//! One [`StageState`] lives in each instance's `Store`. The imports here are
//! thin adapters: the capabilities themselves (`crate::kv`,
//! `crate::upstream`) are plain Rust and unit-tested without wasm.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Result, StoreLimits};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::bindings::portier::plugin::{clock, crypto, kv, log, outbound, types, upstreams};
use super::heads::{self, HeaderLimits, RequestHead, ResponseHead};
use super::report::{self, LogBudget};
use crate::kv::{KvError, Namespace, Outage};
use crate::manifest::Grants;
use crate::upstream::Upstreams;

/// What every instance of one stage shares.
#[derive(Clone)]
pub struct StageShared {
    /// Stage name (logs).
    pub name: Arc<str>,
    /// The stage's config as JSON text.
    pub config_json: Arc<str>,
    /// The stage's kv namespace.
    pub kv: Namespace,
    /// What happens when its kv backend is unavailable.
    pub kv_outage: Outage,
    /// The pipeline generation's upstreams.
    pub upstreams: Arc<Upstreams>,
    /// Capabilities the manifest grants beyond the defaults.
    pub grants: Arc<Grants>,
    /// What header edits may add up to (the client's limits).
    pub header_limits: HeaderLimits,
    /// How many log lines the stage may still write.
    pub log_budget: Arc<LogBudget>,
    /// The bytes of request bodies the stage asked for at init (a filter's
    /// `request-body`; 0 for every other stage).
    pub request_body: Arc<std::sync::atomic::AtomicU32>,
}

/// Per-instance store data.
pub struct StageState {
    /// Endpoints the balancer's `healthy` and `loads` leave out during this
    /// call (those a retried request already tried; 0 outside `pick`).
    pub(super) exclude: u64,
    pub(super) table: ResourceTable,
    wasi: WasiCtx,
    pub(super) limits: StoreLimits,
    pub(super) shared: StageShared,
    /// Epoch ticks the current call may still run for (see `Stage::budget`).
    pub(super) ticks_left: u64,
    /// Requests the current call sent through `outbound`.
    pub(super) outbound_sent: u32,
}

impl StageState {
    /// Fresh state: no files, environment or sockets beyond the stage's grants.
    pub fn new(shared: StageShared, limits: StoreLimits) -> Result<StageState> {
        let mut wasi = WasiCtx::builder();
        for (guest, host) in &shared.grants.dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
        }
        for (k, v) in &shared.grants.env {
            wasi.env(k, v);
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(super::MAX_RESOURCES);
        Ok(StageState {
            table,
            wasi: wasi.build(),
            limits,
            shared,
            ticks_left: 0,
            exclude: 0,
            outbound_sent: 0,
        })
    }
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// === impl types ===

impl types::Host for StageState {}

impl types::HostRequestHead for StageState {
    fn method(&mut self, h: Resource<RequestHead>) -> Result<String> {
        Ok(self.table.get(&h)?.parts.method.as_str().to_owned())
    }
    fn path(&mut self, h: Resource<RequestHead>) -> Result<String> {
        Ok(self.table.get(&h)?.path().to_owned())
    }
    fn set_path(&mut self, h: Resource<RequestHead>, path: String) -> Result<Result<(), String>> {
        let head = self.table.get_mut(&h)?;
        let query = head.query().map(str::to_owned);
        Ok(head.set_path_and_query(&path, query.as_deref()))
    }
    fn query(&mut self, h: Resource<RequestHead>) -> Result<Option<String>> {
        Ok(self.table.get(&h)?.query().map(str::to_owned))
    }
    fn set_query(
        &mut self,
        h: Resource<RequestHead>,
        query: Option<String>,
    ) -> Result<Result<(), String>> {
        let head = self.table.get_mut(&h)?;
        let path = head.path().to_owned();
        Ok(head.set_path_and_query(&path, query.as_deref()))
    }
    fn host(&mut self, h: Resource<RequestHead>) -> Result<Option<String>> {
        Ok(self.table.get(&h)?.host().map(str::to_owned))
    }
    fn header(&mut self, h: Resource<RequestHead>, name: String) -> Result<Option<String>> {
        Ok(heads::header(&self.table.get(&h)?.parts.headers, &name))
    }
    fn header_all(&mut self, h: Resource<RequestHead>, name: String) -> Result<Vec<String>> {
        Ok(heads::header_all(&self.table.get(&h)?.parts.headers, &name))
    }
    fn set_header(
        &mut self,
        h: Resource<RequestHead>,
        name: String,
        value: String,
    ) -> Result<Result<(), String>> {
        Ok(heads::set_header(
            &mut self.table.get_mut(&h)?.parts.headers,
            &name,
            &value,
            self.shared.header_limits,
        ))
    }
    fn append_header(
        &mut self,
        h: Resource<RequestHead>,
        name: String,
        value: String,
    ) -> Result<Result<(), String>> {
        Ok(heads::append_header(
            &mut self.table.get_mut(&h)?.parts.headers,
            &name,
            &value,
            self.shared.header_limits,
        ))
    }
    fn remove_header(&mut self, h: Resource<RequestHead>, name: String) -> Result<()> {
        heads::remove_header(&mut self.table.get_mut(&h)?.parts.headers, &name);
        Ok(())
    }
    fn client_addr(&mut self, h: Resource<RequestHead>) -> Result<types::SocketAddress> {
        let client = self.table.get(&h)?.client;
        let ip = match client.ip() {
            std::net::IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                types::IpAddress::Ipv4((a, b, c, d))
            }
            std::net::IpAddr::V6(v6) => {
                let [a, b, c, d, e, f, g, h] = v6.segments();
                types::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
            }
        };
        Ok(types::SocketAddress {
            ip,
            port: client.port(),
        })
    }
    fn client_certificate(
        &mut self,
        h: Resource<RequestHead>,
    ) -> Result<Option<types::ClientCertificate>> {
        let head = self.table.get(&h)?;
        Ok(head
            .parts
            .extensions
            .get::<Arc<crate::tls::ClientCert>>()
            .map(|c| types::ClientCertificate {
                subject: c.subject.clone(),
                dns_names: c.dns_names.clone(),
                uris: c.uris.clone(),
                emails: c.emails.clone(),
                sha256: c.sha256.clone(),
            }))
    }
    fn add_response_header(
        &mut self,
        h: Resource<RequestHead>,
        name: String,
        value: String,
    ) -> Result<Result<(), String>> {
        let extra = self
            .table
            .get_mut(&h)?
            .response_headers
            .get_or_insert_default();
        Ok(heads::append_header(
            extra,
            &name,
            &value,
            self.shared.header_limits,
        ))
    }
    fn route(&mut self, h: Resource<RequestHead>) -> Result<Option<String>> {
        Ok(self.table.get(&h)?.route.clone())
    }
    fn upstream(&mut self, h: Resource<RequestHead>) -> Result<Option<String>> {
        Ok(self
            .table
            .get(&h)?
            .upstream
            .as_ref()
            .map(|u| u.name.clone()))
    }
    fn context_get(&mut self, h: Resource<RequestHead>, key: String) -> Result<Option<String>> {
        let head = self.table.get(&h)?;
        Ok(head
            .context
            .as_ref()
            .and_then(|c| c.get(&key))
            .map(str::to_owned))
    }
    fn context_set(
        &mut self,
        h: Resource<RequestHead>,
        key: String,
        value: String,
    ) -> Result<Result<(), String>> {
        Ok(self.table.get_mut(&h)?.context_mut().set(&key, &value))
    }
    fn body(&mut self, h: Resource<RequestHead>) -> Result<Option<types::BodyPrefix>> {
        // Only a stage that asked at init sees the body, and no more of it
        // than it asked for.
        let asked = self
            .shared
            .request_body
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        if asked == 0 {
            return Ok(None);
        }
        let head = self.table.get(&h)?;
        let Some(prefix) = head.context.as_ref().and_then(|c| c.body.as_ref()) else {
            // No body at all: the whole of it is empty.
            return Ok(Some(types::BodyPrefix {
                bytes: Vec::new(),
                complete: true,
            }));
        };
        let n = prefix.bytes.len().min(asked);
        Ok(Some(types::BodyPrefix {
            bytes: prefix.bytes[..n].to_vec(),
            complete: prefix.complete && n == prefix.bytes.len(),
        }))
    }
    fn drop(&mut self, _h: Resource<RequestHead>) -> Result<()> {
        // Heads are only ever lent to the guest (`borrow<>`); the host takes them back.
        Ok(())
    }
}

impl types::HostResponseHead for StageState {
    fn status(&mut self, h: Resource<ResponseHead>) -> Result<u16> {
        Ok(self.table.get(&h)?.parts.status.as_u16())
    }
    fn set_status(&mut self, h: Resource<ResponseHead>, status: u16) -> Result<Result<(), String>> {
        let head = self.table.get_mut(&h)?;
        Ok(match super::final_status(status) {
            Some(s) => {
                head.parts.status = s;
                Ok(())
            }
            None => Err(format!(
                "status {status} is not a final status (200-599) a proxy can send"
            )),
        })
    }
    fn header(&mut self, h: Resource<ResponseHead>, name: String) -> Result<Option<String>> {
        Ok(heads::header(&self.table.get(&h)?.parts.headers, &name))
    }
    fn header_all(&mut self, h: Resource<ResponseHead>, name: String) -> Result<Vec<String>> {
        Ok(heads::header_all(&self.table.get(&h)?.parts.headers, &name))
    }
    fn set_header(
        &mut self,
        h: Resource<ResponseHead>,
        name: String,
        value: String,
    ) -> Result<Result<(), String>> {
        Ok(heads::set_header(
            &mut self.table.get_mut(&h)?.parts.headers,
            &name,
            &value,
            self.shared.header_limits,
        ))
    }
    fn append_header(
        &mut self,
        h: Resource<ResponseHead>,
        name: String,
        value: String,
    ) -> Result<Result<(), String>> {
        Ok(heads::append_header(
            &mut self.table.get_mut(&h)?.parts.headers,
            &name,
            &value,
            self.shared.header_limits,
        ))
    }
    fn remove_header(&mut self, h: Resource<ResponseHead>, name: String) -> Result<()> {
        heads::remove_header(&mut self.table.get_mut(&h)?.parts.headers, &name);
        Ok(())
    }
    fn drop(&mut self, _h: Resource<ResponseHead>) -> Result<()> {
        Ok(())
    }
}

// === impl log, clock, config ===

impl log::Host for StageState {
    fn log(&mut self, level: log::Level, message: String) -> Result<()> {
        let stage = &*self.shared.name;
        match self.shared.log_budget.take() {
            report::Allowance::Drop { first: true } => {
                tracing::warn!(target: "portier::plugin", stage, "the stage logs faster than {} lines a second; its lines are dropped until it slows down", report::LINES_PER_SECOND);
                return Ok(());
            }
            report::Allowance::Drop { first: false } => return Ok(()),
            report::Allowance::Log { dropped: 0 } => {}
            report::Allowance::Log { dropped } => {
                tracing::warn!(target: "portier::plugin", stage, dropped, "log lines of the stage were dropped");
            }
        }
        let message = report::capped(&message);
        match level {
            log::Level::Trace => tracing::trace!(target: "portier::plugin", stage, "{message}"),
            log::Level::Debug => tracing::debug!(target: "portier::plugin", stage, "{message}"),
            log::Level::Info => tracing::info!(target: "portier::plugin", stage, "{message}"),
            log::Level::Warn => tracing::warn!(target: "portier::plugin", stage, "{message}"),
            log::Level::Error => tracing::error!(target: "portier::plugin", stage, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for StageState {
    fn now_ms(&mut self) -> Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
    fn monotonic_ns(&mut self) -> Result<u64> {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        Ok(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64)
    }
}

// === impl kv ===

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// A kv call the stage's `kv.outage` ended: the backend was unavailable
/// and the policy is not the plugin's to apply (see `super::StageError::KvOutage`).
#[derive(Debug, thiserror::Error)]
#[error("kv backend unavailable: {0}")]
pub struct KvOutage(pub String);

impl StageState {
    /// Count a kv operation in `/metrics`, then give the plugin its result,
    /// or end the call when the backend is down and `kv.outage` says so.
    fn kv_result<T>(&self, op: &'static str, r: Result<T, KvError>) -> Result<Result<T, String>> {
        crate::metrics::kv(self.shared.kv.backend(), op, r.is_err());
        match r {
            Err(KvError::Unavailable(why)) if self.shared.kv_outage != Outage::Plugin => {
                Err(KvOutage(why).into())
            }
            r => Ok(r.map_err(|e| e.to_string())),
        }
    }
}

impl kv::Host for StageState {
    async fn get(&mut self, key: String) -> Result<Result<Option<Vec<u8>>, String>> {
        let r = self.shared.kv.get(&key).await;
        self.kv_result("get", r)
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Result<(), String>> {
        let r = self.shared.kv.set(&key, value, ttl(ttl_ms)).await;
        self.kv_result("set", r)
    }
    async fn delete(&mut self, key: String) -> Result<Result<bool, String>> {
        let r = self.shared.kv.delete(&key).await;
        self.kv_result("delete", r)
    }
    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<Result<i64, String>> {
        let r = self.shared.kv.increment(&key, delta, ttl(ttl_ms)).await;
        self.kv_result("increment", r)
    }
    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Result<bool, String>> {
        let r = self
            .shared
            .kv
            .compare_and_swap(&key, expected.as_deref(), value, ttl(ttl_ms))
            .await;
        self.kv_result("compare_and_swap", r)
    }
}

// === impl crypto ===

impl crypto::Host for StageState {
    fn verify(
        &mut self,
        algorithm: crypto::SignatureAlgorithm,
        public_key: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool> {
        use crypto::SignatureAlgorithm as A;
        use ring::signature as sig;
        let alg: &dyn sig::VerificationAlgorithm = match algorithm {
            A::EcdsaP256Sha256 => &sig::ECDSA_P256_SHA256_FIXED,
            A::EcdsaP384Sha384 => &sig::ECDSA_P384_SHA384_FIXED,
            A::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            A::RsaPkcs1Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            A::RsaPkcs1Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            A::RsaPssSha256 => &sig::RSA_PSS_2048_8192_SHA256,
            A::RsaPssSha384 => &sig::RSA_PSS_2048_8192_SHA384,
            A::RsaPssSha512 => &sig::RSA_PSS_2048_8192_SHA512,
            A::Ed25519 => &sig::ED25519,
        };
        Ok(sig::UnparsedPublicKey::new(alg, &public_key)
            .verify(&message, &signature)
            .is_ok())
    }

    async fn verify_password(
        &mut self,
        password: String,
        hash: String,
    ) -> Result<Result<bool, String>> {
        // Off the worker: a bcrypt check would stall every connection on it.
        let checked =
            tokio::task::spawn_blocking(move || crate::password::verify(&password, &hash)).await?;
        Ok(checked.map_err(|e| e.to_string()))
    }
}

// === impl outbound ===

impl outbound::Host for StageState {
    async fn send(
        &mut self,
        upstream: String,
        request: outbound::OutboundRequest,
    ) -> Result<Result<types::Response, outbound::OutboundError>> {
        use crate::outbound::{self as out, OutboundError as E};
        use outbound::OutboundError as W;
        let up = match self.shared.upstreams.get(&upstream) {
            Some(up) if self.shared.grants.upstreams.contains(&upstream) => up.clone(),
            _ => return Ok(Err(W::NotGranted)),
        };
        if self.outbound_sent >= out::MAX_PER_CALL {
            return Ok(Err(W::BudgetExhausted));
        }
        self.outbound_sent += 1;
        let request = out::OutboundRequest {
            method: request.method,
            path: request.path,
            headers: request.headers,
            body: request.body,
            timeout: request
                .timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
        };
        Ok(
            match out::send(&up, request, self.shared.header_limits).await {
                Ok(r) => Ok(types::Response {
                    status: r.status,
                    headers: r.headers,
                    body: r.body.to_vec(),
                }),
                Err(E::Invalid(why)) => Err(W::Invalid(why)),
                Err(E::Unavailable(why)) => Err(W::Unavailable(why)),
                Err(E::Timeout) => Err(W::Timeout),
                Err(E::TooLarge) => Err(W::TooLarge),
            },
        )
    }
}

// === impl upstreams ===

impl upstreams::Host for StageState {
    fn names(&mut self) -> Result<Vec<String>> {
        Ok(self.shared.upstreams.names().map(str::to_owned).collect())
    }
    fn healthy(&mut self, upstream: String) -> Result<Option<Vec<upstreams::Candidate>>> {
        let exclude = self.exclude;
        Ok(self.shared.upstreams.get(&upstream).map(|u| {
            (0..u.endpoints.len())
                .filter(|&i| u.usable(i, exclude))
                .map(|i| upstreams::Candidate {
                    index: i as u32,
                    weight: u.endpoints[i].weight,
                })
                .collect()
        }))
    }
    fn loads(&mut self, upstream: String) -> Result<Option<Vec<upstreams::Load>>> {
        let exclude = self.exclude;
        Ok(self.shared.upstreams.get(&upstream).map(|u| {
            (0..u.endpoints.len())
                .filter(|&i| u.usable(i, exclude))
                .map(|i| {
                    let e = &u.endpoints[i];
                    upstreams::Load {
                        index: i as u32,
                        weight: e.weight,
                        in_flight: e.state.in_flight(),
                        latency_us: e.state.latency_us(),
                    }
                })
                .collect()
        }))
    }
    fn next_turn(&mut self, upstream: String) -> Result<u64> {
        Ok(self
            .shared
            .upstreams
            .get(&upstream)
            .map_or(0, |u| u.next_turn()))
    }
    fn endpoints(&mut self, upstream: String) -> Result<Option<Vec<upstreams::Endpoint>>> {
        Ok(self.shared.upstreams.get(&upstream).map(|u| {
            u.view()
                .into_iter()
                .map(|e| upstreams::Endpoint {
                    index: e.index,
                    address: e.address,
                    weight: e.weight,
                    healthy: e.healthy,
                    in_flight: e.in_flight,
                    latency_ewma_us: e.latency_us,
                })
                .collect()
        }))
    }
}
