//! Live reload: build a complete new pipeline off the request path, then swap
//! it in atomically. A manifest or plugin that fails validation leaves the
//! running pipeline serving. Triggered by SIGHUP, `--watch`, or the admin API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::Stores;
use crate::manifest::{Manifest, ManifestError, PluginSource};
use crate::pipeline::Pipeline;
use crate::plugin::Runtime;
use crate::server::Current;
use crate::upstream::Registry;

/// Rebuilds and swaps pipelines for one manifest file.
pub struct Reloader {
    path: PathBuf,
    /// Settings that only a restart changes (listen addresses, workers).
    fixed: Manifest,
    wasm: Arc<Runtime>,
    registry: Arc<Registry>,
    caches: Arc<Stores>,
    current: Current,
    /// One reload at a time, so generations are numbered in swap order.
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for the manifest that `current` was built from.
    pub fn new(
        path: PathBuf,
        running: Manifest,
        wasm: Arc<Runtime>,
        registry: Arc<Registry>,
        caches: Arc<Stores>,
        current: Current,
    ) -> Reloader {
        Reloader {
            path,
            fixed: running,
            wasm,
            registry,
            caches,
            current,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The process's wasm runtime (its kv and candidate trackers).
    pub fn runtime(&self) -> &Runtime {
        &self.wasm
    }

    /// The pipeline being served.
    pub fn current(&self) -> &Current {
        &self.current
    }

    /// Build the manifest anew and swap it in; returns the new generation.
    pub async fn reload(&self) -> Result<u64, ManifestError> {
        let _one_at_a_time = self.lock.lock().await;
        let result = async {
            let m = Manifest::load(&self.path)?;
            if self.fixed.server.tls.is_some() && m.server.tls.is_none() {
                return Err(ManifestError {
                    file: self.path.clone(),
                    key: "server.tls".into(),
                    reason: "missing: this process serves HTTPS listeners, which only a restart removes".into(),
                });
            }
            let listeners = |s: &crate::manifest::Server| crate::server::addresses(s);
            if listeners(&m.server) != listeners(&self.fixed.server)
                || m.server.workers != self.fixed.server.workers
                || m.admin != self.fixed.admin
            {
                tracing::warn!("listen addresses (plain, TLS and redirect), workers and the admin listener change only on restart; keeping the current ones");
            }
            let generation = self.current.load().generation + 1;
            let access_log =
                crate::logging::prepare_access_log(&m.server.access_log).map_err(|e| {
                    ManifestError {
                        file: self.path.clone(),
                        key: "server.access_log".into(),
                        reason: e.to_string(),
                    }
                })?;
            let pipeline =
                Pipeline::build(&m, &self.wasm, &self.registry, &self.caches, generation).await?;
            access_log.install();
            Ok(pipeline)
        }
        .await;
        match result {
            Ok(p) => {
                let generation = p.generation;
                self.current.store(Arc::new(p));
                crate::metrics::reloaded(Ok(generation));
                tracing::info!(generation, "reloaded the pipeline");
                Ok(generation)
            }
            Err(e) => {
                crate::metrics::reloaded(Err(()));
                tracing::error!(error = %e, "reload rejected; the running pipeline keeps serving");
                Err(e)
            }
        }
    }

    /// Reload on every SIGHUP, forever.
    pub async fn on_sighup(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by signal is disabled");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = self.reload().await;
        }
    }

    /// Reload whenever the manifest or a plugin file it names changes.
    /// Polling (once per `every`) works on every filesystem and editor save style.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut seen = self.fingerprint();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = self.fingerprint();
            if now != seen {
                // Taken before reloading: a write that lands during the reload
                // shows up as a change on the next tick instead of being lost.
                seen = now;
                tracing::info!(manifest = %self.path.display(), "change detected");
                let _ = self.reload().await;
            }
        }
    }

    /// Modification times of the manifest and of every plugin file in it.
    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let mut files = vec![self.path.clone()];
        if let Ok(m) = Manifest::load(&self.path) {
            files.extend(m.includes.iter().cloned());
            let candidates = m.stages.iter().filter_map(|s| s.candidate.as_ref());
            let specs = m.stages.iter().chain(candidates.map(|c| &*c.stage));
            files.extend(specs.filter_map(|s| match &s.source {
                PluginSource::File(p) => Some(p.clone()),
                PluginSource::Builtin(_) => None,
            }));
        }
        files.into_iter().map(|f| (f.clone(), mtime(&f))).collect()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}
