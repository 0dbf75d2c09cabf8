//! A load generator for the end-to-end tests: paced HTTP/1.1 GETs at apps on 127.0.0.1, one
//! fixed rate per target, so canary analysis has traffic to judge.
//!
//! Inputs: [`Target`]s (a name such as the host `h1`, a port on 127.0.0.1, a path), a rate per
//! target, a duration and [`LoadOptions`] (the defaults suit the sample app).
//! Outputs: a [`LoadReport`] per target: answers by status (2xx, 5xx, other), connection errors
//! and timeouts, requests started late, and latency percentiles.
//!
//! Pacing is open loop: the k-th request of a target is due at `start + k / rate` whatever
//! happened to the ones before, and a few worker threads per target take the due requests in
//! turn, so a slow app gets the same offered load as a fast one (up to the workers' count) and a
//! down app just counts connection errors at the same pace. Everything is bounded: the duration,
//! a hard count of requests per target, each request's time and size, and the joins in
//! [`Load::stop`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most requests sent to one target, whatever the rate and duration.
pub const MAX_REQUESTS_PER_TARGET: u64 = 200_000;
/// The longest a load may run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most workers (requests in flight) per target.
pub const MAX_IN_FLIGHT: usize = 64;
/// The longest answer read; the rest is not waited for.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// How long an idle worker sleeps at most before looking at the stop flag again.
const POLL: Duration = Duration::from_millis(20);
/// A request started this long after it was due counts as late.
const LATE_AFTER: Duration = Duration::from_millis(50);

/// One app to load: GETs of `http://127.0.0.1:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the report calls it (the host, e.g. `h1`).
    pub name: String,
    /// The app's port on 127.0.0.1.
    pub port: u16,
    /// The path requested, with its leading `/` (a query string may follow).
    pub path: String,
}

impl Target {
    /// `name` served on 127.0.0.1:`port` at `path`.
    pub fn new(name: &str, port: u16, path: &str) -> Target {
        assert!(
            path.starts_with('/'),
            "target {name}: path {path:?} lacks its leading /"
        );
        assert!(
            !path.contains(|c: char| c.is_whitespace() || c.is_control()),
            "target {name}: path {path:?} holds whitespace"
        );
        Target {
            name: name.to_string(),
            port,
            path: path.to_string(),
        }
    }
}

/// The knobs of a load beside its rate and duration.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests in flight per target at most (its worker threads). Needs to be at least
    /// rate × latency for the rate to be kept; 1 to [`MAX_IN_FLIGHT`].
    pub in_flight: usize,
    /// The connect timeout, and the whole request's deadline after it.
    pub connect_timeout: Duration,
    /// The deadline of one request from connected to its answer read.
    pub request_timeout: Duration,
    /// The most requests per target (also capped by rate × duration and by
    /// [`MAX_REQUESTS_PER_TARGET`]).
    pub max_requests: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            in_flight: 16,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            max_requests: MAX_REQUESTS_PER_TARGET,
        }
    }
}

/// What one target's workers recorded so far.
#[derive(Debug, Default, Clone)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    failed: u64,
    late: u64,
    latencies_ms: Vec<f64>,
    last_failure: Option<String>,
}

/// A running load; [`Load::stop`] ends it and reports. Dropping it stops the workers too.
#[derive(Debug)]
pub struct Load {
    targets: Vec<Target>,
    tallies: Vec<Arc<Mutex<Tally>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    started: Instant,
    join_within: Duration,
}

/// The shared schedule of one target's workers.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    end: Instant,
    interval: Duration,
    max: u64,
    next: AtomicU64,
}

impl Schedule {
    /// The next request's due time, or none when the schedule is over.
    /// Past the end nothing starts, even a request that was due before it (a target too slow
    /// for its workers would otherwise be loaded past the duration).
    fn take(&self) -> Option<Instant> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if k >= self.max || Instant::now() >= self.end {
            return None;
        }
        let due = self.start + self.interval.mul_f64(k as f64);
        (due < self.end).then_some(due)
    }
}

impl Load {
    /// Starts loading every target at `rate_per_target` requests/s for `duration`, with the
    /// default [`LoadOptions`].
    pub fn start(targets: Vec<Target>, rate_per_target: f64, duration: Duration) -> Load {
        Self::start_with(targets, rate_per_target, duration, &LoadOptions::default())
    }

