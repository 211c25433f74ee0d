//! `portier plugin new` makes, for every role, a crate that builds to a
//! wasm32-wasip2 component which `portier check` loads from the crate's own
//! manifest; the filter it makes serves real traffic in a real proxy; bad
//! names and existing directories are refused without writing anything.
//!
//! That each crate's own `cargo test` (the portier-test harness) passes is
//! checked by `cargo xtask test` after this suite: it compiles wasmtime
//! natively for the new crate, which only pays off with the workspace's
//! target directory, and that is locked while these tests run.

use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;

use crate::support::{Backend, Portier, build_wasm, check_file, endpoint, one_upstream};

const ROLES: [&str; 4] = ["filter", "router", "balancer", "cache-policy"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn plugin_new(dir: &Path, name: &str, role: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portier"))
        .args(["plugin", "new", name, "--role", role, "--dir"])
        .arg(dir)
        .arg("--portier")
        .arg(root())
        .output()
        .expect("running portier plugin new")
}

/// Build `crate_dir` to wasm32-wasip2 (a target directory shared by the
/// tests, so the SDK compiles once) and put the component where the
/// crate's manifest expects it.
fn build_component(crate_dir: &Path, lib: &str) -> PathBuf {
    let target = root().join("target/scaffold-wasm");
    build_wasm(crate_dir, &target, lib);
    let built = target.join(format!("wasm32-wasip2/release/{lib}.wasm"));
    let expected = crate_dir.join(format!("target/wasm32-wasip2/release/{lib}.wasm"));
    std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
    std::fs::copy(&built, &expected).expect("copy the component");
    expected
}

#[test]
fn every_role_gets_a_crate_whose_component_its_own_manifest_loads() {
    let dir = tempfile::tempdir().unwrap();
    for role in ROLES {
        let name = format!("my-{role}");
        let made = plugin_new(dir.path(), &name, role);
        assert!(made.status.success(), "{role}: {made:?}");
        let crate_dir = dir.path().join(&name);
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "tests/component.rs",
            "manifest.toml",
            "README.md",
        ] {
            assert!(crate_dir.join(file).is_file(), "{role}: no {file}");
        }
        let cargo_toml = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
        assert!(
            cargo_toml.contains(&format!("name = \"{name}\"")),
            "{cargo_toml}"
        );
        assert!(
            !cargo_toml.contains("{{"),
            "unfilled placeholder:\n{cargo_toml}"
        );
        build_component(&crate_dir, &name.replace('-', "_"));
        let checked = check_file(&crate_dir.join("manifest.toml"));
        assert!(checked.status.success(), "{role}: {checked:?}");
        assert!(
            checked.stdout.contains("ok (") && checked.stdout.contains("1 stages"),
            "{checked:?}"
        );
    }
}

#[tokio::test]
async fn the_new_filter_serves_traffic_in_a_real_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let made = plugin_new(dir.path(), "guard", "filter");
    assert!(made.status.success(), "{made:?}");
    let crate_dir = dir.path().join("guard");
    let wasm = tokio::task::spawn_blocking(move || build_component(&crate_dir, "guard"))
        .await
        .unwrap();

    let backend = Backend::new("app").start().await;
    let pipeline = format!(
        "[[pipeline]]\nplugin = \"{}\"\nrole = \"filter\"\nconfig = {{ require = \"x-user\" }}\n",
        wasm.display()
    );
    let proxy = Portier::start(&one_upstream(&endpoint(backend.addr()), "", &pipeline)).await;
    let client = proxy.client();

    let refused = client.get("/orders").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(backend.requests(), 0);

    let passed = client.get_with("/orders", &[("x-user", "ada")]).await;
    assert_eq!(passed.status, StatusCode::OK, "{passed:?}");
    assert_eq!(passed.echo().header("x-checked"), Some("x-user"));
}

#[test]
fn a_bad_name_or_an_existing_directory_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = plugin_new(dir.path(), "Bad Name", "filter");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a usable plugin name"),
        "{bad:?}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let exists = plugin_new(dir.path(), "taken", "router");
    assert!(!exists.status.success());
    assert!(
        String::from_utf8_lossy(&exists.stderr).contains("already exists"),
        "{exists:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        0
    );
}
