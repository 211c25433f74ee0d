//! Balancing proves requests are spread exactly as the algorithm promises
//! (round-robin, weighted round-robin, and the host's own round-robin when no
//! balancer stage exists), and that passive health keeps a dead endpoint out
//! of rotation: a killed backend costs no request (it is retried elsewhere),
//! a dead upstream answers 503 once every endpoint is ejected, and an
//! ejected endpoint comes back after `outlier.base_ejection`.

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
async fn killed_backend_costs_no_request_then_the_others_share_the_load() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    // A long ejection: the dead endpoint must not come back during the
    // test however slowly it runs.
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"outlier = { base_ejection = "60s" }"#,
        ROUND_ROBIN,
    ))
    .await;
    let client = proxy.client();

    // Every backend serves, and the proxy now pools a keep-alive connection to each.
    let warm = statuses(&client, 30).await;
    assert_all_ok(&warm);
    let (a_before, c_before) = (a.requests(), c.requests());

    // Kills the listener and the pooled connection: the proxy sees the
    // pooled connection closed, a new one refused, ejects b and sends the
    // request (nothing of which was sent) to another endpoint.
    b.stop().await;
    let after = statuses(&client, 30).await;

    assert_all_ok(&after);
    let (a_after, c_after) = (a.requests() - a_before, c.requests() - c_before);
    assert_eq!(a_after + c_after, 30, "{after:?}");
    // Round-robin over the two survivors: neither is starved by the dead
    // one's slot. The request that met b took a second turn for its retry,
    // so the split may be one request further off than an even one.
    assert!(
        a_after.abs_diff(c_after) <= 2,
        "a served {a_after}, c served {c_after}"
    );
}

#[tokio::test]
async fn all_backends_killed_gives_502_while_endpoints_are_tried_then_503() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"outlier = { base_ejection = "60s", max_ejected_percent = 100 }"#,
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

    // The first request tries two endpoints (one retry), the second the
    // third; each refusal ejects its endpoint; then none is left.
    let mut expected = vec![StatusCode::BAD_GATEWAY; 2];
    expected.extend([StatusCode::SERVICE_UNAVAILABLE; 8]);
    assert_eq!(after, expected);

    let reply = client.get("/dead").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    for backend in &backends {
        assert_no_backend_leak(&reply, backend.addr());
    }
}

#[tokio::test]
async fn ejected_endpoint_returns_to_rotation_after_base_ejection() {
    let ejection = Duration::from_millis(1000);
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    // No retries, so that the refusal shows as a 502 when it happens.
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"outlier = { base_ejection = "1s" }
retry = { attempts = 1 }"#,
        ROUND_ROBIN,
    ))
    .await;
    let client = proxy.client();

    // Never connected to, b now refuses: round-robin reaches it once in three.
    b.stop().await;
    let mut refused_at = None;
    let mut got = Vec::new();
    for i in 0..3 {
        // Taken before the request: the proxy ejects b no earlier than this.
        let sent_at = Instant::now();
        let status = client.get(&format!("/r/{i}")).await.status;
        if status == StatusCode::BAD_GATEWAY {
            refused_at = Some(sent_at);
        }
        got.push(status);
    }
    assert_eq!(
        got.iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        1,
        "b refused exactly once in a round: {got:?}"
    );
    let refused_at = refused_at.expect("counted above");

    // The same address comes back to life at once; the proxy must still wait out the ejection.
    let revived = Backend::new("b-again").listen_on(b.addr()).start().await;
    let deadline = refused_at + ejection + Duration::from_secs(10);
    let mut i = 0;
    while revived.requests() == 0 {
        assert!(Instant::now() < deadline, "b never came back into rotation");
        let reply = client.get(&format!("/again/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From before the refusal to after b's first request: no slack needed.
    let waited = refused_at.elapsed();
    assert!(
        waited >= ejection,
        "retried after {waited:?}, before the {ejection:?} ejection"
    );
}
