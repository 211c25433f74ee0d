//! The pipeline manifest: parse, then validate into an immutable [`Manifest`].
//!
//! Every error names the file, the key and the reason (`ManifestError`), so a
//! bad manifest is fixed from the message alone. Checks that need the plugins
//! themselves (the world a component implements, its imports, its `init`)
//! happen when the pipeline is built, with the same error type.

mod cache;
mod env;
mod handler;
mod kv;
mod observe;
mod raw;
mod rollout;
mod server;
mod tls;
mod units;
mod upstream;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::builtin;
use crate::role::Role;
pub use cache::Cache;
pub use handler::Handler;
pub use kv::{KvBackend, KvConfig, RedisSettings};
pub use observe::{AccessLog, RequestIdConfig};
use raw::{RawManifest, RawStage};
pub use rollout::{Candidate, MAX_CANDIDATE_INDEX, Mode as RolloutMode, Rollback, Sticky};
pub use server::{Http2, Limits, Server, Timeouts};
pub use tls::{Certificate, ClientAuth, Tls};
pub use upstream::{Endpoint, HealthCheck, Outlier, Pool, Protocol, Retry, Upstream, UpstreamTls};

/// A manifest error: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// Dotted key path, e.g. `pipeline[1].config.routes[0].upstream`.
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

impl std::error::Error for ManifestError {}

/// A fully validated manifest; every field has its default applied.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from (errors found later still name it).
    pub file: PathBuf,
    /// Files named by `include`, resolved (watched for changes like the manifest).
    pub includes: Vec<PathBuf>,
    /// `[server]`.
    pub server: Server,
    /// `[admin]`: the admin API, if any.
    pub admin: Option<Admin>,
    /// `[cache]`: the response cache's store (defaults when absent).
    pub cache: Cache,
    /// `[kv]`: where plugins' shared state lives.
    pub kv: KvConfig,
    /// `[[upstreams]]`, in file order.
    pub upstreams: Vec<Upstream>,
    /// `[[pipeline]]`, in file order.
    pub stages: Vec<Stage>,
}

/// `[admin]`: where the admin API listens and who may use it.
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    /// Its address.
    pub listen: SocketAddr,
    /// The bearer token every request but `/healthz` must carry; required
    /// when `listen` is not a loopback address.
    pub token: Option<String>,
    /// Host header values accepted besides the listen address itself (and
    /// `localhost` on loopback): a defence against DNS rebinding.
    pub hosts: Vec<String>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// What happens to a request when its stage fails (trap, timeout, OOM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer 503; the request goes no further.
    Closed,
    /// Skip the stage; the request goes on.
    Open,
}

/// Where a stage's component comes from.
#[derive(Debug, Clone)]
pub enum PluginSource {
    /// Shipped inside the portier binary.
    Builtin(&'static builtin::Builtin),
    /// A `.wasm` component on disk (absolute path).
    File(PathBuf),
}

impl fmt::Display for PluginSource {
    /// A built-in's name, or the file's path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Builtin(b) => f.write_str(b.name),
            PluginSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One pipeline stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Position in the pipeline (for error keys: `pipeline[index]`).
    pub index: usize,
    /// Unique stage name: logs, kv namespace.
    pub name: String,
    /// The world the plugin must implement.
    pub role: Role,
    /// The component.
    pub source: PluginSource,
    /// Failure policy.
    pub on_error: FailurePolicy,
    /// Budget of one plugin call's own running time (in clock ticks of
    /// 1 ms; waits in host calls cost at most one tick each).
    pub call_timeout: Duration,
    /// Linear-memory cap per instance, in bytes.
    pub memory_limit: usize,
    /// Whether instances are reused across requests.
    pub isolation: Isolation,
    /// Live instances the stage may have (idle and in calls together).
    pub max_instances: usize,
    /// When repeated failures take the stage out of service.
    pub quarantine: Quarantine,
    /// Capabilities beyond the defaults.
    pub grants: Grants,
    /// What the stage may keep in kv.
    pub kv_quota: crate::kv::Quota,
    /// What happens when the shared kv backend is unavailable.
    pub kv_outage: crate::kv::Outage,
    /// The routes (by the router's names) the stage applies to; `None`:
    /// every request.
    pub routes: Option<Vec<String>>,
    /// The stage's config table as JSON text.
    pub config_json: String,
    /// The namespace of its kv entries: its name, except for a shadow
    /// candidate's (which must not change what the current version reads).
    pub kv_name: String,
    /// Appended to `pipeline[i]` in error keys (`.candidate` for a candidate).
    pub key_suffix: &'static str,
    /// A second version of its plugin being rolled out.
    pub candidate: Option<Candidate>,
}

/// How much state a stage's requests may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Instances are reused across requests (fast; a plugin's memory persists between calls).
    Pooled,
    /// Every call gets a fresh instance, `init` included: nothing leaks between requests.
    PerRequest,
}

