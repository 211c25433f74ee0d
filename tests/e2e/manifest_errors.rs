//! Manifest errors proves `portier check` refuses a bad manifest before
//! anything would listen, exiting non-zero with `FILE: KEY: REASON` that
//! names the offending key — and accepts good ones, including every manifest
//! shipped in `examples/`.

use std::fs;
use std::path::Path;

use crate::support::{check, check_file, free_addr, one_upstream, plugin_path};

/// A valid manifest: two upstreams and every built-in stage.
fn valid() -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "api"
endpoints = ["127.0.0.1:3001", {{ address = "127.0.0.1:3002", weight = 3 }}]
timeout = "5s"

[[upstreams]]
name = "web"
endpoints = ["127.0.0.1:3003"]

[[pipeline]]
plugin = "headers"

[[pipeline]]
plugin = "router"
config = {{ default = "web", routes = [ {{ prefix = "/api/", upstream = "api", strip_prefix = true }} ] }}

[[pipeline]]
plugin = "balancer"
config = {{ algorithm = "weighted-round-robin" }}
"#,
        listen = free_addr()
    )
}

/// A one-upstream manifest (upstream `app`) with `stages` as its pipeline.
fn with_pipeline(stages: &str) -> String {
    one_upstream(r#"["127.0.0.1:3001"]"#, "", stages)
}

#[test]
fn accepts_a_valid_manifest() {
    check(&valid()).assert_ok();
}

#[test]
fn accepts_a_built_in_plugin_loaded_by_path_with_its_role() {
    check(&with_pipeline(&format!(
        r#"
[[pipeline]]
plugin = "{}"
role = "filter"
"#,
        plugin_path("headers")
    )))
    .assert_ok();
}

#[test]
fn resolves_relative_plugin_paths_from_the_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("plugins")).unwrap();
    fs::copy(
        plugin_path("headers"),
        dir.path().join("plugins/my-headers.wasm"),
    )
    .unwrap();
    let manifest = dir.path().join("portier.toml");
    fs::write(
        &manifest,
        with_pipeline(
            r#"
[[pipeline]]
plugin = "plugins/my-headers.wasm"
role = "filter"
"#,
        ),
    )
    .unwrap();

    // `check_file` runs portier from another directory, so only resolving
    // against the manifest's directory finds the file.
    check_file(&manifest).assert_ok();
}

#[test]
fn rejects_an_unknown_key_in_server() {
    let manifest = valid().replace("[server]\n", "[server]\nfoo = 1\n");
    check(&manifest).assert_rejected_at("server.foo");
}

#[test]
fn rejects_a_misspelt_key_naming_the_misspelling() {
    let manifest = valid().replace("listen =", "lisen =");
    check(&manifest).assert_rejected_at("server.lisen");
}

#[test]
fn rejects_an_unknown_key_in_a_stage_naming_its_index() {
    let manifest = valid().replace(
        "plugin = \"balancer\"\n",
        "plugin = \"balancer\"\nconfg = 1\n",
    );
    check(&manifest).assert_rejected_at("pipeline[2].confg");
}

#[test]
fn rejects_a_missing_plugin_file() {
    let checked = check(&with_pipeline(
        r#"
[[pipeline]]
plugin = "no-such-plugin.wasm"
role = "filter"
"#,
    ));
    let stderr = checked.assert_rejected_at("pipeline[0].plugin");
    assert!(
        stderr.contains("no-such-plugin.wasm"),
        "the message should name the file:\n{checked}"
    );
}

#[test]
fn rejects_a_plugin_that_does_not_implement_its_role() {
    // A real component, but a balancer: it exports `pick`, not `on-request`.
    let checked = check(&with_pipeline(&format!(
        r#"
[[pipeline]]
plugin = "{}"
role = "filter"
"#,
        plugin_path("balancer")
    )));
    let stderr = checked.assert_rejected_at("pipeline[0].plugin");
    assert!(
        stderr.contains("does not implement world `filter`"),
        "the message should name the role it lacks:\n{checked}"
    );
}

#[test]
fn rejects_a_built_in_given_another_role() {
    check(&with_pipeline(
        r#"
[[pipeline]]
plugin = "router"
role = "balancer"
"#,
    ))
    .assert_rejected_at("pipeline[0].role");
}

#[test]
fn rejects_a_route_to_an_undefined_upstream() {
    let checked = check(&with_pipeline(
        r#"
[[pipeline]]
plugin = "router"
config = { routes = [ { prefix = "/", upstream = "nowhere" } ] }
"#,
    ));
    // The router's init finds this; the host folds the key the plugin
    // names into the manifest's.
    let stderr = checked.assert_rejected_at("pipeline[0].config.routes[0].upstream");
    assert!(
        stderr.contains("nowhere"),
        "the message should name the missing upstream:\n{checked}"
    );
}

