//! A canary analysis without Prometheus: the agents of one stage's canary and baseline hosts
//! sample the same URLs (`[analysis.probe]`, rendered per host) with the agent's `Probe` RPC for
//! the stage's warm-up and longest window, and [`ProbeSource`] answers the [`Source`] calls from
//! the samples they stream back.
//!
//! Inputs: the probe configuration, the stage's hosts, their inventory variables and agent
//! channels. Outputs, per host: requests and errors (status ≥ 500, or no answer) in a window;
//! latency quantiles per non-overlapping step (answers only: a request that got no answer has
//! no latency); the hosts whose every request of the last [`DOWN_FOR`] got no answer.
//!
//! What it cannot measure is absent, never zero: a host whose stream could not be opened,
//! broke off or sent a bad sample, or that sent nothing yet, is missing from the answers (the
//! evaluator makes a missing canary host an Error). A broken stream is not reopened. Hosts are
//! sampled only from the stage's start: the last stage's "historical baseline" (the wave's own
//! window before its upgrade) is empty, so its checks fall back to their thresholds.
//!
//! Samples carry the host's clock: the hosts' and the controller's clocks are assumed in step
//! (NTP), as a Prometheus source assumes of Prometheus's. Memory is bounded: at most
//! [`MAX_SAMPLES_PER_HOST`] per host, and [`MAX_SAMPLES_TOTAL`] over the stage; past that the
//! oldest go. Dropping the source (the stage's analysis ended) ends every stream, and the
//! agents stop probing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rampart_canary::judge::Counts;
use rampart_playbook::template::{Templar, from_json};
use rampart_proto::v1 as pb;
use serde_json::{Value, json};

use super::config::ProbeConfig;
use super::source::{AUDIT_MAX_ENTRIES, Audit, DOWN_FOR, Source, series_audit};
use crate::agents::Agents;
use crate::config::Environment;

/// The most samples kept per host (about 5 MB); past it the oldest go.
pub const MAX_SAMPLES_PER_HOST: usize = 200_000;
/// The most samples kept over a stage's hosts; each host keeps at least
/// [`MIN_SAMPLES_PER_HOST`].
pub const MAX_SAMPLES_TOTAL: usize = 4_000_000;
/// What each host keeps at least, however many hosts a stage has.
pub const MIN_SAMPLES_PER_HOST: usize = 10_000;
/// The longest probe an agent accepts.
pub const MAX_PROBE_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest batch message taken from an agent.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The most samples in one batch (the agent's own limit).
const MAX_BATCH_SAMPLES: usize = 10_000;
/// The longest latency a sample may carry (the agent's longest timeout, and slack).
const MAX_LATENCY_US: u32 = 60_000_000;
/// How far a sample's time may be from the controller's.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);
/// The most latency steps one call computes.
const MAX_STEPS: u64 = 100_000;

/// One request's outcome, as kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it started, in ms since the Unix epoch (the host's clock).
    pub at_ms: u64,
    /// Its latency in ms.
    pub latency_ms: f64,
    /// Its HTTP status; 0: no answer.
    pub status: u16,
}

impl Sample {
    fn answered(&self) -> bool {
        self.status != 0
    }

    fn error(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// One host's samples, and why it stopped being measured.
#[derive(Debug, Default)]
struct HostSamples {
    samples: VecDeque<Sample>,
    failed: Option<String>,
}

impl HostSamples {
    /// Whether the host is measured: its stream is alive and sent something.
    fn measured(&self) -> bool {
        self.failed.is_none() && !self.samples.is_empty()
    }
}

/// The samples of a stage's hosts, and the pure arithmetic over them.
#[derive(Debug)]
struct Samples {
    hosts: BTreeMap<String, HostSamples>,
    cap: usize,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

impl Samples {
    fn new(hosts: &[String]) -> Samples {
        let cap = (MAX_SAMPLES_TOTAL / hosts.len().max(1))
            .clamp(MIN_SAMPLES_PER_HOST, MAX_SAMPLES_PER_HOST);
        Samples {
            hosts: hosts
                .iter()
                .map(|h| (h.clone(), HostSamples::default()))
                .collect(),
            cap,
        }
    }

    fn push(&mut self, host: &str, new: impl IntoIterator<Item = Sample>) {
        let cap = self.cap;
        let Some(h) = self.hosts.get_mut(host) else {
            return;
        };
        for s in new {
            if h.samples.len() >= cap {
                h.samples.pop_front();
            }
            h.samples.push_back(s);
        }
    }

    fn fail(&mut self, host: &str, why: String) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.failed.get_or_insert(why);
        }
    }

    fn measured<'a>(
        &'a self,
        hosts: &'a [String],
    ) -> impl Iterator<Item = (&'a str, &'a HostSamples)> {
        hosts.iter().filter_map(|h| {
            self.hosts
                .get(h)
                .filter(|s| s.measured())
                .map(|s| (h.as_str(), s))
        })
    }

