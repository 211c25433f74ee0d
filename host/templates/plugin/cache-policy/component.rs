//! The built component, run in-process by the portier-test harness.

use portier_test::{Harness, Request, Response, Stage};

async fn proxy() -> Harness {
    Harness::builder()
        .stage(Stage::cache_policy(portier_test::component!()).config(
            r#"
            prefixes = ["/static/"]
            ttl = 30
            "#,
        ))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_get_under_a_prefix_is_looked_up_by_host_path_and_query() {
    let proxy = proxy().await;
    let out = proxy
        .request(Request::get("/static/app.js?v=2").header("host", "example.com"))
        .await;
    assert_eq!(out.cache().as_deref(), Some("MISS"));
    assert_eq!(out.cache_key(), Some("example.com/static/app.js?v=2"));
}

#[tokio::test]
async fn other_paths_and_methods_bypass_the_cache() {
    let proxy = proxy().await;
    let api = proxy.request(Request::get("/api/users")).await;
    assert_eq!(api.cache().as_deref(), Some("BYPASS"));
    let post = proxy.request(Request::post("/static/form")).await;
    assert_eq!(post.cache().as_deref(), Some("BYPASS"));
}

#[tokio::test]
async fn a_200_is_stored_for_ttl_unless_the_upstream_refuses() {
    let proxy = proxy().await;
    let out = proxy.request(Request::get("/static/app.js")).await;
    assert_eq!(proxy.storable(&out, &Response::new(200)).await, Ok(Some(30)));
    let private = Response::new(200).header("cache-control", "max-age=60, private");
    assert_eq!(proxy.storable(&out, &private).await, Ok(None));
    assert_eq!(proxy.storable(&out, &Response::new(404)).await, Ok(None));
}
