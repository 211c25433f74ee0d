//! # touch — read one request header, set one; optionally set a response header
//!
//! ```toml
//! config = { read = "x-request-id", set = "x-seen" }   # either may be left out
//! config = { read = "x-a", set = "x-b", respond_set = "x-c" }
//! ```
//! The request header set carries the value read (or "1"), so the read is not
//! optimised away. Only with `respond_set` does the filter want responses: its
//! `on_response` then sets that response header to "1". Without it the filter
//! declares at `init` that it has no response work, and the host never calls
//! its `on_response`.

use portier_sdk::{Action, Filter, Request, Response, config};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Touch {
    read: Option<String>,
    set: Option<String>,
    respond_set: Option<String>,
}

impl Filter for Touch {
    fn init(json: &str) -> Result<Self, portier_sdk::config::Error> {
        config::parse(json)
    }

    fn wants_response(&self) -> bool {
        self.respond_set.is_some()
    }

    fn on_request(&self, request: &Request) -> Action {
        let value = self.read.as_deref().and_then(|h| request.header(h));
        if let Some(name) = &self.set {
            let _ = request.set_header(name, value.as_deref().unwrap_or("1"));
        }
        Action::Continue
    }

    fn on_response(&self, _request: &Request, response: &Response) {
        if let Some(name) = &self.respond_set {
            let _ = response.set_header(name, "1");
        }
    }
}

portier_sdk::export_filter!(Touch);
