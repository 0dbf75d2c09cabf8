//! The `http` probe: one request, then its status, latency, JSON fields, body text and version.
//!
//! Inputs: `url`, `method` (GET), `status` (a code or a list; default any 2xx), `json`
//! ({dotted.path: expected}), `contains`, `regex`, `version` (+ `version_path`, default
//! `version`), `max_latency_ms`, `headers`, `tls_verify` (true). Output: the status code (or the
//! latency, the JSON field, the version found), diagnostics with the url, status, latency and the
//! start of the body.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{at_path, excerpt, flag, num, s, same};
use crate::Probe;

/// The HTTP client of `http` checks (and of the agent's `Probe` sampling): `timeout` bounds a
/// whole request, every status is an answer (not an error), and certificates are verified
/// unless `tls_verify` is false.
pub fn client(timeout: Duration, tls_verify: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(!tls_verify)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into()
}

pub(super) fn http(p: &Value, timeout: Duration) -> Probe {
    let Some(url) = s(p, "url") else {
        return Probe::fail(Value::Null, "http check without a url");
    };
    let method = s(p, "method").unwrap_or("GET").to_ascii_uppercase();
    let agent = client(timeout, flag(p, "tls_verify", true));
    let mut request = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(url);
    if let Some(Value::Object(headers)) = p.get("headers") {
        for (k, v) in headers {
            request = request.header(
                k.as_str(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            );
        }
    }
    let request = match request.body(()) {
        Ok(r) => r,
        Err(e) => return Probe::fail(Value::Null, format!("{method} {url}: {e}")),
    };
    let started = Instant::now();
    let response = agent.run(request);
    let latency = started.elapsed().as_millis() as u64;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            return Probe::fail(Value::Null, format!("{method} {url}: {e}"))
                .with(json!({"url": url, "error": e.to_string(), "latency_ms": latency}));
        }
    };
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let diag = json!({"url": url, "status": status, "latency_ms": latency, "body": excerpt(&body)});
    let status_ok = match p.get("status") {
        Some(Value::Array(codes)) => codes.iter().any(|c| {
            c.as_u64() == Some(u64::from(status)) || c.as_str() == Some(&status.to_string())
        }),
        Some(v) if !v.is_null() => {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
                == Some(u64::from(status))
        }
        _ => (200..300).contains(&status),
    };
    if !status_ok {
        return Probe::fail(json!(status), format!("{method} {url} answered {status}")).with(diag);
    }
    if let Some(max) = num(p, "max_latency_ms")
        && latency as f64 > max
    {
        return Probe::fail(
            json!(latency),
            format!("{method} {url} took {latency} ms, over {max} ms"),
        )
        .with(diag);
    }
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    if let Some(Value::Object(expect)) = p.get("json") {
        let Some(doc) = &parsed else {
            return Probe::fail(json!(status), format!("{url} did not answer JSON")).with(diag);
        };
        for (path, want) in expect {
            let found = at_path(doc, path).cloned().unwrap_or(Value::Null);
            if !same(&found, want) {
                return Probe::fail(
                    found.clone(),
                    format!("{url}: {path} is {found}, expected {want}"),
                )
                .with(diag);
            }
        }
    }
    if let Some(text) = s(p, "contains")
        && !body.contains(text)
    {
        return Probe::fail(
            json!(status),
            format!("{url}: the body does not contain {text:?}"),
        )
        .with(diag);
    }
    if let Some(pattern) = s(p, "regex") {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(&body) => {}
            Ok(_) => {
                return Probe::fail(
                    json!(status),
                    format!("{url}: the body does not match /{pattern}/"),
                )
                .with(diag);
            }
            Err(e) => return Probe::fail(Value::Null, format!("bad regex {pattern:?}: {e}")),
        }
    }
    if let Some(want) = p.get("version").filter(|v| !v.is_null()) {
        let path = s(p, "version_path").unwrap_or("version");
        let found = parsed
            .as_ref()
            .and_then(|d| at_path(d, path).cloned())
            .unwrap_or_else(|| json!(body.trim()));
        if !same(&found, want) {
            return Probe::fail(
                found.clone(),
                format!("{url} reports version {found}, expected {want}"),
            )
            .with(diag);
        }
        return Probe::pass(
            found,
            format!("{url} reports version {want} ({latency} ms)"),
        );
    }
    Probe::pass(
        json!(status),
        format!("{method} {url} answered {status} in {latency} ms"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_host::testing::HttpsServer;

    #[test]
    fn https_checks_verify_the_certificate_unless_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("health.json"), r#"{"status":"UP"}"#).unwrap();
        let server = HttpsServer::start(dir.path());
        let url = format!("https://127.0.0.1:{}/health.json", server.port);
        // Signed by a CA nobody trusts: refused, and the message says why.
        let verified = http(&json!({ "url": url }), Duration::from_secs(5));
        assert!(!verified.passed, "{verified:?}");
        assert!(
            verified.message.to_lowercase().contains("certificate")
                || verified.message.contains("issuer"),
            "{verified:?}"
        );
        // tls_verify: false accepts it and still checks the answer.
        let unverified = http(
            &json!({ "url": url, "tls_verify": false, "json": { "status": "UP" } }),
            Duration::from_secs(5),
        );
        assert!(unverified.passed, "{unverified:?}");
    }
}
