//! # netprobe — a filter that wants the network
//!
//! It exists to be rejected: it opens a TCP connection with `std::net`, so
//! its component imports `wasi:sockets`, which portier does not link. The
//! capability tests prove `portier check` refuses it, naming the import,
//! before it could ever run.

use std::net::TcpStream;

use portier_sdk::{Action, Filter, HttpResponse, Request};

struct NetProbe;

impl Filter for NetProbe {
    fn init(_config: &str) -> Result<Self, portier_sdk::config::Error> {
        Ok(NetProbe)
    }

    fn on_request(&self, _request: &Request) -> Action {
        match TcpStream::connect("127.0.0.1:1") {
            Ok(_) => Action::Respond(HttpResponse::text(200, "connected\n")),
            Err(e) => Action::Respond(HttpResponse::text(403, e.to_string())),
        }
    }
}

portier_sdk::export_filter!(NetProbe);