/// Extra capabilities a manifest grants one stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories preopened read-only: (guest path, host path).
    pub dirs: Vec<(String, PathBuf)>,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Upstreams the stage may send requests of its own to (`outbound`).
    pub upstreams: Vec<String>,
}

/// A stage whose calls fail at `failure_ratio` or more within `window`
/// (once it saw `min_calls` calls there) is not called for `duration`:
/// requests get its failure policy directly, then it is tried again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quarantine {
    /// Whether the stage is ever quarantined.
    pub enabled: bool,
    /// The share of failed calls that trips it, in (0, 1].
    pub failure_ratio: f64,
    /// Calls within the window before the ratio counts.
    pub min_calls: u32,
    /// The counting window.
    pub window: Duration,
    /// How long the stage stays out of service.
    pub duration: Duration,
}

impl Default for Quarantine {
    fn default() -> Quarantine {
        Quarantine {
            enabled: true,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(30),
        }
    }
}

impl Stage {
    /// The key prefix for errors about this stage.
    pub fn key(&self) -> String {
        format!("pipeline[{}]{}", self.index, self.key_suffix)
    }
}

/// Default connect deadline.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default response-head deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline for one plugin call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(10);
/// Default linear-memory cap per plugin instance.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;
/// Default live instances per stage.
pub const DEFAULT_MAX_INSTANCES: usize = 256;
/// The most `max_instances` may be: the process's instance pool.
pub const MAX_STAGE_INSTANCES: usize = 1000;
/// The largest `memory_limit` a stage may ask for (the instance pool's slot size).
pub const MAX_MEMORY_LIMIT: usize = 1 << 30;

impl Manifest {
    /// Read and validate a manifest file.
    pub fn load(file: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|e| ManifestError {
            file: file.to_owned(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Manifest::parse(file, &text)
    }

    /// Only the `[admin]` of the manifest at `file` (`portier reload` asks
    /// the running instance, which reports what is wrong with the rest).
    pub fn load_admin(file: &Path) -> Result<Option<Admin>, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|e| ManifestError {
            file: file.to_owned(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        let mut table = table(file, &text)?;
        let Some(admin) = table.remove("admin") else {
            return Ok(None);
        };
        let raw: raw::RawAdmin = serde_path_to_error::deserialize(admin).map_err(|e| {
            let (key, reason) = shape_error(e);
            ManifestError {
                file: file.to_owned(),
                key: if key.is_empty() {
                    "admin".into()
                } else {
                    format!("admin.{key}")
                },
                reason,
            }
        })?;
        let base = file.parent().unwrap_or(Path::new(".")).to_owned();
        Validator { file, base: &base }.admin(raw).map(Some)
    }

    /// Validate manifest text; `file` names it in errors and anchors relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let err = |key: String, reason: String| ManifestError {
            file: file.to_owned(),
            key,
            reason,
        };
        let value = table(file, text)?;
        let raw: RawManifest = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
                let (key, reason) = shape_error(e);
                err(key, reason)
            })?;
        let base = file.parent().unwrap_or(Path::new(".")).to_owned();
        let validator = Validator { file, base: &base };
        let mut included = Vec::new();
        let mut includes = Vec::new();
        for (i, inc) in raw.include.iter().enumerate() {
            let path = base.join(inc);
            if !path.is_file() {
                return Err(err(
                    format!("include[{i}]"),
                    format!("no file at {}", path.display()),
                ));
            }
            included.extend(load_include(&path)?);
            includes.push(path);
        }
        let mut m = validator.manifest(raw, included)?;
        m.includes = includes;
        Ok(m)
    }
}

