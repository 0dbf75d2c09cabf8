//! The sample application the demo and the end-to-end tests deploy: a tiny HTTP service standing
//! in for a backend plus static frontend, exporting Prometheus metrics so canary analysis can
//! judge one release against another.
//!
//! Inputs: `--listen ADDR` (port 0 allowed), `--root DIR` (a release directory holding
//! `version.txt`, `health` and, optionally, `faults`), `--require-health-file`.
//! Outputs: `listening on ADDR` on stdout once bound; HTTP/1.1 answers with `Connection: close`:
//! `/actuator/health`, `/api/health`, `/actuator/info`, the pages in [`PAGES`], and `/metrics`
//! in Prometheus's text format 0.0.4: `http_requests_total{code}` (a counter),
//! `http_request_duration_seconds` (a histogram over [`BUCKETS`]) and
//! `app_build_info{version} 1`. Scrapes of `/metrics` are not counted in either.
//!
//! Health is read from `DIR/health` on every request, so a test or an operator can flip it; the
//! version and the faults are read once at start, as a real release's would be.
//!
//! `DIR/faults` makes a release bad in a way its health checks do not see, one `key=value` a
//! line (blank lines and `#` comments allowed): `error_share=S` answers that share (0 to 1) of
//! page requests with 500, exactly and deterministically over any run (see [`is_injected_error`]),
//! and `latency_ms=N` sleeps N ms before answering each page request. The health endpoints and
//! `/metrics` are never affected, so a faulty release passes its deploy's health checks and only
//! its metrics tell it apart. A `faults` file that does not parse makes the app exit 1 with a
//! message naming the file and the line.
//!
//! [`WORKERS`] threads accept on the shared listener, enough for ~100 requests/s with 200 ms of
//! injected latency. SIGTERM and SIGINT are blocked in every thread and taken by one waiting
//! thread, which exits 0, so a service manager sees a clean stop.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

const DEFAULT_LISTEN: &str = "127.0.0.1:18080";
/// Connections are served by this many threads, each accepting on the shared listener: with
/// `latency_ms=200` each thread answers at most 5 requests/s, so 64 serve ~300/s.
const WORKERS: usize = 64;
/// Each worker's stack: the handlers are shallow.
const WORKER_STACK: usize = 256 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Request line and headers past this size are refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const PAGES: [&str; 6] = [
    "/",
    "/login",
    "/courses",
    "/enrollment-date",
    "/finances",
    "/academics",
];
/// The release file holding the injected faults (optional).
const FAULTS_FILE: &str = "faults";
/// The largest `latency_ms` accepted: more would outlast every client's timeout.
const MAX_LATENCY_MS: u64 = 60_000;
/// The status codes this app answers with, each exported (zero included) so a ratio over them
/// is 0, not absent, for a release that never failed.
const CODES: [u16; 5] = [200, 400, 404, 500, 503];
/// Upper bounds of the latency histogram: as `le` label, and in microseconds. Dense between
/// 0.1 s and 0.3 s so the p95 of a fast release and of one 200 ms slower fall far apart.
const BUCKETS: [(&str, u64); 15] = [
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.15", 150_000),
    ("0.2", 200_000),
    ("0.25", 250_000),
    ("0.3", 300_000),
    ("0.4", 400_000),
    ("0.5", 500_000),
    ("0.75", 750_000),
    ("1", 1_000_000),
    ("2.5", 2_500_000),
    ("5", 5_000_000),
];

/// Parsed command line.
#[derive(Debug)]
struct Config {
    listen: String,
    root: PathBuf,
    require_health_file: bool,
}

/// What `DIR/faults` injects; the default injects nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Faults {
    /// The share of page requests answered 500 (0 to 1).
    error_share: f64,
    /// Added before answering each page request.
    latency: Duration,
}

/// Request counters and the latency histogram; every field is a lock-free atomic.
#[derive(Debug, Default)]
struct Metrics {
    /// Per entry of [`CODES`].
    requests: [AtomicU64; CODES.len()],
    /// Per entry of [`BUCKETS`] (not cumulative), plus the slot past the last bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    /// Page requests seen, numbering them for [`is_injected_error`].
    pages: AtomicU64,
}

impl Metrics {
    fn observe(&self, code: u16, took: Duration) {
        if let Some(i) = CODES.iter().position(|c| *c == code) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS
            .iter()
            .position(|(_, bound)| micros <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The exposition text. `+Inf` and `_count` are the same total of the buckets, so one
    /// scrape is consistent even while requests are observed.
    fn render(&self, version: &str) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP http_requests_total HTTP requests answered, by status code (scrapes of /metrics not counted).\n\
             # TYPE http_requests_total counter\n",
        );
        for (code, n) in CODES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "http_requests_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP http_request_duration_seconds Time from a request's head read to its answer written.\n\
             # TYPE http_request_duration_seconds histogram\n",
        );
        let mut cumulative = 0;
        for ((le, _), n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = write!(
            out,
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             http_request_duration_seconds_sum {sum}\n\
             http_request_duration_seconds_count {cumulative}\n"
        );
        let _ = write!(
            out,
            "# HELP app_build_info The release this instance serves.\n\
             # TYPE app_build_info gauge\n\
             app_build_info{{version=\"{}\"}} 1\n",
            label_escape(version)
        );
        out
    }
}

