//! The blocking client of Prometheus's HTTP API: instant queries (`/api/v1/query`) and range
//! queries (`/api/v1/query_range`), both POSTed as forms.
//!
//! Inputs: a [`ClientConfig`] (validated once by [`Client::new`]: the URL, the timeout, the
//! bearer token read from its file, the CA file), then PromQL and times. Outputs: typed results
//! ([`QueryResult`], [`Series`]) or a [`PromError`] naming the endpoint and what failed.
//!
//! Every call is bounded: the query at most [`MAX_QUERY_BYTES`], the answer at most
//! [`MAX_ANSWER_BYTES`] (reading stops past it), a range at most [`MAX_POINTS_PER_SERIES`]
//! points, and one timeout for the whole exchange (connecting, sending, reading the answer),
//! which is also sent to Prometheus as its evaluation `timeout`.
//!
//! The client blocks the calling thread: async callers run it with
//! `tokio::task::spawn_blocking`.

use std::fmt;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::duration::format_duration;
use crate::error::PromError;
use crate::result::{AnswerError, QueryResult, Series, decode};

/// The longest PromQL query sent (bytes).
pub const MAX_QUERY_BYTES: usize = 64 << 10;

/// The largest answer read (bytes).
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// The most points per series a range query may ask for (Prometheus refuses more than 11,000
/// steps; counting points, this is a point stricter).
pub const MAX_POINTS_PER_SERIES: u128 = 11_000;

/// The timeout of [`ClientConfig::new`] (Argo Rollouts' default for its Prometheus provider).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest timeout a configuration may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest bearer token file read (bytes).
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// The largest CA file read (bytes).
const MAX_CA_FILE: u64 = 4 << 20;

/// The `User-Agent` sent.
const USER_AGENT: &str = concat!("rampart-prometheus/", env!("CARGO_PKG_VERSION"));

/// The instant query endpoint, under the configured URL.
const QUERY_PATH: &str = "/api/v1/query";

/// The range query endpoint, under the configured URL.
const QUERY_RANGE_PATH: &str = "/api/v1/query_range";

/// Where Prometheus is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port`, optionally with a path prefix (a Prometheus
    /// behind a proxy at `https://proxy/prometheus`); no query, fragment or credentials.
    pub url: String,
    /// The whole exchange's timeout, at most [`MAX_TIMEOUT`].
    pub timeout: Duration,
    /// A file holding a bearer token sent as `Authorization: Bearer …` (read once, trimmed).
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM file of CA certificates that replace the default roots for https.
    pub ca_file: Option<PathBuf>,
}

impl ClientConfig {
    /// `url` with the [`DEFAULT_TIMEOUT`], no token and the default roots.
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            bearer_token_file: None,
            ca_file: None,
        }
    }
}

