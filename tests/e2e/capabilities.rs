//! Capabilities proves a plugin reaches exactly what its stage's `grants`
//! give it. Without grants the `probe` plugin can read no host file and see
//! no environment variable of the proxy process; `grants.dirs` makes one
//! host directory readable at a guest path, read-only and with no way out
//! of it; `grants.env` sets exactly the variables it names. A plugin that
//! imports `wasi:sockets` (`netprobe`) never loads: `portier check` refuses
//! it naming the import.

use std::fs;

use http::StatusCode;

use crate::support::{Client, Portier, Reply, check, one_upstream, test_plugin};

/// A variable set on the proxy process; no plugin may see it without a grant.
const SECRET_VAR: &str = "PORTIER_SECRET";
const SECRET: &str = "hunter2";

/// The rule file the tests put in the granted directory.
const RULES: &str = "allow 10.0.0.0/8\n";

/// A manifest whose only stage is the `probe` filter with `stage_extra`
/// keys (grants); requests it lets through would go to a dead upstream.
fn manifest(stage_extra: &str) -> String {
    let pipeline = format!(
        r#"
[[pipeline]]
plugin = "{plugin}"
role = "filter"
{stage_extra}
"#,
        plugin = test_plugin("probe").display(),
    );
    one_upstream(r#"["127.0.0.1:1"]"#, "", &pipeline)
}

/// Start the proxy with `SECRET_VAR` set and `rules-dir/allow.txt` next to
/// the manifest.
async fn start(stage_extra: &str) -> Portier {
    Portier::launch(&manifest(stage_extra))
        .env(SECRET_VAR, SECRET)
        .file("rules-dir/allow.txt", RULES)
        .start()
        .await
}

/// Ask the probe plugin to try something (`file:PATH`, `env:NAME`, `write:PATH`).
async fn probe(client: &Client, what: &str) -> Reply {
    client.get_with("/", &[("x-probe", what)]).await
}

/// Assert the plugin was denied (403 with the error it got).
fn assert_denied(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "probe {what:?} should be denied, got: {}",
        reply.text()
    );
}

#[tokio::test]
async fn plugin_without_grants_cannot_read_a_host_file() {
    let proxy = start("").await;
    let client = proxy.client();
    let manifest = proxy.manifest_path();
    // The file exists and the proxy itself can read it.
    assert!(fs::read_to_string(&manifest).is_ok());

    for path in [manifest.display().to_string(), "/etc/passwd".into()] {
        let what = format!("file:{path}");
        let reply = probe(&client, &what).await;
        assert_denied(&reply, &what);
        assert!(!reply.text().contains("[server]"), "{}", reply.text());
    }
}

#[tokio::test]
async fn plugin_without_grants_sees_no_environment_variable_of_the_proxy() {
    let proxy = start("").await;
    let client = proxy.client();

    for var in [SECRET_VAR, "PATH", "HOME"] {
        let what = format!("env:{var}");
        let reply = probe(&client, &what).await;
        assert_denied(&reply, &what);
        assert!(!reply.text().contains(SECRET), "{}", reply.text());
    }
}

#[tokio::test]
async fn granted_directory_is_readable_at_its_guest_path() {
    let proxy = start(r#"grants = { dirs = { "/rules" = "rules-dir" } }"#).await;
    let client = proxy.client();

    let reply = probe(&client, "file:/rules/allow.txt").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), RULES);

    // Only under the guest path: the host path means nothing inside.
    let host_path = proxy.dir().join("rules-dir/allow.txt");
    assert_denied(
        &probe(&client, &format!("file:{}", host_path.display())).await,
        "host path",
    );
    // And not a step out of it.
    for escape in [
        "file:/rules/../portier.toml",
        "file:/rules/../../../etc/passwd",
    ] {
        let reply = probe(&client, escape).await;
        assert_denied(&reply, escape);
        assert!(!reply.text().contains("[server]"), "{}", reply.text());
    }
    // Other grants stay closed.
    assert_denied(&probe(&client, &format!("env:{SECRET_VAR}")).await, "env");
}

#[tokio::test]
async fn granted_directory_is_read_only() {
    let proxy = start(r#"grants = { dirs = { "/rules" = "rules-dir" } }"#).await;
    let client = proxy.client();
    let host_dir = proxy.dir().join("rules-dir");

    for what in ["write:/rules/allow.txt", "write:/rules/new.txt"] {
        assert_denied(&probe(&client, what).await, what);
    }

    assert_eq!(
        fs::read_to_string(host_dir.join("allow.txt")).unwrap(),
        RULES
    );
    assert!(
        !host_dir.join("new.txt").exists(),
        "the plugin created a file"
    );
    // The grant itself works, so the denials above are about writing.
    assert_eq!(
        probe(&client, "file:/rules/allow.txt").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn granted_environment_variable_is_visible_and_nothing_else() {
    let proxy = start(r#"grants = { env = { MODE = "strict" } }"#).await;
    let client = proxy.client();

    let reply = probe(&client, "env:MODE").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "strict");

    assert_denied(
        &probe(&client, &format!("env:{SECRET_VAR}")).await,
        SECRET_VAR,
    );
    assert_denied(
        &probe(&client, "file:/rules/allow.txt").await,
        "an ungranted dir",
    );
}

#[test]
fn grant_of_a_missing_directory_is_rejected_naming_the_key() {
    check(&manifest(
        r#"grants = { dirs = { "/rules" = "no-such-dir" } }"#,
    ))
    .assert_rejected_at("pipeline[0].grants.dirs./rules");
}

#[test]
fn plugin_importing_wasi_sockets_is_rejected_naming_the_import() {
    let checked = check(&manifest("").replace(
        &test_plugin("probe").display().to_string(),
        &test_plugin("netprobe").display().to_string(),
    ));
    let stderr = checked.assert_rejected_at("pipeline[0].plugin");
    assert!(stderr.contains("wasi:sockets"), "{checked}");
}
