//! `hello`: answers every request 200 "hello from wasi:http\n" (text/plain),
//! with the request's path echoed in the `x-path` header.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let path = pq
            .split('?')
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        common::respond_text(
            out,
            200,
            &[("x-path", path.as_bytes())],
            "hello from wasi:http\n",
        );
    }
}

wasip2::http::proxy::export!(Hello);
