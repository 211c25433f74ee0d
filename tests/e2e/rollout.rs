//! Rollout proves what a stage's `[pipeline.candidate]` does: a canary gets
//! its share of the clients and keeps each client on one version; testers
//! opt in by header; a candidate that fails more than the current version
//! is rolled back within its window and gets no request after; a shadow
//! candidate never changes a response while its disagreements are counted
//! and sampled; promotion under load loses no request and survives a
//! reload of the same manifest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::support::{
    Backend, Client, Portier, Reply, body, check, endpoints, one_upstream_with_admin, test_plugin,
    wait_until,
};

/// The `versioned` test filter as a stage (`v1`) with a candidate, whose
/// `[pipeline.candidate]` keys besides `plugin` are `candidate`.
fn versioned(candidate: &str) -> String {
    let plugin = test_plugin("versioned");
    format!(
        r#"
[[pipeline]]
plugin = "{plugin}"
role = "filter"
name = "versioned"
config = {{ version = "v1" }}

[pipeline.candidate]
plugin = "{plugin}"
{candidate}
"#,
        plugin = plugin.display()
    )
}

async fn proxy_with(pipeline: &str) -> (Portier, crate::support::RunningBackend) {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoints(&[&backend]),
        "",
        pipeline,
    ))
    .await;
    (proxy, backend)
}

/// The version that answered, from `x-version`.
#[track_caller]
fn version(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply
        .header("x-version")
        .unwrap_or_else(|| panic!("no x-version: {reply:?}"))
        .to_owned()
}

async fn post(proxy: &Portier, path: &str) -> Reply {
    let admin = proxy.admin();
    let request = admin
        .request(Method::POST, path)
        .body(body::empty())
        .expect("request");
    admin.send(request).await
}

