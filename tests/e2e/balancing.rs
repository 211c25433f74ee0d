//! Balancing proves requests are spread exactly as the algorithm promises
//! (round-robin, weighted round-robin, and the host's own round-robin when no
//! balancer stage exists), and that passive health keeps a dead endpoint out
//! of rotation: a killed backend costs at most one 502, a dead upstream
//! answers 503, and a refused endpoint comes back after `refused_cooldown`.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::{
    Backend, Client, Portier, RunningBackend, assert_no_backend_leak, endpoints, one_upstream,
};

/// Sequential GETs; the statuses in order.
async fn statuses(client: &Client, n: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        statuses.push(client.get(&format!("/r/{i}")).await.status);
    }
    statuses
}

/// Assert every one of `statuses` is 200 OK.
fn assert_all_ok(statuses: &[StatusCode]) {
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

const ROUND_ROBIN: &str = r#"
[[pipeline]]
plugin = "balancer"
config = { algorithm = "round-robin" }
"#;

async fn three_backends() -> [RunningBackend; 3] {
    [
        Backend::new("a").start().await,
        Backend::new("b").start().await,
        Backend::new("c").start().await,
    ]
}

fn counts(backends: &[RunningBackend]) -> Vec<usize> {
    backends.iter().map(RunningBackend::requests).collect()
}

#[tokio::test]
async fn round_robin_gives_each_of_three_exactly_100_of_300() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(&endpoints(&[a, b, c]), "", ROUND_ROBIN)).await;

    let got = statuses(&proxy.client(), 300).await;

    assert_all_ok(&got);
    assert_eq!(counts(&backends), [100, 100, 100]);
}

#[tokio::test]
async fn weighted_round_robin_3_to_1_gives_300_and_100_of_400() {
    let backends = [
        Backend::new("heavy").start().await,
        Backend::new("light").start().await,
    ];
    let [heavy, light] = &backends;
    let endpoints = format!(
        r#"[{{ address = "{}", weight = 3 }}, {{ address = "{}", weight = 1 }}]"#,
        heavy.addr(),
        light.addr()
    );
    let pipeline = r#"
[[pipeline]]
plugin = "balancer"
config = { algorithm = "weighted-round-robin" }
"#;
    let proxy = Portier::start(&one_upstream(&endpoints, "", pipeline)).await;

    let got = statuses(&proxy.client(), 400).await;

    assert_all_ok(&got);
    assert_eq!(counts(&backends), [300, 100]);
}

#[tokio::test]
async fn host_round_robins_when_there_is_no_balancer_stage() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(&endpoints(&[a, b, c]), "", "")).await;

    let got = statuses(&proxy.client(), 30).await;

    assert_all_ok(&got);
    assert_eq!(counts(&backends), [10, 10, 10]);
}

#[tokio::test]
async fn killed_backend_costs_at_most_one_502_then_the_others_serve() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    // A long cooldown: the dead endpoint must not be retried during the test
    // however slowly it runs, or each retry would cost another 502.
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"refused_cooldown = "60s""#,
        ROUND_ROBIN,
    ))
    .await;
    let client = proxy.client();

    // Every backend serves, and the proxy now pools a keep-alive connection to each.
    let warm = statuses(&client, 30).await;
    assert_all_ok(&warm);
    let (a_before, c_before) = (a.requests(), c.requests());

    // Kills the listener and the pooled connection: the proxy's next attempt is refused.
    b.stop().await;
    let after = statuses(&client, 30).await;

    let failed: Vec<_> = after.iter().filter(|s| **s != StatusCode::OK).collect();
    assert!(
        failed.len() <= 1,
        "more than one failure after the kill: {after:?}"
    );
    assert!(
        failed.iter().all(|s| **s == StatusCode::BAD_GATEWAY),
        "{after:?}"
    );
    let (a_after, c_after) = (a.requests() - a_before, c.requests() - c_before);
    assert_eq!(a_after + c_after, 30 - failed.len(), "{after:?}");
    // Both survivors share the load; neither is starved by the dead one's slot.
    assert!(
        a_after >= 5 && c_after >= 5,
        "a served {a_after}, c served {c_after}"
    );
}

#[tokio::test]
async fn all_backends_killed_gives_503_after_at_most_one_502_each() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"refused_cooldown = "60s""#,
        ROUND_ROBIN,
    ))
    .await;
    let client = proxy.client();
    let warm = statuses(&client, 3).await;
    assert_all_ok(&warm);

    for backend in &backends {
        backend.stop().await;
    }
    let after = statuses(&client, 10).await;

    let bad_gateways = after
        .iter()
        .filter(|s| **s == StatusCode::BAD_GATEWAY)
        .count();
    assert!(
        bad_gateways <= 3,
        "more than one 502 per backend: {after:?}"
    );
    // Once every endpoint is known dead, it stays 503: no 502 after the first 503.
    let first_503 = after
        .iter()
        .position(|s| *s == StatusCode::SERVICE_UNAVAILABLE);
    let first_503 = first_503.unwrap_or_else(|| panic!("never 503: {after:?}"));
    assert!(
        after[first_503..]
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{after:?}"
    );
    assert!(
        after[..first_503]
            .iter()
            .all(|s| *s == StatusCode::BAD_GATEWAY),
        "{after:?}"
    );

    let reply = client.get("/dead").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    for backend in &backends {
        assert_no_backend_leak(&reply, backend.addr());
    }
}

#[tokio::test]
async fn refused_endpoint_returns_to_rotation_after_cooldown() {
    let cooldown = Duration::from_millis(1000);
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"refused_cooldown = "1s""#,
        ROUND_ROBIN,
    ))
    .await;
    let client = proxy.client();

    b.stop().await;
    // Round-robin reaches b within three requests (a fourth in case one more
    // went to a stale pooled connection first).
    let got = statuses(&client, 4).await;
    assert!(
        got.contains(&StatusCode::BAD_GATEWAY),
        "the dead endpoint was never tried: {got:?}"
    );
    let refused_at = Instant::now();

    // The same address comes back to life at once; the proxy must still wait out the cooldown.
    let revived = Backend::new("b-again").listen_on(b.addr()).start().await;
    let deadline = refused_at + cooldown + Duration::from_secs(10);
    let mut i = 0;
    while revived.requests() == 0 {
        assert!(Instant::now() < deadline, "b never came back into rotation");
        let reply = client.get(&format!("/again/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Small slack: our clock started a moment after the proxy's.
    let waited = refused_at.elapsed();
    assert!(
        waited >= cooldown - Duration::from_millis(200),
        "retried after {waited:?}, before the cooldown"
    );
}
