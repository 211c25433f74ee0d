//! `echo`: streams the request body back as the response body, chunk by
//! chunk (at most one chunk in guest memory), with the request's
//! content-type (if any) and status 200.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{ErrorCode, Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::new();
        for v in request.headers().get("content-type") {
            let _ = headers.append("content-type", &v);
        }
        // No content-length: the length is not known up front, so the host
        // frames the response (chunked on HTTP/1.1).
        let Ok(body) = request.consume() else {
            ResponseOutparam::set(
                out,
                Err(ErrorCode::InternalError(Some("body taken".into()))),
            );
            return;
        };
        let resp = OutgoingResponse::new(headers);
        let out_body = resp.body().expect("first call to outgoing-response.body");
        ResponseOutparam::set(out, Ok(resp));
        if let Err(e) = common::stream_body(body, out_body) {
            eprintln!("echo: {e}");
        }
    }
}

wasip2::http::proxy::export!(Echo);
