//! `trapper` (test only): sends 200 with headers, writes part of a chunked
//! body, then traps (a Rust panic is `unreachable` in wasm). Used to see what
//! a client receives when a guest dies mid-body: a host must turn that into a
//! broken body, not a short body that looks complete. On a path starting
//! with `/early` it traps before answering at all; on `/spin` it never
//! returns (only the host's budget ends it).

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};

struct Trapper;

impl Guest for Trapper {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.starts_with("/early") {
            panic!("guest trapped before answering");
        }
        if path.starts_with("/spin") {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
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
