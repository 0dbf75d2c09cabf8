//! `wait_for`: waits until a TCP port accepts (or refuses) connections, or a file appears (or
//! disappears, or contains text matching a regular expression), as Ansible's module.
//!
//! Inputs: `port` (with `host`, default 127.0.0.1) or `path`; `state` (`started`/`present`: the
//! port accepts connections or the file exists; `stopped`/`absent`: the port refuses them or the
//! file is gone); `timeout` (300 s), `delay` before the first check (0 s), `sleep` between checks
//! (1 s, fractions allowed), `connect_timeout` (5 s), `search_regex` (multi-line; for a path the
//! file's content must match, for a port the data the server sends), `msg` on timeout.
//!
//! Outputs: `changed: false`, `elapsed` (whole seconds, as Ansible), `elapsed_ms` (precise),
//! `state`, `port`, `path`, `search_regex`, `match_groups`, `match_groupdict`. On timeout:
//! `failed`, `msg` (the `msg` argument or Ansible's text) and the elapsed times.
//!
//! Every wait is bounded: checks stop at the deadline (`timeout` after the start, the delay
//! included), each sleep and connection attempt is cut short so the deadline is kept. The module
//! changes nothing, so there is nothing to reverse, and it runs in check mode too.

use std::fs;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use regex::bytes::{Regex, RegexBuilder};
use serde_json::{Map, Value, json};

use rampart_playbook::modules::wait_for as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_f64, arg_i64, arg_str, failed, ok};

/// The shortest pause between checks, so `sleep: 0` does not spin.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// `wait_for`: waits for a port or a file.
pub static WAIT_FOR: ModuleSpec = ModuleSpec {
    schema: &schema::WAIT_FOR,
    run: run_wait_for,
};

/// What is waited for.
#[derive(Debug)]
enum Target<'a> {
    Port { host: &'a str, port: u16 },
    Path(&'a str),
}

/// The outcome of one check.
#[derive(Debug)]
enum Check {
    /// The condition holds; the regex's groups when one matched.
    Done(Option<Groups>),
    /// Not yet.
    NotYet,
    /// An error that waiting will not cure.
    Fatal(String),
}

/// A regex match's groups, as Ansible reports them.
#[derive(Debug, Default)]
struct Groups {
    groups: Vec<Value>,
    named: Map<String, Value>,
}

fn run_wait_for(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    let start = Instant::now();
    let state = arg_str(args, "state").unwrap_or("started");
    let waiting_for_start = matches!(state, "started" | "present");
    let seconds = |name: &str, default: f64| -> Result<Duration, String> {
        let v = arg_f64(args, name).unwrap_or(default);
        Duration::try_from_secs_f64(v)
            .map_err(|_| format!("{name} must be a non-negative number of seconds, not {v}"))
    };
    let durations = (|| {
        Ok::<_, String>((
            seconds("timeout", 300.0)?,
            seconds("delay", 0.0)?,
            seconds("sleep", 1.0)?.max(MIN_SLEEP),
            seconds("connect_timeout", 5.0)?.max(MIN_SLEEP),
        ))
    })();
    let (timeout, delay, sleep, connect_timeout) = match durations {
        Ok(d) => d,
        Err(e) => return with_elapsed(failed(e), start),
    };
    let regex = match arg_str(args, "search_regex") {
        None => None,
        Some(pattern) => match RegexBuilder::new(pattern).multi_line(true).build() {
            Ok(r) => Some(r),
            Err(e) => {
                return with_elapsed(failed(format!("Invalid regular expression: {e}")), start);
            }
        },
    };
    let target = match (arg_i64(args, "port"), arg_str(args, "path")) {
        (Some(p), None) => match u16::try_from(p) {
            Ok(port) if port != 0 => Target::Port {
                host: arg_str(args, "host").unwrap_or("127.0.0.1"),
                port,
            },
            _ => return with_elapsed(failed(format!("port must be 1 to 65535, not {p}")), start),
        },
        (None, Some(path)) => Target::Path(path),
        (Some(_), Some(_)) => {
            return with_elapsed(
                failed("port and path parameter can not both be passed to wait_for"),
                start,
            );
        }
        (None, None) => {
            // As Ansible: with neither, wait_for just sleeps for `timeout`.
            thread::sleep(delay + timeout);
            return result(args, state, start, None);
        }
    };
    let deadline = start + timeout;
    // The delay counts toward the timeout (as Ansible); at least one check follows it.
    thread::sleep(delay.min(timeout));
    loop {
        let outcome = match &target {
            Target::Port { host, port } => check_port(
                host,
                *port,
                waiting_for_start,
                regex.as_ref(),
                connect_timeout,
                deadline,
            ),
            Target::Path(path) => check_path(path, waiting_for_start, regex.as_ref()),
        };
        match outcome {
            Check::Done(groups) => return result(args, state, start, groups),
            Check::Fatal(msg) => return with_elapsed(failed(msg), start),
            Check::NotYet => {}
        }
        let now = Instant::now();
        if now >= deadline {
            let msg = match arg_str(args, "msg") {
                Some(m) => m.to_string(),
                None => timeout_msg(&target, waiting_for_start, arg_str(args, "search_regex")),
            };
            return with_elapsed(failed(msg), start);
        }
        thread::sleep(sleep.min(deadline - now));
    }
}

/// Ansible's timeout messages.
fn timeout_msg(target: &Target<'_>, waiting_for_start: bool, regex: Option<&str>) -> String {
    match (target, waiting_for_start, regex) {
        (Target::Port { host, port }, true, Some(r)) => {
            format!("Timeout when waiting for search string {r} in {host}:{port}")
        }
        (Target::Port { host, port }, true, None) => {
            format!("Timeout when waiting for {host}:{port}")
        }
        (Target::Port { host, port }, false, _) => {
            format!("Timeout when waiting for {host}:{port} to stop.")
        }
        (Target::Path(path), true, Some(r)) => {
            format!("Timeout when waiting for search string {r} in {path}")
        }
        (Target::Path(path), true, None) => format!("Timeout when waiting for file {path}"),
        (Target::Path(path), false, _) => format!("Timeout when waiting for {path} to be absent."),
    }
}

/// One check of a port.
fn check_port(
    host: &str,
    port: u16,
    waiting_for_start: bool,
    regex: Option<&Regex>,
    connect_timeout: Duration,
    deadline: Instant,
) -> Check {
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        // A name that does not resolve yet: not started; for stopped, as Ansible, done.
        Err(_) => {
            return if waiting_for_start {
                Check::NotYet
            } else {
                Check::Done(None)
            };
        }
    };
    for addr in addrs {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = connect_timeout.min(remaining).max(MIN_SLEEP);
        let Ok(stream) = TcpStream::connect_timeout(&addr, limit) else {
            continue;
        };
        if !waiting_for_start {
            let _ = stream.shutdown(Shutdown::Both);
            return Check::NotYet;
        }
        let outcome = match regex {
            None => Check::Done(None),
            Some(re) => match read_until_match(&stream, re, deadline) {
                Some(groups) => Check::Done(Some(groups)),
                None => Check::NotYet,
            },
        };
        let _ = stream.shutdown(Shutdown::Both);
        return outcome;
    }
    if waiting_for_start {
        Check::NotYet
    } else {
        Check::Done(None)
    }
}

