//! The sample application and its packaging: `playbooks/sample-app/package.sh` builds the five
//! release tarballs, v2 (healthy) and v3 (broken) are extracted and started through their
//! `start.sh` on 127.0.0.1, and every endpoint is checked over real HTTP. Packaging twice must give
//! the same checksums.
//!
//! The faulty-but-healthy releases: 1.0.0, 2.1.0 (5 % of pages answer 500) and 2.2.0 (pages
//! 200 ms late) run side by side under `rampart_tests::load`, scraped by a real Prometheus with
//! a `host` label each; PromQL over their `/metrics` (error ratio, p95 from the histogram) and
//! the load's own report must tell the bad ones apart while their health endpoints answer 200.
//! A `faults` file that does not parse stops the app at start (exit 1, naming file and line).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rampart_tests::deploy::free_port;
use rampart_tests::load::{Load, LoadOptions, LoadReport, Target};
use rampart_tests::prometheus::{Job, Prometheus, Sample};
use rampart_tests::{bin, run_to_end};
use serde_json::{Value, json};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Every release `package.sh` writes.
const VERSIONS: [&str; 5] = ["1.0.0", "2.0.0", "2.1.0", "2.2.0", "3.0.0"];
const PAGES: [&str; 6] = [
    "/",
    "/login",
    "/courses",
    "/enrollment-date",
    "/finances",
    "/academics",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs package.sh into `out`, using the binary `cargo build --bins` already built.
fn package(out: &Path) {
    let status = Command::new(workspace().join("playbooks/sample-app/package.sh"))
        .arg(out)
        .env("SAMPLE_APP_BIN", bin("rampart-sample-app"))
        .stdout(Stdio::null())
        .status()
        .expect("run package.sh");
    assert!(status.success(), "package.sh failed: {status}");
}

fn extract(tarball: &Path, into: &Path) {
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(status.success(), "extract {}: {status}", tarball.display());
}

/// A started release; SIGKILLed by PID when dropped.
struct App {
    child: Child,
    addr: String,
}

impl App {
    /// Starts a release through its `start.sh` on a free port; waits for `listening on`.
    fn start(root: &Path) -> App {
        Self::start_on(root, "127.0.0.1:0")
    }

    /// Starts a release through its `start.sh` on `listen`; waits for `listening on`.
    fn start_on(root: &Path, listen: &str) -> App {
        let mut start = Command::new(root.join("start.sh"));
        start.env("SAMPLE_APP_LISTEN", listen);
        Self::spawn(start, root)
    }

    /// Its port.
    fn port(&self) -> u16 {
        rampart_tests::port_of(&self.addr)
            .parse()
            .unwrap_or_else(|e| panic!("port of {}: {e}", self.addr))
    }

    fn spawn(mut command: Command, root: &Path) -> App {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sample app");
        let stdout = child.stdout.take().expect("app stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        // Guard first, so a timeout below still kills the process.
        let mut app = App {
            child,
            addr: String::new(),
        };
        app.addr = rx
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|e| panic!("sample app in {} did not start: {e}", root.display()));
        app
    }

    /// GET `path`; returns the status code and body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).expect("connect to sample app");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("send request");
        let mut response = String::new();
        stream
            .take(1 << 20)
            .read_to_string(&mut response)
            .expect("read response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in response to {path}: {response:?}"));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line for {path}: {head:?}"));
        (code, body.to_string())
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.get(path);
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} body is not JSON ({e}): {body:?}"));
        (code, value)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Checks every endpoint of a running release.
