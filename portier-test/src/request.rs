//! The requests a test sends through the stages.

use std::net::SocketAddr;

use bytes::Bytes;
use portier::plugin::heads::{BodyPrefix, RequestHead};

/// A request as a client would send it: method, target, headers, the
/// client's address and, for filters that read bodies, a body.
#[derive(Debug, Clone)]
pub struct Request {
    method: http::Method,
    target: String,
    headers: Vec<(String, String)>,
    client: SocketAddr,
    body: Option<Bytes>,
}

impl Request {
    /// A request with `method` for `target` (`/path?query`, or an absolute
    /// URI), from client `192.0.2.10:40000`.
    ///
    /// # Panics
    ///
    /// When `method` is not a valid HTTP method.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.parse().expect("a valid HTTP method"),
            target: target.to_owned(),
            headers: Vec::new(),
            client: SocketAddr::from(([192, 0, 2, 10], 40000)),
            body: None,
        }
    }

    /// A GET for `target`.
    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// A POST for `target`.
    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    /// Add a header (repeat for several values).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The client's address (`ip:port`), as a plugin reads it.
    ///
    /// # Panics
    ///
    /// When `addr` is not `ip:port`.
    pub fn client(mut self, addr: &str) -> Request {
        self.client = addr.parse().expect("a client address as ip:port");
        self
    }

    /// A body. Filters that asked to read the body (at `init`) see its
    /// start, as many bytes as they asked for; `Content-Length` is set.
    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// The head the stages get, with the body prefix the pipeline reads
    /// (`prefix` bytes) when filters asked for one.
    ///
    /// # Panics
    ///
    /// When the target or a header is not valid HTTP: a test's mistake.
    pub(crate) fn into_head(self, prefix: usize) -> RequestHead {
        let mut builder = http::Request::builder()
            .method(self.method)
            .uri(self.target.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &self.body {
            builder = builder.header(http::header::CONTENT_LENGTH, body.len());
        }
        let (parts, ()) = builder
            .body(())
            .unwrap_or_else(|e| panic!("not a valid request ({}): {e}", self.target))
            .into_parts();
        let mut head = RequestHead::new(parts, self.client);
        if prefix > 0 {
            let body = self.body.unwrap_or_default();
            head.context_mut().body = Some(BodyPrefix {
                complete: body.len() <= prefix,
                bytes: body.slice(..body.len().min(prefix)),
            });
        }
        head
    }
}
