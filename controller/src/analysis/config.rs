//! An environment's canary analysis configuration: its `stages` and its `[analysis]` table,
//! read once at start into typed values; everything wrong is refused naming the key.
//!
//! ```toml
//! [environments.production]
//! # Cumulative shares of the fleet on the new release at the end of each stage; each stage is
//! # one wave, judged for `analysis` before the next starts (none: only the bake). The last
//! # stage covers every host.
//! stages = [{ hosts = "10%", analysis = "5m" }, { hosts = "50%", analysis = "5m" },
//!           { hosts = "100%", analysis = "10m" }]
//!
//! [environments.production.analysis]
//! interval = "30s"              # between evaluations of the checks (default 30s)
//! warmup = "30s"                # after a wave's last host is healthy, before its window opens
//! max_window = "2x"             # an Inconclusive window extends to this (default twice the
//!                               # stage's; a duration such as "15m" also works), then pauses
//! alpha = 0.05                  # family-wise: split over the statistical checks (Bonferroni)
//! fast_path_interval = "5s"     # the fast path polls this often during the window
//!
//! # Where the measurements come from: exactly one of [analysis.prometheus] and
//! # [analysis.probe].
//! [environments.production.analysis.prometheus]
//! url = "https://prometheus.internal:9090"
//! timeout = "10s"
//! bearer_token_file = "/etc/rampart/prometheus-token"   # optional
//! ca = "/etc/rampart/prometheus-ca.pem"                 # optional
//! host_label = "host"           # the label that holds the inventory host name
//! selector = 'job="shop"'       # extra matchers for every built-in query
//! requests_metric = "http_requests_total"               # counter with a `code` label
//! duration_metric = "http_request_duration_seconds"     # classic histogram
//! step = "15s"                  # per-host latency samples: one per step, non-overlapping
//!
//! # Without Prometheus: the agents of the canary and the baseline hosts request these URLs
//! # during the stage (warm-up and window) and stream each answer's latency and status back.
//! # [environments.production.analysis.probe]
//! # urls = ["http://127.0.0.1:{{ app_port }}/"]   # 1 to 16 Jinja templates, rendered per host
//! #                             # with its inventory variables at the stage's start
//! # interval = "200ms"          # between two requests of one URL on one host (50ms to 60s)
//! # timeout = "2s"              # one request's (1ms to 30s)
//! # step = "5s"                 # per-host latency samples: one per step, non-overlapping
//!
//! [environments.production.analysis.fast_path]
//! max_rate = 0.2                # a canary host at ≥ 20 % errors over ≥ 50 requests: roll back now
//! min_requests = 50
//! baseline_multiple = 10        # ... or at ≥ 10× the baseline's rate, and ≥ 5 % (null: off)
//! baseline_multiple_min_rate = 0.05
//!
//! [[environments.production.analysis.checks]]
//! name = "error_rate"           # built in: error_rate, success_rate, latency_p95,
//!                               # latency_p99, min_requests; any other name needs `query`
//! max_rate = 0.02               # the check's own fields (rampart_canary::judge), e.g.
//!                               # latency: max_ms = 500, max_ratio = 2 (× the baseline),
//! min_requests = 1000           # min_points, min_ratio, max_ms, min_samples, min_shift_ms
//! failure_limit = 0             # Argo Rollouts' counters: count, failure_limit,
//!                               # inconclusive_limit, consecutive_error_limit
//!
//! [[environments.production.analysis.checks]]
//! name = "queue_depth"          # a team's own query: needs [analysis.prometheus]
//! query = 'max(queue_depth{host=~"{{ canary_hosts }}"})'
//! failure = "result > 100"      # Jinja expressions over `result` (a number, or a list)
//! success = "result <= 100"
//! ```
//!
//! Without `checks`, an analysis runs `error_rate` and `latency_p95` with their defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_canary::judge::{ErrorRateCheck, FastPathCheck, LatencyCheck, MeasurementLimits};
use rampart_canary::window::window_limits;
use serde::Deserialize;

/// The longest analysis window, warm-up or interval a configuration may give (a day).
pub const MAX_ANALYSIS_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The most checks one analysis may run.
pub const MAX_CHECKS: usize = 32;
/// The most stages an environment may have.
pub const MAX_STAGES: usize = 64;
/// Default time between evaluations.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default warm-up after a wave before its window opens.
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(30);
/// Default fast-path poll interval.
pub const DEFAULT_FAST_PATH_INTERVAL: Duration = Duration::from_secs(5);
/// Default family-wise significance level, split over the statistical checks.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// Default latency sample step.
pub const DEFAULT_STEP: Duration = Duration::from_secs(15);
/// Default Prometheus request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time between two probe requests of one URL on one host.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Default timeout of one probe request.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default latency sample step of the probes.
pub const DEFAULT_PROBE_STEP: Duration = Duration::from_secs(5);
/// The most probe URLs (the agent's own limit).
pub const MAX_PROBE_URLS: usize = 16;
/// The longest probe URL template.
pub const MAX_PROBE_URL_BYTES: usize = 2048;

/// One stage: the cumulative share of the fleet on the new release at its end, and how long
/// it is judged before the next stage starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// How many hosts, in all, run the new release once the stage's wave is done.
    pub hosts: StageHosts,
    /// Its analysis window; `None`: no analysis, only the environment's bake.
    pub analysis: Option<Duration>,
}

