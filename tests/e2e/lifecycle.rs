//! Lifecycle proves how a proxy starts and stops: SIGTERM lets the request
//! in flight (a slow one) finish and the process exit 0, refusing new
//! connections and answering `/healthz` with 503 meanwhile; requests still running at `timeouts.shutdown` are
//! cut and the process exits anyway; a second `portier run` on an address
//! another one serves fails to start, naming the address, instead of
//! silently sharing it; and running out of file descriptors is this
//! process's problem, not a reason to mark an upstream endpoint unhealthy.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::raw::RawConn;
use crate::support::{
    Backend, Portier, endpoints, one_upstream, one_upstream_with_admin, run_expecting_exit,
};

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let delay = Duration::from_millis(1500);
    let backend = Backend::new("slow").delay(delay).start().await;
    let mut proxy = Portier::start(&one_upstream_with_admin(&endpoints(&[&backend]), "", "")).await;
    let client = proxy.client();
    let admin = proxy.admin();
    assert_eq!(admin.get("/healthz").await.status, http::StatusCode::OK);
    let slow = tokio::spawn(async move { client.get("/slow").await });
    // Wait until the backend has the request: it is in flight.
    crate::support::wait_until(
        "the request reaches the backend",
        Duration::from_secs(10),
        || backend.requests() == 1,
    )
    .await;

    let addr = proxy.addr();
    let signalled = Instant::now();
    let stopping = async { proxy.stop().await };
    let draining = async {
        // Once the proxy drains, new connections are refused (its
        // listening sockets are closed, not left to fill a backlog) and
        // its health check says so, both while the slow request still runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break signalled.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "new connections still accepted while draining"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (refused, admin.get("/healthz").await)
    };
    let (status, (refused_after, health)) = tokio::join!(stopping, draining);
    assert!(status.success());
    let reply = slow.await.expect("the slow request");
    assert_eq!(reply.echo().backend, "slow");
    assert!(
        refused_after < Duration::from_millis(1000),
        "new connections refused only {refused_after:?} after SIGTERM: not while draining"
    );
    assert_eq!(health.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.text(), "draining\n");
    assert!(signalled.elapsed() < Duration::from_secs(20));
    assert_eq!(proxy.access_lines().len(), 1, "{}", proxy.logs());
}

#[tokio::test]
async fn requests_still_running_at_the_shutdown_timeout_are_cut_and_the_process_exits() {
    let backend = Backend::new("stuck")
        .delay(Duration::from_secs(30))
        .start()
        .await;
    let manifest = format!(
        "{}\n[server.timeouts]\nshutdown = \"500ms\"\n",
        one_upstream(&endpoints(&[&backend]), "", "")
    );
    let mut proxy = Portier::start(&manifest).await;
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.send(b"GET /stuck HTTP/1.1\r\nHost: a\r\n\r\n").await;
    crate::support::wait_until(
        "the request reaches the backend",
        Duration::from_secs(10),
        || backend.requests() == 1,
    )
    .await;

    let signalled = Instant::now();
    let status = proxy.stop().await;
    let took = signalled.elapsed();
    assert!(status.success());
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    assert!(conn.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_second_portier_on_a_served_address_fails_to_start() {
    let backend = Backend::new("app").start().await;
    let manifest = one_upstream_with_admin(&endpoints(&[&backend]), "", "");
    let first = Portier::start(&manifest).await;

    let second = run_expecting_exit(&manifest);
    assert!(!second.status.success(), "{second}");
    assert!(
        second
            .stderr
            .contains(&format!("cannot listen on {}: ", first.addr())),
        "{second}"
    );
    assert!(second.stderr.contains("address already in use"), "{second}");

    // The admin address alone taken: the same.
    let admin = first.status().await;
    assert_eq!(admin["generation"], 1);
    let other_listen = one_upstream(&endpoints(&[&backend]), "", "");
    let admin_addr = manifest
        .lines()
        .skip_while(|l| *l != "[admin]")
        .nth(1)
        .expect("admin.listen")
        .to_owned();
    let admin_taken = other_listen.replacen(
        "[server]\n",
        &format!("[admin]\n{admin_addr}\n\n[server]\n"),
        1,
    );
    let second = run_expecting_exit(&admin_taken);
    assert!(!second.status.success(), "{second}");
    assert!(
        second.stderr.contains("Address already in use")
            || second.stderr.contains("address already in use"),
        "{second}"
    );
    // The first one never noticed.
    first.client().get("/").await.echo();
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_mark_the_upstream_unhealthy() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed for this test");
    }
    // Every request needs a new upstream connection, hence a descriptor.
    let backend = Backend::new("app").closing().start().await;
    // No passive-health forgiveness: a marked endpoint would stay out for a
    // minute. One worker: one listen queue, accepted in order, so the first
    // connection below is served before the others use up the descriptors.
    let mut proxy = Portier::launch(
        &one_upstream(
            &endpoints(&[&backend]),
            r#"outlier = { base_ejection = "60s" }"#,
            "",
        )
        .replacen("[server]\n", "[server]\nworkers = 1\n", 1),
    )
    .wrap("prlimit", &["--nofile=96:96", "--"])
    .start()
    .await;

    // The first connection, held open without a request yet.
    let mut first = RawConn::open(proxy.addr()).await;
    // Then as many as it takes for the proxy to run out of descriptors.
    let mut hogs = Vec::new();
    for _ in 0..200 {
        hogs.push(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
    }
    proxy
        .wait_for_log_line("that accepting fails", |l| l.contains("accept failed"))
        .await;

    // A descriptor may come free for a moment (a connection closing), so a
    // request may still get through: then wait until the proxy has failed
    // to accept again (it retries every 10 ms and says so once a second),
    // so the freed one is taken. A request that finds none: 503, never 502.
    let accept_failures = |proxy: &Portier| proxy.count_log_lines(|l| l.contains("accept failed"));
    let mut got = Vec::new();
    while !got.contains(&503) {
        assert!(got.len() < 10, "never out of descriptors: {got:?}");
        let failures = accept_failures(&proxy);
        first
            .send(b"GET /exhausted HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let status = first.response().await.status;
        assert!([200, 503].contains(&status), "{got:?} then {status}");
        got.push(status);
        if status == 200 {
            crate::support::wait_until("accepting fails again", Duration::from_secs(5), || {
                accept_failures(&proxy) > failures
            })
            .await;
        }
    }

    // Descriptors back: the endpoint was never marked (it would stay out for
    // 60 s), so it serves within moments.
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        first.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let response = first.response().await;
        if response.status == 200 {
            break;
        }
        assert_eq!(response.status, 503, "{response:?}");
        assert!(
            Instant::now() < deadline,
            "the endpoint stayed out: it was marked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy.count_log_lines(|l| l.contains("this process is out of resources")) >= 1,
        "{}",
        proxy.logs()
    );
    assert_eq!(proxy.stop().await.code(), Some(0));
}
