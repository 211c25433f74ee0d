//! Helpers shared by the guest components: answering with a short text body,
//! and copying one wasi:io stream into another chunk by chunk (never holding
//! more than one chunk of up to `CHUNK` bytes in guest memory).

use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// The most bytes read from the input per `blocking-read`.
pub const CHUNK: u64 = 64 * 1024;

/// Answer `out` with `status`, the headers given, and `text` as the body.
pub fn respond_text(out: ResponseOutparam, status: u16, extra: &[(&str, &[u8])], text: &str) {
    let mut list: Vec<(String, Vec<u8>)> = vec![
        ("content-type".into(), b"text/plain".to_vec()),
        ("content-length".into(), text.len().to_string().into_bytes()),
    ];
    list.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_vec())));
    let headers = match Fields::from_list(&list) {
        Ok(h) => h,
        Err(e) => {
            ResponseOutparam::set(out, Err(ErrorCode::InternalError(Some(format!("{e:?}")))));
            return;
        }
    };
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let body = resp.body().expect("first call to outgoing-response.body");
    ResponseOutparam::set(out, Ok(resp));
    {
        let stream = body.write().expect("first call to outgoing-body.write");
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        for piece in text.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(piece).is_err() {
                // The client went away; nothing more to do.
                return;
            }
        }
        // The output stream is a child of the body: drop it before `finish`.
    }
    // Without `finish` the host aborts the body (the client sees an error).
    let _ = OutgoingBody::finish(body, None);
}

/// Copy everything from `input` to `output`; returns the bytes copied, or
/// why it stopped early. Reads block until a chunk (a body frame) arrives;
/// writes wait for the host's `check-write` permit, so a slow client slows
/// the read side down instead of piling data up in the guest.
pub fn copy(input: &InputStream, output: &OutputStream) -> Result<u64, String> {
    let mut total = 0u64;
    loop {
        let chunk = match input.blocking_read(CHUNK) {
            Ok(c) => c,
            Err(StreamError::Closed) => return Ok(total),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("read failed: {}", e.to_debug_string()));
            }
        };
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let permit = match output.check_write() {
                Ok(0) => {
                    output.subscribe().block();
                    continue;
                }
                Ok(n) => n,
                Err(StreamError::Closed) => return Err("output closed".into()),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!("write failed: {}", e.to_debug_string()));
                }
            };
            let n = rest
                .len()
                .min(usize::try_from(permit).unwrap_or(usize::MAX));
            output
                .write(&rest[..n])
                .map_err(|e| format!("write failed: {e:?}"))?;
            rest = &rest[n..];
            total += n as u64;
        }
    }
}

/// Stream `body` into a response body opened from `resp`, then finish both.
/// `resp` must already have been handed to `response-outparam.set`
/// (headers go out first; the body follows as it is copied).
pub fn stream_body(body: IncomingBody, out_body: OutgoingBody) -> Result<u64, String> {
    let copied = {
        let input = body.stream().map_err(|()| "incoming body already taken")?;
        let output = out_body
            .write()
            .map_err(|()| "outgoing body already taken")?;
        copy(&input, &output)
        // `input` and `output` (children of the bodies) drop here.
    };
    match copied {
        Ok(n) => {
            // Trailers of the request body are not forwarded.
            drop(IncomingBody::finish(body));
            OutgoingBody::finish(out_body, None).map_err(|e| format!("finish: {e:?}"))?;
            Ok(n)
        }
        Err(e) => {
            // Dropping an unfinished outgoing-body aborts it: the client sees
            // a broken body rather than a short one that looks complete.
            drop(out_body);
            Err(e)
        }
    }
}
