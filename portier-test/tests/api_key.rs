//! The built-in api-key filter, run in-process through the harness: which
//! keys pass, what the upstream is left to see, and the 401 the rest get.

use portier_test::{Harness, Request, Stage};

/// The SHA-256 of "password", as `printf %s password | sha256sum` prints it.
const DIGEST_OF_PASSWORD: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

async fn api_key() -> Harness {
    Harness::builder()
        .stage(Stage::builtin("api-key").config(&format!(
            r#"
            realm = "api"
            identity_header = "x-api-client"
            keys = [
                {{ sha256 = "{DIGEST_OF_PASSWORD}", identity = "billing" }},
                {{ key = "k-ci-0001", identity = "ci" }},
                "k-bare-0002",
            ]
            "#
        )))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_valid_key_passes_without_its_header_and_names_its_client() {
    let proxy = api_key().await;
    let out = proxy
        .request(
            Request::get("/orders")
                .header("x-api-key", "k-ci-0001")
                .header("x-api-client", "root"),
        )
        .await;
    assert!(out.forwarded(), "{:?}", out.status());
    // The upstream never sees the key, only whose it was.
    assert_eq!(out.header("x-api-key"), None);
    assert_eq!(out.headers("x-api-client"), ["ci"]);
    assert_eq!(out.context("identity"), Some("ci"));
    // A key given only as its digest passes too.
    let out = proxy
        .request(Request::get("/").header("x-api-key", "password"))
        .await;
    assert_eq!(out.context("identity"), Some("billing"));
    assert_eq!(out.headers("x-api-client"), ["billing"]);
}

#[tokio::test]
async fn a_key_without_identity_passes_but_the_clients_identity_header_is_dropped() {
    let proxy = api_key().await;
    let out = proxy
        .request(
            Request::get("/")
                .header("x-api-key", "k-bare-0002")
                .header("x-api-client", "billing"),
        )
        .await;
    assert!(out.forwarded());
    assert_eq!(out.header("x-api-client"), None);
    assert_eq!(out.context("identity"), None);
}

#[tokio::test]
async fn missing_and_wrong_keys_get_the_same_401_challenge() {
    let proxy = api_key().await;
    for request in [
        Request::get("/"),
        Request::get("/").header("x-api-key", "k-ci-000"),
        Request::get("/").header("x-api-key", "K-CI-0001"),
        // The digest itself is not a key.
        Request::get("/").header("x-api-key", DIGEST_OF_PASSWORD),
    ] {
        let out = proxy.request(request).await;
        assert!(!out.forwarded());
        assert_eq!(out.stopped_at(), Some("api-key"));
        let answer = out.response().expect("the filter answers itself");
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.get("www-authenticate"),
            Some(r#"ApiKey realm="api", header="x-api-key""#)
        );
        assert_eq!(answer.text(), "401 Unauthorized\n");
    }
}

#[tokio::test]
async fn a_configured_header_carries_the_key_as_clients_send_it() {
    let proxy = Harness::builder()
        .stage(Stage::builtin("api-key").config(
            r#"header = "Authorization"
keys = ["Bearer 3f9c-0001"]"#,
        ))
        .start()
        .await
        .unwrap();
    let out = proxy
        .request(Request::get("/").header("authorization", "Bearer 3f9c-0001"))
        .await;
    assert!(out.forwarded());
    assert_eq!(out.header("authorization"), None);
    // The old header is nothing now.
    let out = proxy
        .request(Request::get("/").header("x-api-key", "Bearer 3f9c-0001"))
        .await;
    assert_eq!(out.status(), Some(401));
    assert_eq!(
        out.response().unwrap().get("www-authenticate"),
        Some(r#"ApiKey header="authorization""#)
    );
}

#[tokio::test]
async fn an_empty_key_list_is_refused_at_load_with_the_key() {
    let err = Harness::builder()
        .stage(Stage::builtin("api-key").config("keys = []"))
        .start()
        .await
        .err()
        .expect("an api-key stage without keys must not load");
    assert!(
        err.to_string()
            .contains("pipeline[0].config.keys: must list at least one key"),
        "{err}"
    );
}
