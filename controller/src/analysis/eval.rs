//! One evaluation of a stage's checks, and one look of the fast path: measurements from a
//! [`Source`], judged by [`rampart_canary::judge`], each result carrying what it was computed
//! from.
//!
//! Inputs: the stage's hosts ([`StageHosts`]), the time, the checks. Output: one
//! [`CheckResult`] per check, in order; the runner records them and feeds their verdicts to
//! [`rampart_canary::window::StageRun`].
//!
//! Missing data is never a pass: a canary host absent from the measurements is an Error of the
//! check; a failed query is an Error; too little traffic is Inconclusive (the judge's gates).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rampart_canary::judge::{self, Counts, Decision, Verdict};
use serde::Serialize;
use serde_json::{Value, json};

use super::condition;
use super::config::{AnalysisConfig, Check, CheckKind};
use super::source::{Audit, Source};

/// The hosts of one stage's analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageHosts {
    /// Every host on the new release.
    pub canary: Vec<String>,
    /// Every host still on the old release; empty at the last stage.
    pub baseline: Vec<String>,
    /// The stage's own wave: at the last stage (no baseline) they are compared with their own
    /// window before the upgrade, which ended at `wave_started`.
    pub wave: Vec<String>,
    /// When the stage's wave started.
    #[serde(skip)]
    pub wave_started: SystemTime,
    /// When the window opened.
    #[serde(skip)]
    pub window_opened: SystemTime,
}

impl StageHosts {
    /// Whether the comparison is against the wave's own past (weaker evidence).
    pub fn historical(&self) -> bool {
        self.baseline.is_empty()
    }
}

/// One check's result in one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub check: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Whether a Fail counts at once (strong evidence, a guardrail).
    pub strong: bool,
    /// One line for people.
    pub reason: String,
    /// The decision's numbers (sizes, statistic, p-value, effect, minimum detectable effect),
    /// and the queries with their raw results.
    pub detail: Value,
}

impl CheckResult {
    fn error(check: &Check, reason: String, audit: Audit) -> CheckResult {
        CheckResult {
            check: check.name.clone(),
            verdict: Verdict::Error,
            strong: false,
            reason,
            detail: json!({ "queries": audit.queries }),
        }
    }

    fn from_decision(check: &Check, d: Decision, audit: Audit, extra: Value) -> CheckResult {
        let mut detail = serde_json::to_value(&d).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut detail {
            o.insert("queries".into(), Value::Array(audit.queries));
            if let Value::Object(x) = extra {
                o.extend(x);
            }
        }
        CheckResult {
            check: check.name.clone(),
            verdict: d.verdict,
            strong: d.strong,
            reason: d.reason,
            detail,
        }
    }

    fn plain(
        check: &Check,
        verdict: Verdict,
        strong: bool,
        reason: String,
        detail: Value,
        audit: Audit,
    ) -> CheckResult {
        let mut detail = detail;
        if let Value::Object(o) = &mut detail {
            o.insert("queries".into(), Value::Array(audit.queries));
        }
        CheckResult {
            check: check.name.clone(),
            verdict,
            strong,
            reason,
            detail,
        }
    }
}

fn sum(hosts: &[String], m: &BTreeMap<String, Counts>) -> Counts {
    hosts.iter().filter_map(|h| m.get(h)).fold(
        Counts {
            errors: 0,
            total: 0,
        },
        |a, c| Counts {
            errors: a.errors + c.errors,
            total: a.total + c.total,
        },
    )
}

fn missing<'a, T>(hosts: &'a [String], m: &BTreeMap<String, T>) -> Vec<&'a str> {
    hosts
        .iter()
        .filter(|h| !m.contains_key(*h))
        .map(String::as_str)
        .collect()
}

fn window_of(since: SystemTime, now: SystemTime) -> Duration {
    // Whole seconds, at least one: PromQL ranges are given in seconds here.
    let d = now.duration_since(since).unwrap_or_default();
    Duration::from_secs(d.as_secs().max(1))
}