/// A stage's `hosts`: a number or a percentage of the fleet, cumulative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageHosts {
    /// This many hosts in all.
    Count(usize),
    /// This share of the fleet in all, rounded up (at least one host).
    Percent(f64),
}

impl StageHosts {
    fn upgraded(self, total: usize) -> usize {
        match self {
            StageHosts::Count(n) => n.min(total),
            StageHosts::Percent(p) => ((p / 100.0 * total as f64).ceil() as usize).clamp(1, total),
        }
    }
}

/// The wave sizes of `stages` over `total` hosts, and for each wave the stage it belongs to.
/// A stage that adds no host (10 % then 15 % of 6 hosts) is merged into the next one that does:
/// its wave would be empty. The last stage covers every host (checked at load).
pub fn stage_waves(total: usize, stages: &[Stage]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut done = 0;
    for (i, s) in stages.iter().enumerate() {
        let upto = if i + 1 == stages.len() {
            total
        } else {
            s.hosts.upgraded(total)
        };
        if upto > done {
            out.push((upto - done, i));
            done = upto;
        }
    }
    out
}

/// Where an analysis reads its measurements from.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusSource {
    /// Base URL.
    pub url: String,
    /// One request's timeout.
    pub timeout: Duration,
    /// The bearer token's file (read when the client is built, never logged).
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA bundle for https.
    pub ca: Option<PathBuf>,
    /// The label naming the inventory host.
    pub host_label: String,
    /// Extra matchers for the built-in queries (`job="shop"`), possibly empty.
    pub selector: String,
    /// The requests counter (with a `code` label).
    pub requests_metric: String,
    /// The request duration histogram (without `_bucket`).
    pub duration_metric: String,
    /// The latency samples' step (and `rate()` range).
    pub step: Duration,
}

/// The agents' HTTP sampling (`[analysis.probe]`): no metrics stack needed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// The URL templates (Jinja over a host's inventory variables), rendered per host at the
    /// stage's start.
    pub urls: Vec<String>,
    /// Between two requests of one URL on one host.
    pub interval: Duration,
    /// One request's timeout.
    pub timeout: Duration,
    /// The latency samples' step.
    pub step: Duration,
}

/// Where an analysis reads its measurements from: exactly one.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// A Prometheus server.
    Prometheus(PrometheusSource),
    /// The agents' HTTP sampling of the canary and baseline hosts.
    Probe(ProbeConfig),
}

impl SourceConfig {
    /// Its name in `AnalysisStarted.source`.
    pub fn name(&self) -> &'static str {
        match self {
            SourceConfig::Prometheus(_) => "prometheus",
            SourceConfig::Probe(_) => "probe",
        }
    }

    /// The latency samples' step.
    pub fn step(&self) -> Duration {
        match self {
            SourceConfig::Prometheus(p) => p.step,
            SourceConfig::Probe(p) => p.step,
        }
    }
}

/// What one check judges.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// The canary's 5xx share against the baseline's ([`rampart_canary::judge::judge_error_rate`]).
    ErrorRate(ErrorRateCheck),
    /// The canary's p95 (0.95) or p99 (0.99) latency against the baseline's.
    Latency {
        /// The quantile.
        quantile: f64,
        /// The judge's settings.
        check: LatencyCheck,
    },
    /// The canary's non-5xx share is at least `min`, over at least `min_requests`.
    SuccessRate {
        /// The lowest acceptable share (0..1).
        min: f64,
        /// Requests before a verdict; below, Inconclusive.
        min_requests: u64,
    },
    /// The canary served at least `min` requests in the window; below, Inconclusive.
    MinRequests {
        /// The requests needed.
        min: u64,
    },
    /// A query of the team's own with a success and/or failure condition.
    Query {
        /// The PromQL template (`{{ canary_hosts }}`, `{{ baseline_hosts }}`, `{{ window }}`).
        query: String,
        /// The condition for Pass (a Jinja expression over `result`).
        success: Option<String>,
        /// The condition for Fail (wins over success when both hold).
        failure: Option<String>,
    },
}

impl CheckKind {
    /// Whether the check is a statistical test (counts toward Bonferroni).
    pub fn is_statistical(&self) -> bool {
        matches!(self, CheckKind::ErrorRate(_) | CheckKind::Latency { .. })
    }

    /// Whether the check needs a query language (a custom query: Prometheus only).
    pub fn needs_prometheus(&self) -> bool {
        matches!(self, CheckKind::Query { .. })
    }
}

/// One named check and its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Its name, in events and metrics.
    pub name: String,
    /// What it judges.
    pub kind: CheckKind,
    /// Its counters over the window's evaluations.
    pub limits: MeasurementLimits,
}

/// An environment's analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisConfig {
    /// Time between evaluations.
    pub interval: Duration,
    /// Wait after a wave before its window opens.
    pub warmup: Duration,
    /// How far an Inconclusive window extends: a multiple of the stage's window, or fixed.
    pub max_window: MaxWindow,
    /// The family-wise α; each statistical check gets `alpha / n`.
    pub alpha: f64,
    /// The fast path's poll interval.
    pub fast_path_interval: Duration,
    /// The fast path's thresholds.
    pub fast_path: FastPathCheck,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Where measurements come from.
    pub source: SourceConfig,
}

/// How far an Inconclusive window may extend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxWindow {
    /// This multiple of the stage's window (≥ 1).
    Times(f64),
    /// This long, at least the stage's window.
    Fixed(Duration),
}