    /// Requests and errors per measured host in `(end - window, end]`.
    fn counts(&self, hosts: &[String], end_ms: u64, window_ms: u64) -> BTreeMap<String, Counts> {
        let from = end_ms.saturating_sub(window_ms);
        self.measured(hosts)
            .map(|(h, s)| {
                let mut c = Counts {
                    errors: 0,
                    total: 0,
                };
                for x in s
                    .samples
                    .iter()
                    .filter(|x| x.at_ms > from && x.at_ms <= end_ms)
                {
                    c.total += 1;
                    c.errors += u64::from(x.error());
                }
                (h.to_string(), c)
            })
            .collect()
    }

    /// Per measured host, the `q` quantile of the answers' latencies of each step `(t - step,
    /// t]`, for `t = start, start + step, …` up to `end`; steps without answers are left out
    /// (and a host without any step).
    fn latency(
        &self,
        hosts: &[String],
        start_ms: u64,
        end_ms: u64,
        step_ms: u64,
        q: f64,
    ) -> BTreeMap<String, Vec<f64>> {
        let mut out = BTreeMap::new();
        if end_ms < start_ms || step_ms == 0 {
            return out;
        }
        let steps = ((end_ms - start_ms) / step_ms).min(MAX_STEPS - 1);
        let last = start_ms + steps * step_ms;
        let first = start_ms.saturating_sub(step_ms);
        for (h, s) in self.measured(hosts) {
            let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); steps as usize + 1];
            for x in s.samples.iter().filter(|x| x.answered()) {
                if x.at_ms <= first || x.at_ms > last {
                    continue;
                }
                // The step whose (t - step, t] holds it: ceil((at - start) / step), at least 0.
                let k = if x.at_ms <= start_ms {
                    0
                } else {
                    (x.at_ms - start_ms).div_ceil(step_ms)
                };
                if let Some(b) = buckets.get_mut(k as usize) {
                    b.push(x.latency_ms);
                }
            }
            let points: Vec<f64> = buckets
                .iter_mut()
                .filter_map(|b| {
                    b.sort_by(f64::total_cmp);
                    quantile(b, q)
                })
                .collect();
            if !points.is_empty() {
                out.insert(h.to_string(), points);
            }
        }
        out
    }

    /// The measured hosts with at least one sample in `(now - DOWN_FOR, now]`, all without an
    /// answer.
    fn down(&self, hosts: &[String], now_ms: u64) -> Vec<String> {
        let from = now_ms.saturating_sub(DOWN_FOR.as_millis() as u64);
        self.measured(hosts)
            .filter(|(_, s)| {
                let mut recent = s
                    .samples
                    .iter()
                    .filter(|x| x.at_ms > from && x.at_ms <= now_ms)
                    .peekable();
                recent.peek().is_some() && recent.all(|x| !x.answered())
            })
            .map(|(h, _)| h.to_string())
            .collect()
    }

    /// The hosts asked about that are not measured, and why (bounded), for the audit.
    fn unmeasured(&self, hosts: &[String]) -> Value {
        let mut o = serde_json::Map::new();
        for h in hosts.iter().take(AUDIT_MAX_ENTRIES) {
            let why = match self.hosts.get(h) {
                None => "not probed in this stage".to_string(),
                Some(s) => match &s.failed {
                    Some(e) => e.clone(),
                    None if s.samples.is_empty() => "no sample yet".to_string(),
                    None => continue,
                },
            };
            o.insert(h.clone(), Value::String(why));
        }
        Value::Object(o)
    }
}

