//! `fetcher`: sends GET http://backend/ (authority "backend") and answers
//! with the backend's status, content-type and body (streamed). If the
//! outgoing request fails — e.g. the host refuses an authority the manifest
//! did not grant — it answers 502 with the wasi:http error code in the body
//! ("outgoing request failed: HttpRequestDenied").
//!
//! The authority can be overridden by the request header `x-target`
//! (test convenience: probe a granted and an ungranted authority with one
//! component).

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

struct Fetcher;

impl Guest for Fetcher {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request
            .headers()
            .get("x-target")
            .into_iter()
            .next()
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| "backend".to_string());

        let req = OutgoingRequest::new(Fields::new());
        let _ = req.set_method(&Method::Get);
        let _ = req.set_scheme(Some(&Scheme::Http));
        if req.set_authority(Some(&target)).is_err() {
            return common::respond_text(out, 400, &[], "bad x-target authority\n");
        }
        let _ = req.set_path_with_query(Some("/"));

        let future = match outgoing_handler::handle(req, None) {
            Ok(f) => f,
            Err(code) => {
                let msg = format!("outgoing request failed: {code:?}\n");
                return common::respond_text(out, 502, &[], &msg);
            }
        };
        // Refusals by the host's send_request hook arrive here, not above.
        let resp = loop {
            match future.get() {
                Some(r) => break r,
                None => future.subscribe().block(),
            }
        };
        let resp = match resp {
            Ok(Ok(resp)) => resp,
            Ok(Err(code)) => {
                let msg = format!("outgoing request failed: {code:?}\n");
                return common::respond_text(out, 502, &[], &msg);
            }
            Err(()) => return common::respond_text(out, 500, &[], "response already taken\n"),
        };

        let headers = Fields::new();
        for v in resp.headers().get("content-type") {
            let _ = headers.append("content-type", &v);
        }
        let status = resp.status();
        let Ok(body) = resp.consume() else {
            return common::respond_text(out, 500, &[], "backend body already taken\n");
        };
        let ours = OutgoingResponse::new(headers);
        let _ = ours.set_status_code(status);
        let out_body = ours.body().expect("first call to outgoing-response.body");
        ResponseOutparam::set(out, Ok(ours));
        if let Err(e) = common::stream_body(body, out_body) {
            eprintln!("fetcher: {e}");
        }
        // `resp` (the incoming-response) drops after its body: a child
        // resource must go before its parent.
        drop(resp);
    }
}

wasip2::http::proxy::export!(Fetcher);
