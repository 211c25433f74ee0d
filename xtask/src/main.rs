//! Project tasks, so a newcomer needs two commands and nothing else installed:
//!
//! - `cargo xtask quickstart`: build everything, start three demo backends
//!   and the proxy on `examples/quickstart.toml` (Ctrl-C stops all).
//! - `cargo xtask test`: every test there is (plugin unit tests, host unit
//!   tests, end-to-end tests with real processes). CI runs exactly this.

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

fn test() -> Result<(), String> {
    ensure_wasm_target()?;
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
    )
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
