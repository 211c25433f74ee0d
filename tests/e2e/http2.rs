//! HTTP/2 abuse limits, driven with hand-built frames the way an attacker
//! would send them: rapid reset (CVE-2023-44487), resets provoked from the
//! server (MadeYouReset), CONTINUATION, PING and SETTINGS floods each end in
//! GOAWAY `ENHANCE_YOUR_CALM` and a count in `/status`, with little work done
//! for the attacker, while other clients keep being served. A real HTTP/2
//! client moving megabytes over one connection is not mistaken for a flood,
//! and `[server.http2]` is what the proxy advertises and enforces.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;

use crate::support::tls::{self, Ca};
use crate::support::{
    Backend, Portier, RunningBackend, endpoints, free_addr, one_upstream_with_admin,
};

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

/// Longer than any of the waits below, however busy the machine.
const PATIENCE: Duration = Duration::from_secs(15);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://localhost/` from the static table, without
/// touching the dynamic one.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"localhost");
    b
}

/// `POST http://localhost/`, its body to follow.
fn post_block() -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"localhost");
    b
}

/// What the proxy sent on one raw connection, up to its close.
#[derive(Debug, Default)]
struct Seen {
    /// The first SETTINGS' parameters.
    settings: Vec<(u16, u32)>,
    /// RST_STREAMs: (stream, error code).
    resets: Vec<(u32, u32)>,
    /// Response HEADERS frames.
    responses: usize,
    /// PING acknowledgements.
    pongs: usize,
    /// The GOAWAY's error code and debug data.
    goaway: Option<(u32, String)>,
    /// Whether the connection ended (EOF or error) within the patience.
    closed: bool,
}

impl Seen {
    fn assert_goaway(&self, debug: &[&str]) {
        let Some((code, why)) = &self.goaway else {
            panic!("no GOAWAY: {self:?}")
        };
        assert_eq!(*code, ENHANCE_YOUR_CALM, "{self:?}");
        assert!(
            debug.contains(&why.as_str()),
            "GOAWAY for {why:?}, expected one of {debug:?}"
        );
        assert!(self.closed, "the connection stayed open after GOAWAY");
    }
}

/// A client speaking HTTP/2 by hand: a writer, and a task reading every
/// frame the proxy sends.
struct Attacker<S> {
    write: WriteHalf<S>,
    reader: tokio::task::JoinHandle<Seen>,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Attacker<S> {
    /// Preface and SETTINGS, then the proxy's SETTINGS read and acknowledged.
    async fn handshake(stream: S) -> Attacker<S> {
        let (mut read, mut write) = tokio::io::split(stream);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        write.write_all(&hello).await.expect("preface");
        let mut seen = Seen::default();
        loop {
            let (kind, flags, _, payload) =
                read_frame(&mut read).await.expect("the proxy's SETTINGS");
            if kind == SETTINGS && flags & 1 == 0 {
                seen.settings = payload
                    .chunks(6)
                    .map(|p| {
                        (
                            u16::from_be_bytes([p[0], p[1]]),
                            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                        )
                    })
                    .collect();
                break;
            }
        }
        write
            .write_all(&frame(SETTINGS, 1, 0, &[]))
            .await
            .expect("ack");
        let reader = tokio::spawn(async move {
            let read_all = async {
                while let Some((kind, _, stream, payload)) = read_frame(&mut read).await {
                    match kind {
                        HEADERS => seen.responses += 1,
                        PING => seen.pongs += 1,
                        RST_STREAM => seen.resets.push((stream, be32(&payload[..4]))),
                        GOAWAY => {
                            seen.goaway = Some((
                                be32(&payload[4..8]),
                                String::from_utf8_lossy(&payload[8..]).into_owned(),
                            ));
                        }
                        _ => {}
                    }
                }
            };
            seen.closed = tokio::time::timeout(PATIENCE, read_all).await.is_ok();
            seen
        });
        Attacker { write, reader }
    }

    /// Send frames; a proxy that already closed the connection is fine.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.write.write_all(bytes).await.is_ok()
    }

