//! `monitoring/`: the alert and recording rules checked and unit-tested by the real `promtool`,
//! the Grafana dashboard checked structurally and every query compiled by promtool, and the
//! real-Prometheus helper (`rampart_tests::prometheus`) shown scraping, querying and evaluating
//! the shipped rules.
//!
//! The Prometheus test scrapes a small fixed exposition served by a thread of this test: it tests
//! the helper and the rules, not the controller (whose own end-to-end test scrapes the real
//! controller with the same helper).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rampart_tests::prometheus::{
    Job, Prometheus, alert_rules, dashboard, dashboard_exprs, monitoring_dir, promtool,
    promtool_check_exprs, promtool_in, recording_rules,
};

/// The alerts issue 15 names.
const ALERTS: [&str; 11] = [
    "DeploymentRollbackTriggered",
    "MultipleRollbacksInWindow",
    "DeploymentHealthCheckFailed",
    "DeploymentPartialState",
    "DeploymentRollbackFailed",
    "DeploymentTakingTooLong",
    "DeploymentSuccessRateLow",
    "SafeguardMetricsMissing",
    "DeploymentQueueBacklog",
    "DeploymentConcurrencyLockStale",
    "DeploymentPostmortemOverdue",
];

/// The controller's metric names (issue 15's table); a rule or panel naming another is a typo.
const METRICS: [&str; 22] = [
    "rampart_deployments_started_total",
    "rampart_deployments_completed_total",
    "rampart_rollbacks_total",
    "rampart_deployment_duration_seconds",
    "rampart_rollback_duration_seconds",
    "rampart_health_check_failures_total",
    "rampart_deployment_in_progress",
    "rampart_deployment_queue_length",
    "rampart_deployment_lock_held_seconds",
    "rampart_deployment_state_inconsistency_detected",
    "rampart_environment_version_info",
    "rampart_host_version_info",
    "rampart_agent_up",
    "rampart_incidents_open",
    "rampart_incident_postmortem_overdue",
    "rampart_notifications_failed_total",
    "rampart_notification_outbox_pending",
    "rampart_build_info",
    // The canary analysis (issue 17).
    "rampart_analysis_runs_total",
    "rampart_analysis_check_verdict",
    "rampart_canary_hosts_ratio",
    // The recording rules' own series are named level:metric:operations, not matched here.
    "rampart_deployment_success",
];

