//! The process-lifetime upstream registry, keyed by upstream name and
//! endpoint address.
//!
//! A pipeline generation is built in two steps so that a manifest that
//! fails to load changes nothing: [`Registry::prepare`] hands the new
//! generation the state of endpoints it keeps and fresh state for new ones,
//! without touching the registry; once every stage has loaded,
//! [`Registry::commit`] records the new endpoints, retires the removed ones
//! (they take no new request and close their connections as they go idle),
//! applies pool settings and starts, restarts or stops health checkers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use tokio::task::AbortHandle;

use super::endpoint::{Active, EndpointState};
use super::{Endpoint, Shared, Upstream, Upstreams, check};
use crate::manifest::{self, HealthCheck};

/// Every upstream and endpoint any live manifest names.
#[derive(Debug)]
pub struct Registry {
    workers: usize,
    /// Whether health checks run (not for `portier check`).
    checks: bool,
    upstreams: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    shared: Arc<Shared>,
    endpoints: HashMap<Authority, Kept>,
}

#[derive(Debug)]
struct Kept {
    state: Arc<EndpointState>,
    checker: Option<Checker>,
}

#[derive(Debug)]
struct Checker {
    check: HealthCheck,
    connect_timeout: Duration,
    task: AbortHandle,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registry {
    /// A registry for a serving process with `workers` worker threads
    /// (fixed for the process: pools keep one idle list per worker).
    pub fn new(workers: usize) -> Arc<Registry> {
        let r = Arc::new(Registry {
            workers,
            checks: true,
            upstreams: Mutex::default(),
        });
        // Idle connections past their idle timeout are closed once a second.
        let weak = Arc::downgrade(&r);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                r.sweep();
            }
        });
        r
    }

    /// A registry that runs no health checks and no sweep (`portier check`, tests).
    pub fn offline(workers: usize) -> Arc<Registry> {
        Arc::new(Registry {
            workers,
            checks: false,
            upstreams: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.upstreams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation view of `ups`: endpoints the registry has keep their
    /// state; new ones get fresh state (health unknown when checked). The
    /// registry itself is not changed.
    pub fn prepare(&self, ups: &[manifest::Upstream]) -> Result<Upstreams, crate::tls::TlsError> {
        // TLS files are read first: a bad one rejects the manifest.
        let mut connectors = Vec::with_capacity(ups.len());
        for (i, u) in ups.iter().enumerate() {
            let alpn: &[u8] = match u.protocol {
                manifest::Protocol::H2 => b"h2",
                _ => b"http/1.1",
            };
            connectors.push(match &u.tls {
                Some(t) => Some(Arc::new(crate::tls::UpstreamConnector::new(t, i, alpn)?)),
                None => None,
            });
        }
        let map = self.lock();
        let upstreams = ups
            .iter()
            .zip(connectors)
            .map(|(u, connector)| {
                let entry = map.get(&u.name);
                let name: Arc<str> = u.name.as_str().into();
                let endpoints = u
                    .endpoints
                    .iter()
                    .map(|e| {
                        let state = entry
                            .and_then(|en| en.endpoints.get(&e.address))
                            .map(|k| k.state.clone())
                            .unwrap_or_else(|| {
                                let fresh = EndpointState::new(
                                    name.clone(),
                                    e.address.clone(),
                                    self.workers,
                                );
                                // Unknown until its first check: kept out of rotation.
                                fresh.set_checked(u.health.is_some());
                                Arc::new(fresh)
                            });
                        Endpoint {
                            weight: e.weight,
                            state,
                        }
                    })
                    .collect();
                Upstream {
                    name: u.name.clone(),
                    config: u.clone(),
                    endpoints,
                    connector,
                    metrics: crate::metrics::UpstreamMetrics::new(&u.name),
                    shared: entry.map(|en| en.shared.clone()).unwrap_or_default(),
                }
            })
            .collect();
        Ok(Upstreams::new(upstreams))
    }

    /// Make `ups` (from [`prepare`](Self::prepare)) what the registry
    /// holds, and wait (up to each check's timeout) for the first health
    /// check of endpoints whose health is unknown, so a new generation does
    /// not start with every checked endpoint out of rotation.
    pub async fn commit(&self, ups: &Upstreams) {
        let mut waiting = Vec::new();
        {
            let mut map = self.lock();
            map.retain(|name, entry| {
                let keep = ups.get(name).is_some();
                if !keep {
                    entry.endpoints.values().for_each(|k| k.state.retire());
                }
                keep
            });
            for u in ups.iter() {
                let entry = map.entry(u.name.clone()).or_insert_with(|| Entry {
                    shared: u.shared.clone(),
                    endpoints: HashMap::new(),
                });
                entry.endpoints.retain(|addr, k| {
                    let keep = u.endpoints.iter().any(|e| &e.state.address == addr);
                    if !keep {
                        k.state.retire();
                    }
                    keep
                });
                for e in &u.endpoints {
                    let kept = entry
                        .endpoints
                        .entry(e.state.address.clone())
                        .or_insert_with(|| Kept {
                            state: e.state.clone(),
                            checker: None,
                        });
                    e.state.pool.configure(
                        &u.config.pool,
                        u.config.protocol,
                        u.config.tls.as_ref().zip(u.connector.clone()),
                    );
                    self.reconcile_checker(kept, u);
                    if let (Some(check), Active::Unknown) = (&u.config.health, e.state.active())
                        && self.checks
                    {
                        waiting.push((e.state.clone(), check.timeout + u.config.connect_timeout));
                    }
                }
            }
        }
        for (state, limit) in waiting {
            let answered = state.checked.notified();
            if state.active() == Active::Unknown {
                let _ = tokio::time::timeout(limit, answered).await;
            }
        }
    }

    /// Start, restart or stop an endpoint's checker to match the manifest.
    fn reconcile_checker(&self, kept: &mut Kept, u: &Upstream) {
        let wanted = u.config.health.as_ref();
        let same = match (&kept.checker, wanted) {
            (Some(c), Some(w)) => &c.check == w && c.connect_timeout == u.config.connect_timeout,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        kept.checker = None;
        match wanted {
            None => kept.state.set_checked(false),
            Some(check) => {
                kept.state.set_checked(true);
                if self.checks {
                    let task = tokio::spawn(check::run(
                        Arc::downgrade(&kept.state),
                        check.clone(),
                        u.config.connect_timeout,
                    ));
                    kept.checker = Some(Checker {
                        check: check.clone(),
                        connect_timeout: u.config.connect_timeout,
                        task: task.abort_handle(),
                    });
                }
            }
        }
    }

    /// Close idle connections past their idle timeout.
    fn sweep(&self) {
        let states: Vec<_> = self
            .lock()
            .values()
            .flat_map(|e| e.endpoints.values().map(|k| k.state.clone()))
            .collect();
        for s in states {
            s.pool.close_expired();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, addrs: &[&str]) -> manifest::Upstream {
        manifest::Upstream {
            name: name.into(),
            endpoints: addrs
                .iter()
                .map(|a| manifest::Endpoint {
                    address: a.parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            protocol: manifest::Protocol::Http1,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            pool: Default::default(),
            health: None,
            outlier: Default::default(),
            retry: Default::default(),
            tls: None,
            handler: None,
        }
    }

    #[tokio::test]
    async fn a_reload_keeps_the_state_of_kept_endpoints_and_retires_removed_ones() {
        let r = Registry::offline(1);
        let first = r
            .prepare(&[upstream("api", &["127.0.0.1:1", "127.0.0.1:2"])])
            .unwrap();
        r.commit(&first).await;
        let api = first.get("api").unwrap();
        let _busy = api.endpoints[0].state.start_request();
        api.next_turn();

        let second = r
            .prepare(&[upstream("api", &["127.0.0.1:1", "127.0.0.1:3"])])
            .unwrap();
        let api2 = second.get("api").unwrap();
        assert!(Arc::ptr_eq(
            &api.endpoints[0].state,
            &api2.endpoints[0].state
        ));
        assert_eq!(api2.endpoints[0].state.in_flight(), 1);
        assert_eq!(api2.next_turn(), 1, "the round-robin turn carries over");
        assert!(!api.endpoints[1].state.retired(), "prepare changes nothing");
        r.commit(&second).await;
        assert!(api.endpoints[1].state.retired());
        assert!(!api2.endpoints[1].state.retired());
    }

    #[tokio::test]
    async fn a_generation_that_was_never_committed_leaves_the_registry_as_it_was() {
        let r = Registry::offline(1);
        let first = r.prepare(&[upstream("api", &["127.0.0.1:1"])]).unwrap();
        r.commit(&first).await;
        let _rejected = r.prepare(&[upstream("other", &["127.0.0.1:9"])]).unwrap();
        let again = r.prepare(&[upstream("api", &["127.0.0.1:1"])]).unwrap();
        assert!(Arc::ptr_eq(
            &first.get("api").unwrap().endpoints[0].state,
            &again.get("api").unwrap().endpoints[0].state
        ));
        assert!(!first.get("api").unwrap().endpoints[0].state.retired());
    }
}
