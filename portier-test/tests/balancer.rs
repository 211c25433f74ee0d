//! The built-in balancer, run in-process through the harness: its
//! algorithms' choices over a made-up upstream, and its sticky cookie.

use portier_test::{Harness, Request, Stage};

const UPSTREAM: &str = r#"
[[upstreams]]
name = "api"
endpoints = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 3 }]
"#;

async fn balancer(config: &str) -> Harness {
    Harness::builder()
        .manifest(UPSTREAM)
        .stage(Stage::builtin("balancer").config(config))
        .start()
        .await
        .unwrap()
}

async fn picks(proxy: &Harness, n: usize, request: impl Fn() -> Request) -> Vec<usize> {
    let mut picks = Vec::new();
    for _ in 0..n {
        picks.push(proxy.request(request()).await.endpoint_index().unwrap());
    }
    picks
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let proxy = balancer(r#"algorithm = "weighted-round-robin""#).await;
    let picks = picks(&proxy, 8, || Request::get("/")).await;
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 6, "{picks:?}");
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let proxy = balancer(r#"algorithm = "least-request""#).await;
    // Endpoint 1 has weight 3: four in flight there weigh more than none on 0.
    let _busy: Vec<_> = (0..4).map(|_| proxy.in_flight("api", 1)).collect();
    assert_eq!(picks(&proxy, 3, || Request::get("/")).await, [0, 0, 0]);
}

#[tokio::test]
async fn consistent_hash_sends_one_client_to_one_endpoint() {
    let proxy = balancer(
        r#"algorithm = "consistent-hash"
hash_on = { header = "x-user" }"#,
    )
    .await;
    for user in ["ada", "grace", "linus"] {
        let seen = picks(&proxy, 5, || Request::get("/").header("x-user", user)).await;
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{user}: {seen:?}");
    }
}

#[tokio::test]
async fn a_sticky_session_comes_back_to_its_endpoint() {
    let proxy = balancer(r#"sticky = { secret = "0123456789abcdef0123" }"#).await;
    let first = proxy.request(Request::get("/")).await;
    let cookie = first
        .response_headers()
        .into_iter()
        .find(|(name, _)| name == "set-cookie")
        .map(|(_, value)| value)
        .expect("a new session gets a cookie");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let endpoint = first.endpoint_index();
    for _ in 0..4 {
        let again = proxy
            .request(Request::get("/").header("cookie", &pair))
            .await;
        assert_eq!(again.endpoint_index(), endpoint);
    }
}

#[tokio::test]
async fn an_unknown_algorithm_is_refused_at_load_naming_the_key() {
    let err = Harness::builder()
        .manifest(UPSTREAM)
        .stage(Stage::builtin("balancer").config(r#"algorithm = "fastest""#))
        .start()
        .await
        .err()
        .expect("an unknown algorithm must not load");
    assert!(err.to_string().contains("algorithm"), "{err}");
}
