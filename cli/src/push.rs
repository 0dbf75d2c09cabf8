//! `rampart run --local --pushgateway URL`: the run's facts pushed to a Prometheus Pushgateway.
//!
//! Input: the gateway's base URL and job (checked at the edge by [`Push::new`]: http or https,
//! a host, no credentials, query or fragment), and the rendered metrics
//! ([`rampart_agent::metrics::render`]: the host's facts and the run's). Output: one `PUT
//! <URL>/metrics/job/<job>/instance/<hostname>` in the text format 0.0.4, which replaces the
//! group's previous push. A label value that is not plain URL text (a `/`, a space, empty) goes
//! as `<label>@base64/<URL-safe base64>`, as the Pushgateway documents. The push is bounded by
//! [`PUSH_TIMEOUT`]; its failure is the caller's warning, never the run's exit code.

use std::time::Duration;

use crate::error::CliError;

/// The longest a push may take, in all.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest URL or job accepted.
const MAX_URL: usize = 2048;
const MAX_JOB: usize = 128;

/// Where to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The gateway's base URL, without a trailing `/`.
    pub base: String,
    /// The job label.
    pub job: String,
}

impl Push {
    /// Checks `--pushgateway URL` and `--push-job JOB`; a usage error (exit 2) says what to pass.
    pub fn new(url: &str, job: &str) -> Result<Push, CliError> {
        let bad = |why: &str| {
            CliError::usage(format!(
                "--pushgateway {}: {why} (e.g. --pushgateway http://127.0.0.1:9091)",
                shown(url)
            ))
        };
        if url.len() > MAX_URL {
            return Err(bad(&format!("longer than {MAX_URL} bytes")));
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("must start with http:// or https://"))?;
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain spaces or control characters"));
        }
        if url.contains(['?', '#']) {
            return Err(bad("must not have a query or a fragment"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad(
                "must not carry credentials (they would show in messages)",
            ));
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad("names no host"));
        }
        if job.is_empty() || job.len() > MAX_JOB || job.chars().any(char::is_control) {
            return Err(CliError::usage(format!(
                "--push-job must be 1 to {MAX_JOB} printable characters"
            )));
        }
        Ok(Push {
            base: url.trim_end_matches('/').to_string(),
            job: job.to_string(),
        })
    }

    /// The grouping URL for `instance`.
    pub fn url(&self, instance: &str) -> String {
        format!(
            "{}/metrics{}{}",
            self.base,
            segment("job", &self.job),
            segment("instance", instance)
        )
    }

    /// PUTs `body` (text format 0.0.4) as `instance`'s group; the error says what failed.
    pub fn send(&self, instance: &str, body: &str) -> Result<(), String> {
        let url = self.url(instance);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(PUSH_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let resp = agent
            .put(&url)
            .content_type("text/plain; version=0.0.4")
            .send(body)
            .map_err(|e| format!("cannot push to {url}: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(
            &mut std::io::Read::take(resp.into_body().into_reader(), 512),
            &mut text,
        );
        Err(format!(
            "the pushgateway at {url} answered {status}: {}",
            text.trim()
        ))
    }
}

/// At most 80 characters of a URL, for messages.
fn shown(url: &str) -> String {
    url.chars().take(80).collect()
}

/// `/<label>/<value>`, or `/<label>@base64/<value in URL-safe base64>` when the value is empty
/// or holds anything but unreserved URL characters.
fn segment(label: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if plain {
        format!("/{label}/{value}")
    } else {
        format!("/{label}@base64/{}", base64_url(value.as_bytes()))
    }
}

/// RFC 4648 §5 (URL-safe alphabet), padded; an empty input is `=`, which the Pushgateway reads
/// as the empty value.
fn base64_url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if data.is_empty() {
        return "=".to_string();
    }
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;

    #[test]
    fn urls_are_checked_at_the_edge() {
        let p = Push::new("http://127.0.0.1:9091/", "rampart").unwrap();
        assert_eq!(p.base, "http://127.0.0.1:9091");
        assert!(Push::new("https://gw.example:9091/prefix", "j").is_ok());
        for (url, needle) in [
            ("ftp://h:1", "http://"),
            ("127.0.0.1:9091", "http://"),
            ("http://", "no host"),
            ("http://:9091", "no host"),
            ("http://u:p@h:9091", "credentials"),
            ("http://h:9091/?x=1", "query"),
            ("http://h 9091", "spaces"),
        ] {
            let e = Push::new(url, "rampart").unwrap_err();
            assert_eq!(e.exit, Exit::Usage);
            assert!(e.message.contains(needle), "{url}: {}", e.message);
        }
        assert!(Push::new("http://h:1", "").is_err());
    }

    #[test]
    fn grouping_urls_encode_what_is_not_plain() {
        let p = Push::new("http://127.0.0.1:9091", "rampart").unwrap();
        assert_eq!(
            p.url("web-1.example"),
            "http://127.0.0.1:9091/metrics/job/rampart/instance/web-1.example"
        );
        let p = Push::new("http://127.0.0.1:9091", "deploy/prod").unwrap();
        // The Pushgateway README's own example: /var/tmp.
        assert_eq!(base64_url(b"/var/tmp"), "L3Zhci90bXA=");
        assert_eq!(
            p.url("h"),
            format!(
                "http://127.0.0.1:9091/metrics/job@base64/{}/instance/h",
                base64_url(b"deploy/prod")
            )
        );
        assert_eq!(base64_url(b""), "=");
        assert_eq!(base64_url(b"f"), "Zg==");
        assert_eq!(base64_url(b"fo"), "Zm8=");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
    }
}
