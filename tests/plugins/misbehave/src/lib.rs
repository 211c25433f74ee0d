//! # misbehave — a filter that fails on purpose
//!
//! The sandbox tests put it in a pipeline to prove that a broken plugin
//! costs the requests it breaks and nothing else.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "misbehave.wasm"
//! role = "filter"
//! config = { mode = "spin" }   # spin | alloc | panic | panic-every-10th
//! ```
//!
//! - `spin`, `alloc`, `panic`: misbehave only on requests that carry an
//!   `x-misbehave` header (loop forever / grow memory without bound / panic),
//!   so the tests can mix them with well-behaved requests. `spin` first logs
//!   `spinning on PATH`, so a test knows the moment it starts.
//! - `panic-every-10th`: panic on every 10th request counted across all
//!   instances (a shared kv counter), whatever its headers.
//! - `panic-on-response`: panic in `on_response`; with
//!   `wants_response = false` the filter tells the host at init not to call it.
//! - `start-once`: `init` succeeds the first time (the proxy starts) and
//!   refuses every time after (a shared kv counter), so every instance the
//!   host starts later fails to start.

use portier_sdk::{Action, Filter, Request, Response, config, kv, log};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum Mode {
    Spin,
    Alloc,
    Panic,
    // kebab-case alone would spell it `panic-every10th`.
    #[serde(rename = "panic-every-10th")]
    PanicEvery10th,
    PanicOnResponse,
    StartOnce,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    /// What the filter tells the host at init about `on_response`.
    #[serde(default = "yes")]
    wants_response: bool,
}

fn yes() -> bool {
    true
}

struct Misbehave {
    mode: Mode,
    wants_response: bool,
}

impl Filter for Misbehave {
    fn init(json: &str) -> Result<Self, portier_sdk::config::Error> {
        let Config {
            mode,
            wants_response,
        } = config::parse(json)?;
        if let Mode::StartOnce = mode
            && kv::increment("starts", 1, None).map_err(|e| e.message().to_owned())? > 1
        {
            return Err("refusing to start again".into());
        }
        Ok(Misbehave {
            mode,
            wants_response,
        })
    }

    fn wants_response(&self) -> bool {
        self.wants_response
    }

    fn on_response(&self, _request: &Request, _response: &Response) {
        if let Mode::PanicOnResponse = self.mode {
            panic!("asked to panic on the response");
        }
    }

    fn on_request(&self, request: &Request) -> Action {
        if let Mode::PanicEvery10th = self.mode {
            let n = kv::increment("requests", 1, None).expect("kv works");
            if n % 10 == 0 {
                panic!("request {n} is a 10th request");
            }
            return Action::Continue;
        }
        if matches!(self.mode, Mode::PanicOnResponse | Mode::StartOnce)
            || request.header("x-misbehave").is_none()
        {
            return Action::Continue;
        }
        match self.mode {
            Mode::Spin => {
                log::info(format!("spinning on {}", request.path()));
                spin()
            }
            Mode::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Mode::Panic => panic!("asked to panic"),
            Mode::PanicEvery10th | Mode::PanicOnResponse | Mode::StartOnce => unreachable!(),
        }
    }
}

/// Never returns; only the host's deadline ends it.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

portier_sdk::export_filter!(Misbehave);
