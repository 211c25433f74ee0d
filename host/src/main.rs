//! The `portier` command: `run` a manifest, or `check` it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand, ValueEnum};
use portier::manifest::Manifest;
use portier::pipeline::Pipeline;
use portier::plugin::Runtime;
use portier::reload::Reloader;
use portier::server;

/// A reverse proxy whose features are WebAssembly components.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format (access log and everything else).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the pipeline a manifest describes. SIGHUP reloads it.
    Run {
        /// The pipeline manifest (TOML).
        manifest: PathBuf,
        /// Also reload when the manifest or a plugin file it names changes.
        #[arg(long)]
        watch: bool,
    },
    /// Validate a manifest completely (plugins compiled, every init run) and exit.
    Check {
        /// The pipeline manifest (TOML).
        manifest: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Check { manifest } => check(manifest),
        Command::Run { manifest, watch } => run(manifest, *watch),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The control runtime: builds pipelines, reloads, serves the admin API and
/// waits for signals. Requests are served by the worker threads.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn check(path: &Path) -> anyhow::Result<()> {
    let manifest = Manifest::load(path)?;
    control_runtime()?.block_on(async {
        let wasm = Runtime::new(manifest.server.cache_dir.as_deref())?;
        let registry = portier::upstream::Registry::offline(manifest.server.workers);
        let caches = portier::cache::Stores::default();
        let pipeline = Pipeline::build(&manifest, &wasm, &registry, &caches, 1).await?;
        println!(
            "{}: ok ({} upstreams, {} stages)",
            path.display(),
            manifest.upstreams.len(),
            pipeline.stages().len()
        );
        Ok(())
    })
}

fn run(path: &Path, watch: bool) -> anyhow::Result<()> {
    let manifest = Manifest::load(path)?;
    control_runtime()?.block_on(async move {
        let wasm = Arc::new(Runtime::new(manifest.server.cache_dir.as_deref())?);
        // Upstream connections, health and load outlive every reload.
        let registry = portier::upstream::Registry::new(manifest.server.workers);
        // So do the cache's stored responses, while `[cache]` is unchanged.
        let caches = Arc::new(portier::cache::Stores::default());
        let pipeline = Pipeline::build(&manifest, &wasm, &registry, &caches, 1).await?;
        raise_open_file_limit();
        let listeners = server::bind(&server::addresses(&manifest.server))?;
        let admin = match manifest.admin.clone() {
            Some(a) => Some((
                tokio::net::TcpListener::from_std(server::bind_exclusive(a.listen)?)?,
                a,
            )),
            None => None,
        };
        let workers = manifest.server.workers;
        let current: server::Current = Arc::new(ArcSwap::from_pointee(pipeline));
        let reloader = Arc::new(Reloader::new(
            path.to_owned(),
            manifest,
            wasm,
            registry,
            caches,
            current.clone(),
        ));
        tokio::spawn(reloader.clone().on_sighup());
        if watch {
            tokio::spawn(reloader.clone().watch(Duration::from_secs(1)));
        }
        if let Some((listener, access)) = admin {
            tokio::spawn(portier::admin::serve(listener, access, reloader));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let threads = server::spawn_workers(workers, listeners, current, stopped)?;
        tracing::info!(workers, "serving");
        shutdown_signal().await;
        let _ = stop.send(true);
        // Workers drain their connections (bounded by the drain timeout) and exit.
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
            .await?;
        Ok(())
    })
}

/// Every connection, client or upstream, is a file descriptor: take all the
/// kernel allows this process (the soft limit is often 1024).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