/// The canary's and the baseline's counts (the baseline being the wave's own past at the last
/// stage), or an Error result.
fn both_counts(
    source: &dyn Source,
    hosts: &StageHosts,
    now: SystemTime,
    audit: &mut Audit,
) -> Result<(Counts, Option<Counts>), String> {
    let window = window_of(hosts.window_opened, now);
    if hosts.historical() {
        let now_m = source.counts(&hosts.wave, now, window, audit)?;
        if let Some(h) = missing(&hosts.wave, &now_m).first() {
            return Err(format!("canary host {h} is missing from the measurements"));
        }
        let before = source.counts(&hosts.wave, hosts.wave_started, window, audit)?;
        let b = sum(&hosts.wave, &before);
        Ok((sum(&hosts.wave, &now_m), (b.total > 0).then_some(b)))
    } else {
        let mut all = hosts.canary.clone();
        all.extend(hosts.baseline.iter().cloned());
        let m = source.counts(&all, now, window, audit)?;
        if let Some(h) = missing(&hosts.canary, &m).first() {
            return Err(format!("canary host {h} is missing from the measurements"));
        }
        Ok((sum(&hosts.canary, &m), Some(sum(&hosts.baseline, &m))))
    }
}

fn latency_samples(
    source: &dyn Source,
    hosts: &StageHosts,
    now: SystemTime,
    quantile: f64,
    step: Duration,
    audit: &mut Audit,
) -> Result<(Vec<f64>, Option<Vec<f64>>), String> {
    let window = window_of(hosts.window_opened, now);
    let flat = |hs: &[String], m: &BTreeMap<String, Vec<f64>>| -> Vec<f64> {
        hs.iter()
            .filter_map(|h| m.get(h))
            .flat_map(|v| v.iter().copied())
            .collect()
    };
    let start = hosts.window_opened + step;
    if hosts.historical() {
        let m = source.latency(&hosts.wave, start, now, quantile, audit)?;
        let before = source.latency(
            &hosts.wave,
            hosts.wave_started - window + step,
            hosts.wave_started,
            quantile,
            audit,
        )?;
        let b = flat(&hosts.wave, &before);
        Ok((flat(&hosts.wave, &m), (!b.is_empty()).then_some(b)))
    } else {
        let mut all = hosts.canary.clone();
        all.extend(hosts.baseline.iter().cloned());
        let m = source.latency(&all, start, now, quantile, audit)?;
        Ok((flat(&hosts.canary, &m), Some(flat(&hosts.baseline, &m))))
    }
}

/// Evaluates every check of `cfg` at `now`, in order. `step` is the latency samples' step.
pub fn evaluate(
    cfg: &AnalysisConfig,
    source: &dyn Source,
    hosts: &StageHosts,
    step: Duration,
    now: SystemTime,
) -> Vec<CheckResult> {
    let mut shared = Shared::default();
    cfg.checks
        .iter()
        .map(|c| evaluate_one(c, source, hosts, step, now, &mut shared))
        .collect()
}

/// What several checks of one evaluation read: the pooled counts (`error_rate`,
/// `success_rate` and `min_requests` all judge them), asked of the source once.
#[derive(Default)]
struct Shared {
    counts: Option<(Result<BothCounts, String>, Audit)>,
}

/// The canary's counts, and the baseline's (none at a last stage without history).
type BothCounts = (Counts, Option<Counts>);

impl Shared {
    /// The counts, queried on first use; their queries go into every reader's `audit`.
    fn counts(
        &mut self,
        source: &dyn Source,
        hosts: &StageHosts,
        now: SystemTime,
        audit: &mut Audit,
    ) -> Result<BothCounts, String> {
        let (r, queried) = self.counts.get_or_insert_with(|| {
            let mut a = Audit::default();
            (both_counts(source, hosts, now, &mut a), a)
        });
        audit.queries.extend(queried.queries.iter().cloned());
        r.clone()
    }
}

