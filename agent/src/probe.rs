//! HTTP sampling for a canary analysis without a metrics stack (`Probe`): the controller asks
//! the agents of the canary and the baseline hosts to request the same URLs at the same pace,
//! and judges the latencies and statuses they stream back.
//!
//! Inputs: a [`ProbePlan`], checked at the edge from a `ProbeRequest` ([`ProbePlan::try_from`]:
//! 1–16 http(s) URLs of at most 2 KiB, an interval of 50 ms–60 s, a duration of 1 ms–24 h, a
//! timeout of 1 ms–30 s). Output: a stream of `ProbeBatch`es, about one a second, of
//! `ProbeSample`s (URL index, start time, latency, status; 0 = no answer).
//!
//! Each URL is requested on a thread of its own with the health suite's HTTP client
//! ([`rampart_health::probes::http_client`]), one request at a time: a request slower than the
//! interval delays the next one of its URL instead of piling up. A body is read up to
//! [`BODY_LIMIT`] and discarded. The work stops at the duration or within
//! [`STOP_CHECK`] (plus a request in flight, bounded by its timeout) of the client going away.
//! The agent runs at most [`MAX_PROBES`] at once. Nothing on the host is changed.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rampart_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::Status;

use crate::error::InvalidProbe;

/// The most URLs of one probe.
pub const MAX_URLS: usize = 16;
/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// The shortest and longest interval between two requests of one URL.
pub const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(60));
/// The longest probe.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The longest timeout of one request.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of a response body read (the rest is left unread, the connection dropped).
pub const BODY_LIMIT: u64 = 64 * 1024;
/// How many probes one agent runs at once.
pub const MAX_PROBES: usize = 8;
/// How often a batch is sent (when it holds samples).
pub const BATCH_EVERY: Duration = Duration::from_secs(1);
/// The most samples in one batch (a fuller batch is sent early).
pub const MAX_BATCH: usize = 10_000;
/// How often a waiting URL thread looks whether it must stop.
pub const STOP_CHECK: Duration = Duration::from_millis(100);
/// Samples buffered between the URL threads and the batcher before the threads wait.
const SAMPLE_BUFFER: usize = 4096;
/// Batches buffered for a slow client before the batcher waits.
const BATCH_BUFFER: usize = 4;

/// One probe, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    /// The URLs, in the request's order.
    pub urls: Vec<String>,
    /// Time between two requests of one URL.
    pub interval: Duration,
    /// How long to sample.
    pub duration: Duration,
    /// One request's timeout.
    pub timeout: Duration,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidProbe {
    InvalidProbe {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks one URL: http or https, a host, no whitespace or control characters, at most
/// [`MAX_URL_BYTES`].
fn check_url(i: usize, url: &str) -> Result<(), InvalidProbe> {
    let field = format!("urls[{i}]");
    if url.len() > MAX_URL_BYTES {
        return Err(invalid(
            field,
            format!("{} bytes; at most {MAX_URL_BYTES}", url.len()),
        ));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "holds whitespace or a control character"));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| invalid(&field, format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(
                field,
                format!("{url:?}: give an http:// or https:// URL"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(field, format!("{url:?} names no host")));
    }
    Ok(())
}

impl TryFrom<&pb::ProbeRequest> for ProbePlan {
    type Error = InvalidProbe;

    fn try_from(req: &pb::ProbeRequest) -> Result<Self, InvalidProbe> {
        if req.urls.is_empty() || req.urls.len() > MAX_URLS {
            return Err(invalid(
                "urls",
                format!("{} given; give 1 to {MAX_URLS}", req.urls.len()),
            ));
        }
        for (i, u) in req.urls.iter().enumerate() {
            check_url(i, u)?;
        }
        let interval = Duration::from_millis(u64::from(req.interval_ms));
        if interval < INTERVAL_RANGE.0 || interval > INTERVAL_RANGE.1 {
            return Err(invalid(
                "interval_ms",
                format!(
                    "{}: give {} to {}",
                    req.interval_ms,
                    INTERVAL_RANGE.0.as_millis(),
                    INTERVAL_RANGE.1.as_millis()
                ),
            ));
        }
        let duration = Duration::from_millis(req.duration_ms);
        if duration.is_zero() || duration > MAX_DURATION {
            return Err(invalid(
                "duration_ms",
                format!(
                    "{}: give 1 to {} (a day)",
                    req.duration_ms,
                    MAX_DURATION.as_millis()
                ),
            ));
        }
        let timeout = Duration::from_millis(u64::from(req.timeout_ms));
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(invalid(
                "timeout_ms",
                format!("{}: give 1 to {}", req.timeout_ms, MAX_TIMEOUT.as_millis()),
            ));
        }
        Ok(ProbePlan {
            urls: req.urls.clone(),
            interval,
            duration,
            timeout,
        })
    }
}

/// A stream of batches, as the service returns it.
pub type BatchReceiver = mpsc::Receiver<Result<pb::ProbeBatch, Status>>;

/// What every thread of one probe shares: the stop flag, and the concurrency permit, released
/// when the last of them is done.
struct Shared {
    stop: AtomicBool,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Raises the stop flag when the batcher ends, however it ends.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts `plan`: one thread per URL and a batcher task; `permit` is held until every one of
/// them is done. Must be called within a tokio runtime.
pub fn start(
    plan: ProbePlan,
    permit: Option<OwnedSemaphorePermit>,
) -> std::io::Result<BatchReceiver> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        _permit: permit,
    });
    let deadline = Instant::now() + plan.duration;
    let (samples_tx, samples_rx) = mpsc::channel(SAMPLE_BUFFER);
    for (i, url) in plan.urls.iter().enumerate() {
        let (mine, tx, url) = (shared.clone(), samples_tx.clone(), url.clone());
        let (interval, timeout) = (plan.interval, plan.timeout);
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{i}"))
            .spawn(move || sample_url(i as u32, &url, interval, timeout, deadline, &mine, &tx));
        if let Err(e) = spawned {
            shared.stop.store(true, Ordering::SeqCst);
            return Err(e);
        }
    }
    drop(samples_tx);
    let (out, rx) = mpsc::channel(BATCH_BUFFER);
    tokio::spawn(batch(samples_rx, out, StopOnDrop(shared)));
    Ok(rx)
}

