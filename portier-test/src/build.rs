//! Building the plugin under test into a component, from its own tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Why the component could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be run, or failed (its output went to the test's).
    #[error("building {crate_dir} for wasm32-wasip2 failed: {reason}")]
    Cargo {
        /// The crate.
        crate_dir: PathBuf,
        /// What cargo said, or why it could not run.
        reason: String,
    },
    /// cargo succeeded but no component is where it should be (is the
    /// crate's `crate-type` `cdylib`?).
    #[error("no component at {0} after building (is `[lib] crate-type = [\"cdylib\"]` set?)")]
    Missing(PathBuf),
}

/// Build the crate at `crate_dir` (its `Cargo.toml`'s directory) with
/// `cargo build --target wasm32-wasip2 --release` and return the
/// component's path. Once per crate per test process: later calls return
/// the same path at once. Cargo's output goes to the test's stderr.
///
/// [`component!`](crate::component) calls this for the crate whose test
/// calls it.
pub fn build_component(crate_dir: impl AsRef<Path>) -> Result<PathBuf, BuildError> {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let crate_dir = crate_dir.as_ref().to_owned();
    // Held while building: tests running in parallel wait for one build.
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get(&crate_dir) {
        return Ok(path.clone());
    }
    let fail = |reason: String| BuildError::Cargo {
        crate_dir: crate_dir.clone(),
        reason,
    };
    let metadata = cargo(&crate_dir)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
    if !metadata.status.success() {
        return Err(fail(String::from_utf8_lossy(&metadata.stderr).into_owned()));
    }
    let (target_dir, lib) = lib_target(&metadata.stdout, &crate_dir).map_err(fail)?;
    // A directory of its own: the `cargo test` that runs us may still hold
    // the lock of the crate's target directory.
    let target_dir = target_dir.join("portier-test");
    let status = cargo(&crate_dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--lib"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
    if !status.success() {
        return Err(fail(format!(
            "cargo exited with {status} (its output is above)"
        )));
    }
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{lib}.wasm"));
    if !wasm.is_file() {
        return Err(BuildError::Missing(wasm));
    }
    built.insert(crate_dir, wasm.clone());
    Ok(wasm)
}

/// cargo, as the one running the tests, in `dir`, without the flags meant
/// for the native test build.
fn cargo(dir: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        c.env_remove(var);
    }
    c
}

/// The target directory and the library's name (the `.wasm`'s stem) of
/// the package in `dir`, from `cargo metadata`'s JSON.
fn lib_target(json: &[u8], dir: &Path) -> Result<(PathBuf, String), String> {
    let meta: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("cargo metadata: {e}"))?;
    let target_dir = meta["target_directory"]
        .as_str()
        .ok_or("cargo metadata: no target_directory")?;
    let manifest = dir.join("Cargo.toml");
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let package = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| Path::new(m).canonicalize().ok().as_deref() == Some(&manifest))
        })
        .ok_or_else(|| format!("cargo metadata: no package at {}", manifest.display()))?;
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str())
        .ok_or("the package has no `cdylib` library: set `[lib] crate-type = [\"cdylib\"]`")?;
    Ok((PathBuf::from(target_dir), lib.replace('-', "_")))
}

/// The component of the crate whose test calls it, built for
/// `wasm32-wasip2` (release) on first use: a `PathBuf` to give
/// [`Stage::filter`](crate::Stage::filter) and friends.
///
/// # Panics
///
/// When the build fails (cargo's errors are printed above the panic).
#[macro_export]
macro_rules! component {
    () => {
        $crate::build_component(env!("CARGO_MANIFEST_DIR")).unwrap_or_else(|e| panic!("{e}"))
    };
}
