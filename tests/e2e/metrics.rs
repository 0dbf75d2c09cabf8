//! The controller's `/metrics`, `/healthz` and `grpc.health.v1`, driven by real deployments
//! that succeed, roll back and fail to roll back.

use std::process::Command;
use std::time::Duration;

use rampart_tests::deploy::free_port;
use rampart_tests::fleet::{Fleet, finished};
use rampart_tests::prometheus::{Job, Prometheus, alert_rules, dashboard_exprs, recording_rules};
use serde_json::Value;

/// `curl -fsS URL` (extra args first): the body, or the error.
fn curl(url: &str, extra: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(extra)
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    if !out.status.success() || !code.starts_with('2') {
        return Err(format!(
            "{code}: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(body.to_string())
}

/// The value of the sample whose line starts with `series` (name and labels exactly).
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` on a page: its complaints (empty when clean).
pub fn promtool_check_metrics(page: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// h1 serves every version on the wrong port once `broken` exists in its scenario dir: its
/// health checks fail, the new version's and the restored one's alike (a rollback that fails).
fn breakable(vars: &mut Value, marker: &str, other_port: u16) {
    let start = vars["components"][0]["service"]["start"]
        .as_str()
        .unwrap()
        .to_string();
    let (prefix, rest) = start.split_once("SAMPLE_APP_LISTEN=127.0.0.1:").unwrap();
    let (port, tail) = rest.split_once(' ').unwrap();
    vars["components"][0]["service"]["start"] = Value::String(format!(
        "{prefix}p={port}; [ -e {marker} ] && p={other_port}; SAMPLE_APP_LISTEN=127.0.0.1:$p {tail}"
    ));
    vars["health_retries"] = Value::from(4);
}

#[test]
fn deployments_that_succeed_roll_back_and_fail_to_roll_back_are_counted_and_timed() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let other = free_port();
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("broken");
    let m = marker.display().to_string();
    let fleet = Fleet::start_with_toml(
        2,
        "serial = 1\n",
        &format!("[metrics]\nlisten = \"{metrics}\"\n[consistency]\ninterval_seconds = 1\n"),
        |i, vars| {
            if i == 0 {
                breakable(vars, &m, other);
            }
        },
    );
    let url = format!("http://{metrics}/metrics");
    assert_eq!(
        curl(&format!("http://{metrics}/healthz"), &[]).unwrap(),
        "ok\n"
    );
    let err = curl(&format!("http://{metrics}/nothing"), &[]).unwrap_err();
    assert!(err.starts_with("404"), "{err}");

    let page = curl(&url, &[]).unwrap();
    let lint = promtool_check_metrics(&page);
    assert!(
        lint.trim().is_empty(),
        "promtool check metrics: {lint}\n{page}"
    );
    assert_eq!(
        sample(&page, "rampart_build_info{version=\"0.1.0\"}"),
        Some(1.0),
        "{page}"
    );
    // Nothing ran yet: the configured environment's gauges and counters are there, at zero
    // (so that `increase()` sees the first deployment).
    assert_eq!(
        sample(
            &page,
            "rampart_deployment_in_progress{environment=\"prod\"}"
        ),
        Some(0.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "rampart_deployments_started_total{environment=\"prod\",kind=\"deploy\"}"
        ),
        Some(0.0)
    );

    // A real Prometheus scrapes the controller from before the first deployment (every second),
    // with the shipped alert and recording rules.
    let prom = Prometheus::start(
        &[Job::new("rampart-controller", &[&metrics])],
        &[&alert_rules(), &recording_rules()],
    );
    prom.wait_targets_up(Duration::from_secs(30));

    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    // The broken 3.0.0 is rolled back (wave 1, h1, aborts).
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(
        finished(&r.json())["outcome"],
        "rolled_back",
        "{}",
        r.stdout
    );
    // h1 now fails every health check: 2.0.0 fails, and so does the rollback to 1.0.0.
    std::fs::write(&marker, "").unwrap();
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(
        finished(&r.json())["outcome"],
        "rollback_failed",
        "{}",
        r.stdout
    );

    let page = curl(&url, &[]).unwrap();
    let lint = promtool_check_metrics(&page);
    assert!(
        lint.trim().is_empty(),
        "promtool check metrics: {lint}\n{page}"
    );
    let s =
        |series: &str| sample(&page, series).unwrap_or_else(|| panic!("no {series} in\n{page}"));
    assert_eq!(
        s("rampart_deployments_started_total{environment=\"prod\",kind=\"deploy\"}"),
        3.0
    );
    for (outcome, n) in [
        ("succeeded", 1.0),
        ("rolled_back", 1.0),
        ("rollback_failed", 1.0),
    ] {
        assert_eq!(
            s(&format!(
                "rampart_deployments_completed_total{{environment=\"prod\",outcome=\"{outcome}\"}}"
            )),
            n,
            "{outcome}"
        );
        assert_eq!(
            s(&format!(
                "rampart_deployment_duration_seconds_count{{environment=\"prod\",outcome=\"{outcome}\"}}"
            )),
            n
        );
        let total = s(&format!(
            "rampart_deployment_duration_seconds_sum{{environment=\"prod\",outcome=\"{outcome}\"}}"
        ));
        assert!(total > 0.0 && total < 600.0, "{outcome} took {total} s");
    }
    assert_eq!(
        page.lines()
            .filter(|l| l.starts_with("rampart_rollbacks_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>(),
        1.0,
        "one fleet rollback that verified: {page}"
    );
    assert_eq!(
        s("rampart_rollback_duration_seconds_count{environment=\"prod\"}"),
        1.0
    );
    // The failed health checks of h1 are counted by category and check.
    let failures: f64 = page
        .lines()
        .filter(|l| l.starts_with("rampart_health_check_failures_total{environment=\"prod\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(failures >= 2.0, "{page}");
    assert_eq!(
        s("rampart_deployment_in_progress{environment=\"prod\"}"),
        0.0
    );
    assert_eq!(
        s("rampart_deployment_lock_held_seconds{environment=\"prod\"}"),
        0.0
    );
    assert_eq!(
        s("rampart_deployment_queue_length{environment=\"prod\"}"),
        0.0
    );
    assert_eq!(
        s("rampart_incidents_open{environment=\"prod\",severity=\"error\"}"),
        1.0
    );
    assert_eq!(
        s("rampart_incidents_open{environment=\"prod\",severity=\"critical\"}"),
        1.0
    );
    assert_eq!(
        s("rampart_incident_postmortem_overdue{environment=\"prod\"}"),
        0.0
    );

    // What Prometheus scraped: the same counters, histograms and gauges, with its labels.
    let t = Duration::from_secs(30);
    let one = |expr: &str| -> f64 {
        let got = prom.wait_for(expr, t);
        assert_eq!(got.len(), 1, "{expr}: {got:?}");
        got[0].1
    };
    prom.wait_until(
        r#"rampart_deployments_completed_total{outcome="rollback_failed"}"#,
        t,
        |s| s.len() == 1 && s[0].1 == 1.0,
    );
    assert_eq!(
        one(
            r#"sum(rampart_deployments_started_total{job="rampart-controller",environment="prod"})"#
        ),
        3.0
    );
    assert_eq!(
        one(r#"sum(rampart_deployment_duration_seconds_count{environment="prod"})"#),
        3.0
    );
    assert_eq!(
        one(r#"sum(rampart_rollbacks_total{environment="prod"})"#),
        1.0
    );
    assert_eq!(
        one(r#"rampart_incidents_open{environment="prod",severity="critical"}"#),
        1.0
    );
    assert_eq!(
        one(r#"rampart_deployment_in_progress{environment="prod"}"#),
        0.0
    );
    // The sweep (every second here) found both agents and what they run.
    prom.wait_until(r#"rampart_agent_up{environment="prod"}"#, t, |s| {
        s.len() == 2 && s.iter().all(|x| x.1 == 1.0)
    });
    prom.wait_for(
        r#"rampart_host_version_info{environment="prod",host="h2",version="1.0.0"}"#,
        t,
    );
    // The alerts a rolled-back deployment and a failed rollback raise fire on the real series.
    for alert in ["DeploymentRollbackTriggered", "DeploymentRollbackFailed"] {
        prom.wait_for(
            &format!(r#"ALERTS{{alertname="{alert}",alertstate="firing",environment="prod"}}"#),
            t,
        );
    }
    // SC-001 as recorded: 1 of 3 changes succeeded.
    // (Once the rule has evaluated after the last completion was scraped: every series began at
    // 0 when the controller started, so their increases extrapolate alike.)
    prom.wait_until(
        r#"environment:rampart_deployment_success:ratio_1d{environment="prod"}"#,
        t,
        |s| s.len() == 1 && (s[0].1 - 1.0 / 3.0).abs() < 1e-6,
    );
    // Every dashboard query returns data from this run (`wait_until` names the one that does
    // not).
    // (The canary panels need an analysis and the application's own metrics: the canary
    // test checks them.)
    for (panel, expr) in dashboard_exprs("prod") {
        if panel.starts_with("Canary") {
            continue;
        }
        prom.wait_until(&expr, t, |s| !s.is_empty());
    }
}

#[test]
fn the_api_port_answers_grpc_health_and_metrics_can_be_served_over_tls() {
    let metrics = format!("127.0.0.1:{}", free_port());
    // The fleet's certificates are made before the controller starts: the same files serve
    // the metrics listener.
    let fleet = Fleet::start_with_toml(
        1,
        "",
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\ncert = \"certs/controller.pem\"\nkey = \"certs/controller.key\"\n"
        ),
        |_, _| {},
    );
    let ca = fleet.certs().join("ca.pem");
    let page = curl(
        &format!("https://{metrics}/metrics"),
        &["--cacert", ca.to_str().unwrap()],
    );
    let page = page.unwrap_or_else(|e| panic!("metrics over TLS: {e}"));
    assert!(page.contains("rampart_build_info"), "{page}");
    let plain = curl(&format!("http://{metrics}/metrics"), &[]);
    assert!(plain.is_err(), "plaintext to a TLS listener: {plain:?}");

    // grpc.health.v1 on the API's own port, over its TLS.
    let addr = fleet.controller.as_ref().unwrap().addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let mut c = HealthClient::new(ch);
        let all = c
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        let ours = c
            .check(HealthCheckRequest {
                service: "rampart.v1.Controller".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        let unknown = c
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .unwrap_err()
            .code();
        (all, ours, unknown)
    });
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(status.0, ServingStatus::Serving as i32);
    assert_eq!(status.1, ServingStatus::Serving as i32);
    assert_eq!(status.2, tonic::Code::NotFound);
}

#[test]
fn the_sweep_finds_a_host_that_is_not_whole_opens_one_warning_incident_and_status_verify_says_so() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut fleet = Fleet::start_with_toml(
        2,
        "",
        &format!("[metrics]\nlisten = \"{metrics}\"\n[consistency]\ninterval_seconds = 1\n"),
        |_, _| {},
    );
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let url = format!("http://{metrics}/metrics");
    let wait_page = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let page = curl(&url, &[]).unwrap();
            if ok(&page) {
                return page;
            }
            assert!(std::time::Instant::now() < deadline, "{what}:\n{page}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let inconsistent = "rampart_deployment_state_inconsistency_detected{environment=\"prod\"}";
    let page = wait_page("both hosts seen whole on 1.0.0", &|p| {
        sample(
            p,
            "rampart_environment_version_info{environment=\"prod\",version=\"1.0.0\"}",
        ) == Some(1.0)
    });
    assert_eq!(sample(&page, inconsistent), Some(0.0), "{page}");
    let v = fleet.cli(&["status", "--env", "prod", "--verify", "--json"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    let j: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(j[0]["verify"]["consistent"], true, "{j:#}");
    assert_eq!(j[0]["verify"]["version"], "1.0.0", "{j:#}");

    // A staging dir left on h2 (what a transaction killed while extracting leaves).
    let staging = fleet.hosts[1]
        .scenario
        .state
        .join("apps/app/.staging-9.9.9-d-gone.h2");
    std::fs::create_dir_all(&staging).unwrap();
    let page = wait_page("the sweep sees it", &|p| {
        sample(p, inconsistent) == Some(1.0)
    });
    assert_eq!(
        sample(
            &page,
            "rampart_incidents_open{environment=\"prod\",severity=\"warning\"}"
        ),
        Some(1.0),
        "{page}"
    );
    let v = fleet.cli(&["status", "--env", "prod", "--verify"]);
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("NOT WHOLE"), "{}", v.stdout);
    assert!(v.stdout.contains("h2 app [staging_left]"), "{}", v.stdout);
    // Swept again and again: still one incident, which names the host and the problem.
    std::thread::sleep(Duration::from_secs(3));
    let l = fleet.cli(&["incidents", "--env", "prod", "--json"]);
    let list: Value = serde_json::from_str(&l.stdout).unwrap();
    let warnings: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{list:#}");
    assert_eq!(warnings[0]["hosts"], serde_json::json!(["h2"]), "{list:#}");
    let summary = warnings[0]["summary"].as_str().unwrap();
    assert!(summary.contains("staging_left"), "{summary}");

    // Cleaned up: whole again. An agent that is down is `up = 0`, not an inconsistency.
    std::fs::remove_dir(&staging).unwrap();
    fleet.kill_agent(0);
    let page = wait_page("h1 down, h2 whole", &|p| {
        sample(p, "rampart_agent_up{environment=\"prod\",host=\"h1\"}") == Some(0.0)
            && sample(p, inconsistent) == Some(0.0)
    });
    assert_eq!(
        sample(&page, "rampart_agent_up{environment=\"prod\",host=\"h2\"}"),
        Some(1.0),
        "{page}"
    );
    let v = fleet.cli(&["status", "--env", "prod", "--verify"]);
    assert_eq!(
        v.code, 1,
        "a host that cannot be asked is not verified: {}",
        v.stdout
    );
    assert!(v.stdout.contains("DOWN"), "{}", v.stdout);
}