#[tokio::test]
async fn a_ten_percent_canary_gets_ten_percent_of_the_clients() {
    let (proxy, _backend) = proxy_with(&versioned(
        r#"config = { version = "v2" }
share = 10
sticky = "header:x-user""#,
    ))
    .await;
    let client = proxy.client();
    let clients = 1000;
    let mut v2 = 0;
    for user in 0..clients {
        let reply = client
            .get_with("/", &[("x-user", &format!("user-{user}"))])
            .await;
        v2 += usize::from(version(&reply) == "v2");
    }
    // 10 % of 1000 with a binomial spread of ~9.5: 4 spreads either way.
    assert!(
        (62..=138).contains(&v2),
        "{v2} of {clients} clients ran the candidate"
    );
    let status = proxy.status().await;
    let rollout = &status["rollouts"]["versioned"];
    assert_eq!(rollout["mode"], "canary", "{rollout}");
    assert_eq!(rollout["share"], 10.0, "{rollout}");
    assert_eq!(rollout["state"], "active", "{rollout}");
    assert_eq!(rollout["candidate"]["calls"], v2 as u64, "{rollout}");
    assert_eq!(
        rollout["current"]["calls"],
        (clients - v2) as u64,
        "{rollout}"
    );
    let metrics = proxy.admin().get("/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "portier_rollout_calls_total{{stage=\"versioned\",version=\"candidate\"}} {v2}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_client_stays_on_one_version_and_testers_opt_in_by_header() {
    let (proxy, _backend) = proxy_with(&versioned(
        r#"config = { version = "v2" }
share = 50
sticky = "cookie:uid"
opt_in_header = "x-canary""#,
    ))
    .await;
    let client = proxy.client();
    let mut seen: HashMap<usize, String> = HashMap::new();
    for round in 0..4 {
        for user in 0..40 {
            let cookie = format!("theme=dark; uid={user}");
            let v = version(&client.get_with("/", &[("cookie", &cookie)]).await);
            let first = seen.entry(user).or_insert_with(|| v.clone());
            assert_eq!(*first, v, "user {user} changed version in round {round}");
        }
    }
    let on_v2 = seen.values().filter(|v| *v == "v2").count();
    assert!(
        (5..=35).contains(&on_v2),
        "a 50% canary put {on_v2} of 40 users on the candidate"
    );
    // Testers pick their version whatever their cookie says.
    let user_on = |want: &str| {
        *seen
            .iter()
            .find(|(_, v)| *v != want)
            .expect("users on both versions")
            .0
    };
    let other = user_on("v2");
    let cookie = format!("uid={other}");
    let forced = client
        .get_with("/", &[("cookie", &cookie), ("x-canary", "candidate")])
        .await;
    assert_eq!(version(&forced), "v2");
    let other = user_on("v1");
    let cookie = format!("uid={other}");
    let forced = client
        .get_with("/", &[("cookie", &cookie), ("x-canary", "current")])
        .await;
    assert_eq!(version(&forced), "v1");
}

#[tokio::test]
async fn a_candidate_that_traps_on_30_percent_is_rolled_back_within_its_window_and_gets_nothing_after()
 {
    let window = Duration::from_secs(20);
    let (proxy, _backend) = proxy_with(&versioned(
        r#"config = { version = "v2", trap_percent = 30 }
share = 50
sticky = "request"
rollback = { window = "20s", min_calls = 20, failure_ratio = 0.1 }"#,
    ))
    .await;
    let client = proxy.client();
    let started = Instant::now();
    let mut sent = 0;
    // The rollback is decided within the call that trips it, so the first
    // reply after it is already the current version's.
    loop {
        assert!(sent < 1000, "no rollback after {sent} requests");
        let reply = client.get("/").await;
        sent += 1;
        // fail-closed: a trapping candidate's requests get 503.
        assert!(
            reply.status == StatusCode::OK || reply.status == StatusCode::SERVICE_UNAVAILABLE,
            "{reply:?}"
        );
        if sent % 5 == 0 && proxy.status().await["rollouts"]["versioned"]["state"] == "rolled-back"
        {
            break;
        }
    }
    let took = started.elapsed();
    assert!(took < window, "rolled back after {took:?}, past its window");
    let status = proxy.status().await;
    let rollout = &status["rollouts"]["versioned"];
    let reason = rollout["reason"].as_str().expect("a reason");
    assert!(reason.contains("calls in the last 20s failed"), "{reason}");
    let candidate_calls = rollout["candidate"]["calls"].as_u64().unwrap();
    assert!(candidate_calls >= 20, "{rollout}");
    proxy
        .wait_for_log_line("the rollback's log line", |l| {
            l.contains("candidate rolled back") && l.contains("versioned")
        })
        .await;

    // From now on, only the current version answers.
    for _ in 0..100 {
        assert_eq!(version(&client.get("/").await), "v1");
    }
    let status = proxy.status().await;
    assert_eq!(
        status["rollouts"]["versioned"]["candidate"]["calls"], candidate_calls,
        "the candidate was called after its rollback"
    );
    let metrics = proxy.admin().get("/metrics").await.text();
    assert!(
        metrics.contains("portier_rollout_state{stage=\"versioned\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portier_rollout_rollbacks_total{stage=\"versioned\"} 1"),
        "{metrics}"
    );

    // A reload of the same manifest keeps it rolled back; the admin API
    // puts it back in service.
    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    assert_eq!(
        proxy.status().await["rollouts"]["versioned"]["state"],
        "rolled-back"
    );
    let resumed = post(&proxy, "/rollouts/versioned/resume").await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text());
    assert_eq!(
        proxy.status().await["rollouts"]["versioned"]["state"],
        "active"
    );
    let again = post(&proxy, "/rollouts/versioned/resume").await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
}

#[tokio::test]
async fn a_shadow_never_changes_a_response_and_its_disagreements_are_counted_and_sampled() {
    let (proxy, backend) = proxy_with(&versioned(
        r#"config = { version = "v2", deny_prefix = "/private" }
mode = "shadow"
sample = 100"#,
    ))
    .await;
    let client = proxy.client();
    for i in 0..20 {
        assert_eq!(version(&client.get(&format!("/private/{i}")).await), "v1");
        assert_eq!(version(&client.get(&format!("/public/{i}")).await), "v1");
    }
    assert_eq!(backend.requests(), 40, "the shadow's 403 was applied");
    // Shadow calls run after their requests: wait for the last of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = proxy.status().await;
        if status["rollouts"]["versioned"]["shadow"]["compared"] == 40 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shadow calls not all compared: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let shadow = &status["rollouts"]["versioned"]["shadow"];
    assert_eq!(shadow["disagreements"], 20, "{shadow}");
    let recent = shadow["recent"].as_array().expect("recent disagreements");
    assert_eq!(recent.len(), 16, "the sample is bounded: {shadow}");
    for d in recent {
        assert!(d["request"].as_str().unwrap().contains("/private/"), "{d}");
        assert_eq!(d["current"], "continue", "{d}");
        assert_eq!(d["candidate"], "respond 403", "{d}");
    }
    let line = proxy
        .wait_for_log_line("a disagreement's log line", |l| {
            l.contains("shadow candidate disagrees")
        })
        .await;
    assert!(line.contains("current=continue"), "{line}");
    assert!(line.contains("candidate=respond 403"), "{line}");
    assert!(line.contains("/private/"), "{line}");
    let logged = proxy.count_log_lines(|l| l.contains("shadow candidate disagrees"));
    assert!(
        (1..=5).contains(&logged),
        "disagreements are logged, at most once a second: {logged} lines"
    );
}

#[tokio::test]
async fn promotion_under_load_loses_no_request_and_outlives_a_reload() {
    let (proxy, _backend) = proxy_with(&versioned(
        r#"config = { version = "v2" }
share = 0"#,
    ))
    .await;
    let generation = proxy.generation().await;
    let stop = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let client = Client::new(proxy.addr());
        let (stop, after, served) = (stop.clone(), after.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let mut late = Vec::new();
            while !stop.load(Relaxed) {
                let promoted = after.load(Relaxed);
                let reply = client.get("/").await;
                let v = version(&reply);
                served.fetch_add(1, Relaxed);
                if promoted {
                    late.push(v);
                }
            }
            late
        }));
    }
    wait_until("load is running", Duration::from_secs(10), || {
        served.load(Relaxed) > 50
    })
    .await;
    let promoted = post(&proxy, "/rollouts/versioned/promote").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.text());
    after.store(true, Relaxed);
    let before = served.load(Relaxed);
    wait_until(
        "more load after the promotion",
        Duration::from_secs(10),
        || served.load(Relaxed) > before + 100,
    )
    .await;
    stop.store(true, Relaxed);
    for task in load {
        // `version` inside failed the task on any non-200.
        let late = task.await.expect("every request under load got a 200");
        assert!(late.iter().all(|v| v == "v2"), "after promotion: {late:?}");
    }
    let status = proxy.status().await;
    assert_eq!(status["generation"], generation + 1);
    assert_eq!(status["rollouts"]["versioned"]["state"], "promoted");
    // The stage keeps its name (and kv): the candidate is now "versioned".
    assert!(
        status["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "versioned"),
        "{status}"
    );
    // The manifest still names v2 as the candidate: a reload keeps it promoted.
    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    assert_eq!(version(&proxy.client().get("/").await), "v2");
    assert_eq!(
        post(&proxy, "/rollouts/versioned/promote").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        post(&proxy, "/rollouts/nothing/promote").await.status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_bad_candidate_is_rejected_naming_its_key() {
    let pipeline = |candidate: &str| {
        format!(
            r#"
[server]
listen = "127.0.0.1:1"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:2"]
[[pipeline]]
plugin = "headers"
[pipeline.candidate]
{candidate}
"#
        )
    };
    check(&pipeline(r#"plugin = "router""#)).assert_rejected_at("pipeline[0].candidate.plugin");
    check(&pipeline("plugin = \"headers\"\nshare = 120"))
        .assert_rejected_at("pipeline[0].candidate.share");
    check(&pipeline("plugin = \"headers\"\nsample = 10"))
        .assert_rejected_at("pipeline[0].candidate.sample");
    check(&pipeline(
        "plugin = \"headers\"\nmode = \"shadow\"\nshare = 10",
    ))
    .assert_rejected_at("pipeline[0].candidate.share");
    check(&pipeline("plugin = \"headers\"\nsticky = \"ip\""))
        .assert_rejected_at("pipeline[0].candidate.sticky");
    check(&pipeline(
        "plugin = \"headers\"\nrollback = { failure_ratio = 2.0 }",
    ))
    .assert_rejected_at("pipeline[0].candidate.rollback.failure_ratio");
    check(&pipeline(
        "plugin = \"headers\"\nconfig = { nonsense = true }",
    ))
    .assert_rejected_at("pipeline[0].candidate.config.nonsense");
}
