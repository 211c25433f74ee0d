//! Builds the built-in plugins (the `plugins/` workspace, target
//! `wasm32-wasip2`) so `src/plugin/builtin.rs` can embed them: one binary is
//! a complete proxy, and the plugins can never drift from the host's WIT.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let host = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = host.parent().unwrap();
    let plugins = root.join("plugins");
    for p in [
        "Cargo.toml",
        "Cargo.lock",
        "sdk",
        "router",
        "balancer",
        "headers",
        "api-key",
        "rate-limit",
        "cache",
        "forward-auth",
        "jwt",
        "cors",
        "basic-auth",
        "waf",
    ] {
        println!("cargo:rerun-if-changed={}", plugins.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let target_dir = plugins.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(plugins.join("Cargo.toml"))
    .env("CARGO_TARGET_DIR", &target_dir);
    // The outer build's flags and target are for the host, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the built-in plugins");
    if !status.success() {
        panic!(
            "building the built-in plugins in {} failed (see above). \
             Is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`",
            plugins.display()
        );
    }
    let out = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=PORTIER_PLUGIN_DIR={}", out.display());
}
