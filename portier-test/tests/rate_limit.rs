//! The built-in rate limiter, run in-process through the harness (its
//! counts live in the stage's in-memory kv).

use portier_test::{Harness, Request, Stage};

async fn limiter(config: &str) -> Harness {
    Harness::builder()
        .stage(Stage::builtin("rate-limit").name("limit").config(config))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_gets_its_budget_then_429s() {
    let proxy = limiter(
        r#"requests = 3
window = "60s""#,
    )
    .await;
    let from = |ip: &str| Request::get("/").client(&format!("{ip}:5000"));
    for _ in 0..3 {
        assert!(proxy.request(from("198.51.100.1")).await.forwarded());
    }
    let refused = proxy.request(from("198.51.100.1")).await;
    assert_eq!(refused.status(), Some(429));
    assert_eq!(refused.stopped_at(), Some("limit"));
    // Another client has a budget of its own.
    assert!(proxy.request(from("198.51.100.2")).await.forwarded());
}

#[tokio::test]
async fn requests_are_counted_by_header_when_configured() {
    let proxy = limiter(
        r#"requests = 1
window = "60s"
key = { header = "x-api-key" }"#,
    )
    .await;
    let with_key = |k: &str| Request::get("/").header("x-api-key", k);
    assert!(proxy.request(with_key("a")).await.forwarded());
    assert_eq!(proxy.request(with_key("a")).await.status(), Some(429));
    assert!(proxy.request(with_key("b")).await.forwarded());
}

#[tokio::test]
async fn a_window_that_is_not_a_duration_is_refused_at_load() {
    let err = Harness::builder()
        .stage(Stage::builtin("rate-limit").config(
            r#"requests = 5
window = "soon""#,
        ))
        .start()
        .await
        .err()
        .expect("a bad window must not load");
    assert!(err.to_string().contains("window"), "{err}");
}
