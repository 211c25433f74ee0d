//! `[server]`'s observability keys: `access_log`, `[server.request_id]`
//! and `traceparent`.

use std::path::PathBuf;

use http::HeaderName;

use super::raw::{RawAccessLog, RawRequestId};
use super::{ManifestError, Validator};

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// With every other log line (standard output).
    Process,
    /// Appended to this file; SIGUSR1 reopens it (for logrotate).
    File(PathBuf),
}

/// `[server.request_id]`: the header that carries a request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdConfig {
    /// The header (`x-request-id`); `None`: ids are not read or sent.
    pub header: Option<HeaderName>,
    /// Keep a client's id (when sane) instead of making one.
    pub trust: bool,
    /// Send the id to the upstream in `header`.
    pub upstream: bool,
    /// Send the id back to the client in `header`.
    pub response: bool,
}

impl Default for RequestIdConfig {
    fn default() -> RequestIdConfig {
        RequestIdConfig {
            header: Some(HeaderName::from_static("x-request-id")),
            trust: true,
            upstream: true,
            response: false,
        }
    }
}

impl Validator<'_> {
    pub(super) fn access_log(&self, raw: Option<RawAccessLog>) -> Result<AccessLog, ManifestError> {
        Ok(match raw {
            None | Some(RawAccessLog::On(true)) => AccessLog::Process,
            Some(RawAccessLog::On(false)) => AccessLog::Off,
            Some(RawAccessLog::File(f)) if f.trim().is_empty() => {
                return Err(self.err("server.access_log", "empty: give a file, or true / false"));
            }
            Some(RawAccessLog::File(f)) => AccessLog::File(self.base.join(f)),
        })
    }

    pub(super) fn request_id(
        &self,
        raw: Option<RawRequestId>,
    ) -> Result<RequestIdConfig, ManifestError> {
        let d = RequestIdConfig::default();
        let Some(raw) = raw else { return Ok(d) };
        let header = match raw.header {
            None => d.header,
            Some(h) if h.is_empty() => None,
            Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                self.err(
                    "server.request_id.header",
                    format!("{h:?} is not a header name (or \"\" for none)"),
                )
            })?),
        };
        Ok(RequestIdConfig {
            header,
            trust: raw.trust.unwrap_or(d.trust),
            upstream: raw.upstream.unwrap_or(d.upstream),
            response: raw.response.unwrap_or(d.response),
        })
    }
}