/// Whether the `n`-th page request (from 0) is answered 500 under `share`: it is when it
/// carries `floor(n * share)` over an integer, so the first `n` requests hold exactly
/// `floor(n * share)` errors, spread evenly.
fn is_injected_error(n: u64, share: f64) -> bool {
    share > 0.0 && ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
}

/// Parses the text of a `faults` file (`path` only names it in errors).
fn parse_faults(path: &Path, text: &str) -> Result<Faults, String> {
    let mut faults = Faults::default();
    let mut seen: Vec<&str> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("{}: expected key=value, got {line:?}", at()))?;
        if seen.contains(&key) {
            return Err(format!("{}: {key} given twice", at()));
        }
        match key {
            "error_share" => {
                faults.error_share = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=1.0).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "{}: error_share must be a number from 0 to 1, got {value:?}",
                            at()
                        )
                    })?;
            }
            "latency_ms" => {
                let ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= MAX_LATENCY_MS)
                    .ok_or_else(|| {
                        format!(
                            "{}: latency_ms must be whole milliseconds from 0 to {MAX_LATENCY_MS}, got {value:?}",
                            at()
                        )
                    })?;
                faults.latency = Duration::from_millis(ms);
            }
            other => {
                return Err(format!(
                    "{}: unknown setting {other:?} (known: error_share, latency_ms)",
                    at()
                ));
            }
        }
        seen.push(key);
    }
    Ok(faults)
}

/// What a running instance knows about its release.
#[derive(Debug)]
struct App {
    version: String,
    health_file: PathBuf,
    require_health_file: bool,
    faults: Faults,
    metrics: Metrics,
}

impl App {
    fn up(&self) -> bool {
        match std::fs::read_to_string(&self.health_file) {
            Ok(text) => !text.contains("DOWN"),
            Err(_) => !self.require_health_file,
        }
    }

    /// The status, content type and body answering `path`; a page request suffers the
    /// injected faults here.
    fn respond(&self, path: &str) -> (u16, &'static str, String) {
        const JSON: &str = "application/json";
        let status = if self.up() { "UP" } else { "DOWN" };
        let code = if status == "UP" { 200 } else { 503 };
        match path {
            "/actuator/health" => (code, JSON, json!({ "status": status }).to_string()),
            "/api/health" => (
                code,
                JSON,
                json!({ "status": status, "version": self.version }).to_string(),
            ),
            "/actuator/info" => (
                200,
                JSON,
                json!({ "app": { "name": "rampart-sample", "version": self.version } }).to_string(),
            ),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                self.metrics.render(&self.version),
            ),
            p if PAGES.contains(&p) => {
                let n = self.metrics.pages.fetch_add(1, Ordering::Relaxed);
                if !self.faults.latency.is_zero() {
                    std::thread::sleep(self.faults.latency);
                }
                if is_injected_error(n, self.faults.error_share) {
                    (500, "text/plain", "injected error\n".to_string())
                } else {
                    (200, "text/html; charset=utf-8", self.page(p))
                }
            }
            _ => (404, "text/plain", "not found\n".to_string()),
        }
    }

    fn page(&self, path: &str) -> String {
        let v = html_escape(&self.version);
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
             <meta name=\"version\" content=\"{v}\"><title>rampart-sample {path}</title></head>\
             <body><h1>rampart-sample</h1><p>page {path}, version {v}</p></body></html>\n"
        )
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A label value as the exposition format quotes it.
fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut root = None;
    let mut require_health_file = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--root" => {
                root = Some(PathBuf::from(
                    args.next().ok_or("--root needs a directory")?,
                ))
            }
            "--require-health-file" => require_health_file = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let root = root.ok_or("--root DIR is required")?;
    Ok(Config {
        listen,
        root,
        require_health_file,
    })
}

