//! The `redis` probe: PING over RESP (after AUTH when a password is given), then optionally the
//! memory use or the hit ratio.
//!
//! Inputs: `host` (127.0.0.1), `port` (6379), `username`, `password`, then any of
//! `max_memory_percent`, `min_hit_ratio`. Output: `PONG`, the memory percentage or the ratio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::tcp::{connect_tcp, port_of};
use super::{num, s};
use crate::Probe;

/// Sends one RESP command and reads one reply (simple string, error, integer or bulk string).
fn resp(stream: &mut BufReader<TcpStream>, args: &[&str]) -> Result<String, String> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .get_mut()
        .write_all(out.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    stream.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end();
    match line.chars().next() {
        Some('+') | Some(':') => Ok(line[1..].to_string()),
        Some('-') => Err(line[1..].to_string()),
        Some('$') => {
            let len: i64 = line[1..].parse().map_err(|_| format!("bad reply {line}"))?;
            if len < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; len as usize + 2];
            stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(len as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

fn info_field(info: &str, key: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn redis(p: &Value, timeout: Duration) -> Probe {
    let host = s(p, "host").unwrap_or("127.0.0.1");
    let port = port_of(p).unwrap_or(6379);
    let stream = match connect_tcp(host, port, timeout) {
        Ok(s) => s,
        Err(e) => return Probe::fail(Value::Null, format!("redis {e}")).with(json!({"error": e})),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut conn = BufReader::new(stream);
    if let Some(password) = s(p, "password") {
        let auth = match s(p, "username") {
            Some(user) => resp(&mut conn, &["AUTH", user, password]),
            None => resp(&mut conn, &["AUTH", password]),
        };
        if let Err(e) = auth {
            return Probe::fail(Value::Null, format!("redis AUTH refused: {e}"))
                .with(json!({"error": e}));
        }
    }
    match resp(&mut conn, &["PING"]) {
        Ok(r) if r == "PONG" => {}
        Ok(r) => return Probe::fail(json!(r), format!("redis answered PING with {r:?}")),
        Err(e) => {
            return Probe::fail(Value::Null, format!("redis PING: {e}")).with(json!({"error": e}));
        }
    }
    if let Some(max) = num(p, "max_memory_percent") {
        let info = match resp(&mut conn, &["INFO", "memory"]) {
            Ok(i) => i,
            Err(e) => return Probe::fail(Value::Null, format!("redis INFO memory: {e}")),
        };
        let used = info_field(&info, "used_memory").unwrap_or(0.0);
        let limit = info_field(&info, "maxmemory")
            .filter(|m| *m > 0.0)
            .or_else(|| info_field(&info, "total_system_memory"))
            .unwrap_or(0.0);
        if limit <= 0.0 {
            return Probe::pass(
                json!(used),
                format!("redis uses {used} bytes (no memory limit known)"),
            );
        }
        let pct = (used / limit * 1000.0).round() / 10.0;
        return if pct <= max {
            Probe::pass(json!(pct), format!("redis memory {pct}% of its limit"))
        } else {
            Probe::fail(
                json!(pct),
                format!("redis memory {pct}% of its limit, over {max}%"),
            )
        };
    }
    if let Some(min) = num(p, "min_hit_ratio") {
        let info = match resp(&mut conn, &["INFO", "stats"]) {
            Ok(i) => i,
            Err(e) => return Probe::fail(Value::Null, format!("redis INFO stats: {e}")),
        };
        let hits = info_field(&info, "keyspace_hits").unwrap_or(0.0);
        let misses = info_field(&info, "keyspace_misses").unwrap_or(0.0);
        if hits + misses == 0.0 {
            return Probe::pass(Value::Null, "redis has served no key lookups yet");
        }
        let ratio = (hits / (hits + misses) * 1000.0).round() / 1000.0;
        return if ratio >= min {
            Probe::pass(
                json!(ratio),
                format!("redis hit ratio {ratio} ({hits} hits, {misses} misses)"),
            )
        } else {
            Probe::fail(
                json!(ratio),
                format!("redis hit ratio {ratio}, under {min}"),
            )
        };
    }
    Probe::pass(
        json!("PONG"),
        format!("redis at {host}:{port} answers PING"),
    )
}
