//! # cors — cross-origin requests, answered at the proxy
//!
//! A filter that implements the CORS protocol for the upstreams behind it:
//! preflights are answered here from the config, and responses to allowed
//! origins get the headers browsers need. Requests from origins not listed
//! get no CORS headers at all, so the browser keeps their responses from
//! the page.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "cors"
//! [pipeline.config]
//! origins = ["https://app.example.com", "https://*.example.com"]   # or ["*"]
//! methods = ["GET", "POST", "PUT", "DELETE"]    # default GET, HEAD, POST
//! headers = ["authorization", "content-type"]   # request headers allowed; "*" for any
//! expose_headers = ["x-request-id"]             # response headers scripts may read
//! credentials = true                            # cookies and Authorization
//! max_age = "10m"                               # how long browsers keep a preflight
//! ```
//!
//! Behaviour:
//!
//! - **Preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`): answered here, never forwarded. An
//!   allowed origin, method and headers get `204` with
//!   `access-control-allow-origin`, `-allow-methods`, `-allow-headers` (the
//!   ones asked for), `-allow-credentials`, `-max-age` and `vary`;
//!   anything else gets `403` with no CORS header.
//! - **Other requests with `Origin`** go on; an allowed origin's response
//!   gets `access-control-allow-origin` (the origin itself, or `*` when
//!   every origin is allowed without credentials), `-allow-credentials` and
//!   `-expose-headers`, replacing any the upstream set; every response to a
//!   request with `Origin` gets `vary: origin` unless the answer is `*`.
//! - Requests without `Origin` are not touched.
//! - Checked at init: origins are `scheme://host[:port]` (a wildcard only as
//!   the first label), `*` cannot go with `credentials`, names are tokens.

mod policy;

use portier_sdk::{Action, Filter, HttpResponse, Request, Response, config};

use policy::{Policy, Preflight};

/// The cors filter.
pub struct Cors(Policy);

impl Filter for Cors {
    fn init(json: &str) -> Result<Self, config::Error> {
        Ok(Cors(Policy::new(config::parse(json)?)?))
    }

    fn on_request(&self, request: &Request) -> Action {
        if request.method() != "OPTIONS" {
            return Action::Continue;
        }
        let (Some(origin), Some(method)) = (
            request.header("origin"),
            request.header("access-control-request-method"),
        ) else {
            // A plain OPTIONS request: the upstream's to answer.
            return Action::Continue;
        };
        let asked = request
            .header_all("access-control-request-headers")
            .join(",");
        Action::Respond(match self.0.preflight(&origin, &method, &asked) {
            Preflight::Allowed(headers) => headers
                .into_iter()
                .fold(HttpResponse::new(204), |r, (n, v)| r.header(n, v)),
            Preflight::Refused(why) => {
                HttpResponse::text(403, format!("403 Forbidden: CORS {why}\n"))
            }
        })
    }

    fn on_response(&self, request: &Request, response: &Response) {
        let Some(origin) = request.header("origin") else {
            return;
        };
        for name in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
        ] {
            response.remove_header(name);
        }
        if self.0.varies() {
            let _ = response.append_header("vary", "origin");
        }
        if let Some(allow) = self.0.allow_origin(&origin) {
            for (name, value) in self.0.response_headers(allow) {
                let _ = response.set_header(&name, &value);
            }
        }
    }
}

portier_sdk::export_filter!(Cors);