    /// As [`Load::start`] with `options`.
    pub fn start_with(
        targets: Vec<Target>,
        rate_per_target: f64,
        duration: Duration,
        options: &LoadOptions,
    ) -> Load {
        assert!(
            rate_per_target.is_finite() && rate_per_target > 0.0 && rate_per_target <= 10_000.0,
            "rate per target {rate_per_target}/s: must be above 0 and at most 10000"
        );
        assert!(
            duration <= MAX_DURATION,
            "load duration {duration:?}: at most {MAX_DURATION:?}"
        );
        assert!(
            (1..=MAX_IN_FLIGHT).contains(&options.in_flight),
            "in flight {}: must be 1 to {MAX_IN_FLIGHT}",
            options.in_flight
        );
        let start = Instant::now();
        let by_duration = (rate_per_target * duration.as_secs_f64()).ceil() as u64;
        let max = by_duration
            .min(options.max_requests)
            .min(MAX_REQUESTS_PER_TARGET);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tallies = Vec::new();
        let mut workers = Vec::new();
        for target in &targets {
            let tally = Arc::new(Mutex::new(Tally::default()));
            let schedule = Arc::new(Schedule {
                start,
                end: start + duration,
                interval: Duration::from_secs_f64(1.0 / rate_per_target),
                max,
                next: AtomicU64::new(0),
            });
            for i in 0..options.in_flight {
                let worker = Worker {
                    target: target.clone(),
                    schedule: Arc::clone(&schedule),
                    tally: Arc::clone(&tally),
                    stop: Arc::clone(&stop),
                    connect_timeout: options.connect_timeout,
                    request_timeout: options.request_timeout,
                };
                let handle = std::thread::Builder::new()
                    .name(format!("load-{}-{i}", target.name))
                    .stack_size(256 * 1024)
                    .spawn(move || worker.run())
                    .expect("spawn a load worker");
                workers.push(handle);
            }
            tallies.push(tally);
        }
        Load {
            targets,
            tallies,
            stop,
            workers,
            started: start,
            // A worker is at most one request (connect + request timeouts) past the flag.
            join_within: options.connect_timeout + options.request_timeout + Duration::from_secs(2),
        }
    }

    /// Whether every worker is done (the duration or the request count is used up).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Waits (at most `timeout`) until the load has run its course, then stops it and reports.
    pub fn wait(self, timeout: Duration) -> LoadReport {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        self.stop()
    }

    /// Stops now (requests in flight finish or time out) and reports what was recorded. Waits
    /// for the workers for a bounded time; a worker still stuck then is left behind, counted
    /// in [`LoadReport::unjoined`].
    pub fn stop(mut self) -> LoadReport {
        let unjoined = self.halt();
        let elapsed = self.started.elapsed();
        let targets = self
            .targets
            .iter()
            .zip(&self.tallies)
            .map(|(t, tally)| {
                let tally = tally
                    .lock()
                    .map_or_else(|e| e.into_inner().clone(), |t| t.clone());
                TargetReport::new(&t.name, tally)
            })
            .collect();
        LoadReport {
            targets,
            elapsed,
            unjoined,
        }
    }

    /// Raises the stop flag and joins the workers within `join_within`; returns how many were
    /// still running then.
    fn halt(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.join_within;
        while Instant::now() < deadline && !self.workers.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done, stuck): (Vec<_>, Vec<_>) =
            self.workers.drain(..).partition(JoinHandle::is_finished);
        for handle in done {
            let _ = handle.join();
        }
        stuck.len()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.halt();
        }
    }
}

/// One worker thread of one target.
struct Worker {
    target: Target,
    schedule: Arc<Schedule>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// How one request ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// An answer with this status.
    Status(u16),
    /// No answer: refused, reset, timed out, or not HTTP.
    Failed(String),
}

impl Worker {
    fn run(self) {
        while let Some(due) = self.schedule.take() {
            if !self.sleep_until(due) {
                return;
            }
            let late = Instant::now().saturating_duration_since(due) > LATE_AFTER;
            let sent = Instant::now();
            let outcome = self.get();
            let took = sent.elapsed();
            let mut tally = match self.tally.lock() {
                Ok(t) => t,
                Err(e) => e.into_inner(),
            };
            tally.late += u64::from(late);
            match outcome {
                Outcome::Status(code) => {
                    *tally.by_status.entry(code).or_default() += 1;
                    tally.latencies_ms.push(took.as_secs_f64() * 1000.0);
                }
                Outcome::Failed(why) => {
                    tally.failed += 1;
                    tally.last_failure = Some(why);
                }
            }
        }
    }

