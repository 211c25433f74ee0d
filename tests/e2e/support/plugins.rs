//! The test plugins (`tests/plugins/`, a separate wasm32-wasip2 workspace):
//! plugins that exist to misbehave or to probe the sandbox. Built once per
//! test process, on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// How long building the test plugins may take (cold: the SDK and serde for wasm).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The repository root (the host crate's parent).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate lives in the repository root")
}

/// The built `.wasm` of a test plugin (`misbehave`, `probe`, `netprobe`),
/// building the whole test-plugin workspace the first time it is asked for.
pub fn test_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_test_plugins);
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "no test plugin {name}: {} is missing after the build",
        path.display()
    );
    path
}

/// The built `.wasm` of a test handler (`tests/handlers/`: `hello`, `echo`,
/// `fetcher`, `trapper`), standard `wasi:http/proxy` components, building
/// their workspace the first time one is asked for.
pub fn test_handler(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let handlers = root().join("tests/handlers");
        let target_dir = handlers.join("target");
        build_wasm(&handlers, &target_dir, "the test handlers");
        target_dir.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "no test handler {name}: {} is missing",
        path.display()
    );
    path
}

/// `cargo build --release --target wasm32-wasip2` on `tests/plugins`; returns
/// the directory the components land in. Panics with cargo's output on failure.
fn build_test_plugins() -> PathBuf {
    let plugins = root().join("tests/plugins");
    let target_dir = plugins.join("target");
    build_wasm(&plugins, &target_dir, "the test plugins");
    target_dir.join("wasm32-wasip2/release")
}

/// `cargo build --release --target wasm32-wasip2` of the crate or workspace
/// in `dir`, into `target_dir`, bounded by a timeout. Panics with cargo's
/// output when it fails.
pub fn build_wasm(dir: &Path, target_dir: &Path, what: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir);
    // The test build's flags and target are for the host, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let (status, log) = super::run_bounded(&mut command, BUILD_TIMEOUT);
    assert!(
        status.success(),
        "building {what} in {} failed ({status}):\n{log}",
        dir.display()
    );
}
