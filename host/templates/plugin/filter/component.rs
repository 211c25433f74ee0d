//! The built component, run in-process by the portier-test harness.

use portier_test::{Harness, Request, Stage};

async fn proxy(config: &str) -> Harness {
    Harness::builder()
        .stage(Stage::filter(portier_test::component!()).config(config))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn refuses_a_request_without_the_required_header() {
    let proxy = proxy(r#"require = "x-user""#).await;
    let out = proxy.request(Request::get("/")).await;
    assert_eq!(out.status(), Some(400));
    assert!(out.response().unwrap().text().contains("x-user"));
}

#[tokio::test]
async fn forwards_a_request_with_it_and_says_what_it_checked() {
    let proxy = proxy(r#"require = "x-user""#).await;
    let out = proxy.request(Request::get("/").header("x-user", "ada")).await;
    assert!(out.forwarded());
    assert_eq!(out.header("x-checked"), Some("x-user"));
}

#[tokio::test]
async fn a_config_without_a_valid_header_name_is_refused_at_load() {
    let err = Harness::builder()
        .stage(Stage::filter(portier_test::component!()).config(r#"require = "not a header""#))
        .start()
        .await
        .err()
        .expect("an invalid header name must not load");
    assert!(err.to_string().contains("require"), "{err}");
}