/// A bearer token: never printed.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Prometheus HTTP API client (blocking; cheap to clone, the clones share connections).
#[derive(Clone)]
pub struct Client {
    /// The configured URL without a trailing `/`.
    base: String,
    timeout: Duration,
    token: Option<Secret>,
    ca_file: Option<PathBuf>,
    agent: ureq::Agent,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.base)
            .field("timeout", &self.timeout)
            .field("bearer_token", &self.token)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Validates `config`, reads its token and CA files, and builds the client. No request is
    /// made.
    pub fn new(config: &ClientConfig) -> Result<Client, PromError> {
        let (base, https) = validate_url(&config.url)?;
        if config.timeout < Duration::from_millis(1) || config.timeout > MAX_TIMEOUT {
            return Err(PromError::Config {
                reason: format!(
                    "timeout {} ms is not between 1 ms and {} s",
                    config.timeout.as_millis(),
                    MAX_TIMEOUT.as_secs()
                ),
            });
        }
        let token = config
            .bearer_token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        let mut agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            // A redirect is answered as it is (an error status), never followed with the token.
            .max_redirects(0)
            .max_redirects_will_error(false)
            // The configured URL is where to go: no proxy from the environment.
            .proxy(None)
            .user_agent(USER_AGENT);
        if let Some(ca) = &config.ca_file {
            if !https {
                return Err(PromError::Config {
                    reason: "a ca file is given for a plain http url".into(),
                });
            }
            let roots = read_ca(ca)?;
            agent = agent.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                    .build(),
            );
        }
        Ok(Client {
            base,
            timeout: config.timeout,
            token,
            ca_file: config.ca_file.clone(),
            agent: agent.build().into(),
        })
    }

    /// The configured URL (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Evaluates `promql` at `at` (Prometheus's now when `None`): POST `/api/v1/query`.
    pub fn query(&self, promql: &str, at: Option<SystemTime>) -> Result<QueryResult, PromError> {
        let url = self.endpoint(QUERY_PATH);
        check_query(promql)?;
        let mut form = vec![("query", promql.to_string())];
        if let Some(at) = at {
            form.push(("time", unix_seconds(at, &url, "time")?));
        }
        form.push(("timeout", format_duration(self.timeout)));
        self.post(&url, &form)
    }

    /// Evaluates `promql` at every `step` from `start` to `end`: POST `/api/v1/query_range`.
    /// Refused before sending when it would return more than [`MAX_POINTS_PER_SERIES`] points
    /// per series, when `end` is before `start` or when `step` is under 1 ms.
    pub fn query_range(
        &self,
        promql: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<Vec<Series>, PromError> {
        let url = self.endpoint(QUERY_RANGE_PATH);
        check_query(promql)?;
        let points =
            range_points(start, end, step).map_err(|reason| PromError::InvalidRequest {
                url: url.clone(),
                reason,
            })?;
        if points > MAX_POINTS_PER_SERIES {
            return Err(PromError::TooManyPoints {
                points,
                limit: MAX_POINTS_PER_SERIES,
            });
        }
        let form = [
            ("query", promql.to_string()),
            ("start", unix_seconds(start, &url, "start")?),
            ("end", unix_seconds(end, &url, "end")?),
            ("step", seconds(step)),
            ("timeout", format_duration(self.timeout)),
        ];
        match self.post(&url, &form)? {
            QueryResult::Matrix(series) => Ok(series),
            other => Err(PromError::Malformed {
                url,
                reason: format!("a range query answered {}, not a matrix", other.describe()),
            }),
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `form` to `url` and decodes the answer.
    fn post(&self, url: &str, form: &[(&str, String)]) -> Result<QueryResult, PromError> {
        let mut req = self.agent.post(url);
        if let Some(Secret(token)) = &self.token {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
        let mut resp = req
            .send_form(form.iter().map(|(k, v)| (*k, v.as_str())))
            .map_err(|e| self.transport_error(url, e))?;
        let status = resp.status().as_u16();
        let declared = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let too_large = || PromError::TooLarge {
            url: url.to_string(),
            limit: MAX_ANSWER_BYTES,
        };
        if declared.is_some_and(|n| n > MAX_ANSWER_BYTES) {
            return Err(too_large());
        }
        // One byte over the limit is what tells a body of exactly the limit from a larger one.
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES + 1)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => too_large(),
                other => self.transport_error(url, other),
            })?;
        if body.len() as u64 > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        decode(status, &body).map_err(|e| match e {
            AnswerError::Api {
                status,
                error_type,
                message,
            } => PromError::Api {
                url: url.to_string(),
                status,
                error_type,
                message,
            },
            AnswerError::Malformed(reason) => PromError::Malformed {
                url: url.to_string(),
                reason,
            },
        })
    }

    /// What a failed exchange with `url` means.
    fn transport_error(&self, url: &str, e: ureq::Error) -> PromError {
        let url = url.to_string();
        let unreachable = |reason: String| PromError::Unreachable {
            url: url.clone(),
            reason,
        };
        match e {
            ureq::Error::Timeout(_) => PromError::Timeout {
                url,
                timeout: self.timeout,
            },
            ureq::Error::HostNotFound => unreachable("host not found".into()),
            ureq::Error::ConnectionFailed => unreachable("connection failed".into()),
            ureq::Error::Io(io) => match io.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => PromError::Timeout {
                    url,
                    timeout: self.timeout,
                },
                ErrorKind::InvalidData if url.starts_with("https:") => PromError::Tls {
                    reason: io
                        .get_ref()
                        .map_or_else(|| io.kind().to_string(), ToString::to_string),
                    url,
                },
                kind => unreachable(kind.to_string()),
            },
            ureq::Error::Tls(reason) => PromError::Tls {
                url,
                reason: reason.to_lowercase(),
            },
            other => PromError::Protocol {
                url,
                reason: short_error(&other),
            },
        }
    }
}

