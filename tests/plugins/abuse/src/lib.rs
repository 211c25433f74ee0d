//! # abuse — a filter that pushes every host call past what it may do
//!
//! The edge tests load it to prove the plugin boundary holds: whatever a
//! plugin asks, it cannot break message framing, send a status a proxy
//! must not, grow the proxy's memory through kv, or flood its log.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "abuse.wasm"
//! role = "filter"
//! config = { mode = "framing" }
//! ```
//!
//! - `framing`: tries to set, append and remove framing and hop-by-hop
//!   headers on the request and the response, and reports what the host
//!   said in `x-edit-results` (on each side).
//! - `status`: answers every request itself with `status` (e.g. 999, 101).
//! - `respond-framing`: answers with a body of `hello` and headers that lie
//!   about its framing (content-length, transfer-encoding, connection).
//! - `log-flood`: logs `lines` lines of 10 KiB with embedded newlines.
//! - `kv-hoard`: stores `values` values of `size` bytes under fresh keys
//!   per request and reports how many the host took in `x-kv-stored`.

use portier_sdk::{Action, Filter, HttpResponse, Request, Response, config, kv, log};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum Mode {
    Framing,
    Status,
    RespondFraming,
    LogFlood,
    KvHoard,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Abuse {
    mode: Mode,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    lines: usize,
    #[serde(default)]
    values: usize,
    #[serde(default)]
    size: usize,
}

/// The framing and hop-by-hop headers a plugin must not touch.
const FRAMING: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "keep-alive",
];

/// Try every edit on `FRAMING` through `set` and `append`; "name:ok" or
/// "name:refused" per attempt, comma-separated.
fn attempt(
    set: impl Fn(&str, &str) -> Result<(), String>,
    append: impl Fn(&str, &str) -> Result<(), String>,
) -> String {
    let mut results = Vec::new();
    for name in FRAMING {
        for (how, result) in [("set", set(name, "0")), ("append", append(name, "close"))] {
            let verdict = if result.is_ok() { "ok" } else { "refused" };
            results.push(format!("{how} {name}:{verdict}"));
        }
    }
    results.join(", ")
}

impl Filter for Abuse {
    fn init(json: &str) -> Result<Self, portier_sdk::config::Error> {
        config::parse(json)
    }

    fn wants_response(&self) -> bool {
        matches!(self.mode, Mode::Framing)
    }

    fn on_request(&self, request: &Request) -> Action {
        match self.mode {
            Mode::Framing => {
                let results = attempt(
                    |n, v| request.set_header(n, v),
                    |n, v| request.append_header(n, v),
                );
                for name in FRAMING {
                    request.remove_header(name);
                }
                let _ = request.set_header("x-edit-results", &results);
                Action::Continue
            }
            Mode::Status => Action::Respond(HttpResponse::text(self.status, "made up\n")),
            Mode::RespondFraming => Action::Respond(
                HttpResponse::new(200)
                    .header("content-length", "999")
                    .header("transfer-encoding", "chunked")
                    .header("connection", "close")
                    .header("x-ok", "1")
                    .body("hello"),
            ),
            Mode::LogFlood => {
                let line = format!("forged\n{}", "x".repeat(10 * 1024));
                for _ in 0..self.lines {
                    log::info(&line);
                }
                Action::Continue
            }
            Mode::KvHoard => {
                let value = vec![7u8; self.size];
                let mut stored = 0;
                let mut error = String::new();
                let first = kv::increment("next", self.values as i64, None).unwrap_or(0);
                for i in 0..self.values {
                    match kv::set(&format!("hoard-{}", first as usize + i), &value, None) {
                        Ok(()) => stored += 1,
                        Err(e) => error = e.message().to_owned(),
                    }
                }
                let _ = request.set_header("x-kv-stored", &stored.to_string());
                let _ = request.set_header("x-kv-error", &error);
                Action::Continue
            }
        }
    }

    fn on_response(&self, _request: &Request, response: &Response) {
        let results = attempt(
            |n, v| response.set_header(n, v),
            |n, v| response.append_header(n, v),
        );
        for name in FRAMING {
            response.remove_header(name);
        }
        let _ = response.set_header("x-edit-results", &results);
        let statuses = [101, 999, 204];
        let refused: Vec<String> = statuses
            .iter()
            .map(|s| {
                format!(
                    "{s}:{}",
                    if response.set_status(*s).is_ok() {
                        "ok"
                    } else {
                        "refused"
                    }
                )
            })
            .collect();
        let _ = response.set_header("x-status-results", &refused.join(", "));
        // Leave the status as the upstream sent it.
        let _ = response.set_status(200);
    }
}

portier_sdk::export_filter!(Abuse);
