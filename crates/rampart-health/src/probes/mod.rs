//! The probes: one try of each kind of check, bounded by a timeout.
//!
//! Each takes the check's rendered parameters and returns a [`Probe`]: passed or not, the
//! observed value, a message, and diagnostics that say why when it failed. Parameters by kind:
//! - `http`: `url`, `method` (GET), `status` (a code or a list; default any 2xx), `json`
//!   ({dotted.path: expected}), `contains`, `regex`, `version` (+ `version_path`, default
//!   `version`), `max_latency_ms`, `headers`, `tls_verify` (true);
//! - `tcp`: `host`, `port`;
//! - `postgres`: `url` (jdbc:postgresql:// or postgres://), `user`, `password`, then any of
//!   `schema_version` (latest Flyway version), `min_tables` (+ `schema`, default public),
//!   `query` + `expect`;
//! - `redis`: `host`, `port`, `username`, `password`, then any of `max_memory_percent`,
//!   `min_hit_ratio` (PING is always checked);
//! - `systemd`: `unit`, `systemctl_prefix`; `disk`: `path`, `max_percent` (90);
//!   `memory`: `max_percent` (80); `load`: `max` (2.0), `per_core`;
//! - `command`: `cmd`, `stdout_contains`, `stdout_regex`; `file`: `path`, `equals`, `contains`;
//! - `grpc`: `address` (host:port), `service` ("" = the server).
//!
//! One file per kind: `http`, `tcp`, `postgres`, `redis`, `systemd`, `system` (disk, memory,
//! load), `command`, `file`, `grpc`; this module dispatches on the kind and holds the parameter
//! helpers they share.

mod command;
mod file;
mod grpc;
mod http;
mod postgres;
mod redis;
mod system;
mod systemd;
mod tcp;

pub use http::client as http_client;

use std::time::Duration;

use serde_json::Value;

use super::Probe;

/// Bytes of a response body kept in diagnostics.
const EXCERPT: usize = 512;

fn s<'a>(p: &'a Value, key: &str) -> Option<&'a str> {
    p.get(key).and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn num(p: &Value, key: &str) -> Option<f64> {
    match p.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(t) => t.trim().parse().ok(),
        _ => None,
    }
}

fn flag(p: &Value, key: &str, default: bool) -> bool {
    match p.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(t)) => !matches!(
            t.to_ascii_lowercase().as_str(),
            "false" | "no" | "off" | "0"
        ),
        _ => default,
    }
}

fn excerpt(text: &str) -> String {
    let mut end = text.len().min(EXCERPT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Runs one try of a check of `kind`.
pub fn probe(kind: &str, params: &Value, timeout: Duration) -> Probe {
    match kind {
        "http" => http::http(params, timeout),
        "tcp" => tcp::tcp(params, timeout),
        "postgres" => postgres::postgres(params, timeout),
        "redis" => redis::redis(params, timeout),
        "systemd" => systemd::systemd(params, timeout),
        "disk" => system::disk(params),
        "memory" => system::memory(params),
        "load" => system::load(params),
        "command" => command::command(params, timeout),
        "file" => file::file(params),
        "grpc" => grpc::grpc(params, timeout),
        other => Probe::fail(Value::Null, format!("unknown check kind {other}")),
    }
}

/// Follows a dotted path (`app.version`, `items.0.id`) into JSON.
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, key| match cur {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// JSON values compare as text when one side is text (`"2"` equals `2`).
fn same(found: &Value, want: &Value) -> bool {
    found == want
        || match (found, want) {
            (Value::String(a), b) | (b, Value::String(a)) => *a == b.to_string().trim_matches('"'),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_and_loose_equality() {
        let doc = json!({"app": {"version": "2.0.0", "items": [{"id": 7}]}});
        assert_eq!(at_path(&doc, "app.version"), Some(&json!("2.0.0")));
        assert_eq!(at_path(&doc, "app.items.0.id"), Some(&json!(7)));
        assert_eq!(at_path(&doc, "app.missing"), None);
        assert!(same(&json!(7), &json!("7")));
        assert!(!same(&json!("UP"), &json!("DOWN")));
    }
}
