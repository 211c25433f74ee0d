//! # noop — a filter that does nothing
//!
//! Its cost is the host's cost of one stage call: taking an instance,
//! lending it the request head, calling it, and putting it back.

use portier_sdk::{Action, Filter, Request};

struct Noop;

impl Filter for Noop {
    fn init(_config: &str) -> Result<Self, portier_sdk::config::Error> {
        Ok(Noop)
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, _request: &Request) -> Action {
        Action::Continue
    }
}

portier_sdk::export_filter!(Noop);