/// The `rampart_…` metric names `expr` mentions, histogram suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("rampart_") {
        let start = i + pos;
        let preceded = start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // In `environment:rampart_x:ratio_1d` (a recording rule) the middle part is taken.
        if !preceded {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

fn assert_known_metrics(what: &str, expr: &str) {
    for m in metric_names(expr) {
        assert!(
            METRICS.contains(&m.as_str()),
            "{what}: unknown metric {m} in {expr}"
        );
    }
}

#[test]
fn rule_files_pass_promtool_check_with_fatal_lint() {
    let run = promtool(&[
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        "prometheus/rampart-alerts.yml",
        "prometheus/rampart-recording.yml",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("SUCCESS: 11 rules found"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("SUCCESS: 3 rules found"),
        "{}",
        run.stdout
    );
}

#[test]
fn promtool_unit_tests_pass_and_catch_a_broken_rule() {
    let run = promtool(&[
        "test",
        "rules",
        "prometheus/tests/rampart-alerts-test.yml",
        "prometheus/tests/rampart-recording-test.yml",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.matches("SUCCESS").count(), 2, "{}", run.stdout);

    // The unit tests bite: a copy of the rules with one threshold and one recording rule broken
    // fails them, naming what broke.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("prometheus");
    std::fs::create_dir_all(p.join("tests")).unwrap();
    let alerts = std::fs::read_to_string(alert_rules()).unwrap();
    let broken = alerts.replace(
        "rampart_deployment_lock_held_seconds) > 600",
        "rampart_deployment_lock_held_seconds) > 6000",
    );
    assert_ne!(broken, alerts, "the threshold to break is in the alerts");
    std::fs::write(p.join("rampart-alerts.yml"), broken).unwrap();
    let rec = std::fs::read_to_string(recording_rules()).unwrap();
    let broken = rec.replacen("histogram_quantile(0.95,", "histogram_quantile(0.5,", 1);
    assert_ne!(broken, rec);
    std::fs::write(p.join("rampart-recording.yml"), broken).unwrap();
    for t in ["rampart-alerts-test.yml", "rampart-recording-test.yml"] {
        std::fs::copy(
            monitoring_dir().join("prometheus/tests").join(t),
            p.join("tests").join(t),
        )
        .unwrap();
    }
    let run = promtool_in(
        &p,
        &[
            "test",
            "rules",
            "tests/rampart-alerts-test.yml",
            "tests/rampart-recording-test.yml",
        ],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("alertname: DeploymentTakingTooLong"), "{out}");
    assert!(
        out.contains("environment:rampart_deployment_duration_seconds:p95_1d"),
        "{out}"
    );
    assert!(!out.contains("alertname: DeploymentQueueBacklog"), "{out}");
}

/// Every alert has a test where it fires and one where it stays silent.
#[test]
fn every_alert_is_unit_tested_firing_and_silent() {
    let text =
        std::fs::read_to_string(monitoring_dir().join("prometheus/tests/rampart-alerts-test.yml"))
            .unwrap();
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            let e = seen.entry(name).or_default();
            if rest.trim() == "[]" {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
    }
    for a in ALERTS {
        assert_eq!(
            seen.get(a),
            Some(&(true, true)),
            "{a}: needs a case where it fires and one where it is silent"
        );
    }
    assert_eq!(
        seen.len(),
        ALERTS.len(),
        "tests of unknown alerts: {seen:?}"
    );
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    let uid = d["uid"].as_str().unwrap_or_default();
    assert!(
        (8..=40).contains(&uid.len()),
        "uid {uid:?}: 8 to 40 characters"
    );
    assert_eq!(
        uid, "rampart-deployments",
        "the uid stays stable for provisioning"
    );
    assert!(!d["title"].as_str().unwrap_or_default().is_empty());
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let env = var("environment");
    assert_eq!(env["type"], "query");
    let q = env["query"]["query"]
        .as_str()
        .or(env["query"].as_str())
        .unwrap_or_default();
    assert!(
        q.starts_with("label_values(") && q.ends_with(", environment)"),
        "environment from label_values: {q}"
    );
    assert_known_metrics("environment variable", q);

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(String, [i64; 4])> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "{title}: duplicate id"
        );
        assert!(
            !p["type"].as_str().unwrap_or_default().is_empty(),
            "{title}: no type"
        );
        let g = &p["gridPos"];
        let r = ["x", "y", "w", "h"].map(|k| {
            g[k].as_i64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k} not an integer"))
        });
        let [x, y, w, h] = r;
        assert!(
            x >= 0 && y >= 0 && w >= 1 && h >= 1 && x + w <= 24,
            "{title}: gridPos {g}"
        );
        for (other, [ox, oy, ow, oh]) in &rects {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        rects.push((title.to_string(), r));
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: datasource variable"
        );
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "{title}: a target without expr");
            assert!(
                refs.insert(t["refId"].as_str().unwrap_or_default()),
                "{title}: refId twice"
            );
            assert!(
                expr.contains(r#"environment=~"$environment""#)
                    || expr.contains(r#"job="rampart-controller""#),
                "{title}: {expr} ignores the environment variable"
            );
            assert_known_metrics(title, expr);
        }
    }
    let types: BTreeMap<&str, &str> = panels
        .iter()
        .map(|p| (p["title"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    for (title, ty) in [
        ("Rollbacks by reason", None),
        ("Health-check failure rate", None),
        ("Success vs rollback ratio", Some("gauge")),
        ("Time to detect and roll back", Some("heatmap")),
        ("Safeguard status", Some("stat")),
        ("Recent incidents", Some("table")),
        ("Deployment duration p95", None),
        ("Versions per host", None),
    ] {
        let got = types
            .get(title)
            .unwrap_or_else(|| panic!("no panel {title:?}: {types:?}"));
        if let Some(ty) = ty {
            assert_eq!(*got, ty, "{title}");
        }
    }
    // The gauge's target is SC-001's 95 %.
    let gauge = panels.iter().find(|p| p["type"] == "gauge").unwrap();
    let steps = gauge["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap();
    assert!(
        steps.iter().any(|s| s["value"] == 0.95),
        "gauge threshold at 95 %: {steps:?}"
    );
}

#[test]
fn every_dashboard_query_compiles_with_promtool() {
    let tmp = tempfile::tempdir().unwrap();
    for env in ["production", ".*"] {
        let exprs = dashboard_exprs(env);
        assert!(exprs.len() >= 8, "{exprs:?}");
        for (title, e) in &exprs {
            assert!(!e.contains('$'), "{title}: a variable left in {e}");
        }
        let run = promtool_check_exprs(tmp.path(), &exprs);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout
                .contains(&format!("SUCCESS: {} rules found", exprs.len())),
            "{}",
            run.stdout
        );
    }
    // The check fails on a query that does not parse.
    let run = promtool_check_exprs(tmp.path(), &[("bad".into(), "sum(rate(x[5m])".into())]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
}

/// A fixed exposition of the controller's metrics for `production` after `n` scrapes: per
/// scrape 9 deployments succeed within 300 s and one is rolled back (health) after 600–900 s.
fn exposition(n: u64) -> String {
    let e = r#"environment="production""#;
    let mut s = String::new();
    let mut line = |l: String| {
        if let Some(name) = l.strip_prefix("# TYPE ").and_then(|t| t.split(' ').next())
            && name != "rampart_build_info"
        {
            s.push_str(&format!("# HELP {name} Fixed test value.\n"));
        }
        s.push_str(&l);
        s.push('\n');
    };
    line("# HELP rampart_build_info The controller's version.".into());
    line("# TYPE rampart_build_info gauge".into());
    line(r#"rampart_build_info{version="0.0.0-test"} 1"#.into());
    line("# TYPE rampart_deployments_started_total counter".into());
    line(format!(
        r#"rampart_deployments_started_total{{{e},kind="deploy"}} {}"#,
        10 * n
    ));
    line(format!(
        r#"rampart_deployments_started_total{{{e},kind="rollback"}} 0"#
    ));
    line("# TYPE rampart_deployments_completed_total counter".into());
    line(format!(
        r#"rampart_deployments_completed_total{{{e},outcome="succeeded"}} {}"#,
        9 * n
    ));
    line(format!(
        r#"rampart_deployments_completed_total{{{e},outcome="rolled_back"}} {n}"#
    ));
    line("# TYPE rampart_rollbacks_total counter".into());
    line(format!(
        r#"rampart_rollbacks_total{{{e},reason="health"}} {n}"#
    ));
    line("# TYPE rampart_deployment_duration_seconds histogram".into());
    for (outcome, counts) in [
        ("succeeded", [0, 9 * n, 9 * n, 9 * n, 9 * n, 9 * n, 9 * n]),
        ("rolled_back", [0, 0, 0, n, n, n, n]),
    ] {
        for (le, c) in ["60", "300", "600", "900", "1800", "3600", "+Inf"]
            .iter()
            .zip(counts)
        {
            line(format!(
                r#"rampart_deployment_duration_seconds_bucket{{{e},outcome="{outcome}",le="{le}"}} {c}"#
            ));
        }
        line(format!(
            r#"rampart_deployment_duration_seconds_sum{{{e},outcome="{outcome}"}} {}"#,
            counts[6] * 200
        ));
        line(format!(
            r#"rampart_deployment_duration_seconds_count{{{e},outcome="{outcome}"}} {}"#,
            counts[6]
        ));
    }
    line("# TYPE rampart_rollback_duration_seconds histogram".into());
    for (le, c) in [("10", 0), ("30", n), ("+Inf", n)] {
        line(format!(
            r#"rampart_rollback_duration_seconds_bucket{{{e},le="{le}"}} {c}"#
        ));
    }
    line(format!(
        r#"rampart_rollback_duration_seconds_sum{{{e}}} {}"#,
        20 * n
    ));
    line(format!(
        r#"rampart_rollback_duration_seconds_count{{{e}}} {n}"#
    ));
    line("# TYPE rampart_health_check_failures_total counter".into());
    line(format!(
        r#"rampart_health_check_failures_total{{{e},category="critical",check="http"}} {n}"#
    ));
    for (name, labels, v) in [
        ("rampart_deployment_in_progress", String::new(), 1),
        ("rampart_deployment_queue_length", String::new(), 3),
        ("rampart_deployment_lock_held_seconds", String::new(), 42),
        (
            "rampart_deployment_state_inconsistency_detected",
            String::new(),
            0,
        ),
        (
            "rampart_environment_version_info",
            r#",version="1.2.0""#.into(),
            1,
        ),
        (
            "rampart_host_version_info",
            r#",host="web-1",component="app",version="1.2.0""#.into(),
            1,
        ),
        ("rampart_agent_up", r#",host="web-1""#.into(), 1),
        ("rampart_incidents_open", r#",severity="warning""#.into(), 2),
        ("rampart_incident_postmortem_overdue", String::new(), 1),
        (
            "rampart_notification_outbox_pending",
            r#",sink="slack""#.into(),
            0,
        ),
    ] {
        line(format!("# TYPE {name} gauge"));
        line(format!("{name}{{{e}{labels}}} {v}"));
    }
    line("# TYPE rampart_notifications_failed_total counter".into());
    line(format!(
        r#"rampart_notifications_failed_total{{{e},sink="slack"}} 0"#
    ));
    // The canary analysis: one pass per scrape, the latest verdict of each check, a third of
    // the fleet judged.
    line("# TYPE rampart_analysis_runs_total counter".into());
    line(format!(
        r#"rampart_analysis_runs_total{{{e},verdict="pass"}} {n}"#
    ));
    line("# TYPE rampart_analysis_check_verdict gauge".into());
    for (verdict, v) in [("pass", 1), ("fail", 0)] {
        line(format!(
            r#"rampart_analysis_check_verdict{{{e},check="error_rate",verdict="{verdict}"}} {v}"#
        ));
    }
    line("# TYPE rampart_canary_hosts_ratio gauge".into());
    line(format!(r#"rampart_canary_hosts_ratio{{{e}}} 0.33"#));
    // The application's own metrics on web-1 (the canary panels join them with its version):
    // 100 requests per scrape, one a 500, all under 50 ms.
    line("# TYPE http_requests_total counter".into());
    line(format!(
        r#"http_requests_total{{host="web-1",code="200"}} {}"#,
        99 * n
    ));
    line(format!(
        r#"http_requests_total{{host="web-1",code="500"}} {n}"#
    ));
    line("# TYPE http_request_duration_seconds histogram".into());
    for (le, c) in [("0.05", 100 * n), ("+Inf", 100 * n)] {
        line(format!(
            r#"http_request_duration_seconds_bucket{{host="web-1",le="{le}"}} {c}"#
        ));
    }
    line(format!(
        r#"http_request_duration_seconds_sum{{host="web-1"}} {}"#,
        2 * n
    ));
    line(format!(
        r#"http_request_duration_seconds_count{{host="web-1"}} {}"#,
        100 * n
    ));
    s
}

/// Serves [`exposition`] on 127.0.0.1 (one connection at a time, `Connection: close`) until
/// dropped or for at most five minutes; counts the scrapes.
struct MetricsServer {
    addr: String,
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    fn start() -> MetricsServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), scrapes.clone());
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while req.len() < 8192 && !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let (status, body) = if req.starts_with(b"GET /metrics ") {
                    ("200 OK", exposition(c.fetch_add(1, Ordering::Relaxed) + 1))
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        MetricsServer {
            addr,
            stop,
            scrapes,
            thread: Some(thread),
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn one(samples: &[(BTreeMap<String, String>, f64)], what: &str) -> f64 {
    assert_eq!(samples.len(), 1, "{what}: {samples:?}");
    samples[0].1
}

#[test]
fn real_prometheus_scrapes_queries_and_evaluates_the_rules() {
    // The fixed exposition is promtool-clean (what the controller's output must also be).
    let tmp = tempfile::tempdir().unwrap();
    let prom_file = rampart_tests::write_file(tmp.path(), "fixed.prom", &exposition(3));
    let mut cmd = std::process::Command::new(rampart_tests::prometheus::promtool_bin());
    cmd.args(["check", "metrics"])
        .stdin(std::fs::File::open(&prom_file).unwrap());
    let out = cmd.output().expect("promtool check metrics");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let server = MetricsServer::start();
    let prom = Prometheus::start(
        &[Job::new("rampart-controller", &[&server.addr])],
        &[&alert_rules(), &recording_rules()],
    );
    prom.wait_targets_up(Duration::from_secs(30));
    let t = Duration::from_secs(30);

    // Gauges, with the scrape's labels.
    let q = prom.wait_for(
        r#"rampart_deployment_queue_length{environment="production"}"#,
        t,
    );
    assert_eq!(one(&q, "queue"), 3.0);
    assert_eq!(q[0].0["job"], "rampart-controller");
    assert_eq!(q[0].0["instance"], server.addr);
    assert_eq!(
        one(&prom.query(r#"up{job="rampart-controller"}"#), "up"),
        1.0
    );
    let hosts = prom.query("rampart_host_version_info");
    assert_eq!(hosts[0].0["version"], "1.2.0");
    assert!(prom.query("rampart_no_such_metric").is_empty());
    let err = prom.try_query("sum(").unwrap_err();
    assert!(err.contains("bad_data"), "{err}");

    // Counters advance per scrape; the helper sees them grow.
    let first = one(
        &prom.query(r#"rampart_rollbacks_total{reason="health"}"#),
        "rollbacks",
    );
    prom.wait_until(r#"rampart_rollbacks_total{reason="health"}"#, t, |s| {
        s.len() == 1 && s[0].1 >= first + 2.0
    });

    // Every rule loaded and evaluates without error.
    let deadline = Instant::now() + t;
    let rules = loop {
        let r = prom.rules_health();
        if r.len() == 14 && r.iter().all(|r| r.health == "ok") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rules.len(), 14, "{rules:?}");
    for r in &rules {
        assert_eq!(
            (r.health.as_str(), r.last_error.as_str()),
            ("ok", ""),
            "{r:?}"
        );
    }
    let names: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.kind == "alerting")
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ALERTS.into_iter().collect());

    // The alerts' labels and annotations as Prometheus loaded them; runbook anchors exist.
    let runbook = std::fs::read_to_string(monitoring_dir().join("RUNBOOK.md")).unwrap();
    let data = prom.api("/api/v1/rules", &[("type", "alert")]).unwrap();
    for g in data["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            let sev = r["labels"]["severity"].as_str().unwrap_or_default();
            let want: &[&str] = if name == "DeploymentRollbackFailed" {
                &["critical"]
            } else {
                &["critical", "warning"]
            };
            assert!(want.contains(&sev), "{name}: severity {sev:?}");
            for k in ["summary", "description", "runbook_url"] {
                assert!(
                    !r["annotations"][k].as_str().unwrap_or_default().is_empty(),
                    "{name}: {k}"
                );
            }
            let url = r["annotations"]["runbook_url"].as_str().unwrap();
            let anchor = url
                .rsplit_once("RUNBOOK.md#")
                .map(|x| x.1)
                .unwrap_or_else(|| panic!("{name}: {url}"));
            assert_eq!(anchor, name.to_lowercase(), "{name}: {url}");
            assert!(
                runbook.lines().any(|l| l == format!("## {name}")),
                "RUNBOOK.md lacks ## {name}"
            );
            assert_known_metrics(name, r["query"].as_str().unwrap());
        }
    }

    // SC-001 and SC-002 as recorded: 9 of 10 succeed; p95 = 600 + (9.5 - 9) / 1 * 300 = 750 s.
    let ratio = prom.wait_for(
        r#"environment:rampart_deployment_success:ratio_1d{environment="production"}"#,
        t,
    );
    assert!((one(&ratio, "ratio_1d") - 0.9).abs() < 1e-9, "{ratio:?}");
    let ratio = prom.wait_for(
        r#"environment:rampart_deployment_success:ratio_30d{environment="production"}"#,
        t,
    );
    assert!((one(&ratio, "ratio_30d") - 0.9).abs() < 1e-9, "{ratio:?}");
    let p95 = prom.wait_for(
        r#"environment:rampart_deployment_duration_seconds:p95_1d{environment="production"}"#,
        t,
    );
    assert!((one(&p95, "p95") - 750.0).abs() < 1e-6, "{p95:?}");

    // Alerts: the success rate fires, the backlog is pending (for: 5m), healthy ones are silent.
    let firing = |name: &str, state: &str| {
        format!(r#"ALERTS{{alertname="{name}",alertstate="{state}",environment="production"}}"#)
    };
    prom.wait_for(&firing("DeploymentSuccessRateLow", "firing"), t);
    prom.wait_for(&firing("DeploymentPostmortemOverdue", "firing"), t);
    prom.wait_for(&firing("DeploymentRollbackTriggered", "firing"), t);
    prom.wait_for(&firing("DeploymentQueueBacklog", "pending"), t);
    for quiet in [
        "SafeguardMetricsMissing",
        "DeploymentTakingTooLong",
        "DeploymentConcurrencyLockStale",
        "DeploymentPartialState",
        "DeploymentRollbackFailed",
    ] {
        let a = prom.query(&format!(r#"ALERTS{{alertname="{quiet}"}}"#));
        assert!(a.is_empty(), "{quiet} should be silent: {a:?}");
    }

    // Every dashboard query returns data from this scrape (the controller's own test does the
    // same against a real controller).
    let env_values = prom.query("count by (environment) (rampart_deployment_in_progress)");
    assert_eq!(env_values[0].0["environment"], "production");
    for (title, expr) in dashboard_exprs("production") {
        let s = prom.wait_for(&expr, t);
        assert!(
            s.iter().any(|x| !x.1.is_nan()),
            "{title}: {expr} gave only NaN: {s:?}"
        );
    }
    let gauge = dashboard_exprs("production")
        .into_iter()
        .find(|(t, _)| t == "Success vs rollback ratio / A")
        .unwrap();
    assert!((one(&prom.query(&gauge.1), "gauge") - 0.9).abs() < 1e-9);
    assert!(server.scrapes.load(Ordering::Relaxed) >= 3);

    // Killed by pid on drop.
    let pid = prom.pid();
    drop(prom);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "prometheus {pid} still runs"
    );
}

/// The metric-name check itself.
#[test]
fn metric_names_are_extracted() {
    let got = metric_names(
        r#"sum(rate(rampart_deployment_duration_seconds_bucket{job="rampart-controller"}[5m])) / environment:rampart_deployment_success:ratio_1d + xrampart_z + rampart_agent_up"#,
    );
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [
            "rampart_agent_up",
            "rampart_deployment_duration_seconds",
            "rampart_deployment_success"
        ]
    );
}
