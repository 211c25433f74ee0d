//! `trapper` (test only): sends 200 with headers, writes part of a chunked
//! body, then traps (a Rust panic is `unreachable` in wasm). Used to see what
//! a client receives when a guest dies mid-body: a host must turn that into a
//! broken body, not a short body that looks complete. On a path starting
//! with `/early` it traps before answering at all.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};

struct Trapper;

impl Guest for Trapper {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if request
            .path_with_query()
            .is_some_and(|p| p.starts_with("/early"))
        {
            panic!("guest trapped before answering");
        }
        let resp = OutgoingResponse::new(Fields::new());
        let body = resp.body().expect("body");
        ResponseOutparam::set(out, Ok(resp));
        let stream = body.write().expect("write");
        stream
            .blocking_write_and_flush(b"partial body, then a trap\n")
            .expect("write");
        panic!("guest trapped mid-body");
    }
}

wasip2::http::proxy::export!(Trapper);
