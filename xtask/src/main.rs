//! Project tasks, so a newcomer needs two commands and nothing else installed:
//!
//! - `cargo xtask quickstart`: build everything, start three demo backends
//!   and the proxy on `examples/quickstart.toml` (Ctrl-C stops all).
//! - `cargo xtask test`: rustfmt and clippy (warnings are errors) on every
//!   workspace, then every test there is (plugin unit tests, host unit
//!   tests, the built-in plugins' harness tests, end-to-end tests with real
//!   processes, and the own tests of a plugin crate `portier plugin new`
//!   makes for each role), then a build of the micro-benchmarks. Missing
//!   tools are installed first: the wasm32-wasip2 target, rustfmt and
//!   clippy (rustup), `redis-server`, Prometheus' `promtool` and
//!   `systemd-analyze` (apt-get).
//!   CI runs exactly this.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "quickstart" => quickstart(),
        "test" => test(),
        _ => Err("usage: cargo xtask <quickstart|test>".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Plugins compile to wasm32-wasip2; add the target when it is missing.
fn ensure_wasm_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2") =>
        {
            Ok(())
        }
        Ok(_) => run(
            "adding the wasm32-wasip2 target",
            Command::new("rustup").args(["target", "add", "wasm32-wasip2"]),
        ),
        Err(e) => Err(format!(
            "rustup is needed to add the wasm32-wasip2 target: {e}"
        )),
    }
}

/// The cargo workspaces: the host's (this one) and the wasm ones, each with
/// the target its clippy run checks (`None`: the host's own).
const WORKSPACES: [(&str, Option<&str>); 5] = [
    ("Cargo.toml", None),
    // The plugins also build natively: their unit tests run on the host.
    ("plugins/Cargo.toml", None),
    ("tests/plugins/Cargo.toml", Some("wasm32-wasip2")),
    ("tests/handlers/Cargo.toml", Some("wasm32-wasip2")),
    ("bench/plugins/Cargo.toml", Some("wasm32-wasip2")),
];

/// rustfmt and clippy ship with rustup's default profile; add them otherwise.
fn ensure_components() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to add rustfmt and clippy: {e}"))?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(
        &format!("adding {}", missing.join(" and ")),
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

/// Real peers the end-to-end tests start: `redis-server` (the Redis kv
/// backend), Prometheus' `promtool` (which checks `/metrics` with
/// Prometheus' own parser) and `systemd-analyze` (which verifies the example
/// unit). Installed from Debian when missing.
const PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn ensure_packages() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // As root (CI, containers) apt-get runs directly; otherwise through sudo.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run("apt-get update", &mut apt(&["update", "-q"]))?;
    run(
        &format!("installing {} (apt-get)", missing.join(" ")),
        apt(&["install", "-y", "-q", "--no-install-recommends"]).args(&missing),
    )
}

fn test() -> Result<(), String> {
    ensure_wasm_target()?;
    ensure_components()?;
    ensure_packages()?;
    // Style and lints first: they fail in seconds, the tests in minutes.
    for (manifest, _) in WORKSPACES {
        run(
            &format!("rustfmt check ({manifest})"),
            cargo().args(["fmt", "--all", "--check", "--manifest-path", manifest]),
        )?;
    }
    for (manifest, target) in WORKSPACES {
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--manifest-path",
            manifest,
            "--workspace",
            "--all-targets",
        ]);
        if let Some(target) = target {
            clippy.args(["--target", target]);
        }
        run(
            &format!("clippy ({manifest})"),
            clippy.args(["--", "-D", "warnings"]),
        )?;
    }
    run(
        "plugin unit tests (native)",
        cargo().args([
            "test",
            "--manifest-path",
            "plugins/Cargo.toml",
            "--workspace",
        ]),
    )?;
    run(
        "host unit and end-to-end tests",
        cargo().args(["test", "--workspace"]),
    )?;
    new_plugins_pass_their_own_tests()?;
    otlp_feature()?;
    // That the micro-benchmarks build and link. In the dev profile, whose
    // artifacts the tests just built: an optimised build of wasmtime would
    // cost CI ~11 minutes, and bench/run makes that one itself.
    run(
        "compiling the micro-benchmarks",
        cargo().args(["bench", "--workspace", "--no-run", "--profile", "dev"]),
    )
}

/// The host's `otlp` feature (off by default, so the steps above never
/// compile it): its lints, and its end-to-end test against a fake
/// collector. A build of its own (other features, so other artifacts).
fn otlp_feature() -> Result<(), String> {
    // `--workspace` with the feature added: the same feature unification as
    // the builds above, so only what the feature touches is compiled again
    // (`-p portier` would rebuild the whole graph, wasmtime included).
    run(
        "clippy (--features portier/otlp)",
        cargo().args([
            "clippy",
            "--workspace",
            "--features",
            "portier/otlp",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "trace export end-to-end tests (--features portier/otlp)",
        cargo().args([
            "test",
            "--workspace",
            "--features",
            "portier/otlp",
            "--test",
            "e2e",
            "--",
            "otlp",
        ]),
    )
}

/// `portier plugin new` for every role, then each new crate's own
/// `cargo test` (the portier-test harness running its component). In the
/// workspace's target directory, with the workspace's lock file, so the
/// wasm runtime the harness links is the one the tests above compiled.
fn new_plugins_pass_their_own_tests() -> Result<(), String> {
    let dir = root().join("target/new-plugins");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    let portier = root().join("target/debug/portier");
    for role in ["filter", "router", "balancer", "cache-policy"] {
        let name = format!("new-{role}");
        run(
            &format!("portier plugin new {name} --role {role}"),
            Command::new(&portier)
                .args(["plugin", "new", &name, "--role", role, "--dir"])
                .arg(&dir)
                .arg("--portier")
                .arg(root()),
        )?;
        let crate_dir = dir.join(&name);
        std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock"))
            .map_err(|e| format!("copying Cargo.lock: {e}"))?;
        run(
            &format!("the new {role} plugin's own tests"),
            cargo()
                .arg("test")
                .arg("--manifest-path")
                .arg(crate_dir.join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", root().join("target")),
        )?;
    }
    Ok(())
}

fn quickstart() -> Result<(), String> {
    ensure_wasm_target()?;
    run(
        "building portier, its built-in plugins and the demo backends",
        cargo().args([
            "build",
            "-p",
            "portier",
            "--bin",
            "portier",
            "--example",
            "demo-backend",
        ]),
    )?;
    let bin = root().join("target/debug");
    let mut backends = Guard(
        Command::new(bin.join("examples/demo-backend"))
            .args(["3001", "3002", "3003"])
            .spawn()
            .map_err(|e| format!("starting the demo backends: {e}"))?,
    );
    eprintln!(
        "xtask: demo backends on 127.0.0.1:3001-3003; portier on http://127.0.0.1:3000\n\
         xtask: try  curl -i http://127.0.0.1:3000/api/users   and   curl -i http://127.0.0.1:3000/static/logo.png\n\
         xtask: Ctrl-C stops everything"
    );
    let status = Command::new(bin.join("portier"))
        .args(["run", "examples/quickstart.toml"])
        .current_dir(root())
        .status()
        .map_err(|e| format!("starting portier: {e}"))?;
    let _ = backends.0.kill();
    if status.success() {
        Ok(())
    } else {
        Err(format!("portier exited ({status})"))
    }
}

/// Kills a child process when dropped, so no demo backend outlives the quickstart.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
