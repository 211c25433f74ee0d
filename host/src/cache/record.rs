//! A response body on its way to the client that the store keeps a copy of:
//! each frame goes on at once (the first client is never kept waiting for
//! the whole body), and the copy becomes an [`Entry`] when the body ends
//! cleanly. Past `max_object_size` the copy is dropped and the rest only
//! passes through; a body that fails or carries trailers is not stored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::{Entry, Flight, Store};
use crate::body::{BoxError, ProxyBody};

/// The response body, recorded for the store as it streams.
#[derive(Debug)]
pub struct Recording {
    inner: ProxyBody,
    store: Arc<Store>,
    /// The key, status, headers and lifetime of the entry to be; `None`
    /// once it was stored or given up.
    pending: Option<Pending>,
    copy: BytesMut,
}

#[derive(Debug)]
struct Pending {
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    /// Released (dropped) with the entry: waiting misses then find it.
    _flight: Option<Flight>,
}

impl Recording {
    /// Record `inner`, the body of a `status` response with `headers`, to
    /// store under `key` for `ttl` once it has passed whole; the `flight`
    /// other misses of the key wait on ends then (or when it is given up).
    pub fn new(
        inner: ProxyBody,
        store: Arc<Store>,
        (key, flight): (String, Option<Flight>),
        status: StatusCode,
        headers: &HeaderMap,
        ttl: Duration,
    ) -> Recording {
        let max = store.config().max_object_size;
        // A declared length over the bound is known now: no copy at all.
        let pending = match inner.size_hint().lower() {
            declared if declared > max as u64 => {
                store.too_large();
                None
            }
            _ => Some(Pending {
                key,
                status,
                headers: owned(headers),
                ttl,
                _flight: flight,
            }),
        };
        let capacity = inner.size_hint().exact().unwrap_or(0).min(max as u64) as usize;
        let copy = if pending.is_some() {
            BytesMut::with_capacity(capacity)
        } else {
            BytesMut::new()
        };
        Recording {
            inner,
            store,
            pending,
            copy,
        }
    }

    fn keep(&mut self, data: &Bytes) {
        if self.pending.is_none() {
            return;
        }
        if self.copy.len() + data.len() > self.store.config().max_object_size {
            self.pending = None;
            self.copy = BytesMut::new();
            self.store.too_large();
            return;
        }
        self.copy.extend_from_slice(data);
    }

    fn finish(&mut self) {
        if let Some(mut p) = self.pending.take() {
            let body = std::mem::take(&mut self.copy).freeze();
            // Served whole from now on: its length is known.
            p.headers.remove(http::header::TRANSFER_ENCODING);
            p.headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.len()),
            );
            self.store
                .insert(p.key, Entry::new(p.status, p.headers, body, p.ttl));
        }
    }
}

/// A copy of `headers` that owns its bytes. Parsed header values share the
/// connection's read buffer (hyper parses without copying): a stored clone
/// would keep kilobytes of that buffer alive for each few bytes of header.
fn owned(headers: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        copy.append(name, owned_value(value));
    }
    copy
}

/// A header value that owns its bytes (see [`owned`]).
pub(super) fn owned_value(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
}

impl Body for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => match f.data_ref() {
                Some(data) => this.keep(data),
                // Trailers: an entry would serve the body without them.
                None => this.pending = None,
            },
            Some(Err(_)) => this.pending = None,
            None => this.finish(),
        }
        if this.inner.is_end_stream() {
            this.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