fn evaluate_one(
    check: &Check,
    source: &dyn Source,
    hosts: &StageHosts,
    step: Duration,
    now: SystemTime,
    shared: &mut Shared,
) -> CheckResult {
    let mut audit = Audit::default();
    let historical = hosts.historical();
    let extra = json!({ "historical_baseline": historical });
    match &check.kind {
        CheckKind::ErrorRate(cfg) => match shared.counts(source, hosts, now, &mut audit) {
            Err(e) => CheckResult::error(check, e, audit),
            Ok((canary, baseline)) => {
                let mut d = if historical && baseline.is_none() {
                    // No traffic before the upgrade to compare with: thresholds only.
                    judge::judge_error_rate(canary, None, cfg)
                } else {
                    judge::judge_error_rate(canary, baseline, cfg)
                };
                d.weaker_evidence |= historical;
                CheckResult::from_decision(check, d, audit, extra)
            }
        },
        CheckKind::Latency {
            quantile,
            check: cfg,
        } => match latency_samples(source, hosts, now, *quantile, step, &mut audit) {
            Err(e) => CheckResult::error(check, e, audit),
            Ok((canary, baseline)) => {
                let mut d = judge::judge_latency(&canary, baseline.as_deref(), cfg);
                d.weaker_evidence |= historical;
                CheckResult::from_decision(check, d, audit, extra)
            }
        },
        CheckKind::SuccessRate { min, min_requests } => {
            match shared.counts(source, hosts, now, &mut audit) {
                Err(e) => CheckResult::error(check, e, audit),
                Ok((c, _)) => {
                    let share = c.rate().map(|r| 1.0 - r);
                    let detail = json!({ "canary": c, "success_rate": share, "min": min, "min_requests": min_requests });
                    let (v, strong, reason) = match share {
                        _ if c.total < *min_requests => (
                            Verdict::Inconclusive,
                            false,
                            format!("only {} canary requests, {min_requests} needed", c.total),
                        ),
                        Some(s) if s < *min => (
                            Verdict::Fail,
                            true,
                            format!(
                                "canary success rate {:.3}% ({} of {}) is below {:.3}%",
                                s * 100.0,
                                c.total - c.errors,
                                c.total,
                                min * 100.0
                            ),
                        ),
                        Some(s) => (
                            Verdict::Pass,
                            false,
                            format!(
                                "canary success rate {:.3}% over {} requests",
                                s * 100.0,
                                c.total
                            ),
                        ),
                        None => (Verdict::Inconclusive, false, "no canary requests".into()),
                    };
                    CheckResult::plain(check, v, strong, reason, detail, audit)
                }
            }
        }
        CheckKind::MinRequests { min } => match shared.counts(source, hosts, now, &mut audit) {
            Err(e) => CheckResult::error(check, e, audit),
            Ok((c, _)) => {
                let detail = json!({ "canary": c, "min": min });
                if c.total >= *min {
                    CheckResult::plain(
                        check,
                        Verdict::Pass,
                        false,
                        format!("{} canary requests (≥ {min})", c.total),
                        detail,
                        audit,
                    )
                } else {
                    CheckResult::plain(
                        check,
                        Verdict::Inconclusive,
                        false,
                        format!(
                            "only {} canary requests, {min} needed: extend the window",
                            c.total
                        ),
                        detail,
                        audit,
                    )
                }
            }
        },
        CheckKind::Query {
            query,
            success,
            failure,
        } => {
            let window = window_of(hosts.window_opened, now);
            let canary = if historical {
                &hosts.wave
            } else {
                &hosts.canary
            };
            match source.custom(query, canary, &hosts.baseline, window, now, &mut audit) {
                Err(e) => CheckResult::error(check, e, audit),
                Ok(Value::Null) => CheckResult::error(
                    check,
                    "the query returned no data (an empty result is never a pass)".into(),
                    audit,
                ),
                Ok(result) => {
                    let detail = json!({ "result": result });
                    let eval = |c: &Option<String>| {
                        c.as_deref()
                            .map(|c| condition::holds(c, &result))
                            .transpose()
                    };
                    match (eval(failure), eval(success)) {
                        (Err(e), _) | (_, Err(e)) => CheckResult::error(check, e, audit),
                        // Argo Rollouts' rules: failure wins; with both set and neither true,
                        // Inconclusive; with one set, its opposite decides.
                        (Ok(Some(true)), _) => CheckResult::plain(
                            check,
                            Verdict::Fail,
                            false,
                            format!(
                                "failure condition {:?} holds for {result}",
                                failure.as_deref().unwrap_or("")
                            ),
                            detail,
                            audit,
                        ),
                        (Ok(_), Ok(Some(true))) | (Ok(Some(false)), Ok(None)) => {
                            CheckResult::plain(
                                check,
                                Verdict::Pass,
                                false,
                                format!("result {result} passes"),
                                detail,
                                audit,
                            )
                        }
                        (Ok(None), Ok(Some(false))) => CheckResult::plain(
                            check,
                            Verdict::Fail,
                            false,
                            format!(
                                "success condition {:?} does not hold for {result}",
                                success.as_deref().unwrap_or("")
                            ),
                            detail,
                            audit,
                        ),
                        _ => CheckResult::plain(
                            check,
                            Verdict::Inconclusive,
                            false,
                            format!("neither condition holds for {result}"),
                            detail,
                            audit,
                        ),
                    }
                }
            }
        }
    }
}

