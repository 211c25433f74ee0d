//! OpenTelemetry trace export over OTLP/HTTP (the `otlp` cargo feature).
//!
//! Configured by the standard environment variables, and active only when
//! one names a collector: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it
//! is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended). The SDK
//! reads the rest: `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`,
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`,
//! `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_SERVICE_NAME` defaults to `portier`.
//! `OTEL_SDK_DISABLED=true` turns export off.
//!
//! The `request` span and every plugin call's `stage` span are exported
//! (the [`layer`] has its own filter, so the log filter need not ask for
//! the debug-level stage spans). [`adopt`] makes the request span the
//! child of the client's span and keeps the proxy's ids: the `traceparent`
//! the upstream gets names the exported span.
//!
//! Spans are batched and sent by the SDK's own thread; the HTTP requests
//! run on one small runtime of their own, off the workers.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_http::{HttpClient, HttpError, hyper::HyperClient};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::trace::TraceContext;

/// The provider while export is on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

// The ids the next span built on this thread takes (see [`adopt`]).
thread_local! {
    static NEXT_TRACE_ID: Cell<Option<u128>> = const { Cell::new(None) };
    static NEXT_SPAN_ID: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Whether an environment variable is set to something.
fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The layer exporting the proxy's spans, when the environment names a
/// collector; `None` (and nothing started) otherwise. Call once.
pub fn layer<S>() -> Option<impl Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !(set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        return None;
    }
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let provider = match provider() {
        Ok(p) => p,
        Err(e) => {
            // The subscriber is not installed yet: this is the only way out.
            eprintln!("warning: OpenTelemetry export is off: {e:#}");
            return None;
        }
    };
    let tracer = provider.tracer("portier");
    PROVIDER.set(provider).ok()?;
    // The proxy's spans, at debug (so every plugin call's `stage` span),
    // whatever the log filter; its events at info and above (warnings
    // inside a request become span events), but not the access log lines.
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        let ours = meta.target() == "portier" || meta.target().starts_with("portier::");
        ours && if meta.is_span() {
            *meta.level() <= tracing::Level::DEBUG
        } else {
            *meta.level() <= tracing::Level::INFO && meta.target() != crate::logging::ACCESS_TARGET
        }
    });
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_filter(filter),
    )
}

/// The tracer provider: OTLP/HTTP protobuf, batched, from the environment.
fn provider() -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(Client::start()?)
        .build()?;
    let mut resource = Resource::builder();
    let named = set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("portier");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(Ids)
        .with_resource(resource.build())
        .build())
}

/// Send what is batched and stop exporting (on graceful exit; bounded by
/// the exporter's timeout).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        tracing::warn!(error = %e, "OpenTelemetry export did not finish");
    }
}

/// Make `span` (a request's, just created) a child of the client's span in
/// `trace`, with `trace`'s ids; returns `trace` with the exported span's
/// sampled flag. Unchanged when export is off or the span is not exported.
pub fn adopt(span: &tracing::Span, trace: TraceContext) -> TraceContext {
    if PROVIDER.get().is_none() || span.is_disabled() {
        return trace;
    }
    if let Some(parent) = trace.parent_id {
        let flags = if trace.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from(trace.trace_id),
            SpanId::from(parent),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    // The span is built (its ids drawn) here, on this thread.
    NEXT_TRACE_ID.set(Some(trace.trace_id));
    NEXT_SPAN_ID.set(Some(trace.span_id));
    let cx = span.context();
    NEXT_TRACE_ID.set(None);
    NEXT_SPAN_ID.set(None);
    let built = cx.span().span_context().clone();
    if !built.is_valid() {
        return trace;
    }
    TraceContext {
        trace_id: u128::from_be_bytes(built.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(built.span_id().to_bytes()),
        sampled: built.is_sampled(),
        ..trace
    }
}

/// Random ids, except for the request span [`adopt`] builds: the proxy's
/// own (so request ids, access log trace ids and `traceparent` agree).
#[derive(Debug)]
struct Ids;

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.take().map_or_else(
            || RandomIdGenerator::default().new_trace_id(),
            TraceId::from,
        )
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .take()
            .map_or_else(|| RandomIdGenerator::default().new_span_id(), SpanId::from)
    }
}

/// The exporter's HTTP client: hyper (http, or https by rustls with ring
/// and the system's roots), on a runtime thread of its own, as the SDK's
/// batch thread has none.
#[derive(Debug)]
struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>>,
    runtime: tokio::runtime::Handle,
}

impl Client {
    fn start() -> anyhow::Result<Client> {
        let tls = hyper_rustls::HttpsConnectorBuilder::new();
        let provider = rustls::crypto::ring::default_provider();
        let tls = match tls.with_provider_and_native_roots(provider) {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "warning: no system root certificates ({e}); an https collector will not be trusted"
                );
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(
                        rustls::crypto::ring::default_provider().into(),
                    )
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
            }
        };
        let connector = tls.https_or_http().enable_http1().build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(Client {
            inner: HyperClient::new(connector, timeout(), None),
            runtime: handle,
        })
    }
}

/// One export's timeout, as the exporter reads it (it gives a custom client
/// none): milliseconds, 10 s by default.
fn timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

impl HttpClient for Client {
    fn send_bytes<'a, 'f>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'f>>
    where
        'a: 'f,
        Self: 'f,
    {
        let inner = self.inner.clone();
        let sent = self
            .runtime
            .spawn(async move { inner.send_bytes(request).await });
        Box::pin(async move { sent.await? })
    }
}
