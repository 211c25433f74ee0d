//! gRPC passes through portier end to end, with a real pair (tonic client,
//! tonic server over h2c): unary calls, server streaming, client streaming
//! and bidirectional streaming that interleaves; error statuses and their
//! messages arrive as trailers; the client's deadline reaches the server
//! (`grpc-timeout`) and, when it runs out, the call is cancelled all the way
//! to the server. The proxy's own errors reach gRPC clients as gRPC statuses.
//!
//! The service is written the way tonic's code generator writes it, with
//! prost messages derived by hand, so the test needs no `protoc`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::support::{Portier, endpoint, one_upstream_with_admin};

/// The one message both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_owned(),
        n,
    }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// What the server saw: slow calls cancelled before they finished.
#[derive(Default)]
struct Server {
    cancelled: AtomicUsize,
}

/// Counts a slow call dropped before it finished (its client gave up).
struct Unfinished(Arc<Server>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `test.Echo` on an h2c listener:
/// - `Unary`: echoes `text`, with the `grpc-timeout` it was given in the
///   `x-seen-timeout` response metadata; `text = "fail"` answers
///   INVALID_ARGUMENT with a message; `text = "slow"` takes 5 s;
/// - `Count`: `n` messages `text #i` (server streaming);
/// - `Join`: all `text`s of the request stream joined (client streaming);
/// - `Chat`: each message echoed as it arrives (bidirectional).
async fn grpc_server() -> (SocketAddr, Arc<Server>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Server::default());
    let server = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| route(state.clone(), req));
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, server)
}

