//! Errors on the request path, attributed to who is at fault.
//!
//! The fault decides the status code; the body is a fixed short text so that
//! no backend address or plugin detail ever reaches the client.

use http::StatusCode;

use crate::body::Cut;
use crate::ingress::Rejection;

/// Who caused a request to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client's request head broke a rule (ingress).
    Refused(Rejection),
    /// The client's request body was too large, stalled or malformed.
    ClientBody(Cut),
    /// No connection to the upstream could be made.
    UpstreamConnect,
    /// The upstream reset the request, or sent garbage.
    Upstream,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// No endpoint could take the request.
    NoEndpoint,
    /// This process ran out of something (file descriptors, ports, memory)
    /// reaching the upstream: not the endpoint's fault.
    LocalResources,
    /// A plugin failed and its stage is fail-closed.
    Plugin,
    /// A plugin returned something the host cannot use (unknown upstream...).
    PluginContract,
    /// The shared kv backend was unavailable and the stage's `kv.outage`
    /// is `closed`.
    KvUnavailable,
}

impl Fault {
    /// The status the client sees.
    pub fn status(self) -> StatusCode {
        match self {
            Fault::Refused(r) => r.status(),
            Fault::ClientBody(Cut::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            Fault::ClientBody(Cut::Stalled) => StatusCode::REQUEST_TIMEOUT,
            Fault::ClientBody(Cut::Broken) => StatusCode::BAD_REQUEST,
            Fault::Upstream | Fault::UpstreamConnect => StatusCode::BAD_GATEWAY,
            Fault::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Fault::NoEndpoint | Fault::Plugin | Fault::LocalResources | Fault::KvUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Fault::PluginContract => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the client's connection must close after the answer: the
    /// rest of what it sent (an unread or broken body, a bad head) cannot
    /// be trusted to frame a next request.
    pub fn closes_connection(self) -> bool {
        matches!(self, Fault::Refused(_) | Fault::ClientBody(_))
    }

    /// The gRPC status a gRPC client gets instead of [`Fault::status`]
    /// (codes from grpc/doc/statuscodes.md): a timeout is the deadline's, an
    /// unreachable upstream is UNAVAILABLE, which clients may retry.
    pub fn grpc_status(self) -> u8 {
        const INTERNAL: u8 = 13;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const DEADLINE_EXCEEDED: u8 = 4;
        const UNAVAILABLE: u8 = 14;
        match self {
            Fault::Refused(_) | Fault::ClientBody(Cut::Broken) | Fault::PluginContract => INTERNAL,
            Fault::ClientBody(Cut::TooLarge) => RESOURCE_EXHAUSTED,
            Fault::ClientBody(Cut::Stalled) | Fault::UpstreamTimeout => DEADLINE_EXCEEDED,
            Fault::Upstream
            | Fault::UpstreamConnect
            | Fault::NoEndpoint
            | Fault::LocalResources
            | Fault::Plugin
            | Fault::KvUnavailable => UNAVAILABLE,
        }
    }
}
