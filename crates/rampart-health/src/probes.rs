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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

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
        "http" => http(params, timeout),
        "tcp" => tcp(params, timeout),
        "postgres" => postgres(params, timeout),
        "redis" => redis(params, timeout),
        "systemd" => systemd(params, timeout),
        "disk" => disk(params),
        "memory" => memory(params),
        "load" => load(params),
        "command" => command(params, timeout),
        "file" => file(params),
        "grpc" => grpc(params, timeout),
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

fn http(p: &Value, timeout: Duration) -> Probe {
    let Some(url) = s(p, "url") else {
        return Probe::fail(Value::Null, "http check without a url");
    };
    let method = s(p, "method").unwrap_or("GET").to_ascii_uppercase();
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(!flag(p, "tls_verify", true))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into();
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

fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?;
    let mut last = format!("{host}:{port} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

fn port_of(p: &Value) -> Option<u16> {
    p.get("port")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
        })
        .and_then(|n| u16::try_from(n).ok())
}

fn tcp(p: &Value, timeout: Duration) -> Probe {
    let host = s(p, "host").unwrap_or("127.0.0.1");
    let Some(port) = port_of(p) else {
        return Probe::fail(Value::Null, "tcp check without a port");
    };
    let started = Instant::now();
    match connect_tcp(host, port, timeout) {
        Ok(_) => {
            let ms = started.elapsed().as_millis() as u64;
            Probe::pass(
                json!(ms),
                format!("{host}:{port} accepts connections ({ms} ms)"),
            )
        }
        Err(e) => Probe::fail(Value::Null, e.clone()).with(json!({"error": e})),
    }
}

fn postgres(p: &Value, timeout: Duration) -> Probe {
    let Some(url) = s(p, "url") else {
        return Probe::fail(Value::Null, "postgres check without a url");
    };
    let shown = rampart_migrate::config::redact_url(url);
    let parsed = match rampart_migrate::config::parse_jdbc_url(url) {
        Ok(u) => u,
        Err(e) => return Probe::fail(Value::Null, e.to_string()),
    };
    let user = s(p, "user")
        .map(str::to_string)
        .or(parsed.user.clone())
        .unwrap_or_else(|| "postgres".into());
    let mut config = postgres::Config::new();
    config
        .host(&parsed.host)
        .port(parsed.port)
        .user(&user)
        .dbname(parsed.database.as_deref().unwrap_or(&user))
        .application_name("rampart-health")
        .connect_timeout(timeout.max(Duration::from_millis(100)));
    if let Some(pw) = s(p, "password")
        .map(str::to_string)
        .or(parsed.password.clone())
    {
        config.password(pw);
    }
    let mut client = match config.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            let msg = rampart_migrate::error::db_message(&e);
            return Probe::fail(Value::Null, format!("cannot connect to {shown}: {msg}"))
                .with(json!({"error": msg}));
        }
    };
    let fail = |what: &str, e: postgres::Error| {
        let msg = rampart_migrate::error::db_message(&e);
        Probe::fail(Value::Null, format!("{what}: {msg}")).with(json!({"error": msg}))
    };
    if let Err(e) = client.simple_query("SELECT 1") {
        return fail("SELECT 1", e);
    }
    let schema = s(p, "schema").unwrap_or("public");
    if let Some(want) = p.get("schema_version").filter(|v| !v.is_null()) {
        let want = want
            .as_str()
            .map_or_else(|| want.to_string(), str::to_string);
        let mut cfg = rampart_migrate::config::Config {
            url: Some(url.to_string()),
            user: Some(user.clone()),
            password: s(p, "password").map(str::to_string),
            ..Default::default()
        };
        cfg.schemas = vec![schema.to_string()];
        return match rampart_migrate::run::schema_version(&cfg) {
            Ok(found) if found.as_deref() == Some(want.as_str()) => {
                Probe::pass(json!(found), format!("schema version is {want}"))
            }
            Ok(found) => Probe::fail(
                json!(found),
                format!(
                    "schema version is {}, expected {want}",
                    found.as_deref().unwrap_or("<< Empty Schema >>")
                ),
            ),
            Err(e) => Probe::fail(Value::Null, format!("reading the schema version: {e}")),
        };
    }
    if let Some(min) = num(p, "min_tables") {
        return match client.query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        ) {
            Ok(row) => {
                let count: i64 = row.get(0);
                if count as f64 >= min {
                    Probe::pass(json!(count), format!("{count} tables in schema {schema}"))
                } else {
                    Probe::fail(
                        json!(count),
                        format!("{count} tables in schema {schema}, expected at least {min}"),
                    )
                }
            }
            Err(e) => fail("counting tables", e),
        };
    }
    if let Some(query) = s(p, "query") {
        return match client.simple_query(query) {
            Ok(messages) => {
                let found = messages.iter().find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                });
                match p.get("expect").filter(|v| !v.is_null()) {
                    Some(want) if !same(&json!(found), want) => Probe::fail(
                        json!(found),
                        format!("query returned {found:?}, expected {want}"),
                    ),
                    _ => Probe::pass(json!(found), format!("query returned {found:?}")),
                }
            }
            Err(e) => fail("query", e),
        };
    }
    Probe::pass(json!(1), format!("{shown} answers SELECT 1"))
}

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