impl AnalysisConfig {
    /// The configuration one stage runs with: each statistical check's α (already split over
    /// the checks) split again over the stage's looks up to `max_window`
    /// ([`rampart_canary::window::alpha_per_look`]), so the whole window, not each of its
    /// evaluations, keeps the family-wise level.
    pub fn for_stage(&self, max_window: Duration) -> AnalysisConfig {
        let mut c = self.clone();
        let split = |a: f64| rampart_canary::window::alpha_per_look(a, max_window, self.interval);
        for check in &mut c.checks {
            match &mut check.kind {
                CheckKind::ErrorRate(e) => e.alpha = split(e.alpha),
                CheckKind::Latency { check, .. } => check.alpha = split(check.alpha),
                _ => {}
            }
        }
        c
    }

    /// The longest a stage with `window` may run before it is Inconclusive.
    pub fn max_window(&self, window: Duration) -> Duration {
        match self.max_window {
            MaxWindow::Times(k) => window.mul_f64(k),
            MaxWindow::Fixed(d) => d.max(window),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    hosts: toml::Value,
    #[serde(default)]
    analysis: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAnalysis {
    #[serde(default)]
    interval: Option<toml::Value>,
    #[serde(default)]
    warmup: Option<toml::Value>,
    #[serde(default)]
    max_window: Option<toml::Value>,
    #[serde(default)]
    alpha: Option<f64>,
    #[serde(default)]
    fast_path_interval: Option<toml::Value>,
    #[serde(default)]
    fast_path: Option<toml::Table>,
    #[serde(default)]
    checks: Option<Vec<toml::Table>>,
    #[serde(default)]
    prometheus: Option<RawPrometheus>,
    #[serde(default)]
    probe: Option<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    urls: Vec<String>,
    #[serde(default)]
    interval: Option<toml::Value>,
    #[serde(default)]
    timeout: Option<toml::Value>,
    #[serde(default)]
    step: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    url: String,
    #[serde(default)]
    timeout: Option<toml::Value>,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    host_label: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    requests_metric: Option<String>,
    #[serde(default)]
    duration_metric: Option<String>,
    #[serde(default)]
    step: Option<toml::Value>,
}

/// A duration key: a number of seconds, or a string such as `"500ms"`, `"30s"`, `"5m"`,
/// `"1h30m"`; at most [`MAX_ANALYSIS_DURATION`].
pub fn duration(key: &str, v: &toml::Value) -> Result<Duration, String> {
    let d = match v {
        toml::Value::Integer(n) if *n >= 0 => Duration::from_secs(*n as u64),
        toml::Value::Float(f) if f.is_finite() && *f >= 0.0 && *f <= 1e9 => {
            Duration::from_secs_f64(*f)
        }
        toml::Value::String(s) => {
            rampart_prometheus::parse_duration(s).map_err(|e| format!("{key} = {s:?}: {e}"))?
        }
        other => {
            return Err(format!(
                "{key} = {other}: give a duration such as \"30s\", \"5m\" or a number of seconds"
            ));
        }
    };
    if d > MAX_ANALYSIS_DURATION {
        return Err(format!("{key} = {v}: at most 24h"));
    }
    Ok(d)
}

/// Reads `stages` (a list of `{hosts, analysis}` tables).
pub(crate) fn parse_stages(raw: Vec<RawStage>) -> Result<Vec<Stage>, String> {
    if raw.is_empty() {
        return Err(
            "stages is empty: give at least one stage, the last with hosts = \"100%\"".into(),
        );
    }
    if raw.len() > MAX_STAGES {
        return Err(format!(
            "stages has {} entries: at most {MAX_STAGES}",
            raw.len()
        ));
    }
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("stages[{i}]");
        let hosts = match &s.hosts {
            toml::Value::Integer(n) if *n >= 1 => StageHosts::Count(*n as usize),
            toml::Value::String(t) => match t.trim().strip_suffix('%') {
                Some(p) => match p.trim().parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => StageHosts::Percent(p),
                    _ => {
                        return Err(format!(
                            "{key}.hosts = {t:?}: give a percentage in (0, 100], e.g. \"10%\""
                        ));
                    }
                },
                None => match t.trim().parse::<usize>() {
                    Ok(n) if n >= 1 => StageHosts::Count(n),
                    _ => {
                        return Err(format!(
                            "{key}.hosts = {t:?}: give a number of hosts or a percentage"
                        ));
                    }
                },
            },
            other => {
                return Err(format!(
                    "{key}.hosts = {other}: give a number of hosts (≥ 1) or a percentage such as \"25%\""
                ));
            }
        };
        let analysis = match &s.analysis {
            None => None,
            Some(v) => {
                let d = duration(&format!("{key}.analysis"), v)?;
                (!d.is_zero()).then_some(d)
            }
        };
        if let Some(prev) = out.last().map(|p: &Stage| p.hosts) {
            let shrinks = match (prev, hosts) {
                (StageHosts::Count(a), StageHosts::Count(b)) => b < a,
                (StageHosts::Percent(a), StageHosts::Percent(b)) => b < a,
                _ => false,
            };
            if shrinks {
                return Err(format!(
                    "{key}.hosts is smaller than the stage before: stages are cumulative (10%, 25%, 50%, 100%)"
                ));
            }
        }
        out.push(Stage { hosts, analysis });
    }
    if out.last().map(|s| s.hosts) != Some(StageHosts::Percent(100.0)) {
        return Err(
            "the last stage must cover the whole fleet: end stages with { hosts = \"100%\" }"
                .into(),
        );
    }
    Ok(out)
}

/// Reads a deployment's own stages (`DeployRequest.stages`): `HOSTS` or `HOSTS=WINDOW` each
/// (`1=2m`, `25%=5m`, `100%`), with the rules of an environment's `stages`.
pub fn parse_stage_specs(specs: &[String]) -> Result<Vec<Stage>, String> {
    let mut raw = Vec::new();
    for s in specs {
        if s.len() > 64 {
            return Err(format!("stage {:?}…: at most 64 characters", &s[..16]));
        }
        let (hosts, window) = match s.split_once('=') {
            Some((h, w)) => (h.trim(), Some(w.trim())),
            None => (s.trim(), None),
        };
        let hosts = match hosts.parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(hosts.to_string()),
        };
        raw.push(RawStage {
            hosts,
            analysis: window.map(|w| toml::Value::String(w.to_string())),
        });
    }
    parse_stages(raw).map_err(|e| e.replace("stages[", "stage ["))
}

