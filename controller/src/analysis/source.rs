//! Where an analysis reads its measurements: a small trait ([`Source`]), its Prometheus
//! adapter ([`PrometheusMetrics`]), which turns the built-in checks into PromQL over the
//! configured metric names, host label and selector, and [`build`], which makes a stage's
//! source from the configuration (the agents' probes: [`super::probe::ProbeSource`]).
//!
//! Every call is blocking (the runner calls it from `spawn_blocking`) and appends what it asked
//! and what came back, bounded, to an [`Audit`], so each decision carries its queries and raw
//! results. A failed query is an `Err` with the reason: the check is Error, never a pass.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rampart_canary::judge::Counts;
use rampart_prometheus::{
    Client, ClientConfig, QueryResult, TemplateVars, format_duration, render,
};
use serde_json::{Value, json};

use super::config::{PrometheusSource, SourceConfig};

/// How long a canary's scrape target must have been down for the fast path to roll back.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// The most entries of one query's result kept in an [`Audit`].
pub const AUDIT_MAX_ENTRIES: usize = 64;

/// The queries of one evaluation and what they returned (bounded).
#[derive(Debug, Default, Clone)]
pub struct Audit {
    /// One JSON object per query: `query`, its time or range, and `result` (or `error`).
    pub queries: Vec<Value>,
}

impl Audit {
    /// Appends what was asked (`query`, at `when`) and what came back, or why it failed.
    pub fn push(&mut self, query: &str, when: Value, result: Result<Value, &str>) {
        let mut o = json!({ "query": query, "at": when });
        match result {
            Ok(r) => o["result"] = r,
            Err(e) => o["error"] = Value::String(e.to_string()),
        }
        self.queries.push(o);
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Per-host latency samples as an audit records them: at most [`AUDIT_MAX_ENTRIES`] hosts, each
/// with at most as many samples.
pub fn series_audit(m: &BTreeMap<String, Vec<f64>>) -> Value {
    Value::Object(
        m.iter()
            .take(AUDIT_MAX_ENTRIES)
            .map(|(h, v)| {
                (
                    h.clone(),
                    json!(v.iter().take(AUDIT_MAX_ENTRIES).collect::<Vec<_>>()),
                )
            })
            .collect(),
    )
}

fn bounded_map(m: &BTreeMap<String, f64>) -> Value {
    let mut o = serde_json::Map::new();
    for (k, v) in m.iter().take(AUDIT_MAX_ENTRIES) {
        o.insert(k.clone(), json!(finite_or_text(*v)));
    }
    Value::Object(o)
}

fn finite_or_text(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

/// The measurements an analysis needs, per host.
pub trait Source: Send + Sync {
    /// Requests and 5xx answers per host over the `window` that ends at `end`. A host without
    /// data is absent from the map (the caller decides what that means).
    fn counts(
        &self,
        hosts: &[String],
        end: SystemTime,
        window: Duration,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Counts>, String>;

    /// Per-host, per-step `quantile` latencies in ms over `[start, end]`, one sample per
    /// non-overlapping step; steps without traffic are left out.
    fn latency(
        &self,
        hosts: &[String],
        start: SystemTime,
        end: SystemTime,
        quantile: f64,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Vec<f64>>, String>;

    /// The hosts whose scrape target has been down (`up == 0`) for the last [`DOWN_FOR`].
    fn down(&self, hosts: &[String], audit: &mut Audit) -> Result<Vec<String>, String>;

    /// A team's own query: its value as `null` (no data), a number, or a list of numbers.
    fn custom(
        &self,
        template: &str,
        canary: &[String],
        baseline: &[String],
        window: Duration,
        end: SystemTime,
        audit: &mut Audit,
    ) -> Result<Value, String>;
}

/// What a stage's source may need beyond its configuration: the probes open streams to the
/// stage's hosts' agents.
#[derive(Debug)]
pub struct StageContext<'a> {
    /// The controller's agent channels.
    pub agents: &'a std::sync::Arc<crate::agents::Agents>,
    /// The environment (hosts' variables and agent addresses).
    pub env: &'a crate::config::Environment,
    /// The hosts to measure: the stage's canary and baseline.
    pub hosts: Vec<String>,
    /// How long the stage's analysis may last (warm-up and longest window included).
    pub duration: std::time::Duration,
}

/// The source of one stage's analysis. The probes start sampling now and stop when the source
/// is dropped.
pub async fn build(
    cfg: &SourceConfig,
    stage: StageContext<'_>,
) -> Result<std::sync::Arc<dyn Source>, String> {
    match cfg {
        SourceConfig::Prometheus(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || PrometheusMetrics::new(p))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Source>)
        }
        SourceConfig::Probe(p) => super::probe::ProbeSource::start(
            p,
            stage.agents,
            stage.env,
            &stage.hosts,
            stage.duration,
            stage.env.unreachable_after,
        )
        .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Source>),
    }
}

/// Builds the client of a Prometheus source (reads its token and CA files).
pub fn client(src: &PrometheusSource) -> Result<Client, String> {
    Client::new(&ClientConfig {
        url: src.url.clone(),
        timeout: src.timeout,
        bearer_token_file: src.bearer_token_file.clone(),
        ca_file: src.ca.clone(),
    })
    .map_err(|e| e.to_string())
}

/// The Prometheus adapter.
#[derive(Debug)]
pub struct PrometheusMetrics {
    src: PrometheusSource,
    client: Client,
}

impl PrometheusMetrics {
    /// The adapter for `src` (reads its token and CA files).
    pub fn new(src: PrometheusSource) -> Result<PrometheusMetrics, String> {
        let client = client(&src)?;
        Ok(PrometheusMetrics { src, client })
    }

