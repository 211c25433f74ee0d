//! The wit-bindgen output, quarantined: nothing outside this crate should
//! name these items except through the SDK's macros.
//!
//! The shared interfaces (types, log, clock, kv, upstreams, outbound, crypto) are
//! generated once, from a small inline world; each role world then maps them
//! onto that one set of types with `with:`, so a `RequestHead` is the same
//! Rust type whichever role the plugin implements.
//!
//! `pub_export_macro` matters beyond visibility: with it, wit-bindgen emits
//! each role world's full type section (with its exports) from the export
//! macro, in the plugin crate, while this crate only carries the worlds with
//! their exports removed. A router therefore never has to export `on-request`.
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    inline: r#"
        package portier:sdk;
        world shared {
            include portier:plugin/host@0.2.0;
            import portier:plugin/types@0.2.0;
        }
    "#,
    path: "../../wit",
    world: "portier:sdk/shared",
    generate_all,
});

pub use portier::plugin::{clock, crypto, kv, log, outbound, types, upstreams};

/// Generates one role world on top of the shared interfaces above.
macro_rules! role_world {
    ($module:ident, $world:literal, $export_macro:literal, $bindings:literal) => {
        pub mod $module {
            wit_bindgen::generate!({
                path: "../../wit",
                world: $world,
                with: {
                    "portier:plugin/types@0.2.0": crate::wit::types,
                    "portier:plugin/log@0.2.0": crate::wit::log,
                    "portier:plugin/clock@0.2.0": crate::wit::clock,
                    "portier:plugin/kv@0.2.0": crate::wit::kv,
                    "portier:plugin/upstreams@0.2.0": crate::wit::upstreams,
                    "portier:plugin/outbound@0.2.0": crate::wit::outbound,
                    "portier:plugin/crypto@0.2.0": crate::wit::crypto,
                },
                pub_export_macro: true,
                export_macro_name: $export_macro,
                default_bindings_module: $bindings,
            });
        }
    };
}

role_world!(
    filter,
    "portier:plugin/filter@0.2.0",
    "export_world",
    "portier_sdk::wit::filter"
);
role_world!(
    router,
    "portier:plugin/router@0.2.0",
    "export_world",
    "portier_sdk::wit::router"
);
role_world!(
    balancer,
    "portier:plugin/balancer@0.2.0",
    "export_world",
    "portier_sdk::wit::balancer"
);
role_world!(
    cache_policy,
    "portier:plugin/cache-policy@0.2.0",
    "export_world",
    "portier_sdk::wit::cache_policy"
);
