//! The sample application and its packaging: `playbooks/sample-app/package.sh` builds the three
//! release tarballs, v2 (healthy) and v3 (broken) are extracted and started through their
//! `start.sh` on 127.0.0.1, and every endpoint is checked over real HTTP. Packaging twice must give
//! the same checksums.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rampart_tests::bin;
use serde_json::{Value, json};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
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
        let mut start = Command::new(root.join("start.sh"));
        start.env("SAMPLE_APP_LISTEN", "127.0.0.1:0");
        Self::spawn(start, root)
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

    for version in ["1.0.0", "2.0.0", "3.0.0"] {
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
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
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
