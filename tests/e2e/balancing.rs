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

/// A balancer stage with this config.
fn balancer(config: &str) -> String {
    format!("[[pipeline]]\nplugin = \"balancer\"\nconfig = {config}\n")
}

/// `clients` concurrent clients, each sending `each` sequential GETs.
async fn concurrent_load(proxy: &Portier, clients: usize, each: usize) -> Vec<StatusCode> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = proxy.client();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(each);
            for i in 0..each {
                got.push(client.get(&format!("/c{c}/{i}")).await.status);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a load task"));
    }
    all
}

#[tokio::test]
async fn least_request_sends_a_slow_backend_less_under_concurrency() {
    let backends = [
        Backend::new("fast").start().await,
        Backend::new("slow")
            .delay(Duration::from_millis(150))
            .start()
            .await,
    ];
    let [fast, slow] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[fast, slow]),
        "",
        &balancer(r#"{ algorithm = "least-request" }"#),
    ))
    .await;

    let got = concurrent_load(&proxy, 8, 15).await;

    assert_all_ok(&got);
    // Round-robin would give slow 60 of 120; least-request sees its
    // requests pile up and sends it only what finds it idle.
    assert!(
        slow.requests() * 5 < got.len(),
        "slow served {} of {}",
        slow.requests(),
        got.len()
    );
}

#[tokio::test]
async fn peak_ewma_avoids_a_backend_whose_answers_are_slow() {
    let backends = [
        Backend::new("fast").start().await,
        // Far slower than any hiccup of a busy test machine: a peak-EWMA
        // estimate takes a slow sample at once and forgets it over seconds,
        // so a fast endpoint that hiccuped looks slow for a while.
        Backend::new("slow")
            .delay(Duration::from_secs(1))
            .start()
            .await,
    ];
    let [fast, slow] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[fast, slow]),
        "",
        &balancer(r#"{ algorithm = "peak-ewma" }"#),
    ))
    .await;

    // One request at a time: in-flight counts are equal (0), so only the
    // latency estimate tells the endpoints apart.
    let got = statuses(&proxy.client(), 40).await;

    assert_all_ok(&got);
    assert!(
        // Round-robin would give it 20. Its first answer shows it slow, and
        // an endpoint with no sample yet is tried before it; a later pick
        // can only come after a hiccup of a busy machine raised the fast
        // one's peak.
        slow.requests() <= 5,
        "slow served {} of 40 after its first answer showed it slow",
        slow.requests()
    );
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_endpoint_and_moves_only_the_keys_of_one_that_left() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"outlier = { base_ejection = "60s" }"#,
        &balancer(r#"{ algorithm = "consistent-hash", hash_on = { header = "x-user" } }"#),
    ))
    .await;
    let client = proxy.client();
    let owner = |reply: crate::support::Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.echo().backend
    };

    let keys: Vec<String> = (0..90).map(|i| format!("user-{i}")).collect();
    let mut before = Vec::new();
    for key in &keys {
        let first = owner(client.get_with("/h", &[("x-user", key)]).await);
        let again = owner(client.get_with("/h", &[("x-user", key)]).await);
        assert_eq!(first, again, "{key} moved between two requests");
        before.push(first);
    }
    let on_b = before.iter().filter(|o| *o == "b").count();
    assert!(
        (10..=55).contains(&on_b),
        "b owns {on_b} of 90 keys: not spread"
    );

    b.stop().await;
    let mut moved = 0;
    for (key, was) in keys.iter().zip(&before) {
        let now = owner(client.get_with("/h", &[("x-user", key)]).await);
        if was == "b" {
            assert_ne!(now, "b");
            moved += 1;
        } else {
            assert_eq!(&now, was, "{key} moved although its endpoint stayed");
        }
    }
    assert_eq!(moved, on_b, "exactly b's keys moved");
}

#[tokio::test]
async fn sticky_clients_stay_on_their_endpoint_and_fail_over_when_it_dies() {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[a, b, c]),
        r#"outlier = { base_ejection = "60s" }"#,
        &balancer(r#"{ algorithm = "round-robin", sticky = { cookie = "route", secret = "0123456789abcdef0123", max_age = "1h" } }"#),
    ))
    .await;
    let client = proxy.client();

    let first = client.get("/").await;
    let set = first
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_owned();
    assert!(set.starts_with("route="), "{set}");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=3600"] {
        assert!(set.contains(attribute), "{set} lacks {attribute}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let home = first.echo().backend;

    // Round-robin alone would move every request on; the cookie keeps them home.
    for i in 0..9 {
        let reply = client
            .get_with(&format!("/{i}"), &[("cookie", &cookie)])
            .await;
        assert_eq!(reply.echo().backend, home);
        assert_eq!(
            reply.header("set-cookie"),
            None,
            "a valid cookie is not sent again"
        );
    }

    // A forged value is not honoured: the client gets a fresh cookie.
    let forged = client
        .get_with("/forged", &[("cookie", "route=AAAAAAAAAAAAAAAAAAAAAA")])
        .await;
    assert_eq!(forged.status, StatusCode::OK);
    assert!(forged.header("set-cookie").is_some());

    // Its endpoint dies: the client moves at once, without an error, and sticks again.
    backends
        .iter()
        .find(|b| b.name() == home)
        .unwrap()
        .stop()
        .await;
    let moved = client.get_with("/moved", &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text());
    let new_home = moved.echo().backend;
    assert_ne!(new_home, home);
    let new_cookie = moved
        .header_all("set-cookie")
        .last()
        .expect("a new sticky cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    for i in 0..5 {
        let reply = client
            .get_with(&format!("/after/{i}"), &[("cookie", &new_cookie)])
            .await;
        assert_eq!(reply.echo().backend, new_home);
    }
}
