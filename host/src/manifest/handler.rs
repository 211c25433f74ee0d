//! `[upstreams.handler]`: an upstream answered by a standard
//! `wasi:http/proxy` component (an edge function) instead of endpoints.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawHandler;
use super::{ManifestError, Validator, units};

/// Default deadline of a handler's whole exchange, bodies included.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default budget of a handler's own running time per request.
pub const DEFAULT_HANDLER_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// A `wasi:http/proxy` component serving an upstream's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Handler {
    /// The component (absolute path).
    pub component: PathBuf,
    /// Wall-clock deadline of one request, from its call to its response
    /// body's end (waits on the client and on upstreams included).
    pub timeout: Duration,
    /// Budget of the component's own running time per request.
    pub call_timeout: Duration,
    /// Linear-memory cap per instance, in bytes.
    pub memory_limit: usize,
    /// Requests it serves at once (each has an instance of its own).
    pub max_instances: usize,
    /// Upstreams it may send requests to (`wasi:http/outgoing-handler`),
    /// by name: the authority of its outgoing request.
    pub upstreams: Vec<String>,
}

impl Validator<'_> {
    pub(super) fn handler(&self, key: &str, raw: RawHandler) -> Result<Handler, ManifestError> {
        let k = |f: &str| format!("{key}.{f}");
        let component = self.base.join(&raw.component);
        if !component.is_file() {
            return Err(self.err(
                k("component"),
                format!("no component file at {}", component.display()),
            ));
        }
        let positive = |name: &str, v: Option<String>, default: Duration| {
            let d = self.duration(k(name), v, default)?;
            if d.is_zero() {
                return Err(self.err(k(name), "must be greater than zero"));
            }
            Ok(d)
        };
        let memory_limit = match raw.memory_limit {
            None => super::DEFAULT_MEMORY_LIMIT,
            Some(s) => units::bytes(&s).map_err(|r| self.err(k("memory_limit"), r))?,
        };
        if memory_limit > super::MAX_MEMORY_LIMIT {
            return Err(self.err(k("memory_limit"), "at most 1GiB"));
        }
        let max_instances = match raw.max_instances {
            None => super::DEFAULT_MAX_INSTANCES,
            Some(n) if (1..=super::MAX_STAGE_INSTANCES).contains(&n) => n,
            Some(_) => {
                return Err(self.err(
                    k("max_instances"),
                    format!(
                        "between 1 and {} (the instance pool of the process)",
                        super::MAX_STAGE_INSTANCES
                    ),
                ));
            }
        };
        Ok(Handler {
            component,
            timeout: positive("timeout", raw.timeout, DEFAULT_HANDLER_TIMEOUT)?,
            call_timeout: positive(
                "call_timeout",
                raw.call_timeout,
                DEFAULT_HANDLER_CALL_TIMEOUT,
            )?,
            memory_limit,
            max_instances,
            upstreams: raw.grants.map(|g| g.upstreams).unwrap_or_default(),
        })
    }
}