    /// `{host=~"a|b", <selector>, <extra>}`.
    fn selector(&self, hosts: &[String], extra: &str) -> Result<String, String> {
        let vars = TemplateVars {
            canary_hosts: hosts,
            baseline_hosts: &[],
            window: Duration::from_secs(1),
        };
        let re = render("{{ canary_hosts }}", &vars).map_err(|e| e.to_string())?;
        let mut parts = vec![format!("{}=~\"{re}\"", self.src.host_label)];
        if !self.src.selector.trim().is_empty() {
            parts.push(self.src.selector.trim().to_string());
        }
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        Ok(format!("{{{}}}", parts.join(",")))
    }

    /// An instant query whose vector is summed `by (host)`: host → value.
    fn by_host(
        &self,
        q: &str,
        at: SystemTime,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, f64>, String> {
        match self
            .client
            .query(q, Some(at))
            .and_then(|r| r.by_label(&self.src.host_label))
        {
            Ok(m) => {
                audit.push(q, json!(unix(at)), Ok(bounded_map(&m)));
                Ok(m)
            }
            Err(e) => {
                let msg = format!("prometheus query failed: {e}");
                audit.push(q, json!(unix(at)), Err(&msg));
                Err(msg)
            }
        }
    }
}

impl Source for PrometheusMetrics {
    fn counts(
        &self,
        hosts: &[String],
        end: SystemTime,
        window: Duration,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Counts>, String> {
        let w = format_duration(window.max(Duration::from_secs(1)));
        let label = &self.src.host_label;
        let m = &self.src.requests_metric;
        let all = format!(
            "sum by ({label}) (increase({m}{}[{w}]))",
            self.selector(hosts, "")?
        );
        let errors = format!(
            "sum by ({label}) (increase({m}{}[{w}]))",
            self.selector(hosts, "code=~\"5..\"")?
        );
        let totals = self.by_host(&all, end, audit)?;
        let errs = self.by_host(&errors, end, audit)?;
        let mut out = BTreeMap::new();
        for (host, total) in totals {
            if !total.is_finite() || total < 0.0 {
                return Err(format!(
                    "prometheus gave {host} a request count of {total}: not a count"
                ));
            }
            // `increase()` extrapolates to the window's edges: counts come back fractional.
            let total = total.round() as u64;
            let e = errs.get(&host).copied().unwrap_or(0.0);
            let errors = if e.is_finite() && e >= 0.0 {
                (e.round() as u64).min(total)
            } else {
                0
            };
            out.insert(host, Counts { errors, total });
        }
        Ok(out)
    }

    fn latency(
        &self,
        hosts: &[String],
        start: SystemTime,
        end: SystemTime,
        quantile: f64,
        audit: &mut Audit,
    ) -> Result<BTreeMap<String, Vec<f64>>, String> {
        let step = self.src.step;
        let label = &self.src.host_label;
        let q = format!(
            "histogram_quantile({quantile}, sum by ({label}, le) (rate({}_bucket{}[{}])))",
            self.src.duration_metric,
            self.selector(hosts, "")?,
            format_duration(step)
        );
        let when = json!({ "start": unix(start), "end": unix(end), "step": step.as_secs_f64() });
        if end <= start {
            audit.push(&q, when, Ok(json!({})));
            return Ok(BTreeMap::new());
        }
        match self.client.query_range(&q, start, end, step) {
            Ok(series) => {
                let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
                for s in series {
                    let Some(host) = s.labels.get(label.as_str()) else {
                        continue;
                    };
                    let v = out.entry(host.clone()).or_default();
                    v.extend(
                        s.points
                            .iter()
                            .map(|p| p.v * 1000.0)
                            .filter(|ms| ms.is_finite() && *ms >= 0.0),
                    );
                }
                audit.push(&q, when, Ok(series_audit(&out)));
                Ok(out)
            }
            Err(e) => {
                let msg = format!("prometheus range query failed: {e}");
                audit.push(&q, when, Err(&msg));
                Err(msg)
            }
        }
    }

    fn down(&self, hosts: &[String], audit: &mut Audit) -> Result<Vec<String>, String> {
        // Down for the whole lookback, not one failed scrape (the one taken while the wave
        // restarted the service, say).
        let q = format!(
            "max by ({}) (max_over_time(up{}[{}]))",
            self.src.host_label,
            self.selector(hosts, "")?,
            format_duration(DOWN_FOR)
        );
        let m = self.by_host(&q, SystemTime::now(), audit)?;
        Ok(m.into_iter()
            .filter(|(_, v)| *v < 1.0)
            .map(|(h, _)| h)
            .collect())
    }

    fn custom(
        &self,
        template: &str,
        canary: &[String],
        baseline: &[String],
        window: Duration,
        end: SystemTime,
        audit: &mut Audit,
    ) -> Result<Value, String> {
        let vars = TemplateVars {
            canary_hosts: canary,
            baseline_hosts: baseline,
            window: window.max(Duration::from_secs(1)),
        };
        let q = render(template, &vars).map_err(|e| e.to_string())?;
        match self.client.query(&q, Some(end)) {
            Ok(r) => {
                let values: Vec<f64> = match &r {
                    QueryResult::Scalar(p) => vec![p.v],
                    QueryResult::Vector(s) => s.iter().map(|s| s.point.v).collect(),
                    QueryResult::Matrix(series) => series.iter().flat_map(|s| s.values()).collect(),
                    QueryResult::String(_) => {
                        let msg = format!("the query returned {}, not numbers", r.describe());
                        audit.push(&q, json!(unix(end)), Err(&msg));
                        return Err(msg);
                    }
                };
                let v = match values.len() {
                    0 => Value::Null,
                    1 => finite_or_text(values[0]),
                    _ => Value::Array(values.iter().map(|v| finite_or_text(*v)).collect()),
                };
                let kept = match &v {
                    Value::Array(a) => {
                        Value::Array(a.iter().take(AUDIT_MAX_ENTRIES).cloned().collect())
                    }
                    other => other.clone(),
                };
                audit.push(&q, json!(unix(end)), Ok(kept));
                Ok(v)
            }
            Err(e) => {
                let msg = format!("prometheus query failed: {e}");
                audit.push(&q, json!(unix(end)), Err(&msg));
                Err(msg)
            }
        }
    }
}
