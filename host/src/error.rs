//! Errors on the request path, attributed to who is at fault.
//!
//! The fault decides the status code; the body is a fixed short text so that
//! no backend address or plugin detail ever reaches the client.

use http::StatusCode;

/// Who caused a request to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The upstream refused, reset, or sent garbage.
    Upstream,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// No endpoint could take the request.
    NoEndpoint,
    /// A plugin failed and its stage is fail-closed.
    Plugin,
    /// A plugin returned something the host cannot use (unknown upstream...).
    PluginContract,
}

impl Fault {
    /// The status the client sees.
    pub fn status(self) -> StatusCode {
        match self {
            Fault::Upstream => StatusCode::BAD_GATEWAY,
            Fault::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Fault::NoEndpoint | Fault::Plugin => StatusCode::SERVICE_UNAVAILABLE,
            Fault::PluginContract => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
