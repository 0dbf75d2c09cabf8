//! Controller CPU per canary analysis evaluation: [`eval::evaluate`] of the default checks
//! (`error_rate`, `latency_p95`) over an in-memory [`Source`], so the number is the
//! controller's own work — host lookups, pooling, the judge, the JSON detail and the audit of
//! each query — without Prometheus's answer time or the HTTP hop. The in-memory source records
//! each query in the audit as the Prometheus adapter does (query text and bounded result), so
//! the audit's cost is included. Also timed: the detail's encoding into the evaluation's event
//! (`detail.to_string()`, as the runner does) and one fast-path look.
//!
//! Run: `cargo bench -p rampart-controller --bench analysis_eval`. Each row is the median (and
//! p90) over 101 batches timed with `std::time::Instant`, a batch lasting ≥ 1 ms.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rampart_canary::judge::{Counts, ErrorRateCheck, FastPathCheck, LatencyCheck};
use rampart_canary::stats::alpha_per_metric;
use rampart_canary::window::window_limits;
use rampart_controller::analysis::config::{
    AnalysisConfig, Check, CheckKind, MaxWindow, ProbeConfig, SourceConfig,
};
use rampart_controller::analysis::eval::{self, StageHosts};
use rampart_controller::analysis::source::{AUDIT_MAX_ENTRIES, Audit, Source, series_audit};
use serde_json::{Value, json};

#[path = "../../crates/rampart-canary/benches/support/timing.rs"]
mod timing;

/// A batch lasts at least this long.
const BATCH_AT_LEAST: Duration = Duration::from_millis(1);

/// Median and p90 ns per call of `f`.
fn time_ns<T>(f: impl FnMut() -> T) -> (f64, f64) {
    timing::time_ns(BATCH_AT_LEAST, 1 << 20, f)
}

/// What Prometheus would answer, per host, already fetched: over the window, and over the
/// same hosts' window before the upgrade (asked with an end before `cutoff`).
struct Memory {
    counts: BTreeMap<String, Counts>,
    latency: BTreeMap<String, Vec<f64>>,
    past_counts: BTreeMap<String, Counts>,
    past_latency: BTreeMap<String, Vec<f64>>,
    cutoff: SystemTime,
}

fn host_regex(hosts: &[String]) -> String {
    hosts.join("|")
}

impl Source for Memory {
    fn counts(
        &self,
        hosts: &[String],
        end: SystemTime,
        window: Duration,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Counts>, String> {
        let table = if end < self.cutoff {
            &self.past_counts
        } else {
            &self.counts
        };
        let m: BTreeMap<String, Counts> = hosts
            .iter()
            .filter_map(|h| table.get(h).map(|c| (h.clone(), *c)))
            .collect();
        let at = end
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // The adapter's two instant queries, each with its by-host result.
        for (code, pick) in [("", false), (",code=~\"5..\"", true)] {
            let q = format!(
                "sum by (host) (increase(http_requests_total{{host=~\"{}\",job=\"app\"{code}}}[{}s]))",
                host_regex(hosts),
                window.as_secs()
            );
            let result: serde_json::Map<String, Value> = m
                .iter()
                .take(AUDIT_MAX_ENTRIES)
                .map(|(h, c)| {
                    (
                        h.clone(),
                        json!(if pick { c.errors } else { c.total } as f64),
                    )
                })
                .collect();
            audit
                .queries
                .push(json!({ "query": q, "at": at, "result": result }));
        }
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
        let table = if end < self.cutoff {
            &self.past_latency
        } else {
            &self.latency
        };
        let m: BTreeMap<String, Vec<f64>> = hosts
            .iter()
            .filter_map(|h| table.get(h).map(|v| (h.clone(), v.clone())))
            .collect();
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        };
        let q = format!(
            "histogram_quantile({quantile}, sum by (host, le) (rate(http_request_duration_seconds_bucket{{host=~\"{}\",job=\"app\"}}[15s])))",
            host_regex(hosts)
        );
        let summary = series_audit(&m);
        audit.queries.push(json!({
            "query": q,
            "at": { "start": unix(start), "end": unix(end), "step": 15.0 },
            "result": summary,
        }));
        Ok(m)
    }

    fn down(&self, _hosts: &[String], _audit: &mut Audit) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    fn custom(
        &self,
        _template: &str,
        _canary: &[String],
        _baseline: &[String],
        _window: Duration,
        _end: SystemTime,
        _audit: &mut Audit,
    ) -> Result<Value, String> {
        Ok(Value::Null)
    }
}

/// Log-normal p95 samples around `median` ms (SplitMix64 stream, Box-Muller).
fn samples(n: usize, median: f64, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-300), next());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            median * (0.3 * z).exp()
        })
        .collect()
}

