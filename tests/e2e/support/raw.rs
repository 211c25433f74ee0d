//! Raw bytes on a socket, for requests no HTTP client would send: a missing
//! or doubled Host, a broken chunk size, a head too large. [`RawConn`]
//! writes exactly the bytes given and parses exactly one response back, and
//! tells whether the proxy then closed the connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a response, or for the proxy to close.
const WAIT: Duration = Duration::from_secs(10);

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header lines in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length, or chunked, decoded).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The backend's echo in the body.
    pub fn echo(&self) -> super::Echo {
        super::Echo::parse(&self.body)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One TCP connection to the proxy, spoken to in raw bytes.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
}

impl RawConn {
    /// Connect to `addr`.
    pub async fn open(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write these bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the proxy");
    }

    /// Read more bytes; `false` on EOF or a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the proxy within {WAIT:?}"),
        }
    }

    /// Read one whole response (fails the test without one).
    pub async fn response(&mut self) -> RawResponse {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf).expect("a valid response head") {
                httparse::Status::Complete(len) => {
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (parsed.code.expect("a status"), headers, len);
                }
                httparse::Status::Partial => {
                    assert!(
                        self.fill().await,
                        "connection closed before a response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        };
        self.buf.drain(..head_len);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("a numeric content-length");
            while self.buf.len() < len {
                assert!(self.fill().await, "connection closed inside the body");
            }
            response.body = self.buf.drain(..len).collect();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            response.body = self.chunked().await;
        }
        response
    }

    /// Decode a chunked body.
    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(self.fill().await, "connection closed inside a chunk");
            };
            let size = std::str::from_utf8(&self.buf[..line_end]).expect("chunk size");
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .expect("hex chunk size");
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                assert!(self.fill().await, "connection closed inside a chunk");
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return body;
            }
        }
    }

    /// Whether the proxy closes the connection (EOF or reset) within
    /// `within`, once whatever it sent before is read.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Open a connection, send `bytes`, read one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (RawResponse, RawConn) {
    let mut conn = RawConn::open(addr).await;
    conn.send(bytes).await;
    let response = conn.response().await;
    (response, conn)
}
