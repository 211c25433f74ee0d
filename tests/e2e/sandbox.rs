//! Sandbox proves a broken plugin costs exactly the requests it breaks and
//! nothing else. Under concurrent load, a filter that spins forever, grows
//! memory without bound or panics gets its stage's failure policy for the
//! requests it misbehaves on (fail-closed: exactly 503; fail-open: the stage
//! is skipped and the backend answers) while every other request is served
//! and the process stays up; a plugin spinning on the only worker does not
//! hold it, so other requests go on at a pace measured against the same
//! proxy's unhindered one; failures are counted, logged with the stage name,
//! and a stage failing too often is quarantined for `quarantine.duration`
//! and then tried again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::{
    Backend, Client, Portier, Reply, endpoint, one_upstream_with_admin, test_plugin,
};

/// The stage name the tests give the misbehaving filter; logs and `/status` must use it.
const STAGE: &str = "troublemaker";

/// The proxy's own answer for a fail-closed stage.
const FAIL_CLOSED_BODY: &str = "503 Service Unavailable\n";

/// Concurrent clients in a load run, each on its own keep-alive connection.
const CLIENTS: usize = 6;
/// Requests per client; every [`MISBEHAVE_EVERY`]th one asks the plugin to misbehave.
const REQUESTS_PER_CLIENT: usize = 40;
const MISBEHAVE_EVERY: usize = 4;
/// The whole load run must end within this (every request is bounded too).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// One upstream over `backend`, admin listener, and the `misbehave` filter
/// named [`STAGE`] with `mode`, `on_error` and extra stage keys.
fn manifest(backend: SocketAddr, mode: &str, on_error: &str, stage_extra: &str) -> String {
    let pipeline = format!(
        r#"
[[pipeline]]
plugin = "{plugin}"
name = "{STAGE}"
role = "filter"
on_error = "{on_error}"
{stage_extra}
config = {{ mode = "{mode}" }}
"#,
        plugin = test_plugin("misbehave").display(),
    );
    one_upstream_with_admin(&endpoint(backend), "", &pipeline)
}

/// What one request of a load run got.
struct Sent {
    misbehaving: bool,
    reply: Reply,
}

/// GET `/` through `client`, with `x-misbehave` when asked.
async fn get(client: &Client, path: &str, misbehave: bool) -> Reply {
    let headers: &[_] = if misbehave {
        &[("x-misbehave", "1")]
    } else {
        &[]
    };
    client.get_with(path, headers).await
}

/// [`CLIENTS`] concurrent clients send [`REQUESTS_PER_CLIENT`] requests each;
/// every [`MISBEHAVE_EVERY`]th carries `x-misbehave`.
async fn mixed_load(proxy: &Portier) -> Vec<Sent> {
    load(proxy, REQUESTS_PER_CLIENT, MISBEHAVE_EVERY).await
}

/// [`CLIENTS`] concurrent clients send `per_client` requests each; every
/// `every`th carries `x-misbehave`.
async fn load(proxy: &Portier, per_client: usize, every: usize) -> Vec<Sent> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let client = proxy.client();
        tasks.spawn(async move {
            let mut sent = Vec::with_capacity(per_client);
            for i in 0..per_client {
                // Offset per client, so misbehaving requests overlap good ones.
                let misbehaving = (i + c) % every == 0;
                let reply = get(&client, &format!("/load/{c}/{i}"), misbehaving).await;
                sent.push(Sent { misbehaving, reply });
            }
            sent
        });
    }
    tokio::time::timeout(LOAD_TIMEOUT, tasks.join_all())
        .await
        .unwrap_or_else(|_| panic!("load run did not finish within {LOAD_TIMEOUT:?}"))
        .into_iter()
        .flatten()
        .collect()
}

