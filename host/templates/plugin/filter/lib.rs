//! {{name}}: a filter. It refuses requests without the header its config
//! names (400) and tells the upstream which header it checked.
//!
//! Config (`[pipeline.config]` in the manifest):
//!
//! ```toml
//! require = "x-user"     # the header every request must carry
//! ```

use portier_sdk::{Action, Filter, HttpResponse, Request, config};
use serde::Deserialize;

/// The stage's config, as the manifest gives it; unknown keys are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    require: String,
}

struct Plugin {
    require: String,
}

impl Filter for Plugin {
    // Runs once per instance; an error rejects the manifest, naming the key.
    fn init(json: &str) -> Result<Self, config::Error> {
        let Config { require } = config::parse(json)?;
        let require = config::header_name(&require).map_err(|e| config::Error::at("require", e))?;
        Ok(Plugin { require })
    }

    fn on_request(&self, request: &Request) -> Action {
        if request.header(&self.require).is_none() {
            return Action::Respond(HttpResponse::text(
                400,
                format!("400 Bad Request: {} is required\n", self.require),
            ));
        }
        // The host refuses only what it must (hop-by-hop headers and the
        // like); a header edit that fails leaves the request unchanged.
        let _ = request.set_header("x-checked", &self.require);
        Action::Continue
    }

    // This filter never looks at responses: the host skips that call.
    fn wants_response(&self) -> bool {
        false
    }
}

portier_sdk::export_filter!(Plugin);
