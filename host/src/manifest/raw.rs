//! The manifest exactly as written: serde shapes with `deny_unknown_fields`.
//!
//! Nothing here is validated beyond types; `super::validate` turns this into
//! a [`super::Manifest`].

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    #[serde(default)]
    pub include: Vec<String>,
    pub server: RawServer,
    pub admin: Option<RawAdmin>,
    pub cache: Option<RawCache>,
    pub kv: Option<RawKv>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub pipeline: Vec<RawStage>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<OneOrMany>,
    pub workers: Option<usize>,
    pub access_log: Option<RawAccessLog>,
    pub request_id: Option<RawRequestId>,
    pub traceparent: Option<bool>,
    pub cache_dir: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub merge_slashes: Option<bool>,
    pub limits: Option<RawLimits>,
    pub timeouts: Option<RawTimeouts>,
    pub http2: Option<RawHttp2>,
    pub tls: Option<RawTls>,
}

/// `access_log = true | false | "path/to/access.log"`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "true, false, or the path of a file")]
pub enum RawAccessLog {
    On(bool),
    File(String),
}

/// `[server.request_id]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestId {
    pub header: Option<String>,
    pub trust: Option<bool>,
    pub upstream: Option<bool>,
    pub response: Option<bool>,
}

/// `[server.http2]`: HTTP/2 from clients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Option<u32>,
    pub stream_window: Option<String>,
    pub connection_window: Option<String>,
    pub max_frame_size: Option<String>,
    pub send_buffer: Option<String>,
    pub max_pending_resets: Option<usize>,
    pub max_error_resets: Option<usize>,
    pub max_reset_ratio: Option<f64>,
    pub control_frame_budget: Option<u32>,
}

/// `[server.tls]`: HTTPS listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: OneOrMany,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    pub self_signed: Option<bool>,
    pub redirect: Option<OneOrMany>,
    pub client_ca: Option<String>,
    pub client_auth: Option<String>,
}

/// One certificate: `{ cert = "site.pem", key = "site.key", names = ["a.example"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    pub names: Option<Vec<String>>,
}

/// `[server.limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_head: Option<String>,
    pub max_headers: Option<usize>,
    pub max_uri: Option<String>,
    pub max_request_body: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
}

/// `[server.timeouts]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub header: Option<String>,
    pub keepalive: Option<String>,
    pub request_body: Option<String>,
    pub response_write: Option<String>,
    pub upstream_body: Option<String>,
    pub http2_keepalive_interval: Option<String>,
    pub http2_keepalive_timeout: Option<String>,
    pub http2_idle: Option<String>,
    pub shutdown: Option<String>,
    pub upgrade_idle: Option<String>,
    pub upgrade_max: Option<String>,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_size: Option<String>,
    pub max_object_size: Option<String>,
    pub status_header: Option<String>,
    pub lock_timeout: Option<String>,
    pub revalidate: Option<bool>,
    pub keep_stale: Option<String>,
    pub stale_if_error: Option<String>,
    pub stale_while_revalidate: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub hosts: Option<Vec<String>>,
}

/// A value that may be written as one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[[upstreams]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    pub handler: Option<RawHandler>,
    pub protocol: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub pool: Option<RawPool>,
    pub health: Option<RawHealth>,
    pub outlier: Option<RawOutlier>,
    pub retry: Option<RawRetry>,
    pub tls: Option<RawUpstreamTls>,
}

/// `handler = { component = "hello.wasm", timeout = "30s", ... }`: an
/// upstream answered by a `wasi:http/proxy` component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    pub component: String,
    pub timeout: Option<String>,
    pub call_timeout: Option<String>,
    pub memory_limit: Option<String>,
    pub max_instances: Option<usize>,
    pub grants: Option<RawHandlerGrants>,
}

/// `grants = { upstreams = ["api"] }`: what a handler may send requests to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandlerGrants {
    #[serde(default)]
    pub upstreams: Vec<String>,
}

/// `tls = { ca = "ca.pem", server_name = "api.internal", insecure_skip_verify = false }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

/// `pool = { max_idle = 64, idle_timeout = "60s", max_connections = 100, queue_timeout = "1s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle: Option<usize>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<u32>,
    pub queue_timeout: Option<String>,
}

/// `health = { path = "/health", interval = "2s", ... }`: active checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub expect: Option<Vec<RawStatusRange>>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub host: Option<String>,
}

/// A status (`200`) or a range of them (`"200-399"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStatusRange {
    One(u16),
    Range(String),
}

/// `outlier = { consecutive_failures = 5, ... }`: passive health.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub consecutive_connect_failures: Option<u32>,
    pub statuses: Option<Vec<RawStatusRange>>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<u8>,
}

/// `retry = { attempts = 2, on = ["reset", "timeout", 503], ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub on: Option<Vec<RawRetryOn>>,
    pub methods: Option<Vec<String>>,
    pub body_buffer: Option<String>,
    pub budget: Option<f64>,
    pub min_per_second: Option<u32>,
}

/// A retry condition: `"reset"`, `"timeout"` or a status code.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRetryOn {
    Status(u16),
    Condition(String),
}

/// One endpoint: `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    Address(String),
    Table(RawEndpointTable),
}

/// The table form of an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub address: String,
    pub weight: Option<u32>,
}

/// `[[pipeline]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub plugin: String,
    pub name: Option<String>,
    pub role: Option<String>,
    pub on_error: Option<String>,
    pub call_timeout: Option<String>,
    pub memory_limit: Option<String>,
    pub isolation: Option<String>,
    pub max_instances: Option<usize>,
    pub quarantine: Option<RawQuarantine>,
    pub grants: Option<RawGrants>,
    pub kv: Option<RawKvQuota>,
    pub routes: Option<Vec<String>>,
    pub config: Option<toml::Table>,
    pub candidate: Option<RawCandidate>,
}

/// `[pipeline.candidate]`: a second version of the stage's plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCandidate {
    pub plugin: String,
    pub mode: Option<String>,
    pub share: Option<f64>,
    pub sticky: Option<String>,
    pub opt_in_header: Option<String>,
    pub sample: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub call_timeout: Option<String>,
    pub memory_limit: Option<String>,
    pub max_instances: Option<usize>,
    pub rollback: Option<RawRollback>,
    pub config: Option<toml::Table>,
}

/// `rollback = { window = "30s", min_calls = 20, failure_ratio = 0.05, latency_ratio = 2.0 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollback {
    pub enabled: Option<bool>,
    pub window: Option<String>,
    pub min_calls: Option<u32>,
    pub failure_ratio: Option<f64>,
    pub latency_ratio: Option<f64>,
}

/// `grants = { dirs = { "/rules" = "rules" }, env = { MODE = "strict" }, upstreams = ["auth"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    #[serde(default)]
    pub dirs: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// `kv = { max_bytes = "16MiB", max_entries = 100000, max_key = "1KiB", max_value = "1MiB" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKvQuota {
    pub outage: Option<String>,
    pub max_bytes: Option<String>,
    pub max_entries: Option<usize>,
    pub max_key: Option<String>,
    pub max_value: Option<String>,
}

/// `[kv]`: the shared state's backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKv {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub timeout: Option<String>,
}

/// A file named by `include`: shared upstream definitions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInclude {
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
}

/// `quarantine = { failure_ratio = 0.5, min_calls = 20, window = "10s", duration = "30s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuarantine {
    pub enabled: Option<bool>,
    pub failure_ratio: Option<f64>,
    pub min_calls: Option<u32>,
    pub window: Option<String>,
    pub duration: Option<String>,
}