async fn route(
    state: Arc<Server>,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let codec = ProstCodec::<Msg, Msg>::default();
    let mut grpc = tonic::server::Grpc::new(codec);
    Ok(match req.uri().path() {
        "/test.Echo/Unary" => {
            let svc = tower::service_fn(move |r: Request<Msg>| unary(state.clone(), r));
            grpc.unary(svc, req).await
        }
        "/test.Echo/Count" => {
            let svc = tower::service_fn(|r: Request<Msg>| async move {
                let m = r.into_inner();
                let items: Vec<Result<Msg, Status>> = (0..m.n)
                    .map(|i| Ok(msg(&format!("{} #{i}", m.text), i)))
                    .collect();
                Ok::<_, Status>(Response::new(
                    Box::pin(futures_util::stream::iter(items)) as MsgStream
                ))
            });
            grpc.server_streaming(svc, req).await
        }
        "/test.Echo/Join" => {
            let svc = tower::service_fn(|r: Request<Streaming<Msg>>| async move {
                let mut inbound = r.into_inner();
                let mut texts = Vec::new();
                while let Some(m) = inbound.next().await {
                    texts.push(m?.text);
                }
                Ok::<_, Status>(Response::new(msg(&texts.join("+"), texts.len() as u32)))
            });
            grpc.client_streaming(svc, req).await
        }
        "/test.Echo/Chat" => {
            let svc = tower::service_fn(|r: Request<Streaming<Msg>>| async move {
                let echoed = r
                    .into_inner()
                    .map(|m| m.map(|m| msg(&format!("echo {}", m.text), m.n)));
                Ok::<_, Status>(Response::new(Box::pin(echoed) as MsgStream))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    })
}

async fn unary(state: Arc<Server>, r: Request<Msg>) -> Result<Response<Msg>, Status> {
    let timeout = r
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let m = r.into_inner();
    match m.text.as_str() {
        "fail" => return Err(Status::invalid_argument("bad input: ünïcode ✓ and 100%")),
        "slow" => {
            let mut guard = Unfinished(state, false);
            tokio::time::sleep(Duration::from_secs(5)).await;
            guard.1 = true;
        }
        _ => {}
    }
    let mut response = Response::new(msg(&format!("echo {}", m.text), m.n));
    response
        .metadata_mut()
        .insert("x-seen-timeout", timeout.parse().unwrap());
    Ok(response)
}

/// A tonic client over a plain (h2c) channel to `addr`.
async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("a gRPC channel to the proxy");
    tonic::client::Grpc::new(channel)
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

/// portier in front of the gRPC server, speaking h2c to it.
async fn proxy(server: SocketAddr) -> Portier {
    Portier::start(&one_upstream_with_admin(
        &endpoint(server),
        "protocol = \"h2c\"",
        "",
    ))
    .await
}

async fn unary_call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: Request<Msg>,
) -> Result<Response<Msg>, Status> {
    grpc.ready().await.expect("channel ready");
    grpc.unary(
        request,
        PathAndQuery::from_static("/test.Echo/Unary"),
        codec(),
    )
    .await
}

#[tokio::test]
async fn unary_calls_and_error_statuses_pass_with_their_trailers() {
    let (server, _) = grpc_server().await;
    let proxy = proxy(server).await;
    let mut grpc = client(proxy.addr()).await;

    let reply = unary_call(&mut grpc, Request::new(msg("hello", 7)))
        .await
        .expect("a unary call through the proxy");
    assert_eq!(reply.get_ref(), &msg("echo hello", 7));

    let failed = unary_call(&mut grpc, Request::new(msg("fail", 0)))
        .await
        .expect_err("the server's error status");
    assert_eq!(failed.code(), Code::InvalidArgument, "{failed:?}");
    assert_eq!(failed.message(), "bad input: ünïcode ✓ and 100%");
}

#[tokio::test]
async fn server_client_and_bidirectional_streams_pass_message_by_message() {
    let (server, _) = grpc_server().await;
    let proxy = proxy(server).await;
    let mut grpc = client(proxy.addr()).await;

    // Server streaming.
    grpc.ready().await.unwrap();
    let mut counted = grpc
        .server_streaming(
            Request::new(msg("item", 50)),
            PathAndQuery::from_static("/test.Echo/Count"),
            codec(),
        )
        .await
        .expect("a server stream")
        .into_inner();
    let mut items = Vec::new();
    while let Some(m) = counted.message().await.expect("a message") {
        items.push(m.text);
    }
    assert_eq!(items.len(), 50);
    assert_eq!(items[49], "item #49");

    // Client streaming.
    grpc.ready().await.unwrap();
    let parts = futures_util::stream::iter(["a", "b", "c", "d"].map(|t| msg(t, 0)));
    let joined = grpc
        .client_streaming(
            Request::new(parts),
            PathAndQuery::from_static("/test.Echo/Join"),
            codec(),
        )
        .await
        .expect("a client stream");
    assert_eq!(joined.get_ref(), &msg("a+b+c+d", 4));

    // Bidirectional, interleaved: each reply arrives before the next message
    // is sent, so nothing on the way may buffer a whole stream.
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    tx.send(msg("first", 0)).await.unwrap();
    let mut replies = grpc
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/test.Echo/Chat"),
            codec(),
        )
        .await
        .expect("a bidirectional stream")
        .into_inner();
    for i in 0..10u32 {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("each reply before the next message is sent")
            .expect("a message")
            .expect("the stream is open");
        let expected = if i == 0 {
            "first".to_owned()
        } else {
            format!("m{i}")
        };
        assert_eq!(reply.text, format!("echo {expected}"));
        if i < 9 {
            tx.send(msg(&format!("m{}", i + 1), i + 1)).await.unwrap();
        }
    }
    drop(tx);
    assert!(replies.message().await.expect("a clean end").is_none());
}

#[tokio::test]
async fn the_clients_deadline_reaches_the_server_and_cancels_the_call_when_it_runs_out() {
    let (server, state) = grpc_server().await;
    let proxy = proxy(server).await;
    let mut grpc = client(proxy.addr()).await;

    let mut request = Request::new(msg("timed", 1));
    request.set_timeout(Duration::from_secs(20));
    let reply = unary_call(&mut grpc, request).await.expect("a unary call");
    let seen = reply
        .metadata()
        .get("x-seen-timeout")
        .and_then(|v| v.to_str().ok())
        .expect("the server saw a grpc-timeout")
        .to_owned();
    // tonic writes the deadline in its own unit; the value must survive.
    assert!(seen.ends_with(['H', 'M', 'S', 'm', 'u', 'n']), "{seen}");
    let digits: u64 = seen[..seen.len() - 1].parse().unwrap();
    assert!(digits > 0, "{seen}");

    let mut slow = Request::new(msg("slow", 1));
    slow.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let expired = unary_call(&mut grpc, slow)
        .await
        .expect_err("past its deadline");
    assert!(
        matches!(expired.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{expired:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The cancellation travelled through the proxy to the server.
    crate::support::wait_until(
        "the server's call cancelled",
        Duration::from_secs(5),
        || state.cancelled.load(Ordering::SeqCst) == 1,
    )
    .await;
}

#[tokio::test]
async fn the_proxys_own_errors_reach_grpc_clients_as_grpc_statuses() {
    // Nothing listens behind this upstream: UNAVAILABLE, which clients may retry.
    let dead = Portier::start(&one_upstream_with_admin(
        &endpoint(crate::support::free_addr()),
        "protocol = \"h2c\"",
        "",
    ))
    .await;
    let mut grpc = client(dead.addr()).await;
    let unavailable = unary_call(&mut grpc, Request::new(msg("hello", 1)))
        .await
        .expect_err("no upstream");
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    assert_eq!(unavailable.message(), "portier: 502 Bad Gateway");

    // The upstream's response head is late: the proxy's timeout is the
    // call's deadline.
    let (server, _) = grpc_server().await;
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoint(server),
        "protocol = \"h2c\"\ntimeout = \"300ms\"",
        "",
    ))
    .await;
    let mut grpc = client(proxy.addr()).await;
    let late = unary_call(&mut grpc, Request::new(msg("slow", 1)))
        .await
        .expect_err("past the upstream timeout");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert_eq!(late.message(), "portier: 504 Gateway Timeout");
}