    /// Everything the proxy sent, once it closed the connection (or the
    /// patience ran out).
    async fn seen(self) -> Seen {
        let Attacker { write, reader } = self;
        let seen = reader.await.expect("reader task");
        drop(write);
        seen
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One frame: (type, flags, stream, payload); `None` at EOF or an error.
async fn read_frame<R: AsyncRead + Unpin>(read: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    read.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], be32(&head[5..]) & 0x7fff_ffff, payload))
}

/// One upstream over `backend`, an admin listener, and `tables`.
async fn proxy(backend: &RunningBackend, tables: &str) -> Portier {
    let manifest = format!(
        "{}\n{tables}\n",
        one_upstream_with_admin(&endpoints(&[backend]), "", "")
    );
    Portier::start(&manifest).await
}

async fn attack(proxy: &Portier) -> Attacker<TcpStream> {
    Attacker::handshake(TcpStream::connect(proxy.addr()).await.unwrap()).await
}

/// The proxy still serves an ordinary client, and counted one abuse close
/// for `cause`.
async fn still_serving_and_counted(proxy: &Portier, cause: &str) {
    let reply = proxy.client().get("/after").await;
    assert_eq!(reply.status, 200, "an ordinary client after the attack");
    let status = proxy.status().await;
    assert_eq!(
        status["http2_abuse"][cause], 1,
        "{cause} counted once: {}",
        status["http2_abuse"]
    );
}

#[tokio::test]
async fn rapid_reset_closes_the_connection_with_goaway_after_little_work() {
    // Slow answers keep every stream in flight when its reset comes.
    let backend = Backend::new("app")
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let proxy = proxy(&backend, "").await;
    let mut attacker = attack(&proxy).await;
    let block = get_block();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        if !attacker.send(&burst).await {
            break;
        }
    }
    let seen = attacker.seen().await;
    // h2 catches streams reset before they were accepted; the proxy's own
    // rule catches those reset after.
    seen.assert_goaway(&["rapid_reset", "too_many_resets"]);
    still_serving_and_counted(&proxy, "rapid_reset").await;
    // The attacker's 2000 streams cost at most a few hundred requests.
    let upstream = backend.requests();
    assert!(upstream <= 300, "{upstream} requests reached the upstream");
}

#[tokio::test]
async fn resets_the_proxy_must_send_for_client_errors_are_bounded_made_you_reset() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.http2]\nmax_error_resets = 10").await;
    let mut attacker = attack(&proxy).await;
    let block = post_block();
    for i in 0..200u32 {
        let id = 2 * i + 1;
        // A request whose body is still to come, then a WINDOW_UPDATE that
        // overflows its send window: a stream error (FLOW_CONTROL_ERROR)
        // the proxy must answer with RST_STREAM.
        let mut burst = frame(HEADERS, END_HEADERS, id, &block);
        burst.extend(frame(WINDOW_UPDATE, 0, id, &0x7fff_ffffu32.to_be_bytes()));
        if !attacker.send(&burst).await {
            break;
        }
    }
    let seen = attacker.seen().await;
    seen.assert_goaway(&["too_many_internal_resets"]);
    // At most the limit (h2 may drop resets still queued when it goes away).
    assert!(
        seen.resets.len() <= 10,
        "{} resets before the GOAWAY",
        seen.resets.len()
    );
    still_serving_and_counted(&proxy, "made_you_reset").await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    let mut attacker = attack(&proxy).await;
    // A header block that never ends: one literal header per frame.
    let mut flood = frame(HEADERS, 0, 1, &get_block());
    for _ in 0..10_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[0x00, 0x01, b'x', 0x01, b'y']));
    }
    attacker.send(&flood).await;
    let seen = attacker.seen().await;
    seen.assert_goaway(&["too_many_continuations"]);
    assert_eq!(backend.requests(), 0);
    still_serving_and_counted(&proxy, "continuation_flood").await;
}

#[tokio::test]
async fn a_ping_flood_is_cut_off_and_the_proxy_answers_far_fewer_pings() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    let mut attacker = attack(&proxy).await;
    let mut flood = Vec::new();
    for i in 0..20_000u64 {
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    attacker.send(&flood).await;
    let seen = attacker.seen().await;
    seen.assert_goaway(&["control_frame_flood"]);
    assert!(seen.pongs < 5000, "{} of 20000 pings answered", seen.pongs);
    still_serving_and_counted(&proxy, "control_frame_flood").await;
}