    /// Sleeps until `due` in short slices; false when stopped first.
    fn sleep_until(&self, due: Instant) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            std::thread::sleep((due - now).min(POLL));
        }
    }

    /// One GET over a fresh connection (`Connection: close`), read to its end.
    fn get(&self) -> Outcome {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.target.port));
        let mut stream = match TcpStream::connect_timeout(&addr, self.connect_timeout) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(format!("connect to {addr}: {e}")),
        };
        let deadline = Instant::now() + self.request_timeout;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rampart-tests-load\r\nConnection: close\r\n\r\n",
            self.target.path
        );
        let sent = stream
            .set_write_timeout(Some(self.request_timeout))
            .and_then(|()| stream.write_all(request.as_bytes()));
        if let Err(e) = sent {
            return Outcome::Failed(format!("send to {addr}: {e}"));
        }
        let timed_out = || {
            Outcome::Failed(format!(
                "no full answer from {addr} within {:?}",
                self.request_timeout
            ))
        };
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        while answer.len() < MAX_ANSWER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return timed_out();
            }
            if let Err(e) = stream.set_read_timeout(Some(left)) {
                return Outcome::Failed(format!("read from {addr}: {e}"));
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A read timeout is WouldBlock on Linux, TimedOut elsewhere.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return timed_out();
                }
                Err(e) => return Outcome::Failed(format!("read from {addr}: {e}")),
            }
        }
        match parse_status(&answer) {
            Some(code) => Outcome::Status(code),
            None => Outcome::Failed(format!(
                "not an HTTP answer from {addr}: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(80)])
            )),
        }
    }
}

/// The status code of an answer's status line (`HTTP/1.x NNN ...`).
fn parse_status(answer: &[u8]) -> Option<u16> {
    let line_end = answer.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&answer[..line_end]).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// What a load recorded, per target in the order given.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// One per target.
    pub targets: Vec<TargetReport>,
    /// From start to stop.
    pub elapsed: Duration,
    /// Workers still stuck when the report was made (0 unless an app hung past every timeout).
    pub unjoined: usize,
}

impl LoadReport {
    /// The report of the target named `name`; panics listing the names when there is none.
    pub fn target(&self, name: &str) -> &TargetReport {
        self.targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
                panic!("no load target {name:?} (targets: {names:?})")
            })
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "load over {:.1?}", self.elapsed)?;
        if self.unjoined > 0 {
            write!(f, " ({} workers left stuck)", self.unjoined)?;
        }
        for t in &self.targets {
            write!(f, "\n  {t}")?;
        }
        Ok(())
    }
}

/// One target's part of a [`LoadReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    /// The target's name.
    pub name: String,
    /// Answers by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with a 5xx status.
    pub server_errors: u64,
    /// Answers with any other status (1xx, 3xx, 4xx).
    pub other_status: u64,
    /// Requests without an answer: connection refused or reset, timeouts, garbage.
    pub failed: u64,
    /// Requests started more than 50 ms after they were due (every worker was busy).
    pub late: u64,
    /// The last failure's description, if any.
    pub last_failure: Option<String>,
    /// Every answered request's latency in ms, ascending.
    pub latencies_ms: Vec<f64>,
}

impl TargetReport {
    fn new(name: &str, tally: Tally) -> TargetReport {
        let count = |range: std::ops::RangeInclusive<u16>| -> u64 {
            tally
                .by_status
                .iter()
                .filter(|(c, _)| range.contains(c))
                .map(|(_, n)| n)
                .sum()
        };
        let ok = count(200..=299);
        let server_errors = count(500..=599);
        let answered: u64 = tally.by_status.values().sum();
        let mut latencies_ms = tally.latencies_ms;
        latencies_ms.sort_by(f64::total_cmp);
        TargetReport {
            name: name.to_string(),
            ok,
            server_errors,
            other_status: answered - ok - server_errors,
            by_status: tally.by_status,
            failed: tally.failed,
            late: tally.late,
            last_failure: tally.last_failure,
            latencies_ms,
        }
    }

    /// Requests answered with any status.
    pub fn answered(&self) -> u64 {
        self.ok + self.server_errors + self.other_status
    }

    /// Requests sent (answered or failed).
    pub fn sent(&self) -> u64 {
        self.answered() + self.failed
    }

    /// The share of answered requests that got a 5xx (0 when none was answered).
    pub fn server_error_ratio(&self) -> f64 {
        match self.answered() {
            0 => 0.0,
            n => self.server_errors as f64 / n as f64,
        }
    }

    /// The `q`-quantile (0 to 1) of the answered requests' latencies in ms, nearest rank; none
    /// without answers.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        percentile(&self.latencies_ms, q)
    }

    /// The median latency in ms.
    pub fn p50_ms(&self) -> Option<f64> {
        self.percentile_ms(0.50)
    }

    /// The 95th percentile latency in ms.
    pub fn p95_ms(&self) -> Option<f64> {
        self.percentile_ms(0.95)
    }

    /// The 99th percentile latency in ms.
    pub fn p99_ms(&self) -> Option<f64> {
        self.percentile_ms(0.99)
    }
}