fn check_endpoints(app: &App, version: &str, up: bool) {
    let (status, code) = if up { ("UP", 200) } else { ("DOWN", 503) };
    assert_eq!(
        app.get_json("/actuator/health"),
        (code, json!({ "status": status }))
    );
    assert_eq!(
        app.get_json("/api/health"),
        (code, json!({ "status": status, "version": version }))
    );
    assert_eq!(
        app.get_json("/actuator/info"),
        (
            200,
            json!({ "app": { "name": "rampart-sample", "version": version } })
        )
    );
    let meta = format!("<meta name=\"version\" content=\"{version}\">");
    for page in PAGES {
        let (code, body) = app.get(page);
        assert_eq!(code, 200, "status of {page}");
        assert!(body.contains(&meta), "{page} lacks {meta}: {body}");
    }
    assert_eq!(app.get("/nope").0, 404);
    assert_eq!(app.get("/actuator/healthz").0, 404);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn packaged_releases_serve_their_version_and_health() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    package(&out);

    for version in VERSIONS {
        let name = format!("sample-app-{version}.tar.gz");
        let line = read(&out.join(format!("{name}.sha256")));
        assert!(
            line.ends_with(&format!("  {name}\n")),
            "sha256 line: {line:?}"
        );
        let check = Command::new("sha256sum")
            .arg("--check")
            .arg("--status")
            .arg(format!("{name}.sha256"))
            .current_dir(&out)
            .status()
            .expect("run sha256sum");
        assert!(check.success(), "{name} does not match its .sha256");
    }

    // Same input, same archives.
    let again = tmp.path().join("again");
    package(&again);
    for version in VERSIONS {
        let sums = format!("sample-app-{version}.tar.gz.sha256");
        assert_eq!(read(&out.join(&sums)), read(&again.join(&sums)), "{sums}");
    }

    let v2 = tmp.path().join("v2");
    let v3 = tmp.path().join("v3");
    for (dir, version) in [(&v2, "2.0.0"), (&v3, "3.0.0")] {
        std::fs::create_dir(dir).unwrap();
        extract(&out.join(format!("sample-app-{version}.tar.gz")), dir);
        assert_eq!(read(&dir.join("version.txt")), format!("{version}\n"));
    }
    assert_eq!(read(&v2.join("health")).trim(), "UP");
    assert_eq!(read(&v3.join("health")).trim(), "DOWN");
    // Only the faulty-but-healthy releases carry a `faults` file.
    for (version, faults) in [
        ("1.0.0", None),
        ("2.0.0", None),
        ("2.1.0", Some("error_share=0.05\n")),
        ("2.2.0", Some("latency_ms=200\n")),
        ("3.0.0", None),
    ] {
        let dir = tmp.path().join(format!("members-{version}"));
        std::fs::create_dir(&dir).unwrap();
        extract(&out.join(format!("sample-app-{version}.tar.gz")), &dir);
        assert_eq!(
            read(&dir.join("health")).trim(),
            if version == "3.0.0" { "DOWN" } else { "UP" }
        );
        let found = std::fs::read_to_string(dir.join("faults")).ok();
        assert_eq!(found.as_deref(), faults, "faults file of {version}");
    }

    let healthy = App::start(&v2);
    let broken = App::start(&v3);
    check_endpoints(&healthy, "2.0.0", true);
    // v3 starts and serves its pages, but reports DOWN: the deploy's health check must fail.
    check_endpoints(&broken, "3.0.0", false);
}

