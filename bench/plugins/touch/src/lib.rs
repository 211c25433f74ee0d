//! # touch — read one request header, set one
//!
//! ```toml
//! config = { read = "x-request-id", set = "x-seen" }   # either may be left out
//! ```
//! The header set carries the value read (or "1"), so the read is not optimised away.

use portier_sdk::{Action, Filter, Request, config};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Touch {
    read: Option<String>,
    set: Option<String>,
}

impl Filter for Touch {
    fn init(json: &str) -> Result<Self, String> {
        config::parse(json)
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        let value = self.read.as_deref().and_then(|h| request.header(h));
        if let Some(name) = &self.set {
            let _ = request.set_header(name, value.as_deref().unwrap_or("1"));
        }
        Action::Continue
    }
}

portier_sdk::export_filter!(Touch);