/// Reads what the server sends until `re` matches it, the server closes, or the deadline.
fn read_until_match(mut stream: &TcpStream, re: &Regex, deadline: Instant) -> Option<Groups> {
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return None;
        }
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if let Some(groups) = search(re, &data) {
                    return Some(groups);
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
}

/// One check of a path.
fn check_path(path: &str, waiting_for_start: bool, regex: Option<&Regex>) -> Check {
    let meta = fs::metadata(path);
    if !waiting_for_start {
        // As Ansible's `os.access(path, F_OK)`: anything that cannot be reached counts as gone.
        return if meta.is_err() {
            Check::Done(None)
        } else {
            Check::NotYet
        };
    }
    match meta {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Check::NotYet,
        Err(e) => Check::Fatal(format!("Failed to stat {path}, {}", os_msg(&e))),
        Ok(_) => match regex {
            None => Check::Done(None),
            Some(re) => match fs::read(path) {
                Ok(content) => match search(re, &content) {
                    Some(groups) => Check::Done(Some(groups)),
                    None => Check::NotYet,
                },
                Err(_) => Check::NotYet,
            },
        },
    }
}

/// Searches `data` with `re`, returning the groups of the first match.
fn search(re: &Regex, data: &[u8]) -> Option<Groups> {
    let caps = re.captures(data)?;
    let text = |m: Option<regex::bytes::Match<'_>>| {
        m.map_or(Value::Null, |m| {
            json!(String::from_utf8_lossy(m.as_bytes()))
        })
    };
    let groups = (1..caps.len()).map(|i| text(caps.get(i))).collect();
    let named = re
        .capture_names()
        .flatten()
        .map(|name| (name.to_string(), text(caps.name(name))))
        .collect();
    Some(Groups { groups, named })
}