fn known(t: &toml::Table, keys: &[&str], what: &str) -> Result<(), String> {
    if let Some(k) = t.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!(
            "{what}: unknown key {k:?} (known: {})",
            keys.join(", ")
        ));
    }
    Ok(())
}

/// Deserializes `t`'s keys `fields` into `T` (the judge's own config type, defaults for what is
/// missing), through JSON.
fn judge_fields<T: serde::de::DeserializeOwned>(
    t: &toml::Table,
    fields: &[&str],
    what: &str,
) -> Result<T, String> {
    let mut m = serde_json::Map::new();
    for (k, v) in t {
        if fields.contains(&k.as_str()) {
            let j = serde_json::to_value(v).map_err(|e| format!("{what}.{k}: {e}"))?;
            m.insert(k.clone(), j);
        }
    }
    serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| format!("{what}: {e}"))
}

const LIMIT_KEYS: [&str; 4] = [
    "count",
    "failure_limit",
    "inconclusive_limit",
    "consecutive_error_limit",
];
const ERROR_RATE_KEYS: [&str; 7] = [
    "max_rate",
    "guardrail_min_requests",
    "min_requests",
    "min_expected_errors",
    "fisher_below_expected",
    "min_points",
    "min_ratio",
];
const LATENCY_KEYS: [&str; 6] = [
    "max_ms",
    "max_ratio",
    "guardrail_min_samples",
    "min_samples",
    "min_shift_fraction",
    "min_shift_ms",
];

fn check(t: &toml::Table, i: usize, per_check_alpha: f64) -> Result<Check, String> {
    let what = format!("analysis.checks[{i}]");
    let name = match t.get("name") {
        Some(toml::Value::String(n)) if !n.trim().is_empty() && n.len() <= 64 => n.clone(),
        _ => return Err(format!("{what}: give a name (at most 64 characters)")),
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{what}: name {name:?} may hold letters, digits, '_' and '-' only"
        ));
    }
    let what = format!("analysis check {name}");
    let kind_name = match t.get("kind") {
        Some(toml::Value::String(k)) => k.clone(),
        Some(other) => return Err(format!("{what}: kind = {other} is not a string")),
        None if t.contains_key("query") => "query".to_string(),
        None => name.clone(),
    };
    let mut allowed: Vec<&str> = vec!["name", "kind"];
    allowed.extend(LIMIT_KEYS);
    let mut limits = window_limits();
    let kind = match kind_name.as_str() {
        "error_rate" => {
            allowed.extend(ERROR_RATE_KEYS);
            known(t, &allowed, &what)?;
            let mut c: ErrorRateCheck = judge_fields(t, &ERROR_RATE_KEYS, &what)?;
            c.alpha = per_check_alpha;
            c.validate().map_err(|e| format!("{what}: {e}"))?;
            CheckKind::ErrorRate(c)
        }
        "latency_p95" | "latency_p99" => {
            allowed.extend(LATENCY_KEYS);
            known(t, &allowed, &what)?;
            let mut c: LatencyCheck = judge_fields(t, &LATENCY_KEYS, &what)?;
            c.alpha = per_check_alpha;
            c.validate().map_err(|e| format!("{what}: {e}"))?;
            CheckKind::Latency {
                quantile: if kind_name == "latency_p95" {
                    0.95
                } else {
                    0.99
                },
                check: c,
            }
        }
        "success_rate" => {
            allowed.extend(["min", "min_requests"]);
            known(t, &allowed, &what)?;
            let min = match t.get("min") {
                None => 0.99,
                Some(toml::Value::Float(f)) if *f > 0.0 && *f <= 1.0 => *f,
                Some(toml::Value::Integer(1)) => 1.0,
                Some(v) => return Err(format!("{what}: min = {v}: give a share in (0, 1]")),
            };
            CheckKind::SuccessRate {
                min,
                min_requests: count_key(t, "min_requests", 100, &what)?,
            }
        }
        "min_requests" => {
            allowed.push("min");
            known(t, &allowed, &what)?;
            CheckKind::MinRequests {
                min: count_key(t, "min", 100, &what)?,
            }
        }
        "query" => {
            allowed.extend(["query", "success", "failure"]);
            known(t, &allowed, &what)?;
            let text = |k: &str| -> Result<Option<String>, String> {
                match t.get(k) {
                    None => Ok(None),
                    Some(toml::Value::String(s)) if s.len() <= 64 * 1024 => Ok(Some(s.clone())),
                    Some(_) => Err(format!("{what}: {k} must be a string of at most 64 KiB")),
                }
            };
            let query = text("query")?
                .ok_or_else(|| format!("{what}: a check of kind query needs `query`"))?;
            rampart_prometheus::check_template(&query)
                .map_err(|e| format!("{what}: query: {e}"))?;
            let (success, failure) = (text("success")?, text("failure")?);
            if success.is_none() && failure.is_none() {
                return Err(format!(
                    "{what}: give `success` and/or `failure` (e.g. failure = \"result > 100\")"
                ));
            }
            for c in [&success, &failure].into_iter().flatten() {
                super::condition::compile(c).map_err(|e| format!("{what}: {e}"))?;
            }
            // A team's own threshold counts each breach (Argo's rule), not two in a row.
            limits.fail_rule = rampart_canary::judge::FailRule::Each;
            CheckKind::Query {
                query,
                success,
                failure,
            }
        }
        other => {
            return Err(format!(
                "{what}: kind {other:?} is not built in (error_rate, success_rate, latency_p95, latency_p99, min_requests); give `query` for a check of your own"
            ));
        }
    };
    let mut l: MeasurementLimits = judge_fields(t, &LIMIT_KEYS, &what)?;
    if !t.contains_key("count") {
        l.count = limits.count;
    }
    if !t.contains_key("inconclusive_limit") {
        l.inconclusive_limit = limits.inconclusive_limit;
    }
    l.fail_rule = limits.fail_rule;
    l.validate().map_err(|e| format!("{what}: {e}"))?;
    Ok(Check {
        name,
        kind,
        limits: l,
    })
}