#[tokio::test]
async fn a_settings_flood_is_cut_off_over_tls_too() {
    let ca = Ca::new();
    let site = ca.leaf(&["site.test"]);
    let backend = Backend::new("app").start().await;
    let https = free_addr();
    let manifest = format!(
        "{}\n[server.tls]\nlisten = \"{https}\"\ncertificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n",
        one_upstream_with_admin(&endpoints(&[&backend]), "", "")
    );
    let proxy = Portier::launch(&manifest)
        .file("site.pem", &site.cert_pem)
        .file("site.key", &site.key_pem)
        .start()
        .await;
    let stream = tls::connect(https, "site.test", ca.client_config(&["h2"]))
        .await
        .expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut attacker = Attacker::handshake(stream).await;
    let mut flood = Vec::new();
    for _ in 0..20_000 {
        flood.extend(frame(SETTINGS, 0, 0, &[0, 0x3, 0, 0, 0, 100]));
    }
    attacker.send(&flood).await;
    let seen = attacker.seen().await;
    seen.assert_goaway(&["control_frame_flood"]);
    still_serving_and_counted(&proxy, "control_frame_flood").await;
}

#[tokio::test]
async fn the_configured_limits_are_advertised_and_streams_past_the_maximum_are_refused() {
    let backend = Backend::new("app")
        .delay(Duration::from_millis(500))
        .start()
        .await;
    let proxy = proxy(
        &backend,
        "[server.http2]\nmax_concurrent_streams = 2\nstream_window = \"256KiB\"\nmax_frame_size = \"32KiB\"",
    )
    .await;
    let mut attacker = attack(&proxy).await;
    let block = get_block();
    let mut three = Vec::new();
    for id in [1u32, 3, 5] {
        three.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
    }
    attacker.send(&three).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    attacker
        .send(&frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .await;
    let seen = attacker.seen().await;
    // The parameters of RFC 9113 §6.5.2 the proxy sets.
    let param = |id: u16| {
        seen.settings
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    };
    assert_eq!(
        param(0x3),
        Some(2),
        "MAX_CONCURRENT_STREAMS: {:?}",
        seen.settings
    );
    assert_eq!(param(0x4), Some(256 << 10), "INITIAL_WINDOW_SIZE");
    assert_eq!(param(0x5), Some(32 << 10), "MAX_FRAME_SIZE");
    assert_eq!(
        param(0x6),
        Some(32 << 10),
        "MAX_HEADER_LIST_SIZE (limits.max_request_head)"
    );
    assert_eq!(seen.resets, [(5, REFUSED_STREAM)], "{seen:?}");
    assert_eq!(seen.responses, 2);
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn a_busy_real_client_moving_megabytes_is_not_mistaken_for_a_flood() {
    let backend = Backend::new("app").large_response(2 << 20).start().await;
    let proxy = proxy(&backend, "[server.http2]\ncontrol_frame_budget = 50").await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            // Small windows: the client sends many WINDOW_UPDATEs, and pings.
            .initial_stream_window_size(64 << 10)
            .initial_connection_window_size(128 << 10)
            .keep_alive_interval(Duration::from_millis(50))
            .keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    let mut fetches = tokio::task::JoinSet::new();
    for i in 0..8 {
        let mut sender = sender.clone();
        let addr: SocketAddr = proxy.addr();
        fetches.spawn(async move {
            let mut total = 0;
            for j in 0..4 {
                let request = http::Request::get(format!("http://{addr}/big/{i}/{j}"))
                    .body(crate::support::body::empty())
                    .unwrap();
                let response = sender.send_request(request).await.expect("a response");
                assert_eq!(response.status(), 200);
                total += response
                    .into_body()
                    .collect()
                    .await
                    .expect("the body")
                    .to_bytes()
                    .len();
            }
            total
        });
    }
    let mut total = 0;
    while let Some(done) = tokio::time::timeout(PATIENCE * 4, fetches.join_next())
        .await
        .expect("the downloads finished")
    {
        total += done.unwrap();
    }
    assert_eq!(total, 32 * (2 << 20));
    let abuse = proxy.status().await["http2_abuse"].clone();
    assert!(
        abuse.as_object().unwrap().values().all(|v| v == 0),
        "{abuse}"
    );
}