/// `url` checked: http or https, a host, no credentials, query or fragment. Returns it without
/// a trailing `/`, and whether it is https. The messages never repeat the URL (it may hold a
/// secret where it is wrong).
fn validate_url(url: &str) -> Result<(String, bool), PromError> {
    let fail = |reason: &str| PromError::Config {
        reason: format!("url: {reason}"),
    };
    if url.is_empty() {
        return Err(fail("empty"));
    }
    if url.len() > 2048 {
        return Err(fail("longer than 2048 bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("holds whitespace or a control character"));
    }
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        (true, &url[url.len() - rest.len()..])
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (false, &url[url.len() - rest.len()..])
    } else {
        return Err(fail("the scheme must be http:// or https://"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(fail(
            "credentials in the url are refused (use bearer_token_file)",
        ));
    }
    if url.contains('?') || url.contains('#') {
        return Err(fail("a query or fragment is not allowed"));
    }
    if authority.is_empty() {
        return Err(fail("no host"));
    }
    let base = url.trim_end_matches('/');
    // The http crate has the final say on what a URI is.
    let uri: ureq::http::Uri = format!("{base}{QUERY_PATH}")
        .parse()
        .map_err(|_| fail("not a valid uri"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(fail("no host"));
    }
    // The port, if any, follows the last `:` after an IPv6 literal's `]` (which the http crate
    // accepts out of range).
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, after)| after);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(fail("the port is not between 1 and 65535"));
    }
    Ok((base.to_string(), https))
}

/// Reads a bearer token file: trimmed, non-empty, one header-safe word. Errors name the file,
/// never what it holds.
fn read_token(path: &Path) -> Result<Secret, PromError> {
    let fail = |reason: String| PromError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_bounded(path, MAX_TOKEN_FILE).map_err(fail)?;
    let text = String::from_utf8(bytes).map_err(|_| fail("not utf-8".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail(
            "holds whitespace or control characters inside the token".into(),
        ));
    }
    Ok(Secret(token.to_string()))
}

/// Reads the certificates of a PEM CA file; at least one.
fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, PromError> {
    let fail = |reason: String| PromError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = read_bounded(path, MAX_CA_FILE).map_err(fail)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(fail(format!("not pem ({})", short_error(&e)))),
        }
    }
    if certs.is_empty() {
        return Err(fail("no pem certificate in it".into()));
    }
    Ok(certs)
}

/// At most `max` bytes of `path`; a larger file is an error.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| io_reason(&e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_reason(&e))?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        kind => kind.to_string(),
    }
}

/// A query within [`MAX_QUERY_BYTES`].
fn check_query(promql: &str) -> Result<(), PromError> {
    if promql.len() > MAX_QUERY_BYTES {
        return Err(PromError::QueryTooLong {
            len: promql.len(),
            limit: MAX_QUERY_BYTES,
        });
    }
    Ok(())
}

/// The points per series of a range from `start` to `end` every `step` (both ends included).
pub fn range_points(start: SystemTime, end: SystemTime, step: Duration) -> Result<u128, String> {
    if step < Duration::from_millis(1) {
        return Err(format!("step {} ns is under 1 ms", step.as_nanos()));
    }
    let span = end
        .duration_since(start)
        .map_err(|e| format!("end is {} ms before start", e.duration().as_millis()))?;
    Ok(span.as_nanos() / step.as_nanos() + 1)
}

/// `t` as unix seconds with milliseconds (`1700000000.250`).
fn unix_seconds(t: SystemTime, url: &str, what: &str) -> Result<String, PromError> {
    let since = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PromError::InvalidRequest {
            url: url.to_string(),
            reason: format!("{what} is before 1970"),
        })?;
    Ok(seconds(since))
}