/// A manifest file's TOML, with `${VAR}`s replaced from the environment.
fn table(file: &Path, text: &str) -> Result<toml::Table, ManifestError> {
    let err = |key: String, reason: String| ManifestError {
        file: file.to_owned(),
        key,
        reason,
    };
    let mut value: toml::Table = toml::from_str(text).map_err(|e| {
        err(
            String::new(),
            format!("invalid TOML: {}", e.message().trim()),
        )
    })?;
    env::substitute(&mut value, &|name| std::env::var(name).ok())
        .map_err(|(key, reason)| err(key, reason))?;
    Ok(value)
}

/// The key and reason of a manifest whose shape is wrong. A missing field
/// is named in the key itself (`upstreams[0].endpoints: missing`), as every
/// other error names the key that is wrong.
fn shape_error(e: serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let inner = e.into_inner();
    let message = inner.message().trim();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let key = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return (key, "missing (this key is required)".to_owned());
    }
    (path, message.to_owned())
}

/// Read an included file and validate its upstreams (errors name that file).
fn load_include(path: &Path) -> Result<Vec<(PathBuf, usize, Upstream)>, ManifestError> {
    let err = |key: String, reason: String| ManifestError {
        file: path.to_owned(),
        key,
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(String::new(), format!("cannot read: {e}")))?;
    let value = table(path, &text)?;
    let raw: raw::RawInclude = serde_path_to_error::deserialize(toml::Value::Table(value))
        .map_err(|e| {
            let (key, reason) = shape_error(e);
            err(
                key,
                format!("{reason} (an included file holds only [[upstreams]])"),
            )
        })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let v = Validator {
        file: path,
        base: &base,
    };
    raw.upstreams
        .into_iter()
        .enumerate()
        .map(|(i, u)| Ok((path.to_owned(), i, v.upstream(i, u)?)))
        .collect()
}

