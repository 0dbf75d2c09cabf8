//! The sample application the demo and the end-to-end tests deploy: a tiny HTTP service standing
//! in for a backend plus static frontend.
//!
//! Inputs: `--listen ADDR` (port 0 allowed), `--root DIR` (a release directory holding
//! `version.txt` and `health`), `--require-health-file`.
//! Outputs: `listening on ADDR` on stdout once bound; HTTP/1.1 answers with `Connection: close`:
//! `/actuator/health`, `/api/health`, `/actuator/info` and the pages in [`PAGES`].
//!
//! Health is read from `DIR/health` on every request, so a test or an operator can flip it; the
//! version is read once at start, as a real release's would be.
//! SIGTERM and SIGINT are blocked in every thread and taken by one waiting thread, which exits 0,
//! so a service manager sees a clean stop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

const DEFAULT_LISTEN: &str = "127.0.0.1:18080";
/// Connections are served by this many threads, each accepting on the shared listener.
const WORKERS: usize = 4;
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

/// Parsed command line.
#[derive(Debug)]
struct Config {
    listen: String,
    root: PathBuf,
    require_health_file: bool,
}

/// What a running instance knows about its release.
#[derive(Debug)]
struct App {
    version: String,
    health_file: PathBuf,
    require_health_file: bool,
}

impl App {
    fn up(&self) -> bool {
        match std::fs::read_to_string(&self.health_file) {
            Ok(text) => !text.contains("DOWN"),
            Err(_) => !self.require_health_file,
        }
    }

    /// The status, content type and body answering `path`.
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
            p if PAGES.contains(&p) => (200, "text/html; charset=utf-8", self.page(p)),
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
    Ok(App {
        version: version.trim().to_string(),
        health_file: config.root.join("health"),
        require_health_file: config.require_health_file,
    })
}

/// Answers one request; errors (timeouts, closed sockets) only end this connection.
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
    let mut parts = request_line.split_whitespace();
    let (code, kind, body) = match (parts.next(), parts.next()) {
        (Some("GET" | "HEAD"), Some(target)) => {
            app.respond(target.split('?').next().unwrap_or(target))
        }
        _ => (400, "text/plain", "bad request\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let mut out = &stream;
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
    for _ in 0..WORKERS {
        let (app, listener) = (
            Arc::clone(&app),
            listener.try_clone().expect("clone listener"),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => drop(serve(&app, stream)),
                    // Out of descriptors and the like: back off instead of spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
    }
    let _ = stop.wait();
    std::process::exit(0);
}
