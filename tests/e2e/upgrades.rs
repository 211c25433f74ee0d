//! Upgrades prove a WebSocket passes through portier as it would through
//! nginx, with a real pair (tokio-tungstenite): messages both ways, ping and
//! pong, close frames; a connection idle for longer than twice the
//! ordinary timeouts still works; the upstream closing ends the client's
//! side; a plugin can refuse the upgrade; an `h2c` upgrade is never
//! tunnelled; a graceful shutdown waits for an open WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::raw::RawConn;
use crate::support::{Portier, free_addr};

/// A WebSocket backend: echoes text and binary messages with a prefix,
/// answers pings (tungstenite does), and on the text "bye" closes from its
/// side. Every accepted connection is served; none panics unseen.
async fn ws_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Away,
                                    reason: "backend says bye".into(),
                                }))
                                .await;
                            return;
                        }
                        Message::Text(t) => {
                            let _ = ws.send(Message::text(format!("echo: {t}"))).await;
                        }
                        Message::Binary(b) => {
                            let _ = ws.send(Message::binary(b)).await;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// One upstream over the WebSocket backend, short ordinary timeouts (so a
/// tunnel that obeyed them would die within the test), and `pipeline`.
fn manifest(backend: SocketAddr, pipeline: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[server.timeouts]
keepalive = "300ms"
header = "300ms"
request_body = "300ms"
upstream_body = "300ms"

[[upstreams]]
name = "ws"
endpoints = ["{backend}"]
timeout = "300ms"

{pipeline}
"#,
        listen = free_addr(),
    )
}

#[tokio::test]
async fn a_websocket_passes_messages_pings_and_close_frames_both_ways() {
    let backend = ws_backend().await;
    let proxy = Portier::start(&manifest(backend, "")).await;

    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr()))
            .await
            .expect("the upgrade through portier");
    assert_eq!(response.status(), 101);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: hello")
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );

    // Quiet for more than twice every ordinary timeout above.
    tokio::time::sleep(Duration::from_millis(900)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: still here")
    );

    ws.close(None).await.unwrap();
    // The backend's answering close frame comes back, then the stream ends.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Close(_)) | Err(_) => {}
            other => panic!("after close: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_upstream_closing_ends_the_clients_side_with_its_close_frame() {
    let backend = ws_backend().await;
    let proxy = Portier::start(&manifest(backend, "")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr()))
        .await
        .unwrap();

    ws.send(Message::text("bye")).await.unwrap();

    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the close arrives")
        .unwrap()
        .unwrap();
    match frame {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Away);
            assert_eq!(f.reason.as_str(), "backend says bye");
        }
        other => panic!("expected the backend's close frame, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the client's side ends");
    assert!(end.is_none() || end.unwrap().is_err());
}

#[tokio::test]
async fn a_plugin_can_refuse_an_upgrade_like_any_request() {
    let backend = ws_backend().await;
    let pipeline = r#"
[[pipeline]]
plugin = "api-key"
config = { keys = ["secret-key-1"] }
"#;
    let proxy = Portier::start(&manifest(backend, pipeline)).await;

    let refused = tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/",
            proxy.addr()
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("x-api-key", "secret-key-1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("with the key");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: hi"));
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_tunnelled() {
    let backend = crate::support::Backend::new("app").start().await;
    let proxy = Portier::start(&crate::support::one_upstream(
        &crate::support::endpoints(&[&backend]),
        "",
        "",
    ))
    .await;

    let mut conn = RawConn::open(proxy.addr()).await;
    conn.send(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let response = conn.response().await;

    // Answered as the plain request it also is; the backend never saw the
    // upgrade asked of it.
    assert_eq!(response.status, 200);
    let echo = response.echo();
    assert_eq!(echo.header("upgrade"), None, "{:?}", echo.headers);
    assert_eq!(echo.header("http2-settings"), None, "{:?}", echo.headers);
}

#[tokio::test]
async fn a_graceful_shutdown_waits_for_an_open_websocket() {
    let backend = ws_backend().await;
    let mut proxy = Portier::start(&manifest(backend, "")).await;
    let addr = proxy.addr();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .expect("the upgrade through portier");
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: before")
    );

    // SIGTERM while the tunnel is open: the drain waits for it, so it keeps
    // working, and the process exits once the client has closed it.
    let chat = async move {
        // The proxy drains once it refuses new connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "portier never drained"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ws.send(Message::text("during")).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
        // The client hangs up: the tunnel ends, and so does the drain.
        drop(ws);
        echoed
    };
    let signalled = std::time::Instant::now();
    let (status, echoed) = tokio::join!(proxy.stop(), chat);
    assert!(status.success());
    assert_eq!(echoed, Message::text("echo: during"));
    // It exited when the tunnel closed, not at `timeouts.shutdown` (30 s).
    assert!(signalled.elapsed() < Duration::from_secs(10));
}