/// The controller's default analysis: `error_rate` and `latency_p95`, α 0.05 split in two.
fn config() -> AnalysisConfig {
    let alpha = alpha_per_metric(0.05, 2);
    AnalysisConfig {
        interval: Duration::from_secs(30),
        warmup: Duration::from_secs(30),
        max_window: MaxWindow::Times(2.0),
        alpha: 0.05,
        fast_path_interval: Duration::from_secs(5),
        fast_path: FastPathCheck::default(),
        checks: vec![
            Check {
                name: "error_rate".into(),
                kind: CheckKind::ErrorRate(ErrorRateCheck {
                    alpha,
                    ..ErrorRateCheck::default()
                }),
                limits: window_limits(),
            },
            Check {
                name: "latency_p95".into(),
                kind: CheckKind::Latency {
                    quantile: 0.95,
                    check: LatencyCheck {
                        alpha,
                        ..LatencyCheck::default()
                    },
                },
                limits: window_limits(),
            },
        ],
        // The evaluation reads its source through `Source`; this table only names one.
        source: SourceConfig::Probe(ProbeConfig {
            urls: vec!["http://127.0.0.1:8080/".into()],
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
            step: Duration::from_secs(15),
        }),
    }
}

/// `canary` hosts against `baseline` hosts (0: the canary's own past), `steps` latency
/// samples and 100 requests/s each, 25 minutes into the window.
fn world(canary: usize, baseline: usize, steps: usize) -> (Memory, StageHosts) {
    let name = |i: usize| format!("web-{i:03}.prod.example.net");
    let (mut counts, mut latency) = (BTreeMap::new(), BTreeMap::new());
    let (mut past_counts, mut past_latency) = (BTreeMap::new(), BTreeMap::new());
    for i in 0..canary + baseline {
        let c = |errors| Counts {
            errors,
            total: 150_000,
        };
        counts.insert(name(i), c(30 + i as u64));
        latency.insert(name(i), samples(steps, 45.0, i as u64 + 1));
        past_counts.insert(name(i), c(28 + i as u64));
        past_latency.insert(name(i), samples(steps, 45.0, i as u64 + 10_001));
    }
    let now = SystemTime::now();
    let hosts = StageHosts {
        canary: (0..canary).map(name).collect(),
        baseline: (canary..canary + baseline).map(name).collect(),
        wave: (0..canary).map(name).collect(),
        wave_started: now - Duration::from_secs(1600),
        window_opened: now - Duration::from_secs(1500),
    };
    let memory = Memory {
        counts,
        latency,
        past_counts,
        past_latency,
        cutoff: hosts.window_opened,
    };
    (memory, hosts)
}

fn main() {
    let cfg = config();
    let step = Duration::from_secs(15);
    println!("## CPU per evaluation: the controller's eval::evaluate over an in-memory source");
    println!(
        "{:<36} {:>13} {:>11} {:>13} {:>11} {:>11}",
        "stage (100 req/s per host)",
        "evaluate ns",
        "p90 ns",
        "+ encode ns",
        "detail B",
        "fast path"
    );
    let stages = [
        ("1 vs 5 hosts, 100 steps", 1, 5, 100),
        ("3 vs 3 hosts, 100 steps", 3, 3, 100),
        ("3 vs own past, 100 steps", 3, 0, 100),
        ("10 vs 90 hosts, 20 steps", 10, 90, 20),
        ("10 vs 90 hosts, 100 steps", 10, 90, 100),
    ];
    for (what, c, b, steps) in stages {
        let (src, hosts) = world(c, b, steps);
        let now = SystemTime::now();
        let results = eval::evaluate(&cfg, &src, &hosts, step, now);
        for r in &results {
            assert!(
                r.detail.get("p_value").is_some(),
                "{what}: {} gave no test: {}",
                r.check,
                r.reason
            );
        }
        let bytes: usize = results.iter().map(|r| r.detail.to_string().len()).sum();
        let (median, p90) = time_ns(|| eval::evaluate(&cfg, &src, &hosts, step, now));
        let (encoded, _) = time_ns(|| {
            let r = eval::evaluate(&cfg, &src, &hosts, step, now);
            r.iter().map(|r| r.detail.to_string().len()).sum::<usize>()
        });
        let (fast, _) =
            time_ns(|| eval::fast_path(&cfg, &src, &hosts, Duration::from_secs(30), now).is_some());
        println!("{what:<36} {median:>13.0} {p90:>11.0} {encoded:>13.0} {bytes:>11} {fast:>11.0}");
    }
}