/// The text of an OS error without Rust's "(os error N)" suffix, as Python shows it.
fn os_msg(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

fn with_elapsed(mut r: ModuleResult, start: Instant) -> ModuleResult {
    let elapsed = start.elapsed();
    r.insert("elapsed".into(), json!(elapsed.as_secs()));
    r.insert("elapsed_ms".into(), json!(elapsed.as_millis() as u64));
    r
}

/// The success result.
fn result(
    args: &Map<String, Value>,
    state: &str,
    start: Instant,
    groups: Option<Groups>,
) -> ModuleResult {
    let groups = groups.unwrap_or_default();
    let mut r = ok(false);
    r.insert("state".into(), json!(state));
    r.insert(
        "port".into(),
        args.get("port").cloned().unwrap_or(Value::Null),
    );
    r.insert(
        "path".into(),
        args.get("path").cloned().unwrap_or(Value::Null),
    );
    r.insert(
        "search_regex".into(),
        args.get("search_regex").cloned().unwrap_or(Value::Null),
    );
    r.insert("match_groups".into(), Value::Array(groups.groups));
    r.insert("match_groupdict".into(), Value::Object(groups.named));
    with_elapsed(r, start)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;

    use super::*;
    use crate::modules::testing::Call;

    fn run_with(args: Value, check: bool) -> ModuleResult {
        Call {
            check,
            ..Call::default()
        }
        .run(&WAIT_FOR, args)
    }

    fn run(args: Value) -> ModuleResult {
        run_with(args, false)
    }

    fn succeeded(r: &ModuleResult) -> bool {
        !r.get("failed").and_then(Value::as_bool).unwrap_or(false)
    }

    fn fail_msg(r: &ModuleResult) -> String {
        assert!(!succeeded(r), "expected a failure: {r:?}");
        assert_eq!(r["changed"], json!(false));
        assert!(r["elapsed"].is_u64() && r["elapsed_ms"].is_u64());
        r["msg"].as_str().expect("msg").to_string()
    }

    fn assert_ok(r: &ModuleResult) {
        assert!(succeeded(r), "unexpected failure: {r:?}");
        assert_eq!(r["changed"], json!(false));
        assert!(r["elapsed"].is_u64() && r["elapsed_ms"].is_u64());
    }

    /// A port on 127.0.0.1 with nothing listening on it.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn port_started_when_listening_in_any_mode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for check in [false, true, false] {
            let r = run_with(json!({"port": port, "timeout": 5}), check);
            assert_ok(&r);
            assert_eq!(r["port"], json!(port));
            assert_eq!(r["state"], json!("started"));
            assert_eq!(r["elapsed"], json!(0));
            assert_eq!(r["match_groups"], json!([]));
            assert_eq!(r["path"], Value::Null);
        }
        let r = run(json!({"host": "localhost", "port": port, "timeout": 5}));
        assert_ok(&r);
    }

    #[test]
    fn port_started_waits_for_a_late_listener() {
        let port = closed_port();
        let server = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            TcpListener::bind(("127.0.0.1", port)).map(|l| {
                thread::sleep(Duration::from_millis(300));
                drop(l);
            })
        });
        let r = run(json!({"port": port, "timeout": 5, "sleep": 0.05}));
        assert_ok(&r);
        assert!(r["elapsed_ms"].as_u64().unwrap() >= 150, "{r:?}");
        server.join().unwrap().expect("port was free again");
    }

    #[test]
    fn port_started_times_out() {
        let port = closed_port();
        let began = Instant::now();
        let r = run(json!({"port": port, "timeout": 0.3, "sleep": 0.05}));
        assert_eq!(
            fail_msg(&r),
            format!("Timeout when waiting for 127.0.0.1:{port}")
        );
        let ms = r["elapsed_ms"].as_u64().unwrap();
        assert!((300..3000).contains(&ms), "{ms}");
        assert!(began.elapsed() < Duration::from_secs(3));
        let r = run(json!({"port": port, "timeout": 0.1, "sleep": 0.05, "msg": "no server"}));
        assert_eq!(fail_msg(&r), "no server");
    }

    #[test]
    fn port_stopped() {
        let port = closed_port();
        let r = run(json!({"port": port, "state": "stopped", "timeout": 2}));
        assert_ok(&r);
        assert_eq!(r["state"], json!("stopped"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = run(json!({"port": port, "state": "stopped", "timeout": 0.2, "sleep": 0.05}));
        assert_eq!(
            fail_msg(&r),
            format!("Timeout when waiting for 127.0.0.1:{port} to stop.")
        );
        // Closing the listener while waiting ends the wait.
        let closer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            drop(listener);
        });
        let r = run(json!({"port": port, "state": "absent", "timeout": 5, "sleep": 0.05}));
        assert_ok(&r);
        closer.join().unwrap();
    }

    #[test]
    fn port_search_regex_reads_the_banner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
            thread::sleep(Duration::from_millis(100));
        });
        let r = run(
            json!({"port": port, "search_regex": r"OpenSSH_(\d+)\.(?P<minor>\d+)", "timeout": 5}),
        );
        assert_ok(&r);
        assert_eq!(r["match_groups"], json!(["9", "6"]));
        assert_eq!(r["match_groupdict"], json!({"minor": "6"}));
        server.join().unwrap();

        // A server that never sends the text: timeout with Ansible's message.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = run(json!({"port": port, "search_regex": "READY", "timeout": 0.3, "sleep": 0.05}));
        assert_eq!(
            fail_msg(&r),
            format!("Timeout when waiting for search string READY in 127.0.0.1:{port}")
        );
        drop(listener);
    }

    #[test]
    fn path_present_and_search_regex() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ready");
        let path = p.to_string_lossy().into_owned();
        let writer = {
            let p = p.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100));
                fs::write(&p, "starting\nlistening on port 8080\n").unwrap();
            })
        };
        let r = run(json!({"path": path, "timeout": 5, "sleep": 0.02}));
        assert_ok(&r);
        assert_eq!(r["path"], json!(path));
        assert_eq!(r["port"], Value::Null);
        writer.join().unwrap();
        let r = run_with(
            json!({"path": path, "search_regex": r"^listening on port (?P<port>\d+)$", "timeout": 5}),
            true,
        );
        assert_ok(&r);
        assert_eq!(r["match_groups"], json!(["8080"]));
        assert_eq!(r["match_groupdict"], json!({"port": "8080"}));
        assert_eq!(
            r["search_regex"],
            json!(r"^listening on port (?P<port>\d+)$")
        );
        let r =
            run(json!({"path": path, "search_regex": "^never$", "timeout": 0.2, "sleep": 0.05}));
        assert_eq!(
            fail_msg(&r),
            format!("Timeout when waiting for search string ^never$ in {path}")
        );
    }

    #[test]
    fn path_times_out_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let path = p.to_string_lossy().into_owned();
        let r = run(json!({"path": path, "state": "present", "timeout": 0.2, "sleep": 0.05}));
        assert_eq!(
            fail_msg(&r),
            format!("Timeout when waiting for file {path}")
        );
        let r = run(json!({"path": path, "state": "absent", "timeout": 1}));
        assert_ok(&r);
        fs::write(&p, "").unwrap();
        let r = run(json!({"path": path, "state": "absent", "timeout": 0.2, "sleep": 0.05}));
        assert_eq!(
            fail_msg(&r),
            format!("Timeout when waiting for {path} to be absent.")
        );
        let remover = {
            let p = p.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100));
                fs::remove_file(&p).unwrap();
            })
        };
        let r = run(json!({"path": path, "state": "stopped", "timeout": 5, "sleep": 0.02}));
        assert_ok(&r);
        remover.join().unwrap();
        // A path below a regular file cannot appear: Ansible fails at once.
        fs::write(&p, "").unwrap();
        let below = format!("{path}/x");
        let r = run(json!({"path": below, "timeout": 5}));
        assert_eq!(
            fail_msg(&r),
            format!("Failed to stat {below}, Not a directory")
        );
    }

    #[test]
    fn delay_counts_toward_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_string_lossy().into_owned();
        let r = run(json!({"path": path, "delay": 0.15, "timeout": 5}));
        assert_ok(&r);
        assert!(r["elapsed_ms"].as_u64().unwrap() >= 150);
        // A delay longer than the timeout is cut to it; one check still follows.
        let began = Instant::now();
        let r = run(json!({"path": path, "delay": 30, "timeout": 0.1}));
        assert_ok(&r);
        assert!(began.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn bad_arguments_fail() {
        let r = run(json!({"path": "/x", "search_regex": "(", "timeout": 1}));
        assert!(fail_msg(&r).starts_with("Invalid regular expression:"));
        let r = run(json!({"path": "/x", "timeout": -1}));
        assert!(fail_msg(&r).contains("timeout must be a non-negative number"));
        let r = run(json!({"port": 70000, "timeout": 1}));
        assert!(fail_msg(&r).starts_with("port must be 1 to 65535"));
        let r = run(json!({"port": 1, "path": "/x"}));
        assert_eq!(
            fail_msg(&r),
            "port and path parameter can not both be passed to wait_for"
        );
        // Neither: as Ansible, a plain sleep for `timeout`.
        let r = run(json!({"timeout": 0.05}));
        assert_ok(&r);
        assert!(r["elapsed_ms"].as_u64().unwrap() >= 50);
    }
}
