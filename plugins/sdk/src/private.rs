//! What the export macros expand to call. Not part of the API.
//!
//! A component instance is single-threaded and lives as long as its store,
//! so the plugin value built by `init` sits in a thread-local `OnceCell`
//! declared by the macro in the plugin crate (statics cannot be generic).

use std::cell::OnceCell;
use std::sync::Once;
use std::thread::LocalKey;

use crate::config;
use crate::http::{Request, Response};
use crate::roles::{Action, Balancer, CachePolicy, Filter, Route, Router};
use crate::wit;
use crate::wit::types::{RequestHead, ResponseHead};

/// The per-instance slot holding the plugin built by `init`.
pub type State<T> = LocalKey<OnceCell<T>>;

/// Run the plugin's `init` once and keep the result.
pub fn init<T>(
    state: &'static State<T>,
    config: &str,
    make: impl FnOnce(&str) -> Result<T, config::Error>,
) -> Result<(), wit::types::ConfigError> {
    install_panic_hook();
    state.with(|cell| {
        if cell.get().is_some() {
            return Err(config::Error::from("init was already called on this instance").into());
        }
        let plugin = make(config)?;
        // Cannot fail: the cell was empty above and wasm is single-threaded.
        let _ = cell.set(plugin);
        Ok(())
    })
}

fn with<T, R>(state: &'static State<T>, export: &str, f: impl FnOnce(&T) -> R) -> R {
    state.with(|cell| match cell.get() {
        Some(plugin) => f(plugin),
        None => {
            install_panic_hook();
            panic!(
                "portier plugin: `{export}` was called before a successful `init`; \
                 the host must call `init` on every instance first"
            )
        }
    })
}

/// Route panic messages to the host's log before the trap: a trap only
/// says "unreachable executed", and the instance's stderr usually goes nowhere.
fn install_panic_hook() {
    // Natively there is no host to log to (its stubs panic themselves).
    if !cfg!(target_arch = "wasm32") {
        return;
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            wit::log::log(wit::log::Level::Error, &format!("plugin {info}"));
            default(info);
        }));
    });
}

/// What `init` of the filter world reports once the plugin exists.
pub fn filter_info<T: Filter>(state: &'static State<T>) -> wit::filter::FilterInfo {
    with(state, "init", |plugin| wit::filter::FilterInfo {
        on_response: plugin.wants_response(),
        request_body: plugin.request_body(),
    })
}

/// `on-request` of the filter world.
pub fn filter_on_request<T: Filter>(
    state: &'static State<T>,
    request: &RequestHead,
) -> wit::filter::Action {
    with(state, "on-request", |plugin| {
        match plugin.on_request(&Request::from_wit(request)) {
            Action::Continue => wit::filter::Action::Continue,
            Action::Respond(response) => wit::filter::Action::Respond(response.into()),
        }
    })
}

/// `on-response` of the filter world.
pub fn filter_on_response<T: Filter>(
    state: &'static State<T>,
    request: &RequestHead,
    response: &ResponseHead,
) {
    with(state, "on-response", |plugin| {
        plugin.on_response(&Request::from_wit(request), &Response::from_wit(response))
    })
}

/// What `init` of the router world reports once the plugin exists.
pub fn router_info<T: Router>(state: &'static State<T>) -> wit::router::RouterInfo {
    with(state, "init", |plugin| wit::router::RouterInfo {
        routes: plugin.routes(),
    })
}

/// `route` of the router world.
pub fn router_route<T: Router>(
    state: &'static State<T>,
    request: &RequestHead,
) -> wit::router::Route {
    with(state, "route", |plugin| {
        match plugin.route(&Request::from_wit(request)) {
            Route::Forward { upstream, route } => {
                wit::router::Route::Forward(wit::router::Destination { upstream, route })
            }
            Route::Respond(response) => wit::router::Route::Respond(response.into()),
        }
    })
}

/// `pick` of the balancer world.
pub fn balancer_pick<T: Balancer>(
    state: &'static State<T>,
    request: &RequestHead,
    upstream: &str,
) -> Option<u32> {
    with(state, "pick", |plugin| {
        plugin.pick(&Request::from_wit(request), upstream)
    })
}

/// `cache-key` of the cache-policy world.
pub fn cache_policy_cache_key<T: CachePolicy>(
    state: &'static State<T>,
    request: &RequestHead,
) -> Option<String> {
    with(state, "cache-key", |plugin| {
        plugin.cache_key(&Request::from_wit(request))
    })
}

/// `storable` of the cache-policy world.
pub fn cache_policy_storable<T: CachePolicy>(
    state: &'static State<T>,
    request: &RequestHead,
    response: &ResponseHead,
) -> Option<u32> {
    with(state, "storable", |plugin| {
        plugin.storable(&Request::from_wit(request), &Response::from_wit(response))
    })
}