/// The median of some latencies (the upper one of an even count).
fn median(latencies: &[Duration]) -> Duration {
    assert!(!latencies.is_empty(), "no latencies to rank");
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// `failures` of the stage named [`STAGE`] in `/status`.
async fn stage_status(proxy: &Portier) -> serde_json::Value {
    let status = proxy.status().await;
    status["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["name"] == STAGE))
        .cloned()
        .unwrap_or_else(|| panic!("/status lists no stage {STAGE}: {status}"))
}

/// How the plugin misbehaves in one test, and how the log must tell.
struct Misbehaviour {
    /// `config.mode`.
    mode: &'static str,
    /// Extra stage keys.
    stage_extra: &'static str,
    /// Must appear in the log after the failures.
    reason: &'static str,
    /// Must not appear: the failures were not for some other reason.
    not_reason: &'static str,
}

/// Loops until the call's budget of running time is spent.
const SPIN: Misbehaviour = Misbehaviour {
    mode: "spin",
    stage_extra: "",
    reason: "budget",
    not_reason: "plugin trapped",
};

/// Grows memory until the default 16 MiB cap traps it. A generous time
/// budget, so it is the memory cap that stops it and not the deadline (at
/// the default 10 ms a cold instance may not reach 16 MiB in time).
const ALLOC: Misbehaviour = Misbehaviour {
    mode: "alloc",
    stage_extra: r#"call_timeout = "1s""#,
    reason: "plugin trapped",
    not_reason: "budget",
};

/// Panics: a trap, logged as one line naming the plugin's frame (the wasm
/// backtrace only at debug level), and the panic message the SDK logs.
const PANIC: Misbehaviour = Misbehaviour {
    mode: "panic",
    stage_extra: "",
    reason: "plugin trapped: wasm trap: wasm `unreachable` instruction executed (in on-request)",
    not_reason: "wasm backtrace",
};

/// Run the mixed load against a misbehaviour under `on_error` (quarantine
/// off, so every failure is counted and none spills onto good requests) and
/// check everything the module docs promise.
async fn only_misbehaving_requests_get_the_policy(how: Misbehaviour, on_error: &str) {
    let Misbehaviour {
        mode,
        stage_extra,
        reason,
        not_reason,
    } = how;
    let backend = Backend::new("app").start().await;
    let mut proxy = Portier::start(&manifest(
        backend.addr(),
        mode,
        on_error,
        &format!("quarantine = {{ enabled = false }}\n{stage_extra}"),
    ))
    .await;

    let sent = mixed_load(&proxy).await;

    let (bad, good): (Vec<&Sent>, Vec<&Sent>) = sent.iter().partition(|s| s.misbehaving);
    assert_eq!(sent.len(), CLIENTS * REQUESTS_PER_CLIENT);
    assert!(!bad.is_empty() && !good.is_empty());
    for s in &good {
        let echo = s.reply.echo();
        assert_eq!(echo.backend, "app");
        assert_eq!(echo.header("x-misbehave"), None);
    }
    for s in &bad {
        match on_error {
            "fail-closed" => {
                assert_eq!(
                    s.reply.status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a misbehaving request under fail-closed: {:?}",
                    s.reply
                );
                assert_eq!(s.reply.text(), FAIL_CLOSED_BODY);
            }
            "fail-open" => {
                // The stage is skipped: the request reaches the backend as sent.
                let echo = s.reply.echo();
                assert_eq!(echo.backend, "app");
                assert_eq!(echo.header("x-misbehave"), Some("1"));
            }
            other => unreachable!("policy {other}"),
        }
    }
    let forwarded = if on_error == "fail-closed" {
        good.len()
    } else {
        sent.len()
    };
    assert_eq!(
        backend.requests(),
        forwarded,
        "requests that reached the backend ({} misbehaving, {} well-behaved)",
        bad.len(),
        good.len()
    );

    proxy.assert_alive();
    let stage = stage_status(&proxy).await;
    assert_eq!(
        stage["failures"],
        bad.len(),
        "/status counts one failure per misbehaving request: {stage}"
    );
    assert_eq!(stage["quarantined"], false, "{stage}");
    let line = proxy
        .wait_for_log_line("reporting the failed call", |l| {
            l.contains("plugin call failed") && l.contains(STAGE)
        })
        .await;
    assert!(line.contains("ERROR"), "not an ERROR line: {line}");
    let logs = proxy.logs();
    assert!(
        logs.contains(reason) && !logs.contains(not_reason),
        "the log after a plugin that {mode}s should say {reason:?}, never {not_reason:?}:\n{logs}"
    );
    // Still serving, after all that.
    get(&proxy.client(), "/after", false).await.echo();
    proxy.assert_alive();
}

#[tokio::test]
async fn spinning_plugin_fails_closed_with_503_for_exactly_the_requests_it_spins_on() {
    only_misbehaving_requests_get_the_policy(SPIN, "fail-closed").await;
}

#[tokio::test]
async fn spinning_plugin_fails_open_so_the_backend_answers_the_requests_it_spins_on() {
    only_misbehaving_requests_get_the_policy(SPIN, "fail-open").await;
}

#[tokio::test]
async fn runaway_allocation_fails_closed_with_503_for_exactly_the_requests_that_allocate() {
    only_misbehaving_requests_get_the_policy(ALLOC, "fail-closed").await;
}

#[tokio::test]
async fn runaway_allocation_fails_open_so_the_backend_answers_the_requests_that_allocate() {
    only_misbehaving_requests_get_the_policy(ALLOC, "fail-open").await;
}

#[tokio::test]
async fn panicking_plugin_fails_closed_with_503_for_exactly_the_requests_it_panics_on() {
    only_misbehaving_requests_get_the_policy(PANIC, "fail-closed").await;
}

#[tokio::test]
async fn panicking_plugin_fails_open_so_the_backend_answers_the_requests_it_panics_on() {
    only_misbehaving_requests_get_the_policy(PANIC, "fail-open").await;
}

#[tokio::test]
async fn plugin_panicking_on_every_tenth_request_costs_exactly_every_tenth_request() {
    const N: usize = 100;
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(
        backend.addr(),
        "panic-every-10th",
        "fail-closed",
        "quarantine = { enabled = false }",
    ))
    .await;
    let client = proxy.client();

    let mut failed = Vec::new();
    for i in 1..=N {
        let reply = get(&client, &format!("/seq/{i}"), false).await;
        match reply.status {
            StatusCode::OK => assert_eq!(reply.echo().backend, "app"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.text(), FAIL_CLOSED_BODY);
                failed.push(i);
            }
            other => panic!("request {i}: unexpected {other}: {}", reply.text()),
        }
    }

    // The plugin counts calls across instances in kv, so the failures are
    // the 10th, 20th, ... request: a fresh instance after each trap changes nothing.
    let expected: Vec<usize> = (1..=N).filter(|i| i % 10 == 0).collect();
    assert_eq!(failed, expected, "which of {N} sequential requests got 503");
    assert_eq!(backend.requests(), N - N / 10);
    assert_eq!(stage_status(&proxy).await["failures"], N / 10);
}