/// Walks the raw manifest, collecting the first error with its key.
struct Validator<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn manifest(
        &self,
        raw: RawManifest,
        included: Vec<(PathBuf, usize, Upstream)>,
    ) -> Result<Manifest, ManifestError> {
        let server = self.server(raw.server)?;
        let admin = match raw.admin {
            None => None,
            Some(a) => Some(self.admin(a)?),
        };
        let cache = self.cache(raw.cache)?;
        let kv = self.kv(raw.kv)?;
        // Included upstreams first, then this file's; a duplicate is reported
        // in the file (and at the index) where it appears second.
        let mut all = included;
        for (i, u) in raw.upstreams.into_iter().enumerate() {
            all.push((self.file.to_owned(), i, self.upstream(i, u)?));
        }
        let mut upstreams = Vec::with_capacity(all.len());
        let mut names = HashSet::new();
        for (file, i, u) in all {
            if !names.insert(u.name.clone()) {
                return Err(ManifestError {
                    file,
                    key: format!("upstreams[{i}].name"),
                    reason: format!("duplicate upstream name {:?}", u.name),
                });
            }
            upstreams.push(u);
        }
        let mut stages = Vec::with_capacity(raw.pipeline.len());
        let mut stage_names = HashSet::new();
        for (i, s) in raw.pipeline.into_iter().enumerate() {
            let s = self.stage(i, s)?;
            if !stage_names.insert(s.name.clone()) {
                return Err(self.err(
                    format!("pipeline[{i}].name"),
                    format!(
                        "duplicate stage name {:?}; give this stage its own `name`",
                        s.name
                    ),
                ));
            }
            stages.push(s);
        }
        self.shape(&upstreams, &stages)?;
        Ok(Manifest {
            file: self.file.to_owned(),
            includes: Vec::new(),
            server,
            admin,
            kv,
            cache,
            upstreams,
            stages,
        })
    }

    fn admin(&self, raw: raw::RawAdmin) -> Result<Admin, ManifestError> {
        let listen = self.address("admin.listen".into(), &raw.listen)?;
        let token = match (raw.token, raw.token_file) {
            (Some(_), Some(_)) => {
                return Err(self.err("admin.token_file", "give token or token_file, not both"));
            }
            (Some(t), None) => Some((t, "admin.token")),
            (None, Some(f)) => {
                let path = self.base.join(&f);
                let t = std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some((t.trim().to_owned(), "admin.token_file"))
            }
            (None, None) => None,
        };
        if let Some((t, key)) = &token
            && t.len() < MIN_TOKEN_LEN
        {
            return Err(self.err(*key, format!("at least {MIN_TOKEN_LEN} characters")));
        }
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(self.err(
                "admin.token",
                format!(
                    "required: admin.listen {listen} is reachable from other machines, and the admin API can reload the proxy"
                ),
            ));
        }
        Ok(Admin {
            listen,
            token: token.map(|(t, _)| t),
            hosts: raw.hosts.unwrap_or_default(),
        })
    }

    fn address(&self, key: String, a: &str) -> Result<SocketAddr, ManifestError> {
        a.parse().map_err(|_| {
            self.err(
                key,
                format!("{a:?} is not an address of the form ip:port (e.g. \"127.0.0.1:3000\")"),
            )
        })
    }

    fn duration(
        &self,
        key: String,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ManifestError> {
        match v {
            None => Ok(default),
            Some(s) => units::duration(&s).map_err(|r| self.err(key, r)),
        }
    }

    fn stage(&self, i: usize, raw: RawStage) -> Result<Stage, ManifestError> {
        let key = |k: &str| format!("pipeline[{i}].{k}");
        let declared_role = match raw.role.as_deref() {
            None => None,
            Some(r) => Some(Role::parse(r).ok_or_else(|| {
                self.err(
                    key("role"),
                    format!(
                        "unknown role {r:?}; expected filter, router, balancer or cache-policy"
                    ),
                )
            })?),
        };
        let (source, role, default_name) = self.source(&key, &raw.plugin, declared_role)?;
        let name = raw.name.unwrap_or(default_name);
        if name.is_empty() {
            return Err(self.err(key("name"), "must not be empty"));
        }
        let on_error = match raw.on_error.as_deref() {
            None | Some("fail-closed") => FailurePolicy::Closed,
            Some("fail-open") => FailurePolicy::Open,
            Some(other) => {
                return Err(self.err(
                    key("on_error"),
                    format!("{other:?}: expected \"fail-closed\" or \"fail-open\""),
                ));
            }
        };
        let call_timeout =
            self.duration(key("call_timeout"), raw.call_timeout, DEFAULT_CALL_TIMEOUT)?;
        if call_timeout.is_zero() {
            return Err(self.err(key("call_timeout"), "must be greater than zero"));
        }
        let memory_limit = match raw.memory_limit {
            None => DEFAULT_MEMORY_LIMIT,
            Some(s) => units::bytes(&s).map_err(|r| self.err(key("memory_limit"), r))?,
        };
        if memory_limit > MAX_MEMORY_LIMIT {
            return Err(self.err(key("memory_limit"), "at most 1GiB"));
        }
        let isolation = match raw.isolation.as_deref() {
            None | Some("pooled") => Isolation::Pooled,
            Some("per-request") => Isolation::PerRequest,
            Some(other) => {
                return Err(self.err(
                    key("isolation"),
                    format!("{other:?}: expected \"pooled\" or \"per-request\""),
                ));
            }
        };
        let quarantine = match raw.quarantine {
            None => Quarantine::default(),
            Some(q) => {
                let d = Quarantine::default();
                let failure_ratio = q.failure_ratio.unwrap_or(d.failure_ratio);
                if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
                    return Err(self.err(
                        key("quarantine.failure_ratio"),
                        format!("{failure_ratio} is not a share of calls in (0, 1], e.g. 0.5"),
                    ));
                }
                let window = self.duration(key("quarantine.window"), q.window, d.window)?;
                if window < Duration::from_millis(10) {
                    return Err(self.err(key("quarantine.window"), "must be at least 10ms"));
                }
                Quarantine {
                    enabled: q.enabled.unwrap_or(true),
                    failure_ratio,
                    min_calls: q.min_calls.unwrap_or(d.min_calls).max(1),
                    window,
                    duration: self.duration(key("quarantine.duration"), q.duration, d.duration)?,
                }
            }
        };
        let max_instances = match raw.max_instances {
            None => DEFAULT_MAX_INSTANCES,
            Some(n) if (1..=MAX_STAGE_INSTANCES).contains(&n) => n,
            Some(_) => {
                return Err(self.err(
                    key("max_instances"),
                    format!(
                        "between 1 and {MAX_STAGE_INSTANCES} (the instance pool of the process)"
                    ),
                ));
            }
        };
        let grants = self.grants(i, raw.grants)?;
        let kv_outage = self.kv_outage(i, raw.kv.as_ref().and_then(|k| k.outage.as_deref()))?;
        let kv_quota = self.kv_quota(i, raw.kv)?;
        let config_json = serde_json::to_string(&raw.config.unwrap_or_default())
            .map_err(|e| self.err(key("config"), format!("cannot be expressed as JSON: {e}")))?;
        let routes = match raw.routes {
            None => None,
            Some(_) if role == Role::Router => {
                return Err(self.err(
                    key("routes"),
                    "the router decides the route; it cannot be scoped to one",
                ));
            }
            Some(r) if r.is_empty() => {
                return Err(self.err(
                    key("routes"),
                    "name at least one route (leave `routes` out for every request)",
                ));
            }
            Some(r) => {
                if let Some(bad) = r.iter().position(|n| n.is_empty()) {
                    return Err(
                        self.err(format!("pipeline[{i}].routes[{bad}]"), "must not be empty")
                    );
                }
                Some(r)
            }
        };
        let mut stage = Stage {
            index: i,
            kv_name: name.clone(),
            name,
            role,
            source,
            on_error,
            call_timeout,
            memory_limit,
            isolation,
            max_instances,
            quarantine,
            grants,
            kv_quota,
            kv_outage,
            routes,
            config_json,
            key_suffix: "",
            candidate: None,
        };
        if let Some(c) = raw.candidate {
            stage.candidate = Some(self.candidate(&stage, c)?);
        }
        Ok(stage)
    }

    /// A stage's plugin: a built-in's name or a `.wasm` file (whose role
    /// must be declared), with the stage's default name.
    fn source(
        &self,
        key: &dyn Fn(&str) -> String,
        plugin: &str,
        declared_role: Option<Role>,
    ) -> Result<(PluginSource, Role, String), ManifestError> {
        if let Some(b) = builtin::find(plugin) {
            if let Some(r) = declared_role.filter(|r| *r != b.role) {
                return Err(self.err(
                    key("role"),
                    format!("built-in plugin {:?} is a {}, not a {r}", b.name, b.role),
                ));
            }
            Ok((PluginSource::Builtin(b), b.role, b.name.to_string()))
        } else if plugin.ends_with(".wasm") || plugin.contains('/') {
            let path = self.base.join(plugin);
            if !path.is_file() {
                return Err(self.err(
                    key("plugin"),
                    format!("no plugin file at {}", path.display()),
                ));
            }
            let role = declared_role.ok_or_else(|| {
                self.err(
                    key("role"),
                    "required for a plugin file: one of filter, router, balancer, cache-policy",
                )
            })?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_string();
            Ok((PluginSource::File(path), role, stem))
        } else {
            Err(self.err(
                key("plugin"),
                format!(
                    "{:?} is neither a built-in plugin ({}) nor a path to a .wasm file",
                    plugin,
                    builtin::names().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }

    fn kv_outage(&self, i: usize, raw: Option<&str>) -> Result<crate::kv::Outage, ManifestError> {
        use crate::kv::Outage;
        match raw {
            None | Some("plugin") => Ok(Outage::Plugin),
            Some("open") => Ok(Outage::Open),
            Some("closed") => Ok(Outage::Closed),
            Some(other) => Err(self.err(
                format!("pipeline[{i}].kv.outage"),
                format!("{other:?}: expected \"plugin\", \"open\" or \"closed\""),
            )),
        }
    }

    fn kv_quota(
        &self,
        i: usize,
        raw: Option<raw::RawKvQuota>,
    ) -> Result<crate::kv::Quota, ManifestError> {
        let d = crate::kv::Quota::default();
        let Some(raw) = raw else { return Ok(d) };
        let size = |name: &str, v: Option<String>, default: usize| match v {
            None => Ok(default),
            Some(s) => match units::bytes(&s) {
                Ok(0) => Err(self.err(format!("pipeline[{i}].kv.{name}"), "must be more than 0")),
                Ok(n) => Ok(n),
                Err(r) => Err(self.err(format!("pipeline[{i}].kv.{name}"), r)),
            },
        };
        if raw.max_entries == Some(0) {
            return Err(self.err(
                format!("pipeline[{i}].kv.max_entries"),
                "must be at least 1",
            ));
        }
        Ok(crate::kv::Quota {
            max_bytes: size("max_bytes", raw.max_bytes, d.max_bytes)?,
            max_entries: raw.max_entries.unwrap_or(d.max_entries),
            max_key: size("max_key", raw.max_key, d.max_key)?,
            max_value: size("max_value", raw.max_value, d.max_value)?,
        })
    }

    fn grants(&self, i: usize, raw: Option<raw::RawGrants>) -> Result<Grants, ManifestError> {
        let Some(raw) = raw else {
            return Ok(Grants::default());
        };
        let mut dirs = Vec::new();
        for (guest, host) in raw.dirs {
            let key = format!("pipeline[{i}].grants.dirs.{guest}");
            if !guest.starts_with('/') {
                return Err(self.err(key, "the guest path must be absolute, e.g. \"/rules\""));
            }
            let host = self.base.join(host);
            if !host.is_dir() {
                return Err(self.err(key, format!("no directory at {}", host.display())));
            }
            dirs.push((guest, host));
        }
        Ok(Grants {
            dirs,
            env: raw.env.into_iter().collect(),
            upstreams: raw.upstreams,
        })
    }

    /// Rules about the pipeline as a whole.
    fn shape(&self, upstreams: &[Upstream], stages: &[Stage]) -> Result<(), ManifestError> {
        let find = |role| stages.iter().filter(move |s: &&Stage| s.role == role);
        if let Some(second) = find(Role::Router).nth(1) {
            return Err(self.err(second.key(), "a pipeline has at most one router stage"));
        }
        let router = find(Role::Router).next();
        // Scoping needs the route decided before the stage runs.
        for s in stages.iter().filter(|s| s.routes.is_some()) {
            match router {
                None => {
                    return Err(self.err(
                        format!("{}.routes", s.key()),
                        "routes are named by a router stage, and the pipeline has none",
                    ));
                }
                Some(r) if s.index < r.index => {
                    return Err(self.err(
                        format!("{}.routes", s.key()),
                        format!(
                            "a stage scoped to routes must come after the router ({}), which decides the route",
                            r.key()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        // One balancer and one cache policy per request: several only when
        // their routes do not overlap.
        for role in [Role::Balancer, Role::CachePolicy] {
            let all: Vec<&Stage> = find(role).collect();
            for (j, later) in all.iter().enumerate() {
                for earlier in &all[..j] {
                    let shared = match (&earlier.routes, &later.routes) {
                        (Some(a), Some(b)) => a.iter().find(|r| b.contains(r)).cloned(),
                        _ => Some(String::new()),
                    };
                    if let Some(route) = shared {
                        let which = if route.is_empty() {
                            "every request".to_string()
                        } else {
                            format!("route {route:?}")
                        };
                        return Err(self.err(
                            later.key(),
                            format!(
                                "a request reaches at most one {role} stage, and {which} would reach this one and {}; scope them to routes that do not overlap",
                                earlier.key()
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(r) = router
            && let Some(b) = find(Role::Balancer).find(|b| b.index < r.index)
        {
            return Err(self.err(
                b.key(),
                format!("the balancer must come after the router ({})", r.key()),
            ));
        }
        if upstreams.is_empty() {
            return Err(self.err("upstreams", "at least one upstream is required"));
        }
        for s in stages {
            for (j, name) in s.grants.upstreams.iter().enumerate() {
                if !upstreams.iter().any(|u| &u.name == name) {
                    return Err(self.err(
                        format!("{}.grants.upstreams[{j}]", s.key()),
                        format!("no upstream named {name:?}"),
                    ));
                }
            }
        }
        // A handler sends only to upstreams with endpoints: a chain of
        // handlers calling each other would be a loop the proxy cannot bound.
        for (i, u) in upstreams.iter().enumerate() {
            let Some(h) = &u.handler else { continue };
            for (j, name) in h.upstreams.iter().enumerate() {
                let found = upstreams.iter().find(|u| &u.name == name);
                let why = match found {
                    None => format!("no upstream named {name:?}"),
                    Some(t) if t.handler.is_some() => {
                        format!(
                            "{name:?} is a handler; a handler sends only to upstreams with endpoints"
                        )
                    }
                    Some(_) => continue,
                };
                return Err(self.err(format!("upstreams[{i}].handler.grants.upstreams[{j}]"), why));
            }
        }
        if router.is_none() && upstreams.len() > 1 {
            return Err(self.err(
                "pipeline",
                format!(
                    "{} upstreams but no router stage to choose between them",
                    upstreams.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Parse `host:port` (an IP, `[v6]`, or a DNS name, and a port).
#[cfg(test)]
mod tests;