/// `d` as seconds with milliseconds (`15.000`, `0.500`).
fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// An error's text without anything that looks like a URL.
fn short_error(e: &ureq::Error) -> String {
    e.to_string()
        .split_whitespace()
        .filter(|w| !w.contains("://"))
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread::JoinHandle;
    use std::time::Instant;

    use super::*;
    use crate::result::{Point, Sample};

    // ---- configuration ----

    fn config(url: &str) -> ClientConfig {
        ClientConfig::new(url)
    }

    fn config_error(c: &ClientConfig) -> String {
        match Client::new(c) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("accepted: {c:?}"),
        }
    }

    #[test]
    fn accepts_http_and_https_urls_with_a_path_prefix() {
        for (url, base) in [
            ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
            ("http://127.0.0.1:9090/", "http://127.0.0.1:9090"),
            ("https://prom.example.com", "https://prom.example.com"),
            (
                "https://proxy.example.com/prometheus/",
                "https://proxy.example.com/prometheus",
            ),
            ("HTTP://[::1]:9090", "HTTP://[::1]:9090"),
        ] {
            let c = Client::new(&config(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(c.url(), base);
        }
    }

    #[test]
    fn refuses_bad_urls_without_repeating_them() {
        for (url, want) in [
            ("", "empty"),
            ("ftp://prom:21", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("prom:9090", "scheme"),
            ("http://", "no host"),
            ("http:///api", "no host"),
            ("http://user:s3cret@prom:9090", "credentials"),
            ("http://prom:9090/?token=s3cret", "query or fragment"),
            ("http://prom:9090/#s3cret", "query or fragment"),
            ("http://prom 9090", "whitespace"),
            ("http://prom:99999", "port"),
            ("http://prom:0", "port"),
            ("http://prom:abc", "port"),
            ("http://prom:", "port"),
            ("http://[::1:9090", "not a valid uri"),
        ] {
            let e = config_error(&config(url));
            assert!(
                e.starts_with("invalid prometheus client configuration: url: "),
                "{url}: {e}"
            );
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
    }

    #[test]
    fn refuses_timeouts_out_of_bounds() {
        for t in [
            Duration::ZERO,
            Duration::from_micros(10),
            MAX_TIMEOUT + Duration::from_secs(1),
        ] {
            let mut c = config("http://127.0.0.1:9090");
            c.timeout = t;
            assert!(config_error(&c).contains("timeout"), "{t:?}");
        }
    }

    #[test]
    fn reads_the_token_trimmed_and_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token-value\n").unwrap();
        let mut c = config("http://127.0.0.1:9090");
        c.bearer_token_file = Some(file);
        let client = Client::new(&c).unwrap();
        assert_eq!(
            client.token.as_ref().map(|s| s.0.as_str()),
            Some("s3cret-token-value")
        );
        let debug = format!("{client:?} {:?}", client.clone());
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn refuses_empty_missing_and_odd_token_files_naming_the_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty-token");
        std::fs::write(&empty, " \n\t\n").unwrap();
        let inner = dir.path().join("two-words");
        std::fs::write(&inner, "s3cret other\n").unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, "s3cret".repeat(20_000)).unwrap();
        for (path, want) in [
            (empty.clone(), "empty"),
            (dir.path().join("missing"), "no such file"),
            (inner, "whitespace"),
            (big, "larger than"),
        ] {
            let mut c = config("http://127.0.0.1:9090");
            c.bearer_token_file = Some(path.clone());
            let e = Client::new(&c).unwrap_err();
            assert!(matches!(e, PromError::TokenFile { .. }), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn ca_files_must_hold_a_certificate_and_need_https() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let mut c = config("https://prom.example.com");
        c.ca_file = Some(not_pem.clone());
        let e = Client::new(&c).unwrap_err();
        assert!(matches!(e, PromError::CaFile { .. }), "{e:?}");
        assert!(e.to_string().contains("no pem certificate"), "{e}");
        c.ca_file = Some(dir.path().join("missing.pem"));
        assert!(
            Client::new(&c)
                .unwrap_err()
                .to_string()
                .contains("no such file")
        );
        // A certificate block is taken as the only root (its DER is checked at the handshake).
        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        c.ca_file = Some(cert.clone());
        let client = Client::new(&c).unwrap();
        assert!(format!("{client:?}").contains("cert.pem"));
        let mut plain = config("http://prom.example.com");
        plain.ca_file = Some(cert);
        assert!(config_error(&plain).contains("plain http"));
    }

    #[test]
    fn counts_range_points() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = Duration::from_secs;
        assert_eq!(range_points(t0, t0 + s(10), s(1)), Ok(11));
        assert_eq!(range_points(t0, t0, s(1)), Ok(1));
        assert_eq!(range_points(t0, t0 + s(10_999), s(1)), Ok(11_000));
        assert_eq!(range_points(t0, t0 + s(11_000), s(1)), Ok(11_001));
        assert!(
            range_points(t0 + s(1), t0, s(1))
                .unwrap_err()
                .contains("before start")
        );
        assert!(
            range_points(t0, t0, Duration::ZERO)
                .unwrap_err()
                .contains("under 1 ms")
        );
        assert_eq!(
            seconds(Duration::from_millis(1_700_000_000_250)),
            "1700000000.250"
        );
    }

    // ---- the client against a tiny HTTP server on 127.0.0.1 ----

    /// A request as the server saw it.
    #[derive(Debug)]
    struct Seen {
        method: String,
        path: String,
        headers: BTreeMap<String, String>,
        form: BTreeMap<String, String>,
    }

    /// What the server does with one connection.
    enum Reply {
        /// Writes these bytes and closes.
        Raw(Vec<u8>),
        /// Reads the request, answers nothing for this long, then closes.
        Silent(Duration),
        /// A 200 without Content-Length streaming this many bytes.
        Stream(usize),
    }

    fn http(status: u16, body: &str) -> Reply {
        Reply::Raw(
            format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// Serves `replies`, one connection each, on 127.0.0.1:0; every wait bounded.
    fn serve(replies: Vec<Reply>) -> (String, mpsc::Receiver<Seen>, JoinHandle<()>) {
        serve_with(replies, None)
    }

    /// As [`serve`], over TLS when `tls` is given (the URL is then `https://localhost:PORT`).
    fn serve_with(
        replies: Vec<Reply>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> (String, mpsc::Receiver<Seen>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            for reply in replies {
                let deadline = Instant::now() + Duration::from_secs(10);
                let stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => return,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                match &tls {
                    Some(config) => {
                        let conn =
                            tokio_rustls::rustls::ServerConnection::new(config.clone()).unwrap();
                        let mut tls_stream = tokio_rustls::rustls::StreamOwned::new(conn, stream);
                        answer(&mut tls_stream, reply, &tx);
                    }
                    None => {
                        let mut stream = stream;
                        answer(&mut stream, reply, &tx);
                    }
                }
            }
        });
        (url, rx, handle)
    }

    /// Reads one request from `stream`, reports it, and does what `reply` says.
    fn answer<S: Read + Write>(stream: &mut S, reply: Reply, tx: &mpsc::Sender<Seen>) {
        match read_request(stream) {
            Some(seen) => {
                let _ = tx.send(seen);
            }
            // A client that gave up (a failed TLS handshake) gets nothing.
            None => return,
        }
        match reply {
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
            }
            Reply::Silent(d) => std::thread::sleep(d),
            Reply::Stream(n) => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let chunk = vec![b' '; 64 << 10];
                let mut sent = 0;
                while sent < n {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
            }
        }
    }

    /// Reads one request: head up to 64 KiB, body by Content-Length up to 1 MiB.
    fn read_request(stream: &mut impl Read) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 64 << 10 {
                return None;
            }
            let n = stream.read(&mut byte).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&byte[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(1 << 20);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut byte).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&byte[..n]);
        }
        let form = String::from_utf8_lossy(&body)
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (form_decode(k), form_decode(v)))
            .collect();
        Some(Seen {
            method,
            path,
            headers,
            form,
        })
    }

    fn form_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    fn client(url: &str) -> Client {
        let mut c = config(url);
        c.timeout = Duration::from_secs(5);
        Client::new(&c).unwrap()
    }

    const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"host":"web-1"},"value":[1700000000.5,"0.25"]}]}}"#;

    #[test]
    fn posts_an_instant_query_as_a_form() {
        let (url, rx, server) = serve(vec![http(200, VECTOR)]);
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let promql = r#"sum(rate(x{host=~"web-1\\.a|b"}[5m])) > 0 & 1"#;
        let r = client(&url).query(promql, Some(at)).unwrap();
        assert_eq!(
            r,
            QueryResult::Vector(vec![Sample {
                labels: [("host".to_string(), "web-1".to_string())].into(),
                point: Point {
                    t: 1700000000.5,
                    v: 0.25
                }
            }])
        );
        let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/api/v1/query");
        assert_eq!(
            seen.headers.get("content-type").map(String::as_str),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(seen.form.get("query").map(String::as_str), Some(promql));
        assert_eq!(
            seen.form.get("time").map(String::as_str),
            Some("1700000000.500")
        );
        assert_eq!(seen.form.get("timeout").map(String::as_str), Some("5s"));
        assert!(!seen.headers.contains_key("authorization"));
        server.join().unwrap();
    }

    #[test]
    fn sends_the_bearer_token_under_a_path_prefix() {
        let (url, rx, server) = serve(vec![http(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#,
        )]);
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc.def-123\n").unwrap();
        let mut c = config(&format!("{url}/prometheus/"));
        c.bearer_token_file = Some(token);
        let r = Client::new(&c).unwrap().query("1+1", None).unwrap();
        assert_eq!(r.single_value().unwrap(), Some(2.0));
        let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(seen.path, "/prometheus/api/v1/query");
        assert_eq!(
            seen.headers.get("authorization").map(String::as_str),
            Some("Bearer abc.def-123")
        );
        assert!(!seen.form.contains_key("time"));
        server.join().unwrap();
    }

    #[test]
    fn posts_a_range_query() {
        let (url, rx, server) = serve(vec![http(
            200,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[10,"1"],[11,"2"]]}]}}"#,
        )]);
        let t0 = UNIX_EPOCH + Duration::from_secs(10);
        let series = client(&url)
            .query_range(
                "x",
                t0,
                t0 + Duration::from_secs(1),
                Duration::from_millis(500),
            )
            .unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].values(), vec![1.0, 2.0]);
        let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/api/v1/query_range");
        let f = |k: &str| seen.form.get(k).cloned().unwrap_or_default();
        assert_eq!(
            (f("query"), f("start"), f("end"), f("step"), f("timeout")),
            (
                "x".into(),
                "10.000".into(),
                "11.000".into(),
                "0.500".into(),
                "5s".into()
            )
        );
        server.join().unwrap();
    }

    #[test]
    fn a_range_query_answered_with_a_vector_is_malformed() {
        let (url, _rx, server) = serve(vec![http(200, VECTOR)]);
        let t0 = UNIX_EPOCH + Duration::from_secs(10);
        let e = client(&url)
            .query_range("x", t0, t0, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, PromError::Malformed { .. }), "{e:?}");
        assert!(e.to_string().contains("not a matrix"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn refuses_oversized_requests_before_sending() {
        // No server: nothing may be sent.
        let c = client("http://127.0.0.1:9");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = c
            .query_range(
                "x",
                t0,
                t0 + Duration::from_secs(11_000),
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(
            e,
            PromError::TooManyPoints {
                points: 11_001,
                limit: 11_000
            }
        );
        let e = c
            .query_range("x", t0 + Duration::from_secs(1), t0, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, PromError::InvalidRequest { .. }), "{e:?}");
        let long = "x".repeat(MAX_QUERY_BYTES + 1);
        assert!(matches!(
            c.query(&long, None).unwrap_err(),
            PromError::QueryTooLong { .. }
        ));
        let e = c
            .query("x", Some(UNIX_EPOCH - Duration::from_secs(1)))
            .unwrap_err();
        assert!(e.to_string().contains("before 1970"), "{e}");
    }

    #[test]
    fn a_bad_data_answer_is_an_api_error() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unclosed left parenthesis"}"#;
        let (url, _rx, server) = serve(vec![http(400, body)]);
        let e = client(&url).query("sum(", None).unwrap_err();
        let PromError::Api {
            url: u,
            status,
            error_type,
            message,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(u, &format!("{url}/api/v1/query"));
        assert_eq!(*status, 400);
        assert_eq!(error_type.as_deref(), Some("bad_data"));
        assert!(message.contains("parse error"), "{message}");
        assert_eq!(
            e.to_string(),
            format!(
                "prometheus at {url}/api/v1/query refused the query with http 400 (bad_data): invalid parameter \"query\": 1:5: parse error: unclosed left parenthesis"
            )
        );
        server.join().unwrap();
    }

    #[test]
    fn a_503_with_a_proxy_page_is_an_api_error_with_a_short_message() {
        let page = format!(
            "<html><h1>503 Service Unavailable</h1>{}</html>",
            "x".repeat(5000)
        );
        let (url, _rx, server) = serve(vec![
            http(503, &page),
            http(
                503,
                r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
            ),
        ]);
        let c = client(&url);
        let e = c.query("up", None).unwrap_err();
        let PromError::Api {
            status,
            error_type,
            message,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!((*status, error_type.as_deref()), (503, None));
        assert!(message.contains("503 Service Unavailable"), "{message}");
        assert!(e.to_string().len() < 400, "{e}");
        assert!(e.to_string().contains("(no error type)"), "{e}");
        let e = c.query("up", None).unwrap_err();
        assert!(
            matches!(&e, PromError::Api { status: 503, error_type: Some(t), .. } if t == "timeout"),
            "{e:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_redirect_is_not_followed() {
        let (url, _rx, server) = serve(vec![Reply::Raw(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        )]);
        let e = client(&url).query("up", None).unwrap_err();
        assert!(matches!(e, PromError::Api { status: 307, .. }), "{e:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_malformed_answer_names_the_endpoint() {
        let (url, _rx, server) = serve(vec![http(200, "<html>hello</html>")]);
        let e = client(&url).query("up", None).unwrap_err();
        assert!(matches!(e, PromError::Malformed { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!(
                "malformed answer from prometheus at {url}/api/v1/query: "
            )),
            "{e}"
        );
        server.join().unwrap();
    }

    #[test]
    fn stops_reading_an_answer_past_the_limit() {
        let over = MAX_ANSWER_BYTES as usize + (256 << 10);
        let declared = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_ANSWER_BYTES + 1
        );
        let (url, _rx, server) =
            serve(vec![Reply::Stream(over), Reply::Raw(declared.into_bytes())]);
        let c = client(&url);
        for _ in 0..2 {
            let e = c.query("up", None).unwrap_err();
            assert_eq!(
                e,
                PromError::TooLarge {
                    url: format!("{url}/api/v1/query"),
                    limit: MAX_ANSWER_BYTES
                }
            );
        }
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_never_answers_is_a_timeout() {
        let (url, _rx, server) = serve(vec![Reply::Silent(Duration::from_secs(3))]);
        let mut c = config(&url);
        c.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let e = Client::new(&c).unwrap().query("up", None).unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            e,
            PromError::Timeout {
                url: format!("{url}/api/v1/query"),
                timeout: Duration::from_millis(300)
            }
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(
            e.to_string(),
            format!("querying prometheus at {url}/api/v1/query: no complete answer within 300 ms")
        );
        server.join().unwrap();
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = client(&url).query("up", None).unwrap_err();
        assert!(matches!(e, PromError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    #[test]
    fn a_server_closing_without_an_answer_is_no_value() {
        let (url, _rx, server) = serve(vec![Reply::Raw(Vec::new())]);
        let e = client(&url).query("up", None).unwrap_err();
        assert!(
            matches!(
                e,
                PromError::Unreachable { .. } | PromError::Protocol { .. }
            ),
            "{e:?}"
        );
        server.join().unwrap();
    }

    /// A CA and a `localhost` server certificate it signed: (CA PEM, server TLS config).
    fn tls_server() -> (String, Arc<tokio_rustls::rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let key =
            tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
                .unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        (ca.pem(), Arc::new(config))
    }

    #[test]
    fn a_ca_file_replaces_the_default_roots_for_https() {
        let (ca_pem, tls) = tls_server();
        let (other_ca_pem, _) = tls_server();
        let dir = tempfile::tempdir().unwrap();
        let (ca, other_ca) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, other_ca_pem).unwrap();
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#;
        // Three connections: with the right CA, with the default roots, with another CA.
        let (url, rx, server) = serve_with(
            vec![http(200, scalar), http(200, scalar), http(200, scalar)],
            Some(tls),
        );
        let with_ca = |ca_file: Option<PathBuf>| {
            let mut c = config(&url);
            c.timeout = Duration::from_secs(5);
            c.ca_file = ca_file;
            Client::new(&c).unwrap()
        };
        let r = with_ca(Some(ca)).query("7", None).unwrap();
        assert_eq!(r.single_value().unwrap(), Some(7.0));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap().path,
            "/api/v1/query"
        );
        for ca_file in [None, Some(other_ca)] {
            let e = with_ca(ca_file.clone()).query("7", None).unwrap_err();
            assert!(matches!(e, PromError::Tls { .. }), "{ca_file:?}: {e:?}");
            assert!(e.to_string().contains("certificate"), "{e}");
        }
        server.join().unwrap();
        assert!(
            rx.try_recv().is_err(),
            "a request got through a failed handshake"
        );
    }
}