fn load(config: &Config) -> Result<App, String> {
    let version_file = config.root.join("version.txt");
    let version = std::fs::read_to_string(&version_file)
        .map_err(|e| format!("read version from {}: {e}", version_file.display()))?;
    let faults_file = config.root.join(FAULTS_FILE);
    let faults = match std::fs::read_to_string(&faults_file) {
        Ok(text) => parse_faults(&faults_file, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Faults::default(),
        Err(e) => return Err(format!("read faults from {}: {e}", faults_file.display())),
    };
    Ok(App {
        version: version.trim().to_string(),
        health_file: config.root.join("health"),
        require_health_file: config.require_health_file,
        faults,
        metrics: Metrics::default(),
    })
}

/// Answers one request; errors (timeouts, closed sockets) only end this connection. Every
/// answer but a scrape of `/metrics` is counted once written (or once writing failed).
fn serve(app: &App, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers (bounded) so the client sees a clean close rather than a reset.
    let mut head = request_line.len();
    let mut line = String::new();
    while head < MAX_HEAD_BYTES {
        line.clear();
        let n = reader.read_line(&mut line)?;
        head += n;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let started = Instant::now();
    let mut parts = request_line.split_whitespace();
    let (path, (code, kind, body)) = match (parts.next(), parts.next()) {
        (Some("GET" | "HEAD"), Some(target)) => {
            let path = target.split('?').next().unwrap_or(target);
            (path, app.respond(path))
        }
        _ => ("", (400, "text/plain", "bad request\n".to_string())),
    };
    let written = write_answer(&stream, &request_line, code, kind, &body);
    if path != "/metrics" {
        app.metrics.observe(code, started.elapsed());
    }
    written
}

fn write_answer(
    stream: &TcpStream,
    request_line: &str,
    code: u16,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !request_line.starts_with("HEAD ") {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

// The sample app is a test fixture whose `main` exits with chosen codes (a broken release).
#[allow(clippy::disallowed_methods)]
fn main() {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rampart-sample-app: {e}");
            std::process::exit(2);
        }
    };
    let app = match load(&config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("rampart-sample-app: {e}");
            std::process::exit(1);
        }
    };
    // Block the stop signals before any thread starts so every thread inherits the mask and
    // only the waiter below receives them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        eprintln!("rampart-sample-app: block stop signals: {e}");
        std::process::exit(1);
    }
    let listener = match TcpListener::bind(&config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rampart-sample-app: listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("rampart-sample-app: local address: {e}");
            std::process::exit(1);
        }
    }
    let _ = std::io::stdout().flush();
    for i in 0..WORKERS {
        let (app, listener) = (
            Arc::clone(&app),
            listener.try_clone().expect("clone listener"),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => drop(serve(&app, stream)),
                        // Out of descriptors and the like: back off instead of spinning.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("rampart-sample-app: start worker {i}: {e}");
            std::process::exit(1);
        }
    }
    let _ = stop.wait();
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Faults, String> {
        parse_faults(Path::new("/r/faults"), text)
    }

    #[test]
    fn faults_parse_both_settings_with_comments_and_blanks() {
        let f = parse("# a bad release\n\nerror_share = 0.05\nlatency_ms=200\n").unwrap();
        assert_eq!(f.error_share, 0.05);
        assert_eq!(f.latency, Duration::from_millis(200));
        assert_eq!(parse("").unwrap(), Faults::default());
    }

    #[test]
    fn bad_faults_name_the_file_and_line() {
        for (text, wanted) in [
            (
                "error_share=0.05\nbogus\n",
                "/r/faults line 2: expected key=value",
            ),
            ("speed=3\n", "/r/faults line 1: unknown setting \"speed\""),
            ("error_share=1.5\n", "/r/faults line 1: error_share must be"),
            ("error_share=NaN\n", "/r/faults line 1: error_share must be"),
            ("\nlatency_ms=-1\n", "/r/faults line 2: latency_ms must be"),
            ("latency_ms=60001\n", "/r/faults line 1: latency_ms must be"),
            (
                "latency_ms=1\nlatency_ms=2\n",
                "/r/faults line 2: latency_ms given twice",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(wanted), "{text:?}: {e}");
        }
    }

    #[test]
    fn injected_errors_are_the_exact_share_of_any_run() {
        for share in [0.0, 0.05, 0.1, 1.0 / 3.0, 0.5, 1.0] {
            for n in [1u64, 19, 20, 100, 1_000, 12_345] {
                let errors = (0..n).filter(|i| is_injected_error(*i, share)).count() as f64;
                let want = (n as f64 * share).floor();
                assert!(
                    (errors - want).abs() <= 1.0,
                    "share {share}, n {n}: {errors}"
                );
            }
        }
        // 5 %: one error in every twenty, never two in a row.
        let first: Vec<u64> = (0..60).filter(|i| is_injected_error(*i, 0.05)).collect();
        assert_eq!(first, [19, 39, 59]);
    }

    #[test]
    fn metrics_render_counters_histogram_and_build_info() {
        let m = Metrics::default();
        m.observe(200, Duration::from_millis(3));
        m.observe(200, Duration::from_millis(210));
        m.observe(500, Duration::from_secs(9));
        let text = m.render("2.\"1\".0");
        for line in [
            "# TYPE http_requests_total counter",
            "http_requests_total{code=\"200\"} 2",
            "http_requests_total{code=\"500\"} 1",
            "http_requests_total{code=\"503\"} 0",
            "# TYPE http_request_duration_seconds histogram",
            "http_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.2\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.25\"} 2",
            "http_request_duration_seconds_bucket{le=\"5\"} 2",
            "http_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "http_request_duration_seconds_sum 9.213",
            "http_request_duration_seconds_count 3",
            "# TYPE app_build_info gauge",
            "app_build_info{version=\"2.\\\"1\\\".0\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(text.ends_with('\n'));
    }
}
