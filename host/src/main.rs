//! The `portier` command: `run` a manifest, `check` it, `reload` the
//! instance serving it, or make a new plugin crate (`plugin new`).

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
use portier::role::Role;
use portier::server;
use tokio::signal::unix::{SignalKind, signal};

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
    /// Tell the running instance serving a manifest to reload it, through
    /// the admin listener its `[admin]` names; exit 1 with the reason if
    /// the new manifest is rejected (the old pipeline keeps serving).
    Reload {
        /// The manifest the instance serves.
        manifest: PathBuf,
    },
    /// Plugin authoring.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make a plugin crate: an example plugin for the role, its tests
    /// (`cargo test` runs the built component in-process) and a manifest
    /// that loads it.
    New {
        /// The crate's name (and directory).
        name: String,
        /// The role it plays in the pipeline.
        #[arg(long, default_value = "filter", value_parser = role_arg())]
        role: Role,
        /// Where to make the crate's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The portier checkout whose SDK and test harness the crate uses
        /// (default: the one this binary was built from).
        #[arg(long)]
        portier: Option<PathBuf>,
    },
}

/// `--role`: the manifest's spellings, listed in `--help`, read by `Role::parse`.
fn role_arg() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["filter", "router", "balancer", "cache-policy"])
        .map(|s| Role::parse(&s).expect("one of the possible values"))
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    portier::logging::init(match cli.log_format {
        LogFormat::Text => portier::logging::Format::Text,
        LogFormat::Json => portier::logging::Format::Json,
    });
    let result = match &cli.command {
        Command::Check { manifest } => check(manifest),
        Command::Run { manifest, watch } => run(manifest, *watch),
        Command::Reload { manifest } => reload(manifest),
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    role,
                    dir,
                    portier,
                },
        } => new_plugin(name, *role, dir, portier.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
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

fn reload(path: &Path) -> anyhow::Result<()> {
    let Some(admin) = Manifest::load_admin(path)? else {
        anyhow::bail!(
            "{}: no [admin] listener to ask; add one, or send the process SIGHUP",
            path.display()
        );
    };
    let generation = control_runtime()?
        .block_on(portier::admin::ask_reload(&admin))
        .map_err(anyhow::Error::msg)?;
    println!("reloaded: generation {generation}");
    Ok(())
}

fn new_plugin(name: &str, role: Role, dir: &Path, sources: Option<&Path>) -> anyhow::Result<()> {
    let sources = sources.map_or_else(portier::scaffold::default_sources, Path::to_owned);
    let root = portier::scaffold::new_plugin(name, role, dir, &sources)?;
    println!(
        "made {role} plugin {name} in {dir}\n\n  cd {dir}\n  cargo test                                     # builds it, runs tests/component.rs\n  cargo build --target wasm32-wasip2 --release\n  portier run manifest.toml",
        dir = root.display()
    );
    Ok(())
}

fn run(path: &Path, watch: bool) -> anyhow::Result<()> {
    let manifest = Manifest::load(path)?;
    portier::logging::set_access_log(&manifest.server.access_log)
        .with_context(|| format!("{}: server.access_log", path.display()))?;
    let served = control_runtime()?.block_on(async move {
        // SIGHUP's and SIGUSR1's default action ends a process: until the
        // reloader and the log reopener listen, a `systemctl reload` or a
        // logrotate racing the start would kill it. Registering them now
        // installs the handlers for the process's life; one that arrives
        // before `serving` is ignored.
        for kind in [SignalKind::hangup(), SignalKind::user_defined1()] {
            drop(signal(kind).context("installing signal handlers")?);
        }
        let wasm = Arc::new(Runtime::new(manifest.server.cache_dir.as_deref())?);
        // Upstream connections, health and load outlive every reload.
        let registry = portier::upstream::Registry::new(manifest.server.workers);
        // So do the cache's stored responses, while `[cache]` is unchanged.
        let caches = Arc::new(portier::cache::Stores::default());
        let pipeline = Pipeline::build(&manifest, &wasm, &registry, &caches, 1).await?;
        portier::metrics::get().generation.set(1);
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
        tokio::spawn(portier::logging::reopen_on_sigusr1());
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
        portier::admin::set_draining();
        let _ = stop.send(true);
        // Workers drain their connections (bounded by the drain timeout) and exit.
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
            .await?;
        Ok(())
    });
    // Every request's span has closed: send what is left to the collector.
    #[cfg(feature = "otlp")]
    portier::otel::shutdown();
    served
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