#[test]
fn rejects_an_unknown_balancer_algorithm() {
    let checked = check(&with_pipeline(
        r#"
[[pipeline]]
plugin = "balancer"
config = { algorithm = "random" }
"#,
    ));
    let stderr = checked.assert_rejected_at("pipeline[0].config.algorithm");
    assert!(
        stderr.contains("random"),
        "the message should name the bad value:\n{checked}"
    );
}

#[test]
fn rejects_duplicate_upstream_names() {
    let manifest = valid().replace("name = \"web\"", "name = \"api\"");
    check(&manifest).assert_rejected_at("upstreams[1].name");
}

#[test]
fn rejects_bad_listen_addresses() {
    for bad in ["127.0.0.1", "127.0.0.1:99999", "not an address"] {
        let manifest = format!(
            r#"
[server]
listen = "{bad}"

[[upstreams]]
name = "api"
endpoints = ["127.0.0.1:3001"]
"#
        );
        check(&manifest).assert_rejected_at("server.listen");
    }
}

#[test]
fn rejects_bad_endpoint_addresses() {
    for bad in ["127.0.0.1", "127.0.0.1:99999"] {
        let manifest = with_pipeline("").replace("\"127.0.0.1:3001\"", &format!("\"{bad}\""));
        check(&manifest).assert_rejected_at("upstreams[0].endpoints[0]");
    }
}

#[test]
fn rejects_a_bad_duration() {
    let manifest = valid().replace("timeout = \"5s\"", "timeout = \"soon\"");
    check(&manifest).assert_rejected_at("upstreams[0].timeout");
}

#[test]
fn rejects_an_upstream_without_endpoints() {
    let manifest = with_pipeline("").replace("endpoints = [\"127.0.0.1:3001\"]\n", "");
    check(&manifest).assert_rejected_at("upstreams[0].endpoints");
}

#[test]
fn rejects_a_second_router() {
    // Named apart, so that the one-router rule fails rather than unique names.
    check(&with_pipeline(
        r#"
[[pipeline]]
plugin = "router"
config = { default = "app" }

[[pipeline]]
plugin = "router"
name = "router-2"
config = { default = "app" }
"#,
    ))
    .assert_rejected_at("pipeline[1]");
}

#[test]
fn rejects_a_balancer_before_the_router() {
    let checked = check(&with_pipeline(
        r#"
[[pipeline]]
plugin = "balancer"

[[pipeline]]
plugin = "router"
config = { default = "app" }
"#,
    ));
    // The balancer is the stage out of place.
    checked.assert_rejected_at("pipeline[0]");
}

#[test]
fn rejects_several_upstreams_without_a_router() {
    // Without a router nothing says which upstream a request goes to.
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "api"
endpoints = ["127.0.0.1:3001"]

[[upstreams]]
name = "web"
endpoints = ["127.0.0.1:3003"]

[[pipeline]]
plugin = "balancer"
"#,
        listen = free_addr()
    );
    // What is missing is a stage: the pipeline is to blame.
    check(&manifest).assert_rejected_at("pipeline");
}

#[test]
fn every_example_manifest_passes_check() {
    // examples/handler.toml names the test handlers' components.
    crate::support::test_handler("hello");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    // `env/shared/` holds include files, which are not manifests on their own.
    for dir in [examples.clone(), examples.join("env")] {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                check_file(&path).assert_ok();
                let relative = path.strip_prefix(&examples).unwrap();
                checked.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    // Guards against walking the wrong directories and checking nothing.
    for expected in [
        "quickstart.toml",
        "rollout.toml",
        "handler.toml",
        "env/dev.toml",
        "env/staging.toml",
        "env/prod.toml",
    ] {
        assert!(
            checked.iter().any(|n| n == expected),
            "{expected} not checked; examples checked: {checked:?}"
        );
    }
}

#[test]
fn a_relative_cache_dir_beside_a_manifest_named_relatively_works() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("portier.toml"),
        format!(
            "[server]\nlisten = \"{}\"\ncache_dir = \"wasm-cache\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:9\"]\n[[pipeline]]\nplugin = \"router\"\nconfig = {{ default = \"a\" }}\n",
            free_addr()
        ),
    )
    .unwrap();
    // `portier check portier.toml` from the manifest's directory: every
    // path in it is then relative.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
        .args(["check", "portier.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("wasm-cache").is_dir());
}

/// The unit in `examples/systemd/` is one systemd accepts as it is (its
/// binary path pointed at one that exists: `verify` checks it).
#[test]
fn the_example_systemd_unit_passes_systemd_analyze_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = fs::read_to_string(root.join("examples/systemd/portier.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/portier run"),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portier.service");
    fs::write(&copy, unit.replace("/usr/local/bin/portier", "/bin/true")).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian's systemd package; cargo xtask test installs it)");
    // Unknown keys and bad values are warnings on stderr, with exit 0: any
    // output at all is a finding.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