impl fmt::Display for TargetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        write!(
            f,
            "{}: sent {}, 2xx {}, 5xx {} ({:.2} %), other {}, failed {}, late {}; ms p50 {} p95 {} p99 {}",
            self.name,
            self.sent(),
            self.ok,
            self.server_errors,
            self.server_error_ratio() * 100.0,
            self.other_status,
            self.failed,
            self.late,
            ms(self.p50_ms()),
            ms(self.p95_ms()),
            ms(self.p99_ms()),
        )?;
        if let Some(why) = &self.last_failure {
            write!(f, "; last failure: {why}")?;
        }
        Ok(())
    }
}

/// The nearest-rank `q`-quantile of `sorted` (ascending): the smallest value with at least
/// `q` of the values at or below it.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// The longest a test server runs, whatever its test does.
    const SERVER_LIFETIME: Duration = Duration::from_secs(60);

    /// A tiny HTTP server on 127.0.0.1: `/ok` → 200, `/fail` → 500, `/missing` → 404,
    /// `/slow` → 200 after 100 ms, `/every4` → every fourth request 503, `/garbage` → not HTTP,
    /// `/hang` → no answer for 10 s. Stops when dropped.
    struct TestServer {
        port: u16,
        stop: Arc<AtomicBool>,
        accepted: Arc<AtomicU64>,
    }

    impl TestServer {
        fn start() -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let stop = Arc::new(AtomicBool::new(false));
            let accepted = Arc::new(AtomicU64::new(0));
            let (flag, count) = (Arc::clone(&stop), Arc::clone(&accepted));
            std::thread::spawn(move || {
                let until = Instant::now() + SERVER_LIFETIME;
                let every4 = Arc::new(AtomicU64::new(0));
                while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            let (every4, flag) = (Arc::clone(&every4), Arc::clone(&flag));
                            std::thread::spawn(move || answer(stream, &every4, &flag));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
            TestServer {
                port,
                stop,
                accepted,
            }
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn answer(stream: TcpStream, every4: &AtomicU64, stop: &AtomicBool) {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        for _ in 0..100 {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let code = match path.as_str() {
            "/ok" => 200,
            "/fail" => 500,
            "/slow" => {
                std::thread::sleep(Duration::from_millis(100));
                200
            }
            "/every4" => {
                if every4.fetch_add(1, Ordering::Relaxed) % 4 == 3 {
                    503
                } else {
                    200
                }
            }
            "/garbage" => {
                let _ = (&stream).write_all(b"hello\n");
                return;
            }
            "/hang" => {
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            _ => 404,
        };
        let _ = write!(
            &stream,
            "HTTP/1.1 {code} X\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n"
        );
    }

    /// A port nothing listens on (bound once, then released).
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn paces_each_target_at_its_rate_and_sorts_answers_by_status() {
        let server = TestServer::start();
        let targets = vec![
            Target::new("good", server.port, "/ok"),
            Target::new("bad", server.port, "/fail"),
            Target::new("flaky", server.port, "/every4"),
            Target::new("lost", server.port, "/missing?x=1"),
        ];
        let load = Load::start(targets, 40.0, Duration::from_secs(1));
        let report = load.wait(Duration::from_secs(10));
        println!("{report}");
        assert_eq!(report.unjoined, 0);
        for t in &report.targets {
            // 40/s for 1 s: exactly the 40 due requests, none failed.
            assert_eq!(t.sent(), 40, "{t}");
            assert_eq!(t.failed, 0, "{t}");
            assert_eq!(t.latencies_ms.len(), 40, "{t}");
        }
        let good = report.target("good");
        assert_eq!((good.ok, good.server_errors, good.other_status), (40, 0, 0));
        assert_eq!(good.by_status, BTreeMap::from([(200, 40)]));
        let bad = report.target("bad");
        assert_eq!((bad.ok, bad.server_errors), (0, 40));
        assert_eq!(bad.server_error_ratio(), 1.0);
        let flaky = report.target("flaky");
        assert_eq!((flaky.ok, flaky.server_errors), (30, 10), "{flaky}");
        assert_eq!(flaky.server_error_ratio(), 0.25);
        let lost = report.target("lost");
        assert_eq!((lost.ok, lost.other_status), (0, 40));
        assert_eq!(lost.by_status, BTreeMap::from([(404, 40)]));
        // Paced, not bursted: 40 requests at 40/s take about a second.
        assert!(
            report.elapsed >= Duration::from_millis(950),
            "{:?}",
            report.elapsed
        );
        assert_eq!(server.accepted.load(Ordering::Relaxed), 160);
    }

    #[test]
    fn a_down_target_counts_connection_errors_at_the_same_pace() {
        let server = TestServer::start();
        let down = closed_port();
        let targets = vec![
            Target::new("down", down, "/ok"),
            Target::new("up", server.port, "/ok"),
        ];
        let started = Instant::now();
        let report =
            Load::start(targets, 20.0, Duration::from_millis(500)).wait(Duration::from_secs(10));
        println!("{report}");
        let d = report.target("down");
        assert_eq!((d.sent(), d.failed, d.answered()), (10, 10, 0), "{d}");
        assert!(
            d.last_failure
                .as_deref()
                .is_some_and(|f| f.contains("connect to")),
            "{d}"
        );
        assert_eq!(d.p95_ms(), None);
        assert_eq!(report.target("up").ok, 10);
        assert!(started.elapsed() >= Duration::from_millis(450));
    }

    #[test]
    fn latencies_are_measured_and_enough_workers_keep_the_rate() {
        let server = TestServer::start();
        // 50/s with 100 ms each needs 5 in flight; the default 16 keep the pace.
        let report = Load::start(
            vec![
                Target::new("slow", server.port, "/slow"),
                Target::new("fast", server.port, "/ok"),
            ],
            50.0,
            Duration::from_secs(1),
        )
        .wait(Duration::from_secs(10));
        println!("{report}");
        let slow = report.target("slow");
        assert_eq!(slow.ok, 50, "{slow}");
        assert!(slow.p50_ms().unwrap() >= 100.0, "{slow}");
        assert!(slow.p99_ms().unwrap() < 1000.0, "{slow}");
        assert!(slow.late <= 2, "{slow}");
        let fast = report.target("fast");
        assert!(fast.p95_ms().unwrap() < 100.0, "{fast}");
        assert!(fast.p95_ms() <= fast.p99_ms());

        // One worker cannot: it falls behind and its requests start late.
        let options = LoadOptions {
            in_flight: 1,
            ..LoadOptions::default()
        };
        let report = Load::start_with(
            vec![Target::new("slow", server.port, "/slow")],
            50.0,
            Duration::from_millis(500),
            &options,
        )
        .wait(Duration::from_secs(10));
        let slow = report.target("slow");
        assert!(slow.sent() <= 6, "{slow}");
        assert!(slow.late >= 3, "{slow}");
    }

    #[test]
    fn stop_ends_a_long_load_early_and_the_request_cap_holds() {
        let server = TestServer::start();
        let load = Load::start(
            vec![Target::new("ok", server.port, "/ok")],
            100.0,
            Duration::from_secs(600),
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(!load.is_finished());
        let asked = Instant::now();
        let report = load.stop();
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        let ok = report.target("ok");
        assert!((20..=40).contains(&ok.sent()), "{ok}");

        let options = LoadOptions {
            max_requests: 7,
            ..LoadOptions::default()
        };
        let report = Load::start_with(
            vec![Target::new("ok", server.port, "/ok")],
            1000.0,
            Duration::from_secs(60),
            &options,
        )
        .wait(Duration::from_secs(10));
        assert_eq!(report.target("ok").sent(), 7);
    }

    #[test]
    fn hangs_time_out_and_garbage_is_a_failure() {
        let server = TestServer::start();
        let options = LoadOptions {
            request_timeout: Duration::from_millis(300),
            ..LoadOptions::default()
        };
        let started = Instant::now();
        let report = Load::start_with(
            vec![
                Target::new("hang", server.port, "/hang"),
                Target::new("garbage", server.port, "/garbage"),
            ],
            10.0,
            Duration::from_millis(300),
            &options,
        )
        .wait(Duration::from_secs(10));
        println!("{report}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(report.unjoined, 0);
        let hang = report.target("hang");
        assert_eq!((hang.failed, hang.answered()), (3, 0), "{hang}");
        assert!(
            hang.last_failure
                .as_deref()
                .is_some_and(|f| f.contains("within")),
            "{hang}"
        );
        let garbage = report.target("garbage");
        assert_eq!((garbage.failed, garbage.answered()), (3, 0), "{garbage}");
        assert!(
            garbage
                .last_failure
                .as_deref()
                .is_some_and(|f| f.contains("not an HTTP answer"))
        );
    }

    #[test]
    fn percentiles_are_nearest_rank_and_status_lines_parse() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);

        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