#[tokio::test]
async fn stage_failing_too_often_is_quarantined_then_tried_again_after_the_duration() {
    // Long enough for the checks made while quarantined to finish inside it
    // on a busy 2-core box; short enough to wait out.
    let duration = Duration::from_secs(3);
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(
        backend.addr(),
        "panic",
        "fail-closed",
        r#"quarantine = { failure_ratio = 0.5, min_calls = 5, window = "10s", duration = "3s" }"#,
    ))
    .await;
    let client = proxy.client();
    let failed_calls = |proxy: &Portier| {
        proxy.count_log_lines(|l| l.contains("plugin call failed") && l.contains(STAGE))
    };

    // Three failures are below the minimum of five calls: the stage is
    // still called, and a well-behaved request still passes.
    for i in 0..3 {
        assert_eq!(
            get(&client, &format!("/bad/{i}"), true).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    get(&client, "/good/before", false).await.echo();
    assert_eq!(stage_status(&proxy).await["quarantined"], false);

    // The fourth failure makes five calls, four of them failed: over half.
    let fourth = Instant::now();
    assert_eq!(
        get(&client, "/bad/3", true).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Quarantined: a request the plugin would pass gets the policy anyway,
    // so the plugin was not called; nor is it called for misbehaving ones
    // (no new failure counted or logged).
    let during = get(&client, "/good/during", false).await;
    assert_eq!(
        during.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        during.text()
    );
    assert_eq!(during.text(), FAIL_CLOSED_BODY);
    assert_eq!(
        get(&client, "/bad/during", true).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let stage = stage_status(&proxy).await;
    assert_eq!(stage["quarantined"], true, "{stage}");
    assert_eq!(
        stage["failures"], 4,
        "calls made during the quarantine: {stage}"
    );
    let line = proxy
        .wait_for_log_line("announcing the quarantine", |l| {
            l.contains("stage quarantined") && l.contains(STAGE)
        })
        .await;
    assert!(line.contains(" ERROR "), "not an ERROR line: {line}");
    assert!(
        line.contains("for_ms=3000"),
        "the duration is not logged: {line}"
    );
    // Four identical failures, one line: repeats within 10 s are folded
    // (a client that can make a plugin fail cannot multiply the log).
    assert_eq!(failed_calls(&proxy), 1, "{}", proxy.logs());
    assert!(
        fourth.elapsed() < duration,
        "the checks above outlasted the quarantine; they prove nothing"
    );

    // After the duration the stage is called again (bounded wait).
    let deadline = fourth + duration + Duration::from_secs(5);
    let recovered = loop {
        let reply = get(&client, "/good/after", false).await;
        if reply.status == StatusCode::OK {
            break fourth.elapsed();
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(
            Instant::now() < deadline,
            "still quarantined 5 s after the {duration:?} duration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        recovered >= duration,
        "quarantine ended after {recovered:?}, before its {duration:?}"
    );
    assert_eq!(stage_status(&proxy).await["quarantined"], false);
    // The plugin is really back: it fails again when asked to.
    assert_eq!(
        get(&client, "/bad/after", true).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(stage_status(&proxy).await["failures"], 5);
    assert_eq!(failed_calls(&proxy), 1, "{}", proxy.logs());
}

#[tokio::test]
async fn quarantined_fail_open_stage_is_skipped_without_being_called() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(
        backend.addr(),
        "panic",
        "fail-open",
        r#"quarantine = { failure_ratio = 0.5, min_calls = 2, window = "10s", duration = "30s" }"#,
    ))
    .await;
    let client = proxy.client();

    for i in 0..2 {
        get(&client, &format!("/bad/{i}"), true).await.echo();
    }
    let stage = stage_status(&proxy).await;
    assert_eq!(stage["quarantined"], true, "{stage}");

    // Misbehaving requests pass to the backend and are no longer failures:
    // the stage is skipped, not called.
    for i in 0..5 {
        let echo = get(&client, &format!("/skipped/{i}"), true).await.echo();
        assert_eq!(echo.header("x-misbehave"), Some("1"));
    }
    assert_eq!(stage_status(&proxy).await["failures"], 2);
    assert_eq!(backend.requests(), 7);
}

#[tokio::test]
async fn spinning_plugin_does_not_hold_the_only_worker() {
    // One worker thread and a long budget: if a spinning call held its
    // worker, every other request would wait for the rest of the spin; if it
    // yielded without letting the worker poll its I/O driver, each socket
    // event would wait ~60 task polls (tokio's event_interval), one epoch
    // tick each: over 100 ms per request. Yielding properly, a request waits
    // a tick or two per event: a few ms.
    let budget = Duration::from_millis(500);
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(
        &manifest(
            backend.addr(),
            "spin",
            "fail-closed",
            "quarantine = { enabled = false }\ncall_timeout = \"500ms\"",
        )
        .replacen("[server]\n", "[server]\nworkers = 1\n", 1),
    )
    .await;
    let client = proxy.client();

    // The baseline: the same requests on the same connection, nothing spinning.
    let mut baseline = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        get(&client, &format!("/baseline/{i}"), false).await.echo();
        baseline.push(started.elapsed());
    }

    let spinner = {
        let client = proxy.client();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = get(&client, "/spin", true).await;
            (reply, started.elapsed())
        })
    };
    // Measured from the moment the plugin says it spins, not from a guess.
    proxy
        .wait_for_log_line("from the plugin that it spins", |l| {
            l.contains("spinning on /spin")
        })
        .await;

    let mut meanwhile = Vec::new();
    while !spinner.is_finished() && meanwhile.len() < 1000 {
        let started = Instant::now();
        get(&client, &format!("/meanwhile/{}", meanwhile.len()), false)
            .await
            .echo();
        meanwhile.push(started.elapsed());
    }
    let (reply, spun) = spinner.await.expect("the spinning request");
    let (baseline, during) = (median(&baseline), median(&meanwhile));
    let slowest = meanwhile.iter().max().copied().unwrap_or_default();
    eprintln!(
        "spun {spun:?}; baseline median {baseline:?}; {} requests meanwhile, median {during:?}, \
         slowest {slowest:?}",
        meanwhile.len()
    );

    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    // The budget is running time in 1 ms epoch ticks, so the spin took at
    // least that long on the wall clock.
    assert!(spun >= budget, "spun only {spun:?} of its {budget:?}");
    assert!(
        meanwhile.len() >= 10,
        "only {} requests were served while a plugin spun {spun:?} on the only worker: \
         {meanwhile:?}",
        meanwhile.len()
    );
    // No request waited for a large part of the spin...
    assert!(
        slowest < spun / 2,
        "a request waited {slowest:?} while a plugin spun {spun:?} on the only worker"
    );
    // ...and they went on at a pace close to the unhindered one: within a
    // twentieth of the spin, or 5x the baseline on a machine slow enough to
    // make that the larger.
    let bound = (spun / 20).max(baseline * 5);
    assert!(
        during < bound,
        "requests took {during:?} (median; baseline {baseline:?}, bound {bound:?}) while a \
         plugin spun {spun:?} on the only worker: {meanwhile:?}"
    );
}

/// The default quarantine (half the calls over 10 s, at least 20 calls)
/// under load where every `every`th request makes the plugin panic: the
/// misbehaving requests get the policy, every other one is served, and the
/// stage is quarantined or not as `quarantined` says.
async fn poisoned_share_under_default_quarantine(on_error: &str, every: usize, quarantined: bool) {
    const PER_CLIENT: usize = 60;
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(backend.addr(), "panic", on_error, "")).await;

    let sent = load(&proxy, PER_CLIENT, every).await;

    let (bad, good): (Vec<&Sent>, Vec<&Sent>) = sent.iter().partition(|s| s.misbehaving);
    assert_eq!(sent.len(), CLIENTS * PER_CLIENT);
    let stage = stage_status(&proxy).await;
    assert_eq!(stage["quarantined"], quarantined, "{stage}");
    if quarantined {
        // Once quarantined, calls stop: fewer failures than poisoned requests.
        let failures = stage["failures"].as_u64().unwrap() as usize;
        assert!(failures < bad.len(), "{failures} of {}", bad.len());
        return;
    }
    for s in &good {
        assert_eq!(s.reply.echo().backend, "app");
    }
    for s in &bad {
        match on_error {
            "fail-closed" => assert_eq!(s.reply.status, StatusCode::SERVICE_UNAVAILABLE),
            _ => assert_eq!(s.reply.echo().header("x-misbehave"), Some("1")),
        }
    }
    assert_eq!(stage["failures"], bad.len(), "{stage}");
}

