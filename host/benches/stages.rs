//! Per-stage cost, in-process (no sockets): what one plugin call, a router
//! with 100 rules, a balancer over 10 endpoints, a fresh instance and whole
//! pipelines cost the host per request.
//!
//! Run with `cargo bench -p portier --bench stages` after building the bench
//! plugins (`bench/run` does both). Prints a Markdown table; with
//! `--out FILE` writes it there too; `--only TEXT` runs the cases whose name
//! contains TEXT (for profiling one case).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portier::body::ProxyBody;
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
    RequestHead {
        parts: req.into_parts().0,
        client: "192.0.2.1:40000".parse().unwrap(),
    }
}

struct Row {
    case: &'static str,
    median: Duration,
    p99: Duration,
}

async fn measure(
    runtime: &Runtime,
    case: &'static str,
    pipeline_toml: &str,
    responses: bool,
) -> Option<Row> {
    if let Some(only) = std::env::args().skip_while(|a| a != "--only").nth(1)
        && !case.contains(&only)
    {
        return None;
    }
    let text = format!("[server]\nlisten = \"127.0.0.1:1\"\naccess_log = false\n{pipeline_toml}");
    let manifest =
        Manifest::parse(Path::new("bench.toml"), &text).unwrap_or_else(|e| panic!("{case}: {e}"));
    let pipeline = Pipeline::build(&manifest, runtime, 1)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut h = head();
    let mut times = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let t = Instant::now();
        let (back, decision) = pipeline.request_stages(h).await;
        h = back;
        if responses {
            let resp = ResponseHead {
                parts: http::Response::new(()).into_parts().0,
            };
            let (_resp, _body) = pipeline
                .response_stages(head(), resp, ProxyBody::full(""), decision.reached)
                .await;
        }
        if i >= WARMUP {
            times.push(t.elapsed());
        }
        // Keep the head comparable between iterations (the router rewrites the path).
        h.parts.uri = "/api/users?id=7".parse().unwrap();
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
        let five_touches: String = (0..5)
            .map(|i| {
                filter(
                    "touch",
                    &format!("t{i}"),
                    "config = { read = \"x-a\", set = \"x-b\" }",
                )
            })
            .collect();
        vec![
            measure(&runtime, "empty pipeline (host only)", &up1, false).await,
            measure(
                &runtime,
                "one stage: no-op filter",
                &format!("{up1}{}", filter("noop", "noop", "")),
                false,
            )
            .await,
            measure(
                &runtime,
                "one stage: filter reading one header",
                &format!(
                    "{up1}{}",
                    filter("touch", "read", "config = { read = \"x-a\" }")
                ),
                false,
            )
            .await,
            measure(
                &runtime,
                "one stage: filter setting one header",
                &format!(
                    "{up1}{}",
                    filter("touch", "set", "config = { set = \"x-b\" }")
                ),
                false,
            )
            .await,
            measure(
                &runtime,
                "one stage: no-op filter, fresh instance per call",
                &format!(
                    "{up1}{}",
                    filter("noop", "fresh", "isolation = \"per-request\"")
                ),
                false,
            )
            .await,
            measure(
                &runtime,
                "router, 100 rules (last matches)",
                &format!("{up1}{}", router(100)),
                false,
            )
            .await,
            measure(
                &runtime,
                "balancer over 10 endpoints",
                &format!("{up10}{BALANCER}"),
                false,
            )
            .await,
            measure(
                &runtime,
                "pipeline: router + balancer",
                &format!("{up10}{}{BALANCER}", router(2)),
                true,
            )
            .await,
            measure(
                &runtime,
                "pipeline: 5 filters + router + balancer, with on-response",
                &format!("{up10}{five_touches}{}{BALANCER}", router(2)),
                true,
            )
            .await,
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

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
