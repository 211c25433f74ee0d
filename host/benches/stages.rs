//! Per-stage cost, in-process (no sockets): what one plugin call, a router
//! with 100 rules, a balancer over 10 endpoints, a fresh instance and whole
//! pipelines cost the host per request.
//!
//! The filters are the bench plugins (bench/plugins): `noop` does nothing;
//! `touch` reads and/or sets request headers as its config says, and sets a
//! response header in `on_response` only when configured with `respond_set`
//! (otherwise it declines responses at `init` and the host never calls its
//! `on_response`). Every case name says what ran.
//!
//! Run with `cargo bench -p portier --bench stages` after building the bench
//! plugins (`bench/run` does both). Prints a Markdown table; with
//! `--out FILE` writes it there too; `--only TEXT` runs the cases whose name
//! contains TEXT (for profiling one case).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portier::body::ProxyBody;
use portier::forward::clone_request_parts;
use portier::manifest::Manifest;
use portier::pipeline::Pipeline;
use portier::plugin::Runtime;
use portier::plugin::heads::{RequestHead, ResponseHead};

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;

fn plugin(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = std::env::var_os("PORTIER_BENCH_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("bench/plugins/target/wasm32-wasip2/release"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build bench/plugins first (bench/run does)",
        p.display()
    );
    p.display().to_string()
}

fn upstream(n: usize) -> String {
    let eps: Vec<String> = (0..n)
        .map(|i| format!("\"127.0.0.1:{}\"", 20000 + i))
        .collect();
    format!(
        "[[upstreams]]\nname = \"api\"\nendpoints = [{}]\n",
        eps.join(", ")
    )
}

fn filter(plugin_name: &str, name: &str, extra: &str) -> String {
    format!(
        "[[pipeline]]\nplugin = \"{}\"\nrole = \"filter\"\nname = \"{name}\"\n{extra}\n",
        plugin(plugin_name)
    )
}

fn router(rules: usize) -> String {
    let mut s = String::from("[[pipeline]]\nplugin = \"router\"\n");
    for i in 0..rules.saturating_sub(1) {
        s += &format!("[[pipeline.config.routes]]\nprefix = \"/r{i}/\"\nupstream = \"api\"\n");
    }
    s +=
        "[[pipeline.config.routes]]\nprefix = \"/api/\"\nupstream = \"api\"\nstrip_prefix = true\n";
    s
}

const BALANCER: &str = "[[pipeline]]\nplugin = \"balancer\"\n";

fn head() -> RequestHead {
    let req = http::Request::builder()
        .uri("/api/users?id=7")
        .header("host", "example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header("x-a", "value-a")
        .header("x-request-id", "0123456789abcdef")
        .body(())
        .unwrap();
    RequestHead::new(req.into_parts().0, "192.0.2.1:40000".parse().unwrap())
}

struct Row {
    case: &'static str,
    median: Duration,
    p99: Duration,
}

/// What runs after the request stages in one measured request.
#[derive(Clone, Copy)]
enum Response {
    /// Nothing: the request stages alone.
    No,
    /// The response stages too, as `Pipeline::handle` runs them. With
    /// `on_response` (some filter wants responses) the host first copies the
    /// request head for the filters' `on_response`, and the bench checks that
    /// they ran; without, the head moves on as is and no filter is called.
    Stages { on_response: bool },
}

async fn measure(
    runtime: &Runtime,
    case: &'static str,
    pipeline_toml: &str,
    response: Response,
) -> Option<Row> {
    measure_with(runtime, case, pipeline_toml, response, None).await
}

/// [`measure`], each request also carrying `header` (put back before every
/// request: a stage may remove it, as the jwt filter removes the token).
async fn measure_with(
    runtime: &Runtime,
    case: &'static str,
    pipeline_toml: &str,
    response: Response,
    header: Option<(http::HeaderName, http::HeaderValue)>,
) -> Option<Row> {
    if let Some(only) = std::env::args().skip_while(|a| a != "--only").nth(1)
        && !case.contains(&only)
    {
        return None;
    }
    let text = format!("[server]\nlisten = \"127.0.0.1:1\"\naccess_log = false\n{pipeline_toml}");
    let manifest =
        Manifest::parse(Path::new("bench.toml"), &text).unwrap_or_else(|e| panic!("{case}: {e}"));
    let registry = portier::upstream::Registry::offline(1);
    let pipeline = Pipeline::build(
        &manifest,
        runtime,
        &registry,
        &portier::cache::Stores::default(),
        1,
    )
    .await
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut h = head();
    if let Some((name, value)) = &header {
        h.parts.headers.insert(name.clone(), value.clone());
    }
    let mut times = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        // The upstream's answer would arrive from the network: made before the clock starts.
        let upstream_answer = match response {
            Response::No => None,
            Response::Stages { .. } => Some((
                ResponseHead {
                    parts: http::Response::new(()).into_parts().0,
                },
                ProxyBody::full(""),
            )),
        };
        let t = Instant::now();
        let (back, decision) = pipeline.request_stages(h).await;
        h = back;
        let answered = match (response, upstream_answer) {
            (Response::Stages { on_response }, Some((resp, body))) => {
                let parts = if on_response {
                    clone_request_parts(&h.parts)
                } else {
                    http::Request::new(()).into_parts().0
                };
                let seen = RequestHead::new(parts, h.client);
                Some(
                    pipeline
                        .response_stages(seen, resp, body, decision.reached)
                        .await,
                )
            }
            _ => None,
        };
        let elapsed = t.elapsed();
        if let Some((resp, _, _)) = &answered
            && let Response::Stages { on_response: true } = response
        {
            assert_eq!(
                resp.parts.headers.get("x-c").map(|v| v.as_bytes()),
                Some(&b"1"[..]),
                "{case}: on-response did not run"
            );
        }
        drop(answered);
        if i >= WARMUP {
            times.push(elapsed);
        }
        // Keep the head comparable between iterations (the router rewrites the path).
        h.parts.uri = "/api/users?id=7".parse().unwrap();
        if let Some((name, value)) = &header {
            h.parts.headers.insert(name.clone(), value.clone());
        }
    }
    times.sort();
    Some(Row {
        case,
        median: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
    })
}

