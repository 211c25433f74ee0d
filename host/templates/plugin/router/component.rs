//! The built component, run in-process by the portier-test harness.

use portier_test::{Harness, Request, Stage};

async fn proxy(config: &str) -> Harness {
    Harness::builder()
        .upstream("api", ["10.0.0.1:8080"])
        .upstream("web", ["10.0.0.2:8080"])
        .stage(Stage::router(portier_test::component!()).config(config))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_longest_matching_prefix_wins() {
    let proxy = proxy(r#"prefixes = { "/" = "web", "/api/" = "api" }"#).await;
    let api = proxy.request(Request::get("/api/users")).await;
    assert_eq!(api.upstream(), Some("api"));
    assert_eq!(api.endpoint().as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(proxy.request(Request::get("/about")).await.upstream(), Some("web"));
}

#[tokio::test]
async fn no_match_and_no_default_is_404() {
    let proxy = proxy(r#"prefixes = { "/api/" = "api" }"#).await;
    assert_eq!(proxy.request(Request::get("/about")).await.status(), Some(404));
}

#[tokio::test]
async fn an_unknown_upstream_is_refused_at_load() {
    let err = Harness::builder()
        .upstream("api", ["10.0.0.1:8080"])
        .stage(Stage::router(portier_test::component!()).config(r#"default = "nope""#))
        .start()
        .await
        .err()
        .expect("an unknown upstream must not load");
    assert!(err.to_string().contains("nope"), "{err}");
}
