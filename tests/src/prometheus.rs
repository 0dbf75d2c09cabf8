//! A real Prometheus server for the tests (Debian's `prometheus`, `/usr/bin/prometheus`), the
//! `promtool` runner, and the queries of the shipped Grafana dashboard.
//!
//! [`Prometheus::start`] runs the binary on a free 127.0.0.1 port with a temporary directory
//! (its TSDB, its log and a generated configuration that scrapes the given targets every second
//! and evaluates the given rule files every second); it is SIGKILLed by its pid when dropped, or
//! earlier by [`Prometheus::kill`]. A [`Job`] may put labels on its targets' series
//! ([`Job::hosts`]: `host="h1"`), as canary analysis needs to tell hosts apart.
//! Every wait is bounded; every answer read is bounded in size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{CliRun, KillOnDrop, deploy::free_port, run_to_end};

/// How long Prometheus may take to answer `/-/ready`.
pub const PROMETHEUS_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest API answer read (bytes).
const MAX_ANSWER: u64 = 16 << 20;

/// The `prometheus` binary: `$RAMPART_PROMETHEUS` or `/usr/bin/prometheus`.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("RAMPART_PROMETHEUS").map_or_else(|| "/usr/bin/prometheus".into(), Into::into)
}

/// The `promtool` binary: `$RAMPART_PROMTOOL` or `/usr/bin/promtool`.
pub fn promtool_bin() -> PathBuf {
    std::env::var_os("RAMPART_PROMTOOL").map_or_else(|| "/usr/bin/promtool".into(), Into::into)
}

/// Runs `promtool ARGS` in `cwd` (bounded by 120 s) and returns what it did; panics naming the
/// Debian package when promtool is not installed.
pub fn promtool_in(cwd: &Path, args: &[&str]) -> CliRun {
    let bin = promtool_bin();
    assert!(
        bin.exists(),
        "{} is missing: install Debian's prometheus package (apt-get install prometheus; tests/run.sh does)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd);
    run_to_end(cmd, Duration::from_secs(120))
}

/// Runs `promtool ARGS` in the repository's `monitoring/` directory.
pub fn promtool(args: &[&str]) -> CliRun {
    promtool_in(&monitoring_dir(), args)
}

/// The repository's `monitoring/` directory.
pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// The shipped alert rules.
pub fn alert_rules() -> PathBuf {
    monitoring_dir().join("prometheus/rampart-alerts.yml")
}

/// The shipped recording rules.
pub fn recording_rules() -> PathBuf {
    monitoring_dir().join("prometheus/rampart-recording.yml")
}

/// The shipped Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    monitoring_dir().join("grafana/rampart-deployments.json")
}

/// The shipped dashboard, parsed.
pub fn dashboard() -> Value {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every query of the shipped dashboard as (`panel title / refId`, expression), with the
/// dashboard's variables substituted as Grafana would: `$environment` by `environment` (a
/// regex match, so `.*` means all), `$__range` by `1h`, `$__rate_interval` and `$__interval` by
/// `1m`. See [`dashboard_exprs_with`] for other windows.
pub fn dashboard_exprs(environment: &str) -> Vec<(String, String)> {
    dashboard_exprs_with(environment, "1h", "1m")
}

/// As [`dashboard_exprs`], with `$__range` by `range` and `$__rate_interval`/`$__interval` by
/// `interval` (Prometheus durations such as `10m`, `30s`).
pub fn dashboard_exprs_with(
    environment: &str,
    range: &str,
    interval: &str,
) -> Vec<(String, String)> {
    let dash = dashboard();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = expr
                .replace("${environment}", environment)
                .replace("$environment", environment)
                .replace("$__rate_interval", interval)
                .replace("$__interval", interval)
                .replace("$__range", range);
            let ref_id = target["refId"].as_str().unwrap_or("?");
            out.push((format!("{title} / {ref_id}"), expr));
        }
    }
    out
}