#[test]
fn stop_signal_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("version.txt"), "9.9.9\n").unwrap();
    let mut command = Command::new(bin("rampart-sample-app"));
    command
        .args(["--listen", "127.0.0.1:0", "--require-health-file", "--root"])
        .arg(tmp.path());
    let mut guard = App::spawn(command, tmp.path());
    // No health file and --require-health-file: DOWN.
    assert_eq!(guard.get("/actuator/health").0, 503);
    std::fs::write(tmp.path().join("health"), "UP\n").unwrap();
    assert_eq!(guard.get("/actuator/health").0, 200);

    kill(Pid::from_raw(guard.child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
}

/// The load on each release: requests/s and how long.
const LOAD_RATE: f64 = 50.0;
const LOAD_DURATION: Duration = Duration::from_secs(8);
/// How long Prometheus may take to have scraped what the load did.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(20);

/// Each sample's `host` label and value.
fn by_host(samples: &[Sample]) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = samples
        .iter()
        .map(|(labels, value)| (labels.get("host").cloned().unwrap_or_default(), *value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The value for `host` in `samples`; panics naming the query's answer when there is none.
fn value_of(samples: &[Sample], host: &str, what: &str) -> f64 {
    by_host(samples)
        .into_iter()
        .find(|(h, _)| h == host)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{what}: no sample for host {host}: {samples:?}"))
}

#[test]
fn faulty_releases_pass_health_but_metrics_and_load_tell_them_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    package(&out);
    // h1 runs the good 1.0.0, h2 the erroring 2.1.0, h3 the slow 2.2.0.
    let hosts = [("h1", "1.0.0"), ("h2", "2.1.0"), ("h3", "2.2.0")];
    let apps: Vec<App> = hosts
        .iter()
        .map(|(host, version)| {
            let root = tmp.path().join(host);
            std::fs::create_dir(&root).unwrap();
            extract(&out.join(format!("sample-app-{version}.tar.gz")), &root);
            App::start_on(&root, &format!("127.0.0.1:{}", free_port()))
        })
        .collect();
    // The faults spare the health endpoints: each release passes its deploy's health checks.
    for ((host, version), app) in hosts.iter().zip(&apps) {
        assert_eq!(
            app.get_json("/api/health"),
            (200, json!({ "status": "UP", "version": version })),
            "{host}"
        );
    }

    let targets: Vec<(&str, &str)> = apps
        .iter()
        .zip(&hosts)
        .map(|(app, (host, _))| (app.addr.as_str(), *host))
        .collect();
    let mut prom = Prometheus::start(&[Job::hosts("sample-app", &targets)], &[]);
    prom.wait_targets_up(SCRAPE_DEADLINE);

    // 2.2.0 holds each request 200 ms: 50/s needs 10 in flight; 32 leave room on a busy CI.
    let options = LoadOptions {
        in_flight: 32,
        ..LoadOptions::default()
    };
    let load = Load::start_with(
        apps.iter()
            .zip(&hosts)
            .map(|(app, (host, _))| Target::new(host, app.port(), "/courses"))
            .collect(),
        LOAD_RATE,
        LOAD_DURATION,
        &options,
    );
    // Under load, 2.1.0's health endpoint still answers 200 every time.
    let mut health_checks = 0;
    for _ in 0..10 {
        assert_eq!(
            apps[1].get("/actuator/health").0,
            200,
            "2.1.0 health under load"
        );
        health_checks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let report: LoadReport = load.wait(LOAD_DURATION + Duration::from_secs(20));
    println!("{report}");
    assert_eq!(report.unjoined, 0, "{report}");
    let expected = (LOAD_RATE * LOAD_DURATION.as_secs_f64()) as u64;
    for (host, _) in hosts {
        let t = report.target(host);
        assert_eq!(t.failed, 0, "{t}");
        // Paced: every due request was sent (a starved CI may lose a few at the end).
        assert!(t.sent() + 5 >= expected && t.sent() <= expected, "{t}");
    }
    let (h1, h2, h3) = (
        report.target("h1"),
        report.target("h2"),
        report.target("h3"),
    );
    assert_eq!(h1.server_errors, 0, "{h1}");
    assert_eq!(h3.server_errors, 0, "{h3}");
    // One page in twenty (to a rounding): the app's error injection is deterministic.
    assert!(h2.server_errors.abs_diff(h2.sent() / 20) <= 1, "{h2}");
    assert!((0.04..=0.06).contains(&h2.server_error_ratio()), "{h2}");
    assert!(h3.p50_ms().unwrap() >= 200.0, "{h3}");
    assert!(h1.p95_ms().unwrap() < h3.p50_ms().unwrap(), "{h1}\n{h3}");

    // Wait until Prometheus has scraped everything the load did (the apps count it exactly).
    let total = "sum by (host) (http_requests_total{job=\"sample-app\"})";
    prom.wait_until(total, SCRAPE_DEADLINE, |samples| {
        let got = by_host(samples);
        got.len() == 3
            && hosts.iter().all(|(host, _)| {
                let want =
                    report.target(host).answered() + if *host == "h2" { health_checks } else { 0 };
                got.iter().any(|(h, v)| h == host && *v >= want as f64)
            })
    });

    let ratio = prom.query(
        "sum by (host) (rate(http_requests_total{job=\"sample-app\",code=~\"5..\"}[1m])) \
         / sum by (host) (rate(http_requests_total{job=\"sample-app\"}[1m]))",
    );
    println!("error ratio by host: {:?}", by_host(&ratio));
    let r2 = value_of(&ratio, "h2", "error ratio");
    assert!((0.03..=0.07).contains(&r2), "error ratio of 2.1.0: {r2}");
    assert_eq!(value_of(&ratio, "h1", "error ratio"), 0.0);
    assert_eq!(value_of(&ratio, "h3", "error ratio"), 0.0);

    let p95 = prom.query(
        "histogram_quantile(0.95, sum by (host, le) \
         (rate(http_request_duration_seconds_bucket{job=\"sample-app\"}[1m])))",
    );
    println!("p95 by host (s): {:?}", by_host(&p95));
    let slow = value_of(&p95, "h3", "p95");
    assert!(slow >= 0.19, "p95 of 2.2.0: {slow} s");
    let fast = value_of(&p95, "h1", "p95");
    assert!(fast < 0.05, "p95 of 1.0.0: {fast} s");
    let p95_h2 = value_of(&p95, "h2", "p95");
    assert!(p95_h2 < 0.05, "p95 of 2.1.0: {p95_h2} s");

    let info = prom.query("app_build_info{job=\"sample-app\"}");
    let mut versions: Vec<(String, String)> = info
        .iter()
        .map(|(l, _)| (l["host"].clone(), l["version"].clone()))
        .collect();
    versions.sort();
    let wanted: Vec<(String, String)> = hosts
        .iter()
        .map(|(h, v)| (h.to_string(), v.to_string()))
        .collect();
    assert_eq!(versions, wanted);

    // A killed Prometheus: its address stays, queries fail as a dead server's do.
    let addr = prom.addr.clone();
    prom.kill();
    assert_eq!(prom.pid(), 0);
    assert_eq!(prom.addr, addr);
    let err = prom
        .try_query("up")
        .expect_err("a query to a killed prometheus");
    assert!(err.contains("GET /api/v1/query"), "{err}");
}

#[test]
fn a_bad_faults_file_stops_the_app_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("version.txt"), "2.1.0\n").unwrap();
    for (text, wanted) in [
        (
            "error_share=0.05\nlatency_ms=soon\n",
            "line 2: latency_ms must be",
        ),
        ("error_share=5%\n", "line 1: error_share must be"),
        ("# ok\ncolour=red\n", "line 2: unknown setting \"colour\""),
    ] {
        let faults = tmp.path().join("faults");
        std::fs::write(&faults, text).unwrap();
        let mut app = Command::new(bin("rampart-sample-app"));
        app.args(["--listen", "127.0.0.1:0", "--root"])
            .arg(tmp.path());
        let run = run_to_end(app, START_TIMEOUT);
        assert_eq!(run.code, 1, "{text:?}: {run:?}");
        assert!(
            run.stderr.contains(&format!("{}", faults.display())) && run.stderr.contains(wanted),
            "{text:?}: stderr {:?}",
            run.stderr
        );
        assert!(
            !run.stdout.contains("listening on"),
            "{text:?}: it served: {run:?}"
        );
    }
}
