//! Policy plugins proves the built-in `api-key` and `rate-limit` filters,
//! running in the real proxy: a request without a valid key never reaches
//! the backend and a valid key is stripped before it does; a client gets
//! exactly its budget of requests, however they are spread over connections
//! and instances, then 429 with `retry-after`; and clients told apart by a
//! header have budgets of their own.

use http::StatusCode;
use tokio::task::JoinSet;

use crate::support::{Backend, Portier, Reply, RunningBackend, endpoints, one_upstream};

/// One upstream (`backend`), and `stages` as the pipeline.
async fn proxy_with(backend: &RunningBackend, stages: &str) -> Portier {
    Portier::start(&one_upstream(&endpoints(&[backend]), "", stages)).await
}

const API_KEY: &str = r#"
[[pipeline]]
plugin = "api-key"
config = { keys = ["k-alpha", "k-beta"], realm = "app" }
"#;

#[tokio::test]
async fn api_key_answers_401_without_a_valid_key() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_with(&backend, API_KEY).await;
    let client = proxy.client();

    let missing = client.get("/things").await;
    let wrong = client.get_with("/things", &[("x-api-key", "k-alph")]).await;
    let other_header = client
        .get_with("/things", &[("authorization", "k-alpha")])
        .await;

    for reply in [&missing, &wrong, &other_header] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(reply.text(), "401 Unauthorized\n");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"ApiKey realm="app", header="x-api-key""#)
        );
    }
    assert_eq!(
        backend.requests(),
        0,
        "a refused request reached the backend"
    );
}

#[tokio::test]
async fn api_key_forwards_a_valid_key_without_the_key() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_with(&backend, API_KEY).await;
    let client = proxy.client();

    for key in ["k-alpha", "k-beta"] {
        let echo = client
            .get_with("/things", &[("X-Api-Key", key)])
            .await
            .echo();
        assert_eq!(echo.path, "/things");
        assert_eq!(
            echo.header("x-api-key"),
            None,
            "the backend saw the key: {echo:?}"
        );
    }
    assert_eq!(backend.requests(), 2);
}

/// The replies to `n` requests sent at once, each on its own connection.
async fn burst(proxy: &Portier, n: usize, header: Option<(&str, &str)>) -> Vec<Reply> {
    let mut requests = JoinSet::new();
    for _ in 0..n {
        let client = proxy.client();
        let header = header.map(|(h, v)| (h.to_owned(), v.to_owned()));
        requests.spawn(async move {
            match header {
                Some((name, value)) => client.get_with("/", &[(&name, &value)]).await,
                None => client.get("/").await,
            }
        });
    }
    requests.join_all().await
}

/// Assert `replies` hold exactly `ok` 200s and the rest well-formed 429s.
fn assert_budget(replies: &[Reply], ok: usize) {
    let passed = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(passed, ok, "{replies:#?}");
    for reply in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
        assert_eq!(reply.text(), "429 Too Many Requests\n");
        let retry_after: u64 = reply
            .header("retry-after")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("429 without a retry-after in seconds: {reply:?}"));
        // 5 in a 10 s sliding window, all admitted just now: the next fits
        // when the current window ends and the admitted ones have faded to
        // 4 of 5 (plugins/rate-limit/src/window.rs): at most 10 s + 2 s.
        assert!((1..=12).contains(&retry_after), "retry-after {retry_after}");
        assert_eq!(reply.header("ratelimit-limit"), Some("5"));
        assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
    }
}

#[tokio::test]
async fn rate_limit_lets_exactly_the_budget_through() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_with(
        &backend,
        r#"
[[pipeline]]
plugin = "rate-limit"
config = { requests = 5, window = "10s" }
"#,
    )
    .await;

    // Eight connections, so eight client ports: the budget is per IP, and
    // exact however the host spreads the calls over instances.
    let replies = burst(&proxy, 8, None).await;

    assert_budget(&replies, 5);
    assert_eq!(backend.requests(), 5);
}

#[tokio::test]
async fn rate_limit_by_header_gives_each_client_its_own_budget() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_with(
        &backend,
        r#"
[[pipeline]]
plugin = "rate-limit"
config = { requests = 5, window = "10s", key = { header = "x-client" } }
"#,
    )
    .await;

    let first = burst(&proxy, 8, Some(("x-client", "alice"))).await;
    let second = burst(&proxy, 8, Some(("x-client", "bob"))).await;
    // Without the header, the client's IP is its key: a third budget.
    let anonymous = burst(&proxy, 6, None).await;

    assert_budget(&first, 5);
    assert_budget(&second, 5);
    assert_budget(&anonymous, 5);
    assert_eq!(backend.requests(), 15);
}