/// Compiles `exprs` with promtool: writes them as recording rules of a throwaway rule file in
/// `dir` and runs `promtool check rules` on it (exit 0 when every one parses).
pub fn promtool_check_exprs(dir: &Path, exprs: &[(String, String)]) -> CliRun {
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| json!({"record": format!("rampart:dashboard_query:{i}"), "expr": e}))
        .collect();
    // JSON is YAML: Prometheus's loader reads it as it is.
    let file = dir.join("dashboard-exprs.rules.yml");
    let text = json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string();
    std::fs::write(&file, text).expect("write the throwaway rule file");
    let path = file.to_str().expect("utf-8 path");
    promtool_in(dir, &["check", "rules", path])
}

/// One scrape job of [`Prometheus::start`].
#[derive(Debug, Clone)]
pub struct Job {
    /// Its `job_name` (the alerts expect `rampart-controller` for the controller).
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Extra labels of some targets (a `static_config` of its own each), e.g. `host="h1"` so
    /// canary analysis can tell hosts apart; targets not in here get none.
    pub target_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The path scraped (`/metrics`).
    pub metrics_path: String,
    /// `honor_labels` (true for a pushgateway).
    pub honor_labels: bool,
}

impl Job {
    /// A job scraping `targets` at `/metrics`.
    pub fn new(name: &str, targets: &[&str]) -> Job {
        Job {
            name: name.to_string(),
            targets: targets.iter().map(|t| (*t).to_string()).collect(),
            target_labels: BTreeMap::new(),
            metrics_path: "/metrics".into(),
            honor_labels: false,
        }
    }

    /// A job scraping each `(target, labels)` at `/metrics`, with those labels on its series.
    /// Panics on a label name Prometheus would refuse or reserve (`__…`, `job`, `instance`).
    pub fn with_labels(name: &str, targets: &[(&str, &[(&str, &str)])]) -> Job {
        let mut job = Job::new(name, &targets.iter().map(|(t, _)| *t).collect::<Vec<_>>());
        for (target, labels) in targets {
            for (key, value) in *labels {
                job = job.label(target, key, value);
            }
        }
        job
    }

    /// A job scraping each `(target, host)` at `/metrics`, its series labelled `host="HOST"`.
    pub fn hosts(name: &str, targets: &[(&str, &str)]) -> Job {
        let labelled: Vec<(&str, [(&str, &str); 1])> = targets
            .iter()
            .map(|(target, host)| (*target, [("host", *host)]))
            .collect();
        let refs: Vec<(&str, &[(&str, &str)])> =
            labelled.iter().map(|(t, l)| (*t, &l[..])).collect();
        Job::with_labels(name, &refs)
    }

    /// With the label `key="value"` on `target`'s series (one of this job's targets).
    pub fn label(mut self, target: &str, key: &str, value: &str) -> Job {
        assert!(
            self.targets.iter().any(|t| t == target),
            "job {}: label {key} for {target}, which is not one of its targets {:?}",
            self.name,
            self.targets
        );
        let valid = key
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        assert!(
            valid && !key.is_empty() && !key.starts_with("__") && key != "job" && key != "instance",
            "job {}: label name {key:?} for {target} is not a free Prometheus label name",
            self.name
        );
        self.target_labels
            .entry(target.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
        self
    }

    /// With `honor_labels: true` (keeps the pushed `job`/`instance` labels of a pushgateway).
    pub fn honor_labels(mut self) -> Job {
        self.honor_labels = true;
        self
    }

    /// Its `static_configs`: the unlabelled targets in one, each labelled target in its own.
    fn static_configs(&self) -> Vec<Value> {
        let (labelled, plain): (Vec<&String>, Vec<&String>) = self
            .targets
            .iter()
            .partition(|t| self.target_labels.contains_key(*t));
        let mut configs = Vec::new();
        if !plain.is_empty() {
            configs.push(json!({"targets": plain}));
        }
        for target in labelled {
            configs.push(json!({"targets": [target], "labels": self.target_labels[target]}));
        }
        configs
    }
}

/// One sample of an instant query: its labels (`__name__` included when present) and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A rule as Prometheus reports it in `/api/v1/rules`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleHealth {
    /// The group's name.
    pub group: String,
    /// The alert's or record's name.
    pub name: String,
    /// `alerting` or `recording`.
    pub kind: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub health: String,
    /// The last evaluation error, if any.
    pub last_error: String,
    /// For an alert: `inactive`, `pending` or `firing`.
    pub state: String,
}