/// The probe source of one stage: one `Probe` stream per host, their samples in memory.
#[derive(Debug)]
pub struct ProbeSource {
    step: Duration,
    samples: Arc<Mutex<Samples>>,
    /// The streams' tasks, aborted on drop (which ends the streams, and the agents' probing).
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for ProbeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Checks a rendered probe URL as the agent will: http or https, a host, no whitespace or
/// control character, at most [`super::config::MAX_PROBE_URL_BYTES`].
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > super::config::MAX_PROBE_URL_BYTES {
        return Err(format!(
            "a URL of {} bytes: at most {}",
            url.len(),
            super::config::MAX_PROBE_URL_BYTES
        ));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{url:?} holds whitespace or a control character"));
    }
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{url:?}: give an http:// or https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

/// `cfg`'s URL templates rendered with `host`'s inventory variables (and
/// `inventory_hostname`), each checked.
pub fn render_urls(
    cfg: &ProbeConfig,
    host: &str,
    vars: &serde_json::Map<String, Value>,
) -> Result<Vec<String>, String> {
    let mut vars = vars.clone();
    vars.entry("inventory_hostname")
        .or_insert_with(|| Value::String(host.to_string()));
    let scope = from_json(&Value::Object(vars));
    let templar = Templar::new();
    cfg.urls
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let what = format!("analysis.probe.urls[{i}] for host {host}");
            let url = match templar.render_str(t, &scope) {
                Ok(Value::String(s)) => s,
                Ok(other) => return Err(format!("{what}: {t:?} gives {other}, not a URL")),
                Err(e) => return Err(format!("{what}: {t:?}: {e}")),
            };
            check_url(&url).map_err(|e| format!("{what}: {e}"))?;
            Ok(url)
        })
        .collect()
}

/// A batch from an agent, checked: its size, each sample's URL index, status, latency and time.
fn check_batch(b: &pb::ProbeBatch, urls: usize, now_ms: u64) -> Result<Vec<Sample>, String> {
    if b.samples.len() > MAX_BATCH_SAMPLES {
        return Err(format!(
            "a batch of {} samples (at most {MAX_BATCH_SAMPLES})",
            b.samples.len()
        ));
    }
    let skew = MAX_CLOCK_SKEW.as_millis() as u64;
    b.samples
        .iter()
        .map(|s| {
            if s.url_index as usize >= urls
                || s.status > 999
                || s.latency_us > MAX_LATENCY_US
                || s.at_unix_ms.abs_diff(now_ms) > skew
            {
                return Err(format!(
                    "a bad sample (url_index {}, status {}, latency_us {}, at_unix_ms {})",
                    s.url_index, s.status, s.latency_us, s.at_unix_ms
                ));
            }
            Ok(Sample {
                at_ms: s.at_unix_ms,
                latency_ms: f64::from(s.latency_us) / 1000.0,
                status: s.status as u16,
            })
        })
        .collect()
}

impl ProbeSource {
    /// A source over `hosts` that opens no stream: samples come from [`ProbeSource::record`].
    pub fn detached(step: Duration, hosts: &[String]) -> ProbeSource {
        ProbeSource {
            step,
            samples: Arc::new(Mutex::new(Samples::new(hosts))),
            tasks: Vec::new(),
        }
    }

    /// Starts sampling `hosts` (the stage's canary and baseline) for `duration` (at most a
    /// day): renders and checks every host's URLs first (a bad one is the analysis' Error), then
    /// opens one stream per host, each connection tried for `connect_within`. Needs a tokio
    /// runtime.
    pub fn start(
        cfg: &ProbeConfig,
        agents: &Arc<Agents>,
        env: &Environment,
        hosts: &[String],
        duration: Duration,
        connect_within: Duration,
    ) -> Result<ProbeSource, String> {
        let none = serde_json::Map::new();
        let mut plans = Vec::with_capacity(hosts.len());
        for h in hosts {
            let urls = render_urls(cfg, h, env.host_vars.get(h).unwrap_or(&none))?;
            plans.push((h.clone(), env.agent_addr(h), urls));
        }
        let mut source = ProbeSource::detached(cfg.step, hosts);
        let duration = duration.clamp(Duration::from_secs(1), MAX_PROBE_DURATION);
        for (host, addr, urls) in plans {
            let req = pb::ProbeRequest {
                urls,
                interval_ms: cfg.interval.as_millis() as u32,
                duration_ms: duration.as_millis() as u64,
                timeout_ms: cfg.timeout.as_millis() as u32,
            };
            let task = tokio::spawn(follow(
                agents.clone(),
                host,
                addr,
                req,
                source.samples.clone(),
                duration,
                connect_within,
            ));
            source.tasks.push(task.abort_handle());
        }
        Ok(source)
    }

