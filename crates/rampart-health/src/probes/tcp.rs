//! The `tcp` probe: does a port accept connections; also the connect helper the `redis` probe uses.
//!
//! Inputs: `host` (127.0.0.1), `port`. Output: the connect time in ms, or the error.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::s;
use crate::Probe;

pub(super) fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?;
    let mut last = format!("{host}:{port} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

pub(super) fn port_of(p: &Value) -> Option<u16> {
    p.get("port")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
        })
        .and_then(|n| u16::try_from(n).ok())
}

pub(super) fn tcp(p: &Value, timeout: Duration) -> Probe {
    let host = s(p, "host").unwrap_or("127.0.0.1");
    let Some(port) = port_of(p) else {
        return Probe::fail(Value::Null, "tcp check without a port");
    };
    let started = Instant::now();
    match connect_tcp(host, port, timeout) {
        Ok(_) => {
            let ms = started.elapsed().as_millis() as u64;
            Probe::pass(
                json!(ms),
                format!("{host}:{port} accepts connections ({ms} ms)"),
            )
        }
        Err(e) => Probe::fail(Value::Null, e.clone()).with(json!({"error": e})),
    }
}
