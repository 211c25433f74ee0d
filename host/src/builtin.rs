//! Plugins shipped inside the `portier` binary, named in manifests by name.
//!
//! `build.rs` compiles the `plugins/` workspace to `wasm32-wasip2`; the
//! components are embedded here so a single binary is a complete proxy.
//! The manifest finds them by name; the sandbox loads their bytes.

use crate::role::Role;

/// A built-in plugin.
#[derive(Debug)]
pub struct Builtin {
    /// The name manifests use.
    pub name: &'static str,
    /// The world it implements.
    pub role: Role,
    /// The component bytes.
    pub wasm: &'static [u8],
}

macro_rules! builtin {
    ($name:literal, $role:expr) => {
        builtin!($name, $name, $role)
    };
    // Cargo names a crate's artifact with `_` for `-`: "api-key" is api_key.wasm.
    ($name:literal, $file:literal, $role:expr) => {
        Builtin {
            name: $name,
            role: $role,
            wasm: include_bytes!(concat!(env!("PORTIER_PLUGIN_DIR"), "/", $file, ".wasm")),
        }
    };
}

static BUILTINS: [Builtin; 11] = [
    builtin!("router", Role::Router),
    builtin!("balancer", Role::Balancer),
    builtin!("headers", Role::Filter),
    builtin!("api-key", "api_key", Role::Filter),
    builtin!("rate-limit", "rate_limit", Role::Filter),
    builtin!("cache", Role::CachePolicy),
    builtin!("forward-auth", "forward_auth", Role::Filter),
    builtin!("jwt", Role::Filter),
    builtin!("cors", Role::Filter),
    builtin!("basic-auth", "basic_auth", Role::Filter),
    builtin!("waf", Role::Filter),
];

/// The built-in plugin with this name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// Names of every built-in plugin.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}