fn count_key(t: &toml::Table, key: &str, default: u64, what: &str) -> Result<u64, String> {
    match t.get(key) {
        None => Ok(default),
        Some(toml::Value::Integer(n)) if *n >= 1 => Ok(*n as u64),
        Some(v) => Err(format!("{what}: {key} = {v}: give a whole number ≥ 1")),
    }
}

/// Reads `[analysis]`; `abs` makes a configured path absolute (relative to the config file).
pub(crate) fn parse_analysis(
    raw: RawAnalysis,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<AnalysisConfig, String> {
    let dur = |key: &str, v: &Option<toml::Value>, default: Duration| -> Result<Duration, String> {
        match v {
            Some(v) => duration(&format!("analysis.{key}"), v),
            None => Ok(default),
        }
    };
    let interval = dur("interval", &raw.interval, DEFAULT_INTERVAL)?;
    if interval < Duration::from_millis(100) {
        return Err("analysis.interval is under 100ms: give at least \"1s\"".into());
    }
    let fast_path_interval = dur(
        "fast_path_interval",
        &raw.fast_path_interval,
        DEFAULT_FAST_PATH_INTERVAL,
    )?;
    if fast_path_interval < Duration::from_millis(100) {
        return Err("analysis.fast_path_interval is under 100ms: give at least \"1s\"".into());
    }
    let max_window = match &raw.max_window {
        None => MaxWindow::Times(2.0),
        Some(toml::Value::String(s)) if s.trim().ends_with('x') => {
            match s.trim().trim_end_matches('x').parse::<f64>() {
                Ok(k) if (1.0..=100.0).contains(&k) => MaxWindow::Times(k),
                _ => {
                    return Err(format!(
                        "analysis.max_window = {s:?}: give a multiple from \"1x\" to \"100x\", or a duration"
                    ));
                }
            }
        }
        Some(v) => MaxWindow::Fixed(duration("analysis.max_window", v)?),
    };
    let alpha = raw.alpha.unwrap_or(DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha <= 0.2) {
        return Err(format!(
            "analysis.alpha = {alpha}: give a level in (0, 0.2], e.g. 0.05"
        ));
    }
    let fast_path: FastPathCheck = match &raw.fast_path {
        None => FastPathCheck::default(),
        Some(t) => {
            const KEYS: [&str; 4] = [
                "max_rate",
                "min_requests",
                "baseline_multiple",
                "baseline_multiple_min_rate",
            ];
            known(t, &KEYS, "analysis.fast_path")?;
            judge_fields(t, &KEYS, "analysis.fast_path")?
        }
    };
    fast_path
        .validate()
        .map_err(|e| format!("analysis.fast_path: {e}"))?;
    let tables = match raw.checks {
        Some(c) if c.is_empty() => {
            return Err(
                "analysis.checks is empty: remove it for the defaults, or list checks".into(),
            );
        }
        Some(c) => c,
        None => ["error_rate", "latency_p95"]
            .iter()
            .map(|n| {
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String((*n).into()));
                t
            })
            .collect(),
    };
    if tables.len() > MAX_CHECKS {
        return Err(format!(
            "analysis.checks has {} checks: at most {MAX_CHECKS}",
            tables.len()
        ));
    }
    let statistical = tables
        .iter()
        .filter(|t| {
            let kind = t
                .get("kind")
                .or_else(|| (!t.contains_key("query")).then(|| t.get("name")).flatten())
                .and_then(|v| v.as_str())
                .unwrap_or("");
            matches!(kind, "error_rate" | "latency_p95" | "latency_p99")
        })
        .count();
    let per_check_alpha = rampart_canary::stats::alpha_per_metric(alpha, statistical);
    let mut checks = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let c = check(t, i, per_check_alpha)?;
        if checks.iter().any(|o: &Check| o.name == c.name) {
            return Err(format!(
                "analysis.checks: two checks are named {:?}",
                c.name
            ));
        }
        checks.push(c);
    }
    let prometheus = match raw.prometheus {
        None => None,
        Some(p) => {
            let name_ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 200
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !s.starts_with(|c: char| c.is_ascii_digit())
            };
            let host_label = p.host_label.unwrap_or_else(|| "host".into());
            let requests_metric = p
                .requests_metric
                .unwrap_or_else(|| "http_requests_total".into());
            let duration_metric = p
                .duration_metric
                .unwrap_or_else(|| "http_request_duration_seconds".into());
            for (k, v) in [
                ("host_label", &host_label),
                ("requests_metric", &requests_metric),
                ("duration_metric", &duration_metric),
            ] {
                if !name_ok(v) {
                    return Err(format!(
                        "analysis.prometheus.{k} = {v:?} is not a Prometheus metric or label name"
                    ));
                }
            }
            let selector = p.selector.unwrap_or_default();
            if selector.len() > 4096 || selector.contains(['{', '}']) {
                return Err(
                    "analysis.prometheus.selector: give matchers without braces, e.g. 'job=\"shop\"' (at most 4 KiB)"
                        .into(),
                );
            }
            let step = match &p.step {
                Some(v) => duration("analysis.prometheus.step", v)?,
                None => DEFAULT_STEP,
            };
            if step < Duration::from_secs(1) {
                return Err("analysis.prometheus.step is under 1s: give at least \"1s\" (and at least twice the scrape interval)".into());
            }
            let timeout = match &p.timeout {
                Some(v) => duration("analysis.prometheus.timeout", v)?,
                None => DEFAULT_TIMEOUT,
            };
            let src = PrometheusSource {
                url: p.url,
                timeout,
                bearer_token_file: p.bearer_token_file.as_deref().map(abs),
                ca: p.ca.as_deref().map(abs),
                host_label,
                selector,
                requests_metric,
                duration_metric,
                step,
            };
            // Builds (and so checks) the client now: a bad URL, an unreadable token or CA file
            // is refused at start, not at the first wave.
            super::source::client(&src).map_err(|e| format!("analysis.prometheus: {e}"))?;
            Some(src)
        }
    };
    let probe = raw.probe.map(parse_probe).transpose()?;
    let source = match (prometheus, probe) {
        (Some(p), None) => SourceConfig::Prometheus(p),
        (None, Some(p)) => {
            if let Some(c) = checks.iter().find(|c| c.kind.needs_prometheus()) {
                return Err(format!(
                    "analysis check {}: a query of your own needs [analysis.prometheus]; with [analysis.probe] give only the built-in checks (error_rate, success_rate, latency_p95, latency_p99, min_requests)",
                    c.name
                ));
            }
            SourceConfig::Probe(p)
        }
        (Some(_), Some(_)) => {
            return Err(
                "analysis has both [analysis.prometheus] and [analysis.probe]: give exactly one source of measurements"
                    .into(),
            );
        }
        (None, None) => {
            return Err(
                "analysis needs a source of measurements: add [analysis.prometheus] with its url, or [analysis.probe] with the urls the agents sample"
                    .into(),
            );
        }
    };
    Ok(AnalysisConfig {
        interval,
        warmup: dur("warmup", &raw.warmup, DEFAULT_WARMUP)?,
        max_window,
        alpha,
        fast_path_interval,
        fast_path,
        checks,
        source,
    })
}