    /// Adds samples of `host` (a host of the stage; others are ignored).
    pub fn record(&self, host: &str, samples: impl IntoIterator<Item = Sample>) {
        self.lock().push(host, samples);
    }

    /// Marks `host` as no longer measured.
    pub fn fail(&self, host: &str, why: String) {
        self.lock().fail(host, why);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Follows one host's `Probe` stream into `samples` until it ends, breaks, sends a bad batch,
/// or `duration` (and a grace) has passed; a failure marks the host unmeasured.
async fn follow(
    agents: Arc<Agents>,
    host: String,
    addr: String,
    req: pb::ProbeRequest,
    samples: Arc<Mutex<Samples>>,
    duration: Duration,
    connect_within: Duration,
) {
    let fail = |why: String| {
        tracing::warn!(%host, %addr, "canary probe: {why}");
        samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail(&host, why);
    };
    let deadline = Instant::now() + connect_within + duration + Duration::from_secs(10);
    let urls = req.urls.len();
    let client = match agents.client_within(&host, &addr, connect_within).await {
        Ok(c) => c.max_decoding_message_size(MAX_BATCH_BYTES),
        Err(e) => return fail(format!("cannot reach the agent: {e}")),
    };
    let mut client = client;
    let opened = tokio::time::timeout_at(deadline.into(), client.probe(req)).await;
    let mut stream = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            return fail(format!(
                "the agent refused Probe: {}",
                crate::agents::call_error(&host, &addr, &s)
            ));
        }
        Err(_) => return fail("the agent did not answer Probe".into()),
    };
    // About one batch a second; bounded in count and by the deadline.
    for _ in 0..(duration.as_secs() * 4 + 100) {
        match tokio::time::timeout_at(deadline.into(), stream.message()).await {
            Ok(Ok(Some(b))) => match check_batch(&b, urls, unix_ms(SystemTime::now())) {
                Ok(new) => samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(&host, new),
                Err(e) => return fail(format!("the agent sent {e}")),
            },
            // The probe's duration is past: its samples stay.
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(s)) => {
                return fail(format!(
                    "the probe stream broke: {}",
                    crate::agents::call_error(&host, &addr, &s)
                ));
            }
        }
    }
}

fn counts_json(m: &BTreeMap<String, Counts>) -> Value {
    Value::Object(
        m.iter()
            .take(AUDIT_MAX_ENTRIES)
            .map(|(h, c)| (h.clone(), json!({ "total": c.total, "errors": c.errors })))
            .collect(),
    )
}