fn main() {
    let out = std::env::args().skip_while(|a| a != "--out").nth(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(async {
        let cache = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(Some(cache.path())).unwrap();
        let up1 = upstream(1);
        let up10 = upstream(10);
        let touches = |config: &str| -> String {
            (0..5)
                .map(|i| filter("touch", &format!("t{i}"), config))
                .collect()
        };
        // As bench/run's case (c): each filter reads x-a and sets x-b.
        let five_touches = touches("config = { read = \"x-a\", set = \"x-b\" }");
        // The same, and each also sets x-c on the response (on_response).
        let five_touches_respond =
            touches("config = { read = \"x-a\", set = \"x-b\", respond_set = \"x-c\" }");
        let request_only = Response::No;
        let (jwt_stage, bearer) = jwt_es256();
        vec![
            measure(&runtime, "empty pipeline (host only)", &up1, request_only).await,
            measure(
                &runtime,
                "one stage: no-op filter",
                &format!("{up1}{}", filter("noop", "noop", "")),
                request_only,
            )
            .await,
            measure(
                &runtime,
                "one stage: filter reading one header",
                &format!(
                    "{up1}{}",
                    filter("touch", "read", "config = { read = \"x-a\" }")
                ),
                request_only,
            )
            .await,
            measure(
                &runtime,
                "one stage: filter setting one header",
                &format!(
                    "{up1}{}",
                    filter("touch", "set", "config = { set = \"x-b\" }")
                ),
                request_only,
            )
            .await,
            measure(
                &runtime,
                "one stage: no-op filter, fresh instance per call",
                &format!(
                    "{up1}{}",
                    filter("noop", "fresh", "isolation = \"per-request\"")
                ),
                request_only,
            )
            .await,
            measure(
                &runtime,
                "router, 100 rules (last matches)",
                &format!("{up1}{}", router(100)),
                request_only,
            )
            .await,
            measure(
                &runtime,
                "balancer over 10 endpoints (round-robin)",
                &format!("{up10}{BALANCER}"),
                request_only,
            )
            .await,
            measure(
                &runtime,
                "pipeline: router + balancer, request and response sides",
                &format!("{up10}{}{BALANCER}", router(2)),
                Response::Stages { on_response: false },
            )
            .await,
            measure(
                &runtime,
                "pipeline: 5 filters (each reads x-a, sets x-b) + router + balancer, \
                 no on-response",
                &format!("{up10}{five_touches}{}{BALANCER}", router(2)),
                Response::Stages { on_response: false },
            )
            .await,
            measure(
                &runtime,
                "pipeline: 5 filters (each reads x-a, sets x-b; on-response sets x-c) \
                 + router + balancer",
                &format!("{up10}{five_touches_respond}{}{BALANCER}", router(2)),
                Response::Stages { on_response: true },
            )
            .await,
            measure_with(
                &runtime,
                "one stage: jwt, ES256, a client's token (verified once, then cached)",
                &format!("{up1}{jwt_stage}"),
                request_only,
                Some(bearer.clone()),
            )
            .await,
            measure_with(
                &runtime,
                "one stage: jwt, ES256, every token's signature checked (cache_size = 0)",
                &format!("{up1}{jwt_stage}cache_size = 0\n"),
                request_only,
                Some(bearer),
            )
            .await,
            es256_native(),
        ]
    });
    let mut table = String::from("| case | median | p99 |\n|---|---:|---:|\n");
    for r in rows.iter().flatten() {
        table += &format!(
            "| {} | {:.2} µs | {:.2} µs |\n",
            r.case,
            micros(r.median),
            micros(r.p99)
        );
    }
    print!("{table}");
    if let Some(path) = out {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

/// The built-in jwt filter with a fresh ES256 key (its `[pipeline.config]`
/// open last, for a case to add to), and an `authorization` header with a
/// token it signed.
fn jwt_es256() -> (String, (http::HeaderName, http::HeaderValue)) {
    let key = rcgen::KeyPair::generate().expect("an ES256 key");
    let stage = format!(
        "[[pipeline]]\nplugin = \"jwt\"\n[pipeline.config]\naudience = \"api\"\n\
         keys = [{{ alg = \"ES256\", pem = \"\"\"{}\"\"\" }}]\n\
         forward_claims = {{ sub = \"x-user\" }}\n",
        key.public_key_pem()
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "alice", "aud": "api", "exp": exp, "scope": "read"});
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &signing,
    )
    .unwrap();
    (
        stage,
        (
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        ),
    )
}

/// The reference for the row above: one ES256 signature check by ring in
/// native code, the host's `crypto.verify`, with no plugin around it.
fn es256_native() -> Option<Row> {
    let case = "reference: one ES256 signature check in native code (ring), no plugin";
    if let Some(only) = std::env::args().skip_while(|a| a != "--only").nth(1)
        && !case.contains(&only)
    {
        return None;
    }
    use ring::signature::{self, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let message = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
    let sig = pair.sign(&rng, message).unwrap();
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        pair.public_key().as_ref().to_vec(),
    );
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2200 {
        let t = Instant::now();
        public.verify(message, sig.as_ref()).unwrap();
        times.push(t.elapsed());
    }
    times.drain(..200);
    times.sort();
    Some(Row {
        case,
        median: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
    })
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