/// A running Prometheus; SIGKILLed by its pid when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: KillOnDrop,
    /// `127.0.0.1:PORT` it serves on.
    pub addr: String,
    /// Its directory: `prometheus.yml`, `data/`, `prometheus.log`.
    pub dir: tempfile::TempDir,
    agent: ureq::Agent,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second and evaluating `rule_files` every second;
    /// waits until it is ready. Panics with its log when it does not start.
    pub fn start(jobs: &[Job], rule_files: &[&Path]) -> Prometheus {
        Self::start_every(jobs, rule_files, Duration::from_secs(1))
    }

    /// As [`Prometheus::start`] with another scrape and evaluation interval.
    pub fn start_every(jobs: &[Job], rule_files: &[&Path], every: Duration) -> Prometheus {
        let bin = prometheus_bin();
        assert!(
            bin.exists(),
            "{} is missing: install Debian's prometheus package (apt-get install prometheus; tests/run.sh does)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        let interval = format!("{}ms", every.as_millis().max(1));
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| {
                std::fs::canonicalize(p)
                    .unwrap_or_else(|e| panic!("rule file {}: {e}", p.display()))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let scrape: Vec<Value> = jobs
            .iter()
            .map(|j| {
                json!({
                    "job_name": j.name,
                    "metrics_path": j.metrics_path,
                    "honor_labels": j.honor_labels,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": j.static_configs(),
                })
            })
            .collect();
        let config = json!({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": rules,
            "scrape_configs": scrape,
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("write prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        // A port picked free may be taken before Prometheus binds it: a few tries.
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = std::fs::File::create(&log_path).expect("prometheus log");
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1d")
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut child = KillOnDrop::new(child);
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .build()
                .into();
            let deadline = Instant::now() + PROMETHEUS_START_TIMEOUT;
            while Instant::now() < deadline && crate::process_state(child.pid()) != Some('Z') {
                let ready = agent
                    .get(format!("http://{addr}/-/ready"))
                    .call()
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ready {
                    return Prometheus {
                        child,
                        addr,
                        dir,
                        agent,
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            child.kill9();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!(
            "prometheus did not become ready within {PROMETHEUS_START_TIMEOUT:?}; its log:\n{last_log}"
        );
    }

    /// Its pid (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILLs it by its pid and reaps it (nothing when already done), e.g. to lose the
    /// metrics source in the middle of an analysis. [`Prometheus::addr`] stays as it was, so
    /// queries after this fail as a dead server's do (connection refused); its directory and
    /// log stay until it is dropped.
    pub fn kill(&mut self) {
        self.child.kill9();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GETs `path` (with query parameters) from the HTTP API and returns its `data` field; an
    /// error names the status and Prometheus's `error`.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let mut req = self.agent.get(format!("http://{}{path}", self.addr));
        for (k, v) in params {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| format!("GET {path}: reading the answer: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: {status}, not JSON ({e}): {body:.200}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "GET {path}: {status} {}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        Ok(v["data"].clone())
    }

    /// Evaluates `expr` now (`/api/v1/query`); a vector's samples, or a scalar as one sample
    /// without labels.
    pub fn try_query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        let value = |v: &Value| -> Result<f64, String> {
            let s = v[1]
                .as_str()
                .ok_or_else(|| format!("{expr}: a sample without a value: {v}"))?;
            parse_value(s).ok_or_else(|| format!("{expr}: bad sample value {s:?}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    Ok((labels, value(&r["value"])?))
                })
                .collect(),
            Some("scalar") => Ok(vec![(BTreeMap::new(), value(&data["result"])?)]),
            other => Err(format!("{expr}: unexpected result type {other:?}")),
        }
    }

    /// As [`Prometheus::try_query`], panicking on an error.
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        self.try_query(expr)
            .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// Polls `expr` until it returns at least one sample, and returns them; panics after
    /// `timeout` with the last answer.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<Sample> {
        self.wait_until(expr, timeout, |s| !s.is_empty())
    }

    /// Polls `expr` every 200 ms until `ok` holds for its samples, and returns them; panics after
    /// `timeout` with the last answer.
    pub fn wait_until(
        &self,
        expr: &str,
        timeout: Duration,
        ok: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_query(expr);
            if let Ok(s) = &last
                && ok(s)
            {
                return s.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{expr}: not as expected within {timeout:?}; last answer: {last:?}\nprometheus log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every rule loaded, with its health (`/api/v1/rules`).
    pub fn rules_health(&self) -> Vec<RuleHealth> {
        let data = self
            .api("/api/v1/rules", &[])
            .unwrap_or_else(|e| panic!("rules: {e}"));
        let mut out = Vec::new();
        for g in data["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                out.push(RuleHealth {
                    group: g["name"].as_str().unwrap_or_default().to_string(),
                    name: s("name"),
                    kind: s("type"),
                    health: s("health"),
                    last_error: s("lastError"),
                    state: s("state"),
                });
            }
        }
        out
    }

    /// The scrape targets as (job, scrape URL, health `up`/`down`/`unknown`, last error)
    /// (`/api/v1/targets`).
    pub fn targets(&self) -> Vec<(String, String, String, String)> {
        let data = self
            .api("/api/v1/targets", &[])
            .unwrap_or_else(|e| panic!("targets: {e}"));
        data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    s("scrapeUrl"),
                    s("health"),
                    s("lastError"),
                )
            })
            .collect()
    }

    /// Waits until every target has been scraped successfully once; panics after `timeout`
    /// naming the ones that are not up.
    pub fn wait_targets_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.targets();
            if !t.is_empty() && t.iter().all(|t| t.2 == "up") {
                return;
            }
            if Instant::now() >= deadline {
                panic!("targets not up within {timeout:?}: {t:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A sample value as the API writes it (`1.5`, `NaN`, `+Inf`, `-Inf`).
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_targets_get_a_static_config_each() {
        let plain = Job::new("app", &["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(
            plain.static_configs(),
            vec![json!({"targets": ["127.0.0.1:1", "127.0.0.1:2"]})]
        );
        let hosts = Job::hosts("app", &[("127.0.0.1:1", "h1"), ("127.0.0.1:2", "h2")]);
        assert_eq!(hosts.targets, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(
            hosts.static_configs(),
            vec![
                json!({"targets": ["127.0.0.1:1"], "labels": {"host": "h1"}}),
                json!({"targets": ["127.0.0.1:2"], "labels": {"host": "h2"}}),
            ]
        );
        let mixed = Job::with_labels(
            "app",
            &[
                ("127.0.0.1:1", &[("host", "h1"), ("release", "2.1.0")]),
                ("127.0.0.1:2", &[]),
            ],
        );
        assert_eq!(
            mixed.static_configs(),
            vec![
                json!({"targets": ["127.0.0.1:2"]}),
                json!({"targets": ["127.0.0.1:1"], "labels": {"host": "h1", "release": "2.1.0"}}),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "not a free Prometheus label name")]
    fn reserved_label_names_are_refused() {
        let _ = Job::new("app", &["127.0.0.1:1"]).label("127.0.0.1:1", "instance", "x");
    }

    #[test]
    #[should_panic(expected = "not one of its targets")]
    fn labels_of_unknown_targets_are_refused() {
        let _ = Job::new("app", &["127.0.0.1:1"]).label("127.0.0.1:9", "host", "h9");
    }
}
