//! The built-in forward-auth filter, run in-process through the harness.
//! The harness opens no listener, so no auth service ever answers here:
//! what is tested is the config checked at load and the stage's policy
//! when the service cannot be reached (its upstream is 127.0.0.1:9, where
//! nothing listens, so the connection is refused at once). Allowed and
//! refused answers of a real service are tested end to end in
//! tests/e2e/gateway.rs.

use portier_test::{Harness, Request, Stage};

/// `app` behind a router, and forward-auth asking `auth` (granted unless
/// `granted` is false) with `config` added.
async fn gateway(granted: bool, config: &str) -> Result<Harness, portier_test::Error> {
    let mut stage = Stage::builtin("forward-auth").config(&format!(
        r#"
        upstream = "auth"
        path = "/verify"
        response_headers = ["x-user"]
        timeout = "2s"
        {config}
        "#
    ));
    if granted {
        stage = stage.set(r#"grants = { upstreams = ["auth"] }"#);
    }
    Harness::builder()
        .upstream("app", ["10.0.0.1:8080"])
        .upstream("auth", ["127.0.0.1:9"])
        .stage(Stage::builtin("router").config(r#"default = "app""#))
        .stage(stage)
        .start()
        .await
}

/// How often the auth endpoint was ejected by passive health: a refused
/// connection (the first is enough, by default) ejects it.
fn auth_ejections(proxy: &Harness) -> u64 {
    let auth = proxy.pipeline().upstreams().get("auth").unwrap();
    auth.endpoints[0].state.ejections_total()
}

fn as_mallory() -> Request {
    Request::get("/orders")
        .header("authorization", "Bearer t")
        .header("x-user", "admin")
}

#[tokio::test]
async fn an_unreachable_auth_service_refuses_with_503() {
    let proxy = gateway(true, "").await.unwrap();
    let out = proxy.request(as_mallory()).await;
    assert!(!out.forwarded());
    assert_eq!(out.stopped_at(), Some("forward-auth"));
    let answer = out.response().expect("the stage answers itself");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.text(), "503 Service Unavailable\n");
    // The plugin answered as designed: not a failed call.
    assert_eq!(proxy.failures("forward-auth"), Some(0));
    // The connection was tried, and refused.
    assert_eq!(auth_ejections(&proxy), 1);
    // With its only endpoint out of rotation, the answer is the same.
    assert_eq!(proxy.request(as_mallory()).await.status(), Some(503));
}

#[tokio::test]
async fn a_stage_not_granted_its_auth_upstream_refuses_with_503() {
    let proxy = gateway(false, "").await.unwrap();
    let out = proxy.request(as_mallory()).await;
    assert_eq!(out.stopped_at(), Some("forward-auth"));
    assert_eq!(out.status(), Some(503));
    // Refused by the host before any connection was tried.
    assert_eq!(auth_ejections(&proxy), 0);
}

#[tokio::test]
async fn allow_when_unavailable_lets_requests_through_without_trusted_headers() {
    let proxy = gateway(
        true,
        "allow_when_unavailable = true\nidentity_header = \"x-user\"",
    )
    .await
    .unwrap();
    let out = proxy.request(as_mallory()).await;
    assert!(out.forwarded());
    assert_eq!(out.upstream(), Some("app"));
    // Nothing vouched for the client's x-user: it is gone.
    assert_eq!(out.header("x-user"), None);
    assert_eq!(out.context("identity"), None);
    assert_eq!(out.header("authorization"), Some("Bearer t"));
}

#[tokio::test]
async fn config_naming_an_unknown_upstream_or_an_untrusted_identity_is_refused_at_load() {
    let err = Harness::builder()
        .upstream("auth", ["127.0.0.1:9"])
        .stage(Stage::builtin("forward-auth").config(r#"upstream = "auht""#))
        .start()
        .await
        .err()
        .expect("an unknown auth upstream must not load");
    assert!(
        err.to_string()
            .contains(r#"pipeline[0].config.upstream: no upstream named "auht""#),
        "{err}"
    );
    let err = gateway(true, r#"identity_header = "x-name""#)
        .await
        .err()
        .expect("an identity from a header not copied from the service must not load");
    assert!(
        err.to_string()
            .contains("pipeline[1].config.identity_header: must be one of response_headers"),
        "{err}"
    );
}
