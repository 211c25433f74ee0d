//! The role a stage plays: which WIT world its plugin implements. Shared by
//! the manifest (which names it), the built-in plugins (each has one) and
//! the sandbox (which links the world), so it belongs to none of them.

use std::fmt;

/// The role a stage plays, i.e. the WIT world its plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `world filter`: on-request / on-response.
    Filter,
    /// `world router`: chooses the upstream.
    Router,
    /// `world balancer`: chooses the endpoint.
    Balancer,
    /// `world cache-policy`: cache key and storability.
    CachePolicy,
}

impl Role {
    /// The manifest (and WIT world) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Filter => "filter",
            Role::Router => "router",
            Role::Balancer => "balancer",
            Role::CachePolicy => "cache-policy",
        }
    }

    /// The role a manifest names, if it is one.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "filter" => Role::Filter,
            "router" => Role::Router,
            "balancer" => Role::Balancer,
            "cache-policy" => Role::CachePolicy,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
