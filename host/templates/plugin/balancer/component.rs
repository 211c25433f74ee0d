//! The built component, run in-process by the portier-test harness.

use portier_test::{Harness, Request, Stage};

async fn proxy() -> Harness {
    Harness::builder()
        .upstream("app", ["10.0.0.1:8080", "10.0.0.2:8080"])
        .stage(Stage::balancer(portier_test::component!()))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn idle_endpoints_take_turns() {
    let proxy = proxy().await;
    let mut picks = Vec::new();
    for _ in 0..4 {
        picks.push(proxy.request(Request::get("/")).await.endpoint_index().unwrap());
    }
    picks.sort();
    assert_eq!(picks, [0, 0, 1, 1]);
}

#[tokio::test]
async fn the_endpoint_with_fewer_requests_in_flight_is_picked() {
    let proxy = proxy().await;
    // Two requests still running on endpoint 0.
    let _busy = [proxy.in_flight("app", 0), proxy.in_flight("app", 0)];
    for _ in 0..3 {
        let out = proxy.request(Request::get("/")).await;
        assert_eq!(out.endpoint().as_deref(), Some("10.0.0.2:8080"));
    }
}
