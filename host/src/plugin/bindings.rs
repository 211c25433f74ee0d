//! Generated bindings, quarantined: the rest of the host uses the curated
//! re-exports in `super`, never these modules directly.
//!
//! The `host` world is generated once (the imports every plugin gets); each
//! role world maps those interfaces onto it with `with`, so all four worlds
//! share one set of host types and one linker.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "host",
    path: "../wit",
    imports: {
        // kv becomes a network call with a shared backend (Redis): async now,
        // so that backend is a change of implementation, not of contract.
        "portier:plugin/kv": async | trappable,
        // A plugin's own HTTP request waits on the network.
        "portier:plugin/outbound": async | trappable,
        // Password hashing is slow on purpose: it runs on a blocking thread.
        "portier:plugin/crypto.verify-password": async | trappable,
        default: trappable,
    },
    with: {
        "portier:plugin/types.request-head": super::heads::RequestHead,
        "portier:plugin/types.response-head": super::heads::ResponseHead,
    },
});

/// `world filter`.
pub mod filter {
    wasmtime::component::bindgen!({
        world: "filter",
        path: "../wit",
        exports: { default: async },
        with: { "portier:plugin": super::portier::plugin },
    });
}

/// `world router`.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router",
        path: "../wit",
        exports: { default: async },
        with: { "portier:plugin": super::portier::plugin },
    });
}

/// `world balancer`.
pub mod balancer {
    wasmtime::component::bindgen!({
        world: "balancer",
        path: "../wit",
        exports: { default: async },
        with: { "portier:plugin": super::portier::plugin },
    });
}

/// `world cache-policy`.
pub mod cache_policy {
    wasmtime::component::bindgen!({
        world: "cache-policy",
        path: "../wit",
        exports: { default: async },
        with: { "portier:plugin": super::portier::plugin },
    });
}
