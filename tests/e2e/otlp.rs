//! OpenTelemetry trace export (the `otlp` feature): a fake OTLP/HTTP
//! collector records what a real proxy exports, and the spans are checked
//! against what the client sent and what the backend saw.
#![cfg(feature = "otlp")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::net::TcpListener;

use crate::support::{Backend, Portier, endpoints, one_upstream, wait_until};

/// The parts of OTLP's `ExportTraceServiceRequest` the tests read (field
/// numbers of opentelemetry-proto's trace.proto; the rest is skipped).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// `AnyValue`'s `oneof`, read as optional fields.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, optional, tag = "1")]
        pub string_value: Option<String>,
    }
}

/// One exported span, ids in lower-case hex (no parent: empty).
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn strings(attributes: &[proto::KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            let v = kv.value.as_ref().and_then(|v| v.string_value.clone());
            (kv.key.clone(), v.unwrap_or_default())
        })
        .collect()
}

/// A fake OTLP/HTTP collector: records every `POST /v1/traces` body.
struct Collector {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let recorded = posts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces";
                            let kind = req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = if ok {
                                recorded.lock().unwrap().push((kind, body));
                                StatusCode::OK
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            // An empty ExportTraceServiceResponse: zero bytes.
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Collector { addr, posts }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span exported so far.
    fn spans(&self) -> Vec<Exported> {
        let posts = self.posts.lock().unwrap();
        let mut out = Vec::new();
        for (kind, body) in posts.iter() {
            assert_eq!(kind, "application/x-protobuf");
            let req = proto::ExportTraceServiceRequest::decode(body.as_ref())
                .expect("an OTLP ExportTraceServiceRequest");
            for rs in req.resource_spans {
                let resource = strings(&rs.resource.unwrap_or_default().attributes);
                let service = resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                    out.push(Exported {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                        name: span.name,
                        attributes: strings(&span.attributes),
                    });
                }
            }
        }
        out
    }
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// `traceparent`'s trace id, span id and flags.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[tokio::test]
async fn request_and_stage_spans_are_exported_under_the_clients_trace() {
    let collector = Collector::start().await;
    let backend = Backend::new("app").start().await;
    let manifest = one_upstream(
        &endpoints(&[&backend]),
        "",
        r#"
[[pipeline]]
plugin = "headers"
config = { request = { set = { "x-stage" = "seen" } } }
"#,
    );
    // The log filter stays at its default (`info`): the debug-level stage
    // spans are exported all the same.
    let mut proxy = Portier::launch(&manifest)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;
    let client = proxy.client();

    // A client's trace goes on.
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let echo = client
        .get_with("/traced", &[("traceparent", &parent)])
        .await
        .echo();
    assert_eq!(echo.header("x-stage"), Some("seen"), "the stage ran");
    let (trace, continued_span, flags) =
        parts(echo.header("traceparent").expect("traceparent upstream"));
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    assert_ne!(continued_span, CLIENT_SPAN);

    // None: a new trace, sampled (exported), its id the request's.
    let echo = client.get("/new").await.echo();
    let (new_trace, new_span, flags) =
        parts(echo.header("traceparent").expect("traceparent upstream"));
    assert_eq!(flags, "01", "a new trace is sampled when exported");
    assert_eq!(echo.header("x-request-id"), Some(new_trace.as_str()));
    drop(client);

    // Stopping flushes what is batched.
    proxy.stop().await;
    wait_until(
        "both request spans are exported",
        Duration::from_secs(10),
        || {
            collector
                .spans()
                .iter()
                .filter(|s| s.name == "request")
                .count()
                >= 2
        },
    )
    .await;
    let spans = collector.spans();
    let show = || format!("{spans:#?}");

    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.trace_id == CLIENT_TRACE)
        .unwrap_or_else(|| panic!("no request span in the client's trace: {}", show()));
    assert_eq!(
        request.parent_id, CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(
        request.span_id, continued_span,
        "the backend's traceparent names the exported span"
    );
    assert_eq!(request.service, "portier");
    assert!(
        request.attribute("id").is_some_and(|id| id.len() == 32),
        "{request:?}"
    );
    let stages: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "stage" && s.parent_id == request.span_id)
        .collect();
    assert!(
        !stages.is_empty(),
        "no stage span under the request: {}",
        show()
    );
    for stage in &stages {
        assert_eq!(stage.trace_id, CLIENT_TRACE);
        assert!(stage.attribute("name").is_some(), "{stage:?}");
        assert!(stage.attribute("call").is_some(), "{stage:?}");
    }

    let root = spans
        .iter()
        .find(|s| s.name == "request" && s.trace_id == new_trace)
        .unwrap_or_else(|| panic!("no request span in the new trace {new_trace}: {}", show()));
    assert_eq!(root.span_id, new_span, "the backend's traceparent names it");
    assert_eq!(root.parent_id, "", "a root span");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "stage" && s.parent_id == root.span_id && s.trace_id == new_trace),
        "{}",
        show()
    );
}
