//! The four WIT worlds as types. Each knows how a component is checked
//! against it, instantiated and given its config, so a `Stage<W>` offers
//! exactly its world's calls: a router stage has no `on_request` to call
//! by mistake, and no call checks a role at run time.

use std::future::Future;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::balancer::{Balancer, BalancerPre};
use super::bindings::cache_policy::{CachePolicy, CachePolicyPre};
use super::bindings::filter::{Filter, FilterPre};
use super::bindings::portier::plugin::types::ConfigError;
use super::bindings::router::{Router, RouterPre};
use super::host::StageState;
use crate::role::Role;

/// What a plugin's `init` told the host, beyond accepting its config.
#[derive(Debug, Default)]
pub struct InitInfo {
    /// A filter: whether it has work on responses.
    pub on_response: bool,
    /// A filter: the bytes of request bodies it reads.
    pub request_body: u32,
    /// A router: the route names it may choose.
    pub routes: Vec<String>,
}

/// An `init` call's outcome: trapped (outer), refused the config (inner
/// `Err`), or accepted it.
pub type Init = wasmtime::Result<Result<InitInfo, ConfigError>>;

/// A WIT world a stage's plugin implements.
pub trait World: Send + Sync + 'static {
    /// The role the manifest names for it.
    const ROLE: Role;
    /// The component, linked and checked against the world.
    type Pre: Send + Sync + 'static;
    /// One instance's exports.
    type Exports: Send + Sync + 'static;

    /// Check a linked component against the world.
    fn pre(pre: InstancePre<StageState>) -> wasmtime::Result<Self::Pre>;

    /// Instantiate in `store` (the outer error), then run `init` with the
    /// stage's config.
    fn start(
        pre: &Self::Pre,
        store: &mut Store<StageState>,
        config: &str,
    ) -> impl Future<Output = wasmtime::Result<(Self::Exports, Init)>> + Send;
}

/// `world filter`: on-request, on-response.
pub struct FilterWorld;
/// `world router`: chooses the upstream and names the route.
pub struct RouterWorld;
/// `world balancer`: chooses the endpoint.
pub struct BalancerWorld;
/// `world cache-policy`: the cache key, and whether a response is stored.
pub struct CachePolicyWorld;

impl World for FilterWorld {
    const ROLE: Role = Role::Filter;
    type Pre = FilterPre<StageState>;
    type Exports = Filter;

    fn pre(pre: InstancePre<StageState>) -> wasmtime::Result<Self::Pre> {
        FilterPre::new(pre)
    }

    async fn start(
        pre: &Self::Pre,
        store: &mut Store<StageState>,
        config: &str,
    ) -> wasmtime::Result<(Filter, Init)> {
        let i = pre.instantiate_async(&mut *store).await?;
        let init = i.call_init(store, config).await.map(|r| {
            r.map(|info| InitInfo {
                on_response: info.on_response,
                request_body: info.request_body,
                ..InitInfo::default()
            })
        });
        Ok((i, init))
    }
}

impl World for RouterWorld {
    const ROLE: Role = Role::Router;
    type Pre = RouterPre<StageState>;
    type Exports = Router;

    fn pre(pre: InstancePre<StageState>) -> wasmtime::Result<Self::Pre> {
        RouterPre::new(pre)
    }

    async fn start(
        pre: &Self::Pre,
        store: &mut Store<StageState>,
        config: &str,
    ) -> wasmtime::Result<(Router, Init)> {
        let i = pre.instantiate_async(&mut *store).await?;
        let init = i.call_init(store, config).await.map(|r| {
            r.map(|info| InitInfo {
                routes: info.routes,
                ..InitInfo::default()
            })
        });
        Ok((i, init))
    }
}

impl World for BalancerWorld {
    const ROLE: Role = Role::Balancer;
    type Pre = BalancerPre<StageState>;
    type Exports = Balancer;

    fn pre(pre: InstancePre<StageState>) -> wasmtime::Result<Self::Pre> {
        BalancerPre::new(pre)
    }

    async fn start(
        pre: &Self::Pre,
        store: &mut Store<StageState>,
        config: &str,
    ) -> wasmtime::Result<(Balancer, Init)> {
        let i = pre.instantiate_async(&mut *store).await?;
        let init = i
            .call_init(store, config)
            .await
            .map(|r| r.map(|()| InitInfo::default()));
        Ok((i, init))
    }
}

impl World for CachePolicyWorld {
    const ROLE: Role = Role::CachePolicy;
    type Pre = CachePolicyPre<StageState>;
    type Exports = CachePolicy;

    fn pre(pre: InstancePre<StageState>) -> wasmtime::Result<Self::Pre> {
        CachePolicyPre::new(pre)
    }

    async fn start(
        pre: &Self::Pre,
        store: &mut Store<StageState>,
        config: &str,
    ) -> wasmtime::Result<(CachePolicy, Init)> {
        let i = pre.instantiate_async(&mut *store).await?;
        let init = i
            .call_init(store, config)
            .await
            .map(|r| r.map(|()| InitInfo::default()));
        Ok((i, init))
    }
}