/// Reads `[analysis.probe]`; the URL templates are checked for syntax here and rendered per
/// host at each stage's start (a host's variables may differ).
fn parse_probe(p: RawProbe) -> Result<ProbeConfig, String> {
    if p.urls.is_empty() || p.urls.len() > MAX_PROBE_URLS {
        return Err(format!(
            "analysis.probe.urls has {} URLs: give 1 to {MAX_PROBE_URLS}",
            p.urls.len()
        ));
    }
    let templar = rampart_playbook::template::Templar::new();
    for (i, u) in p.urls.iter().enumerate() {
        if u.len() > MAX_PROBE_URL_BYTES {
            return Err(format!(
                "analysis.probe.urls[{i}] is {} bytes: at most {MAX_PROBE_URL_BYTES}",
                u.len()
            ));
        }
        templar
            .check_template(u)
            .map_err(|e| format!("analysis.probe.urls[{i}] = {u:?}: {e}"))?;
        if !rampart_playbook::template::is_template(u) {
            super::probe::check_url(u).map_err(|e| format!("analysis.probe.urls[{i}]: {e}"))?;
        }
    }
    let dur = |key: &str, v: &Option<toml::Value>, default: Duration| match v {
        Some(v) => duration(&format!("analysis.probe.{key}"), v),
        None => Ok(default),
    };
    let interval = dur("interval", &p.interval, DEFAULT_PROBE_INTERVAL)?;
    if interval < Duration::from_millis(50) || interval > Duration::from_secs(60) {
        return Err(format!(
            "analysis.probe.interval = {interval:?}: give \"50ms\" to \"60s\""
        ));
    }
    let timeout = dur("timeout", &p.timeout, DEFAULT_PROBE_TIMEOUT)?;
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        return Err(format!(
            "analysis.probe.timeout = {timeout:?}: give \"1ms\" to \"30s\""
        ));
    }
    let step = dur("step", &p.step, DEFAULT_PROBE_STEP)?;
    if step < Duration::from_secs(1) || step < interval * 2 {
        return Err(format!(
            "analysis.probe.step = {step:?}: give at least \"1s\" and twice the interval ({interval:?}), so that each step holds several requests"
        ));
    }
    Ok(ProbeConfig {
        urls: p.urls,
        interval,
        timeout,
        step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(text: &str) -> Result<Vec<Stage>, String> {
        #[derive(Deserialize)]
        struct W {
            stages: Vec<RawStage>,
        }
        let w: W = toml::from_str(text).map_err(|e| e.to_string())?;
        parse_stages(w.stages)
    }

    #[test]
    fn a_deployments_own_stages() {
        let s = parse_stage_specs(&["1=2m".into(), "25%=5m".into(), "100%".into()]).unwrap();
        assert_eq!(s[0].hosts, StageHosts::Count(1));
        assert_eq!(s[0].analysis, Some(Duration::from_secs(120)));
        assert_eq!(s[2].analysis, None);
        assert!(
            parse_stage_specs(&["50%".into()])
                .unwrap_err()
                .contains("100%")
        );
        assert!(parse_stage_specs(&["1=soon".into(), "100%".into()]).is_err());
        assert!(parse_stage_specs(&[]).is_err());
    }

    #[test]
    fn stages_are_cumulative_and_cover_the_fleet() {
        let s = stages(
            r#"stages = [{hosts = "10%", analysis = "5m"}, {hosts = "25%", analysis = 300},
                         {hosts = "50%", analysis = "5m"}, {hosts = "100%", analysis = "10m"}]"#,
        )
        .unwrap();
        assert_eq!(s[0].analysis, Some(Duration::from_secs(300)));
        assert_eq!(s[3].analysis, Some(Duration::from_secs(600)));
        // Six hosts: 1 (10 % rounded up), 2 in all, 3 in all, then the rest.
        assert_eq!(stage_waves(6, &s), vec![(1, 0), (1, 1), (1, 2), (3, 3)]);
        // Four hosts: 10 % and 25 % both give one host; the second stage adds none.
        assert_eq!(stage_waves(4, &s), vec![(1, 0), (1, 2), (2, 3)]);
        // One host: one wave, the last stage's.
        assert_eq!(stage_waves(1, &s), vec![(1, 0)]);
        let e = stages(r#"stages = [{hosts = "50%"}]"#).unwrap_err();
        assert!(e.contains("100%"), "{e}");
        let e =
            stages(r#"stages = [{hosts = "50%"}, {hosts = "20%"}, {hosts = "100%"}]"#).unwrap_err();
        assert!(e.contains("cumulative"), "{e}");
        let e = stages(r#"stages = [{hosts = "0%"}, {hosts = "100%"}]"#).unwrap_err();
        assert!(e.contains("stages[0].hosts"), "{e}");
        let e = stages(r#"stages = [{hosts = "10%", analysis = "5 minutes"}, {hosts = "100%"}]"#)
            .unwrap_err();
        assert!(e.contains("stages[0].analysis"), "{e}");
        let e = stages(r#"stages = [{hosts = "10%", wait = 1}, {hosts = "100%"}]"#).unwrap_err();
        assert!(e.contains("wait"), "{e}");
        // A stage without analysis, and counts.
        let s = stages(r#"stages = [{hosts = 1, analysis = "0s"}, {hosts = "100%"}]"#).unwrap();
        assert_eq!(s[0].analysis, None);
        assert_eq!(stage_waves(5, &s), vec![(1, 0), (4, 1)]);
    }

    fn analysis(text: &str) -> Result<AnalysisConfig, String> {
        let raw: RawAnalysis = toml::from_str(text).map_err(|e| e.to_string())?;
        parse_analysis(raw, &|p: &Path| p.to_path_buf())
    }

    const PROM: &str = "[prometheus]\nurl = \"http://127.0.0.1:9\"\n";
    const PROBE: &str = "[probe]\nurls = [\"http://127.0.0.1:{{ app_port }}/\"]\n";

    #[test]
    fn a_probe_source_instead_of_prometheus() {
        let a = analysis(PROBE).unwrap();
        assert_eq!(a.source.name(), "probe");
        assert_eq!(a.source.step(), DEFAULT_PROBE_STEP);
        let SourceConfig::Probe(p) = &a.source else {
            panic!("{:?}", a.source)
        };
        assert_eq!(p.urls, ["http://127.0.0.1:{{ app_port }}/"]);
        assert_eq!(
            (p.interval, p.timeout),
            (DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT)
        );
        let a = analysis(
            "[probe]\nurls = [\"https://shop.internal/\", \"{{ backend_url }}/health\"]\ninterval = \"500ms\"\ntimeout = \"1s\"\nstep = \"3s\"\n\
             [[checks]]\nname = \"error_rate\"\n[[checks]]\nname = \"latency_p99\"\n",
        )
        .unwrap();
        assert_eq!(a.source.step(), Duration::from_secs(3));
        assert_eq!(a.checks.len(), 2);
    }

    #[test]
    fn defaults_checks_and_bonferroni() {
        let a = analysis(PROM).unwrap();
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        let names: Vec<&str> = a.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["error_rate", "latency_p95"]);
        // Two statistical checks share α = 0.05.
        match &a.checks[0].kind {
            CheckKind::ErrorRate(c) => assert!((c.alpha - 0.025).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.max_window(Duration::from_secs(60)),
            Duration::from_secs(120)
        );
        // A stage of up to 120 s at 30 s intervals: 4 looks share each check's α.
        match &a.for_stage(Duration::from_secs(120)).checks[1].kind {
            CheckKind::Latency { check, .. } => {
                assert!((check.alpha - 0.025 / 4.0).abs() < 1e-12)
            }
            other => panic!("{other:?}"),
        }
        let SourceConfig::Prometheus(p) = a.source else {
            panic!("{:?}", a.source)
        };
        assert_eq!(p.host_label, "host");
        assert_eq!(p.step, DEFAULT_STEP);
        let a = analysis(&format!(
            "interval = \"2s\"\nmax_window = \"3x\"\nalpha = 0.02\n{PROM}\
             [[checks]]\nname = \"error_rate\"\nmax_rate = 0.02\nmin_requests = 200\nfailure_limit = 1\n\
             [[checks]]\nname = \"slow\"\nkind = \"latency_p99\"\nmax_ms = 300\nmin_samples = 10\n\
             [[checks]]\nname = \"traffic\"\nkind = \"min_requests\"\nmin = 50\n\
             [[checks]]\nname = \"queue\"\nquery = 'max(q{{host=~\"{{{{ canary_hosts }}}}\"}})'\nfailure = \"result > 100\"\n"
        ))
        .unwrap();
        assert_eq!(a.interval, Duration::from_secs(2));
        assert_eq!(
            a.max_window(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        match &a.checks[0].kind {
            CheckKind::ErrorRate(c) => {
                assert_eq!((c.max_rate, c.min_requests), (Some(0.02), 200));
                assert!((c.alpha - 0.01).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.checks[0].limits.failure_limit, 1);
        assert_eq!(a.checks[0].limits.count, None);
        assert!(
            matches!(a.checks[1].kind, CheckKind::Latency { quantile, .. } if quantile == 0.99)
        );
        assert_eq!(a.checks[2].kind, CheckKind::MinRequests { min: 50 });
        assert!(matches!(a.checks[3].kind, CheckKind::Query { .. }));
    }

    #[test]
    fn refuses_what_cannot_work() {
        let cases = [
            ("", "source of measurements"),
            ("[prometheus]\nurl = \"ftp://x\"\n", "analysis.prometheus"),
            (&format!("alpha = 0.5\n{PROM}"), "analysis.alpha"),
            (&format!("interval = \"10ms\"\n{PROM}"), "analysis.interval"),
            (&format!("max_window = \"0.5x\"\n{PROM}"), "max_window"),
            (
                &format!("{PROM}[[checks]]\nname = \"error_rate\"\nmax_rate = 2\n"),
                "max_rate",
            ),
            (
                &format!("{PROM}[[checks]]\nname = \"error_rate\"\nmax_ms = 2\n"),
                "unknown key",
            ),
            (
                &format!("{PROM}[[checks]]\nname = \"latency_p95\"\nmin_samples = 2\n"),
                "min_samples",
            ),
            (
                &format!("{PROM}[[checks]]\nname = \"nope\"\n"),
                "not built in",
            ),
            (
                &format!("{PROM}[[checks]]\nname = \"q\"\nquery = \"up\"\n"),
                "success",
            ),
            (
                &format!(
                    "{PROM}[[checks]]\nname = \"q\"\nquery = \"up{{{{ nope }}}}\"\nfailure = \"result > 1\"\n"
                ),
                "query",
            ),
            (
                &format!(
                    "{PROM}[[checks]]\nname = \"q\"\nquery = \"up\"\nfailure = \"result >\"\n"
                ),
                "check q",
            ),
            (
                &format!(
                    "{PROM}[[checks]]\nname = \"a\"\nkind = \"min_requests\"\n[[checks]]\nname = \"a\"\nkind = \"min_requests\"\n"
                ),
                "two checks",
            ),
            (
                &format!("{PROM}[[checks]]\nname = \"error_rate\"\ncount = 0\n"),
                "count",
            ),
            (
                "[prometheus]\nurl = \"http://127.0.0.1:9\"\nselector = \"{job='x'}\"\n",
                "selector",
            ),
            (
                "[prometheus]\nurl = \"http://127.0.0.1:9\"\nbearer_token_file = \"/nonexistent/token\"\n",
                "/nonexistent/token",
            ),
            (&format!("{PROM}{PROBE}"), "exactly one"),
            ("[probe]\nurls = []\n", "analysis.probe.urls"),
            (
                "[probe]\nurls = [\"ftp://127.0.0.1/\"]\n",
                "analysis.probe.urls[0]",
            ),
            (
                "[probe]\nurls = [\"http://127.0.0.1:{{ port\"]\n",
                "analysis.probe.urls[0]",
            ),
            (
                &format!("{PROBE}interval = \"10ms\"\n"),
                "analysis.probe.interval",
            ),
            (
                &format!("{PROBE}timeout = \"1m\"\n"),
                "analysis.probe.timeout",
            ),
            (
                &format!("{PROBE}interval = \"1s\"\nstep = \"1s\"\n"),
                "analysis.probe.step",
            ),
            (&format!("{PROBE}nope = 1\n"), "nope"),
            (
                &format!(
                    "{PROBE}[[checks]]\nname = \"q\"\nquery = \"up\"\nfailure = \"result > 1\"\n"
                ),
                "needs [analysis.prometheus]",
            ),
        ];
        for (text, needle) in cases {
            let e = analysis(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