#[tokio::test]
async fn a_tenth_of_requests_trapping_never_quarantines_the_stage_fail_closed() {
    poisoned_share_under_default_quarantine("fail-closed", 10, false).await;
}

#[tokio::test]
async fn a_tenth_of_requests_trapping_never_quarantines_the_stage_fail_open() {
    poisoned_share_under_default_quarantine("fail-open", 10, false).await;
}

#[tokio::test]
async fn every_request_trapping_quarantines_the_stage() {
    poisoned_share_under_default_quarantine("fail-closed", 1, true).await;
}

/// A filter whose `on_response` panics, telling the host at init whether it
/// wants responses.
fn response_panicker(backend: SocketAddr, wants_response: bool) -> String {
    let pipeline = format!(
        r#"
[[pipeline]]
plugin = "{plugin}"
name = "{STAGE}"
role = "filter"
on_error = "fail-closed"
quarantine = {{ enabled = false }}
config = {{ mode = "panic-on-response", wants_response = {wants_response} }}
"#,
        plugin = test_plugin("misbehave").display(),
    );
    one_upstream_with_admin(&endpoint(backend), "", &pipeline)
}

#[tokio::test]
async fn filter_that_declines_responses_at_init_is_never_called_on_them() {
    let backend = Backend::new("app").start().await;
    let declines = Portier::start(&response_panicker(backend.addr(), false)).await;
    let wants = Portier::start(&response_panicker(backend.addr(), true)).await;

    for _ in 0..5 {
        let reply = get(&declines.client(), "/", false).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let reply = get(&wants.client(), "/", false).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
    }
    assert_eq!(stage_status(&declines).await["failures"], 0);
    assert_eq!(stage_status(&wants).await["failures"], 5);
}