impl Source for ProbeSource {
    fn counts(
        &self,
        hosts: &[String],
        end: SystemTime,
        window: Duration,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Counts>, String> {
        let s = self.lock();
        let m = s.counts(hosts, unix_ms(end), window.as_millis() as u64);
        audit.push(
            "probe requests and errors (status ≥ 500 or no answer) per host",
            json!({ "end": unix_ms(end) as f64 / 1000.0, "window": window.as_secs_f64() }),
            Ok(json!({ "hosts": counts_json(&m), "unmeasured": s.unmeasured(hosts) })),
        );
        Ok(m)
    }

    fn latency(
        &self,
        hosts: &[String],
        start: SystemTime,
        end: SystemTime,
        quantile: f64,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Vec<f64>>, String> {
        let s = self.lock();
        let step_ms = self.step.as_millis().max(1) as u64;
        let m = s.latency(hosts, unix_ms(start), unix_ms(end), step_ms, quantile);
        let summary = series_audit(&m);
        audit.push(
            &format!("probe latency quantile {quantile} (ms) per host and step"),
            json!({
                "start": unix_ms(start) as f64 / 1000.0,
                "end": unix_ms(end) as f64 / 1000.0,
                "step": self.step.as_secs_f64(),
            }),
            Ok(json!({ "hosts": summary, "unmeasured": s.unmeasured(hosts) })),
        );
        Ok(m)
    }

    fn down(&self, hosts: &[String], audit: &mut Audit) -> Result<Vec<String>, String> {
        let now = unix_ms(SystemTime::now());
        let s = self.lock();
        let down = s.down(hosts, now);
        audit.push(
            "probe hosts whose every request got no answer",
            json!({ "end": now as f64 / 1000.0, "window": DOWN_FOR.as_secs_f64() }),
            Ok(json!({ "down": down })),
        );
        Ok(down)
    }

    fn custom(
        &self,
        template: &str,
        _canary: &[String],
        _baseline: &[String],
        _window: Duration,
        end: SystemTime,
        audit: &mut Audit,
    ) -> Result<Value, String> {
        let msg = "a query of your own needs [analysis.prometheus]: the probe source measures only requests, errors and latencies";
        audit.push(template, json!(unix_ms(end) as f64 / 1000.0), Err(msg));
        Err(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    fn sample(at_ms: u64, latency_ms: f64, status: u16) -> Sample {
        Sample {
            at_ms,
            latency_ms,
            status,
        }
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn counts_take_the_window_and_count_5xx_and_no_answer_as_errors() {
        let s = ProbeSource::detached(Duration::from_secs(5), &hosts(&["a", "b", "c", "d"]));
        // a: 10 requests, one a second from T0 + 1 s: a 503, a connection failure, a 404.
        s.record(
            "a",
            (1..=10).map(|i| {
                let status = match i {
                    3 => 503,
                    4 => 0,
                    5 => 404,
                    _ => 200,
                };
                sample(T0 + i * 1000, 10.0, status)
            }),
        );
        s.record("b", [sample(T0 + 2000, 5.0, 200)]);
        // c sent samples, then its stream broke: no longer measured. d sent nothing.
        s.record("c", [sample(T0 + 2000, 5.0, 200)]);
        s.fail("c", "the probe stream broke".into());
        let end = SystemTime::UNIX_EPOCH + Duration::from_millis(T0 + 10_000);
        let mut audit = Audit::default();
        let all = hosts(&["a", "b", "c", "d", "nobody"]);
        let m = s
            .counts(&all, end, Duration::from_secs(10), &mut audit)
            .unwrap();
        assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            m["a"],
            Counts {
                errors: 2,
                total: 10
            }
        );
        // (end - 5 s, end]: requests 6..=10, none an error; b's is older.
        let m = s
            .counts(&all, end, Duration::from_secs(5), &mut audit)
            .unwrap();
        assert_eq!(
            m["a"],
            Counts {
                errors: 0,
                total: 5
            }
        );
        assert_eq!(
            m["b"],
            Counts {
                errors: 0,
                total: 0
            }
        );
        let q = &audit.queries[0];
        assert_eq!(q["result"]["unmeasured"]["c"], "the probe stream broke");
        assert_eq!(q["result"]["unmeasured"]["d"], "no sample yet");
        assert_eq!(
            q["result"]["unmeasured"]["nobody"],
            "not probed in this stage"
        );
        // A team's own query cannot be answered.
        let e = s
            .custom("up", &all, &[], Duration::from_secs(1), end, &mut audit)
            .unwrap_err();
        assert!(e.contains("[analysis.prometheus]"), "{e}");
    }

    #[test]
    fn latency_is_one_quantile_per_step_without_answers_left_out() {
        let s = ProbeSource::detached(Duration::from_secs(5), &hosts(&["a", "b"]));
        // Step (T0, T0 + 5 s]: 1..=10 ms (p50 5.5, p95 9.55); (T0 + 5 s, T0 + 10 s]: nothing;
        // (T0 + 10 s, T0 + 15 s]: 100 ms and a failure (no latency); out of range: T0 itself
        // (the previous step) and T0 + 16 s (a step not ended by `end`).
        s.record("a", (1..=10).map(|i| sample(T0 + i * 400, i as f64, 200)));
        s.record(
            "a",
            [
                sample(T0 + 12_000, 100.0, 500),
                sample(T0 + 13_000, 30_000.0, 0),
                sample(T0, 999.0, 200),
                sample(T0 + 16_000, 999.0, 200),
            ],
        );
        // b: only failures.
        s.record("b", [sample(T0 + 1000, 2000.0, 0)]);
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let mut audit = Audit::default();
        let m = s
            .latency(
                &hosts(&["a", "b"]),
                at(T0 + 5000),
                at(T0 + 17_000),
                0.5,
                &mut audit,
            )
            .unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(m["a"], vec![5.5, 100.0]);
        let m = s
            .latency(
                &hosts(&["a"]),
                at(T0 + 5000),
                at(T0 + 15_000),
                0.95,
                &mut audit,
            )
            .unwrap();
        assert!((m["a"][0] - 9.55).abs() < 1e-9, "{m:?}");
        assert_eq!(m["a"].len(), 2);
        // An empty range.
        let m = s
            .latency(
                &hosts(&["a"]),
                at(T0 + 5000),
                at(T0 + 4000),
                0.5,
                &mut audit,
            )
            .unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn down_is_every_recent_request_unanswered_and_memory_is_bounded() {
        let mut s = Samples::new(&hosts(&["a", "b", "c"]));
        let now = T0 + 60_000;
        // a: answered long ago, nothing but failures in the last 10 s.
        s.push("a", [sample(T0, 1.0, 200)]);
        s.push("a", (1..=5).map(|i| sample(now - i * 1000, 2000.0, 0)));
        // b: failures, and one answer (a 500 is an answer).
        s.push(
            "b",
            [sample(now - 1000, 2000.0, 0), sample(now - 500, 3.0, 500)],
        );
        // c: nothing recent.
        s.push("c", [sample(T0, 2000.0, 0)]);
        assert_eq!(s.down(&hosts(&["a", "b", "c"]), now), ["a"]);
        // The oldest go past the cap.
        let cap = s.cap;
        assert_eq!(cap, MAX_SAMPLES_PER_HOST);
        s.push("c", (0..cap as u64 + 5).map(|i| sample(T0 + i, 1.0, 200)));
        let c = &s.hosts["c"].samples;
        assert_eq!(c.len(), cap);
        assert_eq!(c.front().unwrap().at_ms, T0 + 5);
        // Many hosts share the total.
        let many: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
        assert_eq!(Samples::new(&many).cap, MAX_SAMPLES_TOTAL / 100);
        let most: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        assert_eq!(Samples::new(&most).cap, MIN_SAMPLES_PER_HOST);
    }

    #[test]
    fn batches_from_agents_are_checked() {
        let now = T0;
        let ok = pb::ProbeSample {
            url_index: 1,
            at_unix_ms: now - 500,
            latency_us: 12_500,
            status: 200,
        };
        let got = check_batch(&pb::ProbeBatch { samples: vec![ok] }, 2, now).unwrap();
        assert_eq!(got, [sample(now - 500, 12.5, 200)]);
        for bad in [
            pb::ProbeSample { url_index: 2, ..ok },
            pb::ProbeSample { status: 1000, ..ok },
            pb::ProbeSample {
                latency_us: u32::MAX,
                ..ok
            },
            pb::ProbeSample {
                at_unix_ms: 0,
                ..ok
            },
        ] {
            let e = check_batch(&pb::ProbeBatch { samples: vec![bad] }, 2, now).unwrap_err();
            assert!(e.contains("bad sample"), "{e}");
        }
        let big = pb::ProbeBatch {
            samples: vec![ok; MAX_BATCH_SAMPLES + 1],
        };
        assert!(check_batch(&big, 2, now).is_err());
    }

    #[test]
    fn urls_are_rendered_per_host_and_checked() {
        let cfg = ProbeConfig {
            urls: vec![
                "http://127.0.0.1:{{ app_port }}/".into(),
                "{{ backend_url }}/health?host={{ inventory_hostname }}".into(),
            ],
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
            step: Duration::from_secs(5),
        };
        let vars = json!({ "app_port": 8080, "backend_url": "http://10.0.0.7:9000" });
        let urls = render_urls(&cfg, "h1", vars.as_object().unwrap()).unwrap();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:8080/",
                "http://10.0.0.7:9000/health?host=h1"
            ]
        );
        let e = render_urls(&cfg, "h2", json!({ "app_port": 1 }).as_object().unwrap()).unwrap_err();
        assert!(e.contains("urls[1] for host h2"), "{e}");
        let e = render_urls(
            &cfg,
            "h3",
            json!({ "app_port": 1, "backend_url": "ftp://x" })
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }
}