/// Requests `url` every `interval` until `deadline` or the stop flag. Bounded: at most one
/// request per interval over the duration, and every wait in [`STOP_CHECK`] slices.
fn sample_url(
    index: u32,
    url: &str,
    interval: Duration,
    timeout: Duration,
    deadline: Instant,
    shared: &Shared,
    tx: &mpsc::Sender<pb::ProbeSample>,
) {
    let client = rampart_health::probes::http_client(timeout, true);
    let rounds = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        / interval.as_millis().max(1)
        + 1;
    let mut next = Instant::now();
    for _ in 0..rounds {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        let sample = request(&client, index, url);
        if tx.blocking_send(sample).is_err() {
            return; // the batcher is gone
        }
        next += interval;
        // Waits in slices, so that a client going away stops the thread soon.
        let ticks = interval.as_millis() / STOP_CHECK.as_millis() + 2;
        for _ in 0..ticks {
            let now = Instant::now();
            if now >= next || now >= deadline || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep((next - now).min(STOP_CHECK).min(deadline - now));
        }
        // A request slower than the interval: the next one starts now, not in a burst.
        next = next.max(Instant::now());
    }
}

/// One GET of `url`: its latency to the end of the (bounded) body and its status, 0 when no
/// answer came (or its body broke off).
fn request(client: &ureq::Agent, index: u32, url: &str) -> pb::ProbeSample {
    let at_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let started = Instant::now();
    let status = match client.get(url).call() {
        Ok(mut response) => {
            let status = u32::from(response.status().as_u16());
            let mut body = response.body_mut().as_reader().take(BODY_LIMIT);
            match std::io::copy(&mut body, &mut std::io::sink()) {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    };
    let latency_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    pb::ProbeSample {
        url_index: index,
        at_unix_ms,
        latency_us,
        status,
    }
}

/// Gathers samples into batches: one every [`BATCH_EVERY`] (when it holds any), or earlier at
/// [`MAX_BATCH`]. Ends when every URL thread is done (after sending what is left) or when the
/// client goes away; `_stop` then stops the threads.
async fn batch(
    mut samples: mpsc::Receiver<pb::ProbeSample>,
    out: mpsc::Sender<Result<pb::ProbeBatch, Status>>,
    _stop: StopOnDrop,
) {
    let mut pending: Vec<pb::ProbeSample> = Vec::new();
    let mut tick = tokio::time::interval(BATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush = tokio::select! {
            s = samples.recv() => match s {
                Some(s) => {
                    pending.push(s);
                    pending.len() >= MAX_BATCH
                }
                None => {
                    if !pending.is_empty() {
                        let _ = out.send(Ok(pb::ProbeBatch { samples: pending })).await;
                    }
                    return;
                }
            },
            _ = tick.tick() => !pending.is_empty(),
            () = out.closed() => return,
        };
        if flush {
            let batch = pb::ProbeBatch {
                samples: std::mem::take(&mut pending),
            };
            if out.send(Ok(batch)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(urls: &[&str], interval_ms: u32, duration_ms: u64, timeout_ms: u32) -> pb::ProbeRequest {
        pb::ProbeRequest {
            urls: urls.iter().map(|u| (*u).to_string()).collect(),
            interval_ms,
            duration_ms,
            timeout_ms,
        }
    }

    #[test]
    fn the_edge_refuses_bad_requests_naming_the_field() {
        let ok = ProbePlan::try_from(&req(&["http://127.0.0.1:8080/"], 200, 60_000, 2000)).unwrap();
        assert_eq!(ok.interval, Duration::from_millis(200));
        assert_eq!(ok.timeout, Duration::from_secs(2));
        let long = format!("http://127.0.0.1/{}", "a".repeat(MAX_URL_BYTES));
        let many: Vec<&str> = vec!["http://127.0.0.1/"; MAX_URLS + 1];
        let cases: Vec<(pb::ProbeRequest, &str)> = vec![
            (req(&[], 200, 1000, 1000), "urls:"),
            (req(&many, 200, 1000, 1000), "urls:"),
            (req(&["ftp://127.0.0.1/"], 200, 1000, 1000), "urls[0]"),
            (
                req(
                    &["http://127.0.0.1/", "file:///etc/passwd"],
                    200,
                    1000,
                    1000,
                ),
                "urls[1]",
            ),
            (req(&["/relative"], 200, 1000, 1000), "urls[0]"),
            (req(&["http://127.0.0.1/a b"], 200, 1000, 1000), "urls[0]"),
            (req(&["http://127.0.0.1/\n"], 200, 1000, 1000), "urls[0]"),
            (req(&[long.as_str()], 200, 1000, 1000), "urls[0]"),
            (req(&["http://127.0.0.1/"], 49, 1000, 1000), "interval_ms"),
            (
                req(&["http://127.0.0.1/"], 60_001, 1000, 1000),
                "interval_ms",
            ),
            (req(&["http://127.0.0.1/"], 200, 0, 1000), "duration_ms"),
            (
                req(&["http://127.0.0.1/"], 200, 86_400_001, 1000),
                "duration_ms",
            ),
            (req(&["http://127.0.0.1/"], 200, 1000, 0), "timeout_ms"),
            (req(&["http://127.0.0.1/"], 200, 1000, 30_001), "timeout_ms"),
        ];
        for (r, field) in cases {
            let e = ProbePlan::try_from(&r).unwrap_err();
            assert!(e.to_string().contains(field), "{r:?}: {e}");
        }
        // The limits themselves are accepted.
        let max: Vec<&str> = vec!["https://example.invalid/"; MAX_URLS];
        ProbePlan::try_from(&req(&max, 50, 86_400_000, 30_000)).unwrap();
        ProbePlan::try_from(&req(&["http://[::1]:9/"], 60_000, 1, 1)).unwrap();
    }

    /// A server on 127.0.0.1 that answers `200 ok` to every request, for `n` connections.
    fn server(n: usize) -> u16 {
        use std::io::Write as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in l.incoming().take(n) {
                let Ok(mut c) = conn else { return };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                // One request per connection (Connection: close).
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        port
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn samples_answers_and_failures_until_the_duration() {
        let port = server(64);
        // A port nothing listens on: bound, then closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let plan = ProbePlan {
            urls: vec![
                format!("http://127.0.0.1:{port}/"),
                format!("http://127.0.0.1:{closed}/"),
            ],
            interval: Duration::from_millis(100),
            duration: Duration::from_millis(1500),
            timeout: Duration::from_secs(1),
        };
        let mut rx = start(plan, None).unwrap();
        let mut all = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while let Ok(Some(b)) = tokio::time::timeout_at(until.into(), rx.recv()).await {
            all.extend(b.unwrap().samples);
        }
        let ok: Vec<_> = all.iter().filter(|s| s.url_index == 0).collect();
        let down: Vec<_> = all.iter().filter(|s| s.url_index == 1).collect();
        assert!((10..=17).contains(&ok.len()), "{ok:?}");
        assert!(ok.iter().all(|s| s.status == 200), "{ok:?}");
        assert!(
            !down.is_empty() && down.iter().all(|s| s.status == 0),
            "{down:?}"
        );
        assert!(all.iter().all(|s| s.at_unix_ms > 1_600_000_000_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stops_when_the_client_goes_away() {
        let port = server(1000);
        let sem = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        let plan = ProbePlan {
            urls: vec![format!("http://127.0.0.1:{port}/")],
            interval: Duration::from_millis(50),
            duration: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
        };
        let mut rx = start(plan, Some(permit)).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");
        drop(rx);
        // The permit comes back once the batcher and the URL thread have stopped.
        let back = tokio::time::timeout(Duration::from_secs(5), sem.acquire()).await;
        assert!(back.is_ok(), "the probe did not stop");
    }
}