/// The name fast-path failures are recorded under.
pub const FAST_PATH: &str = "fast_path";

/// One look of the fast path at `now`: each canary host's error rate over the last
/// `lookback` (a host at or above the threshold fails at once) and whether any canary target
/// is down. `None`: carry on. A failed query is not a fast-path failure (the checks report it).
pub fn fast_path(
    cfg: &AnalysisConfig,
    source: &dyn Source,
    hosts: &StageHosts,
    lookback: Duration,
    now: SystemTime,
) -> Option<CheckResult> {
    let mut audit = Audit::default();
    let canary = if hosts.historical() {
        &hosts.wave
    } else {
        &hosts.canary
    };
    if let Ok(down) = source.down(canary, &mut audit)
        && !down.is_empty()
    {
        return Some(CheckResult {
            check: FAST_PATH.into(),
            verdict: Verdict::Fail,
            strong: true,
            reason: format!("fast path: canary target down on {}", down.join(", ")),
            detail: json!({ "down": down, "queries": audit.queries }),
        });
    }
    let mut all = canary.clone();
    if !hosts.historical() {
        all.extend(hosts.baseline.iter().cloned());
    }
    let m = source.counts(&all, now, lookback, &mut audit).ok()?;
    let baseline = (!hosts.historical()).then(|| sum(&hosts.baseline, &m));
    for h in canary {
        let Some(c) = m.get(h) else { continue };
        if let Some(d) = judge::fast_path_against(*c, baseline, &cfg.fast_path)
            && d.verdict == Verdict::Fail
        {
            let reason = format!("{} on {h}", d.reason);
            let mut detail = serde_json::to_value(&d).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut detail {
                o.insert("host".into(), json!(h));
                o.insert("queries".into(), Value::Array(audit.queries.clone()));
            }
            return Some(CheckResult {
                check: FAST_PATH.into(),
                verdict: Verdict::Fail,
                strong: true,
                reason,
                detail,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::config::MaxWindow;
    use rampart_canary::judge::{ErrorRateCheck, FastPathCheck, LatencyCheck};
    use rampart_canary::window::window_limits;
    use std::sync::Mutex;

    /// A source answering from tables: what a host served, per host.
    #[derive(Default)]
    struct Table {
        counts: BTreeMap<String, Counts>,
        before: BTreeMap<String, Counts>,
        latency: BTreeMap<String, Vec<f64>>,
        down: Vec<String>,
        custom: Option<Value>,
        fail: bool,
        asked: Mutex<Vec<String>>,
    }

    impl Source for Table {
        fn counts(
            &self,
            hosts: &[String],
            end: SystemTime,
            _w: Duration,
            _a: &mut Audit,
        ) -> Result<BTreeMap<String, Counts>, String> {
            self.asked
                .lock()
                .unwrap()
                .push(format!("counts {}", hosts.join(",")));
            if self.fail {
                return Err("prometheus query failed: connection refused".into());
            }
            let m = if end < SystemTime::now() - Duration::from_secs(30) {
                &self.before
            } else {
                &self.counts
            };
            Ok(m.iter()
                .filter(|(h, _)| hosts.contains(h))
                .map(|(h, c)| (h.clone(), *c))
                .collect())
        }
        fn latency(
            &self,
            hosts: &[String],
            _s: SystemTime,
            _e: SystemTime,
            _q: f64,
            _a: &mut Audit,
        ) -> Result<BTreeMap<String, Vec<f64>>, String> {
            if self.fail {
                return Err("down".into());
            }
            Ok(self
                .latency
                .iter()
                .filter(|(h, _)| hosts.contains(h))
                .map(|(h, v)| (h.clone(), v.clone()))
                .collect())
        }
        fn down(&self, _h: &[String], _a: &mut Audit) -> Result<Vec<String>, String> {
            Ok(self.down.clone())
        }
        fn custom(
            &self,
            _t: &str,
            _c: &[String],
            _b: &[String],
            _w: Duration,
            _e: SystemTime,
            _a: &mut Audit,
        ) -> Result<Value, String> {
            Ok(self.custom.clone().unwrap_or(Value::Null))
        }
    }

    fn cfg(checks: Vec<(&str, CheckKind)>) -> AnalysisConfig {
        AnalysisConfig {
            interval: Duration::from_secs(1),
            warmup: Duration::ZERO,
            max_window: MaxWindow::Times(2.0),
            alpha: 0.05,
            fast_path_interval: Duration::from_secs(1),
            fast_path: FastPathCheck::default(),
            checks: checks
                .into_iter()
                .map(|(n, kind)| Check {
                    name: n.into(),
                    kind,
                    limits: window_limits(),
                })
                .collect(),
            source: crate::analysis::config::SourceConfig::Probe(
                crate::analysis::config::ProbeConfig {
                    urls: vec!["http://127.0.0.1:9/".into()],
                    interval: Duration::from_millis(200),
                    timeout: Duration::from_secs(1),
                    step: Duration::from_secs(5),
                },
            ),
        }
    }

    fn hosts(canary: &[&str], baseline: &[&str]) -> StageHosts {
        let now = SystemTime::now();
        StageHosts {
            canary: canary.iter().map(|s| s.to_string()).collect(),
            baseline: baseline.iter().map(|s| s.to_string()).collect(),
            wave: canary.iter().map(|s| s.to_string()).collect(),
            wave_started: now - Duration::from_secs(120),
            window_opened: now - Duration::from_secs(60),
        }
    }

    fn c(errors: u64, total: u64) -> Counts {
        Counts { errors, total }
    }

    #[test]
    fn error_rate_pools_hosts_and_missing_canary_is_error() {
        let mut t = Table::default();
        t.counts.insert("h1".into(), c(100, 2000));
        for h in ["h2", "h3", "h4"] {
            t.counts.insert(h.into(), c(2, 2000));
        }
        let a = cfg(vec![(
            "error_rate",
            CheckKind::ErrorRate(ErrorRateCheck {
                max_rate: None,
                ..Default::default()
            }),
        )]);
        let r = evaluate(
            &a,
            &t,
            &hosts(&["h1"], &["h2", "h3", "h4"]),
            Duration::from_secs(1),
            SystemTime::now(),
        );
        assert_eq!(r[0].verdict, Verdict::Fail, "{}", r[0].reason);
        assert_eq!(r[0].detail["baseline"]["n"], json!(6000));
        assert_eq!(t.asked.lock().unwrap()[0], "counts h1,h2,h3,h4");
        // A canary host without data: Error, never a pass.
        let r = evaluate(
            &a,
            &t,
            &hosts(&["h1", "h9"], &["h2"]),
            Duration::from_secs(1),
            SystemTime::now(),
        );
        assert_eq!(r[0].verdict, Verdict::Error);
        assert!(r[0].reason.contains("h9"), "{}", r[0].reason);
        // A failed query: Error.
        t.fail = true;
        let r = evaluate(
            &a,
            &t,
            &hosts(&["h1"], &["h2"]),
            Duration::from_secs(1),
            SystemTime::now(),
        );
        assert_eq!(r[0].verdict, Verdict::Error);
        assert!(r[0].reason.contains("connection refused"));
    }

    #[test]
    fn last_stage_compares_with_its_own_past() {
        let mut t = Table::default();
        t.counts.insert("h5".into(), c(0, 3000));
        t.before.insert("h5".into(), c(1, 3000));
        let a = cfg(vec![(
            "error_rate",
            CheckKind::ErrorRate(ErrorRateCheck::default()),
        )]);
        let r = evaluate(
            &a,
            &t,
            &hosts(&["h5"], &[]),
            Duration::from_secs(1),
            SystemTime::now(),
        );
        assert_eq!(r[0].verdict, Verdict::Pass, "{}", r[0].reason);
        assert_eq!(r[0].detail["weaker_evidence"], json!(true));
        assert_eq!(r[0].detail["historical_baseline"], json!(true));
        assert_eq!(r[0].detail["baseline"]["n"], json!(3000));
    }

    #[test]
    fn latency_success_min_requests_and_custom() {
        let mut t = Table::default();
        t.latency.insert(
            "h1".into(),
            (0..40).map(|i| 210.0 + (i % 7) as f64).collect(),
        );
        t.latency
            .insert("h2".into(), (0..40).map(|i| 5.0 + (i % 5) as f64).collect());
        t.counts.insert("h1".into(), c(30, 1000));
        t.counts.insert("h2".into(), c(0, 1000));
        t.custom = Some(json!(150.0));
        let a = cfg(vec![
            (
                "latency_p95",
                CheckKind::Latency {
                    quantile: 0.95,
                    check: LatencyCheck {
                        max_ms: None,
                        max_ratio: None,
                        ..Default::default()
                    },
                },
            ),
            (
                "success_rate",
                CheckKind::SuccessRate {
                    min: 0.99,
                    min_requests: 100,
                },
            ),
            ("traffic", CheckKind::MinRequests { min: 5000 }),
            (
                "queue",
                CheckKind::Query {
                    query: "q".into(),
                    success: None,
                    failure: Some("result > 100".into()),
                },
            ),
        ]);
        let r = evaluate(
            &a,
            &t,
            &hosts(&["h1"], &["h2"]),
            Duration::from_secs(1),
            SystemTime::now(),
        );
        let v: Vec<Verdict> = r.iter().map(|r| r.verdict).collect();
        assert_eq!(
            v,
            [
                Verdict::Fail,
                Verdict::Fail,
                Verdict::Inconclusive,
                Verdict::Fail
            ],
            "{r:#?}"
        );
        assert!(r[0].detail["p_value"].as_f64().unwrap() < 1e-6);
        // success_rate and min_requests read the same counts: asked once.
        assert_eq!(t.asked.lock().unwrap().len(), 1, "{:?}", t.asked);
        // No data from a custom query: Error.
        t.custom = None;
        let r = evaluate(
            &a,
            &t,
            &hosts(&["h1"], &["h2"]),
            Duration::from_secs(1),
            SystemTime::now(),
        );
        assert_eq!(r[3].verdict, Verdict::Error);
    }

    #[test]
    fn fast_path_per_host_and_down_targets() {
        let mut t = Table::default();
        t.counts.insert("h1".into(), c(2, 100));
        t.counts.insert("h2".into(), c(30, 100));
        let a = cfg(vec![]);
        let f = fast_path(
            &a,
            &t,
            &hosts(&["h1", "h2"], &["h3"]),
            Duration::from_secs(30),
            SystemTime::now(),
        )
        .unwrap();
        assert!(f.reason.contains("on h2"), "{}", f.reason);
        t.counts.insert("h2".into(), c(3, 100));
        assert!(
            fast_path(
                &a,
                &t,
                &hosts(&["h1", "h2"], &["h3"]),
                Duration::from_secs(30),
                SystemTime::now()
            )
            .is_none()
        );
        t.down = vec!["h1".into()];
        let f = fast_path(
            &a,
            &t,
            &hosts(&["h1", "h2"], &["h3"]),
            Duration::from_secs(30),
            SystemTime::now(),
        )
        .unwrap();
        assert!(f.reason.contains("down on h1"), "{}", f.reason);
    }
}