fn redis(p: &Value, timeout: Duration) -> Probe {
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

/// Runs a program with a deadline; (exit code, stdout, stderr), or why it could not.
fn run_bounded(
    mut cmd: Command,
    timeout: Duration,
) -> Result<(Option<i32>, String, String), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let reader = |r: Option<std::process::ChildStdout>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(out);
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = err {
            let _ = r.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(st) => Ok((st.code(), stdout, stderr)),
        None => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

fn systemd(p: &Value, timeout: Duration) -> Probe {
    let mut units = rampart_playbook::schema::arg_strings(p.get("units"));
    if let Some(unit) = s(p, "unit") {
        units.insert(0, unit.to_string());
    }
    if units.is_empty() {
        return Probe::fail(Value::Null, "systemd check without a unit");
    }
    let prefix: Vec<String> = rampart_playbook::schema::arg_strings(p.get("systemctl_prefix"));
    let build = |program: &str, args: &[&str]| {
        let mut argv: Vec<String> = prefix.clone();
        argv.push(program.to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let mut states = serde_json::Map::new();
    for unit in &units {
        // `Key=Value` lines: systemctl prints properties in its own order, not the asked one.
        let shown = run_bounded(
            build(
                "systemctl",
                &["show", "-p", "ActiveState,SubState,Result", unit],
            ),
            timeout,
        );
        let (active, sub, result) = match shown {
            Ok((Some(0), out, _)) => {
                let prop = |key: &str| {
                    out.lines()
                        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                (prop("ActiveState"), prop("SubState"), prop("Result"))
            }
            Ok((_, out, err)) => {
                return Probe::fail(
                    Value::Null,
                    format!("systemctl show {unit} failed: {}", excerpt(&(err + &out))),
                );
            }
            Err(e) => return Probe::fail(Value::Null, format!("systemctl show {unit}: {e}")),
        };
        if active != "active" {
            let log = run_bounded(
                build(
                    "journalctl",
                    &["-u", unit, "-n", "10", "--no-pager", "-o", "cat"],
                ),
                timeout,
            )
            .map(|(_, o, _)| o)
            .unwrap_or_default();
            return Probe::fail(
                json!(active),
                format!("{unit} is {active} ({sub}, result {result})"),
            )
            .with(json!({
                "unit": unit, "ActiveState": active, "SubState": sub, "Result": result,
                "log": log.lines().collect::<Vec<_>>(),
            }));
        }
        states.insert(unit.clone(), json!(active));
    }
    Probe::pass(
        Value::Object(states),
        format!("{} active", units.join(", ")),
    )
}

fn disk(p: &Value) -> Probe {
    let path = s(p, "path").unwrap_or("/");
    let max = num(p, "max_percent").unwrap_or(90.0);
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) => {
            let total = st.blocks() as f64 * st.fragment_size() as f64;
            let avail = st.blocks_available() as f64 * st.fragment_size() as f64;
            let free = st.blocks_free() as f64 * st.fragment_size() as f64;
            // As df computes it: used / (used + available to unprivileged users).
            let used = total - free;
            let pct = if used + avail > 0.0 {
                (used / (used + avail) * 1000.0).round() / 10.0
            } else {
                0.0
            };
            if pct < max {
                Probe::pass(json!(pct), format!("{path} is {pct}% used"))
            } else {
                Probe::fail(
                    json!(pct),
                    format!("{path} is {pct}% used, at or over {max}%"),
                )
            }
        }
        Err(e) => Probe::fail(Value::Null, format!("statvfs {path}: {e}")),
    }
}

fn memory(p: &Value) -> Probe {
    let max = num(p, "max_percent").unwrap_or(80.0);
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    let (Some(total), Some(avail)) = (field("MemTotal"), field("MemAvailable")) else {
        return Probe::fail(
            Value::Null,
            "cannot read MemTotal/MemAvailable from /proc/meminfo",
        );
    };
    let pct = ((total - avail) / total * 1000.0).round() / 10.0;
    if pct <= max {
        Probe::pass(json!(pct), format!("memory {pct}% used"))
    } else {
        Probe::fail(json!(pct), format!("memory {pct}% used, over {max}%"))
    }
}

fn load(p: &Value) -> Probe {
    let max = num(p, "max").unwrap_or(2.0);
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Some(one) = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return Probe::fail(Value::Null, "cannot read /proc/loadavg");
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (value, what) = if flag(p, "per_core", false) {
        (
            (one / cores * 100.0).round() / 100.0,
            format!("per core ({cores} cores)"),
        )
    } else {
        (one, String::new())
    };
    if value <= max {
        Probe::pass(
            json!(value),
            format!("1-minute load {value} {what}")
                .trim_end()
                .to_string(),
        )
    } else {
        Probe::fail(
            json!(value),
            format!("1-minute load {value} {what} over {max}"),
        )
    }
}

fn command(p: &Value, timeout: Duration) -> Probe {
    let Some(cmd) = s(p, "cmd") else {
        return Probe::fail(Value::Null, "command check without cmd");
    };
    let mut c = Command::new("sh");
    c.args(["-c", cmd]);
    match run_bounded(c, timeout) {
        Ok((code, out, err)) => {
            let diag = json!({"rc": code, "stdout": excerpt(&out), "stderr": excerpt(&err)});
            if code != Some(0) {
                return Probe::fail(
                    json!(code),
                    format!(
                        "`{cmd}` exited {}",
                        code.map_or("by a signal".into(), |c| c.to_string())
                    ),
                )
                .with(diag);
            }
            if let Some(text) = s(p, "stdout_contains")
                && !out.contains(text)
            {
                return Probe::fail(json!(out.trim()), format!("`{cmd}` printed no {text:?}"))
                    .with(diag);
            }
            if let Some(pattern) = s(p, "stdout_regex") {
                match regex::Regex::new(pattern) {
                    Ok(re) if re.is_match(&out) => {}
                    Ok(_) => {
                        return Probe::fail(
                            json!(out.trim()),
                            format!("`{cmd}` output does not match /{pattern}/"),
                        )
                        .with(diag);
                    }
                    Err(e) => {
                        return Probe::fail(Value::Null, format!("bad regex {pattern:?}: {e}"));
                    }
                }
            }
            Probe::pass(json!(excerpt(out.trim())), format!("`{cmd}` exited 0"))
        }
        Err(e) => Probe::fail(Value::Null, format!("`{cmd}`: {e}")),
    }
}

fn file(p: &Value) -> Probe {
    let Some(path) = s(p, "path") else {
        return Probe::fail(Value::Null, "file check without a path");
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Probe::fail(Value::Null, format!("cannot read {path}: {e}")),
    };
    let found = text.trim();
    if let Some(want) = p.get("equals").filter(|v| !v.is_null()) {
        let want = want
            .as_str()
            .map_or_else(|| want.to_string(), str::to_string);
        if found != want.trim() {
            return Probe::fail(
                json!(excerpt(found)),
                format!("{path} holds {:?}, expected {want:?}", excerpt(found)),
            );
        }
    }
    if let Some(want) = s(p, "contains")
        && !text.contains(want)
    {
        return Probe::fail(
            json!(excerpt(found)),
            format!("{path} does not contain {want:?}"),
        );
    }
    Probe::pass(
        json!(excerpt(found)),
        format!("{path} holds {:?}", excerpt(found)),
    )
}

fn grpc(p: &Value, timeout: Duration) -> Probe {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Some(address) = s(p, "address") else {
        return Probe::fail(Value::Null, "grpc check without an address");
    };
    let service = s(p, "service").unwrap_or("").to_string();
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Probe::fail(Value::Null, format!("cannot start a runtime: {e}")),
    };
    let result: Result<i32, String> = rt.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(|e| format!("grpc.health.v1.Health/Check: {}", e.message()))?;
        Ok(reply.into_inner().status)
    });
    match result {
        Ok(status) => {
            let name = ServingStatus::try_from(status)
                .map_or("UNKNOWN".to_string(), |s| s.as_str_name().to_string());
            if status == ServingStatus::Serving as i32 {
                Probe::pass(json!(name), format!("{address} reports SERVING"))
            } else {
                Probe::fail(json!(name), format!("{address} reports {name}"))
            }
        }
        Err(e) => Probe::fail(Value::Null, e.clone()).with(json!({"error": e})),
    }
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