#[tokio::test]
async fn a_stage_never_takes_more_than_its_max_instances_from_the_pool() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(
        backend.addr(),
        "spin",
        "fail-closed",
        "quarantine = { enabled = false }\ncall_timeout = \"2s\"\nmax_instances = 1",
    ))
    .await;

    // One request spins in the stage's only instance...
    let spinner = {
        let client = proxy.client();
        tokio::spawn(async move { get(&client, "/spin", true).await })
    };
    proxy
        .wait_for_log_line("from the plugin that it spins", |l| {
            l.contains("spinning on /spin")
        })
        .await;
    // ...so another waits for it (100 ms at most, far less than the 2 s
    // spin) and gets the policy without a second instance being made.
    let waited = get(&proxy.client(), "/meanwhile", false).await;
    assert_eq!(
        waited.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        waited.text()
    );
    let spun = spinner.await.expect("the spinning request");
    assert_eq!(spun.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        proxy.count_log_lines(|l| l.contains("all 1 instances of the stage stayed busy")),
        1,
        "{}",
        proxy.logs()
    );
    // Waiting for an instance is not the plugin's failure: only the spin counts.
    assert_eq!(stage_status(&proxy).await["failures"], 1);
    // The instance freed, the stage serves again.
    get(&proxy.client(), "/after", false).await.echo();
}

#[tokio::test]
async fn instances_that_fail_to_start_are_counted_and_logged_like_failed_calls() {
    let backend = Backend::new("app").start().await;
    // A fresh instance for every call, each of which refuses to start.
    let proxy = Portier::start(&manifest(
        backend.addr(),
        "start-once",
        "fail-closed",
        "quarantine = { enabled = false }\nisolation = \"per-request\"",
    ))
    .await;
    let client = proxy.client();
    for i in 0..3 {
        let reply = get(&client, &format!("/{i}"), false).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
    }
    assert_eq!(stage_status(&proxy).await["failures"], 3);
    assert_eq!(backend.requests(), 0);
    // One line for three identical failures.
    assert_eq!(
        proxy.count_log_lines(|l| l.contains("plugin call failed")
            && l.contains(
                "instance could not start: init refused the config: refusing to start again"
            )),
        1,
        "{}",
        proxy.logs()
    );
}
