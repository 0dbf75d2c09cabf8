//! Canary analysis between stages, end to end: a real controller and six real agents, the
//! sample app on every host exporting Prometheus metrics, a real Prometheus scraping every app
//! with a `host` label, and a paced load generator on every host for the whole test.
//!
//! - a good 2.0.0 passes every stage (the last judged against its own window before the
//!   upgrade) and the fleet ends on it; `rampart rollback --emergency` then takes every host
//!   back at once, without analysis, verified by the critical checks only;
//! - 2.1.0 (5 % 500s) and 2.2.0 (+200 ms), which both pass their health checks, are caught in
//!   the first stage by `error_rate` and by `latency_p95`, and every upgraded host is rolled
//!   back (reason `analysis`, the check named);
//! - with too little traffic the first stage ends inconclusive and the deployment waits for
//!   approval; `rampart approve` goes on;
//! - Prometheus killed mid-analysis gives error, never pass: the deployment pauses, and an
//!   abort rolls the upgraded host back;
//! - with no Prometheus at all, the agents' probes of every host's app page (`[analysis.probe]`)
//!   catch 2.2.0's +200 ms in the first stage, and it is rolled back.

use std::time::{Duration, Instant};

use rampart_tests::deploy::free_port;
use rampart_tests::fleet::{Fleet, LiveCli, events_of, finished};
use rampart_tests::load::{Load, Target};
use rampart_tests::prometheus::{Job, Prometheus, dashboard_exprs_with};
use serde_json::Value;

const HOSTS: usize = 6;
/// Where the stages and the analysis go in the controller's configuration (replaced once v1
/// runs everywhere and Prometheus scrapes it).
const MARK: &str = "# canary analysis goes here\n";
/// Requests per second on every host's app.
const RATE: f64 = 25.0;

/// Where the analysis of a test's fleet reads its measurements.
enum Measured {
    /// A real Prometheus scraping every app.
    Prometheus,
    /// No metrics stack: the agents probe every host's app page (`backend_url`, an inventory
    /// variable of every host) every 100 ms.
    Probe,
}

/// The stages and analysis of the tests: one host judged 21 s, then half the fleet 9 s, then
/// the rest 9 s against its own window before the upgrade; evaluations every 3 s over 3 s
/// latency steps (Prometheus scrapes every second). `source` is the source's table.
fn canary_toml(source: &str, stages: &str, extra_checks: &str) -> String {
    format!(
        "{stages}\n\
         [environments.prod.analysis]\ninterval = \"3s\"\nwarmup = \"1s\"\nfast_path_interval = \"1s\"\n\
         {source}\
         [[environments.prod.analysis.checks]]\nname = \"error_rate\"\nmin_requests = 200\n\
         [[environments.prod.analysis.checks]]\nname = \"latency_p95\"\nmin_samples = 5\n{extra_checks}"
    )
}

fn prometheus_toml(prometheus: &str) -> String {
    format!(
        "[environments.prod.analysis.prometheus]\nurl = \"http://{prometheus}\"\nselector = 'job=\"app\"'\n\
         step = \"3s\"\ntimeout = \"2s\"\n"
    )
}

/// Every host's app page, 10 requests a second from its own agent (about 210 in the first
/// stage's window, enough for `error_rate`'s 200).
const PROBE_TOML: &str = "[environments.prod.analysis.probe]\nurls = [\"{{ backend_url }}/\"]\n\
    interval = \"100ms\"\ntimeout = \"2s\"\nstep = \"3s\"\n";

const STAGES: &str = "stages = [{ hosts = 1, analysis = \"21s\" }, { hosts = \"50%\", analysis = \"9s\" }, { hosts = \"100%\", analysis = \"9s\" }]";

/// A fleet on 1.0.0 under load, scraped by Prometheus (or probed by its agents), its
/// controller configured with `stages` and the analysis.
struct Canary {
    fleet: Fleet,
    /// `None` when the agents' probes measure.
    prometheus: Option<Prometheus>,
    load: Option<Load>,
}

impl Canary {
    fn start(stages: &str, extra_checks: &str, rate: Option<f64>) -> Canary {
        Canary::start_measured(Measured::Prometheus, stages, extra_checks, rate)
    }

    fn start_measured(
        measured: Measured,
        stages: &str,
        extra_checks: &str,
        rate: Option<f64>,
    ) -> Canary {
        // The controller's /metrics too (its hosts' versions every second), for the dashboard.
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut fleet = Fleet::start_with_toml(
            HOSTS,
            MARK,
            &format!("[metrics]\nlisten = \"{metrics}\"\n[consistency]\ninterval_seconds = 1\n"),
            |_, _| {},
        );
        let r = fleet.deploy("1.0.0", &[]);
        assert_eq!(finished(&r.json())["outcome"], "succeeded", "{}", r.stderr);
        let load = rate.map(|rate| {
            Load::start(
                fleet
                    .hosts
                    .iter()
                    .map(|h| Target::new(&h.name, h.scenario.port, "/"))
                    .collect(),
                rate,
                Duration::from_secs(240),
            )
        });
        let (prometheus, source) = match measured {
            Measured::Prometheus => {
                let p = Canary::scraped(&fleet, &metrics);
                let source = prometheus_toml(&p.addr);
                (Some(p), source)
            }
            Measured::Probe => (None, PROBE_TOML.to_string()),
        };
        fleet.edit_config(MARK, &canary_toml(&source, stages, extra_checks));
        fleet.kill_controller();
        fleet.restart_controller();
        Canary {
            fleet,
            prometheus,
            load,
        }
    }

    /// A Prometheus scraping every host's app, once it scrapes them all.
    fn scraped(fleet: &Fleet, controller_metrics: &str) -> Prometheus {
        let targets: Vec<(String, String)> = fleet
            .hosts
            .iter()
            .map(|h| (format!("127.0.0.1:{}", h.scenario.port), h.name.clone()))
            .collect();
        let refs: Vec<(&str, &str)> = targets
            .iter()
            .map(|(t, h)| (t.as_str(), h.as_str()))
            .collect();
        let prometheus = Prometheus::start(
            &[
                Job::hosts("app", &refs),
                Job::new("rampart-controller", &[controller_metrics]),
            ],
            &[],
        );
        // Every app scraped (and, under load, counted) before a deployment judges them.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = prometheus
                .try_query("sum(up{job=\"app\"})")
                .ok()
                .and_then(|s| s.first().map(|s| s.1))
                .unwrap_or(0.0);
            if up >= HOSTS as f64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus does not scrape every app: up = {up}\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        prometheus
    }

    fn serving(&self) -> Vec<Option<String>> {
        self.fleet.serving()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        if let Some(l) = self.load.take() {
            let _ = l.stop();
        }
    }
}

fn v(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// The analysis' JSON events of a deployment, from `rampart deployment show ID --analysis`.
fn shown_analysis(fleet: &Fleet, id: &str) -> Vec<Value> {
    let r = fleet.cli(&["deployment", "show", id, "--analysis", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("deployment show --json");
    v["analysis"].as_array().cloned().unwrap_or_default()
}

fn verdicts(lines: &[Value]) -> Vec<(u64, String, String)> {
    lines
        .iter()
        .filter(|v| v["type"] == "analysis_finished")
        .map(|v| {
            (
                v["after_wave"].as_u64().unwrap(),
                v["verdict"].as_str().unwrap().to_string(),
                v["check"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_good_release_passes_every_stage() {
    let c = Canary::start(STAGES, "", Some(RATE));
    let r = c.fleet.deploy("2.0.0", &[]);
    let lines = r.json();
    let deploy_lines = lines.clone();
    let f = finished(&lines);
    assert_eq!(f["outcome"], "succeeded", "{lines:#?}\n{}", r.stderr);
    assert_eq!(
        verdicts(&lines),
        vec![
            (0, "pass".into(), String::new()),
            (1, "pass".into(), String::new()),
            (2, "pass".into(), String::new()),
        ],
        "{lines:#?}"
    );
    let started = events_of(&r, "analysis_started");
    assert_eq!(started[0]["canary_hosts"], serde_json::json!(["h1"]));
    assert_eq!(started[0]["baseline_hosts"].as_array().unwrap().len(), 5);
    assert_eq!(started[1]["canary_hosts"].as_array().unwrap().len(), 3);
    // The last stage has no baseline left: its hosts against their own past, flagged.
    assert_eq!(started[2]["historical_baseline"], true);
    assert_eq!(started[2]["baseline_hosts"], serde_json::json!([]));
    assert_eq!(c.serving(), vec![v("2.0.0"); HOSTS]);
    // Every decision carries what it was computed from.
    let id = f["deployment_id"].as_str().unwrap();
    let shown = shown_analysis(&c.fleet, id);
    let evals: Vec<&Value> = shown
        .iter()
        .filter(|e| e["type"] == "analysis_evaluated")
        .collect();
    assert!(evals.len() >= 3, "{shown:#?}");
    let last_of_first = evals
        .iter()
        .rfind(|e| e["after_wave"] == 0)
        .expect("an evaluation of the first stage");
    let err = &last_of_first["checks"][0];
    assert_eq!(err["check"], "error_rate");
    assert_eq!(err["verdict"], "pass", "{err:#}");
    assert!(
        err["detail"]["canary"]["n"].as_u64().unwrap() >= 200,
        "{err:#}"
    );
    assert!(
        err["detail"]["minimum_detectable_effect"].is_number(),
        "{err:#}"
    );
    assert!(
        err["detail"]["queries"][0]["query"]
            .as_str()
            .unwrap()
            .contains("http_requests_total"),
        "{err:#}"
    );
    let lat = &last_of_first["checks"][1];
    assert_eq!(lat["check"], "latency_p95");
    assert_eq!(lat["verdict"], "pass", "{lat:#}");
    assert!(lat["detail"]["p_value"].is_number(), "{lat:#}");
    // The text form names the stages and the verdicts.
    let t = c.fleet.cli(&["deployment", "show", id, "--analysis"]);
    assert!(t.stdout.contains("=> PASS"), "{}", t.stdout);
    let prom = c.prometheus.as_ref().expect("the Prometheus fleet");
    // The dashboard's canary panels show this fleet: its app's traffic by version, the
    // analyses' verdicts and checks.
    for (panel, expr) in dashboard_exprs_with("prod", "10m", "30s") {
        if panel.starts_with("Canary") {
            let s = prom.wait_until(&expr, Duration::from_secs(30), |s| !s.is_empty());
            if panel.contains("by version") {
                assert!(
                    s.iter()
                        .any(|x| x.0.get("version").map(String::as_str) == Some("2.0.0")),
                    "{panel}: {s:?}"
                );
            }
        }
    }
    let runs = prom.query(r#"rampart_analysis_runs_total{environment="prod",verdict="pass"}"#);
    assert_eq!(runs.first().map(|r| r.1), Some(3.0), "{runs:?}");
    // An emergency rollback: every host at once, no analysis, the critical checks only.
    let r = c.fleet.cli(&[
        "rollback",
        "--env",
        "prod",
        "--to",
        "1.0.0",
        "--reason",
        "e2e: emergency",
        "--emergency",
        "--json",
    ]);
    let lines = r.json();
    assert_eq!(
        finished(&lines)["outcome"],
        "succeeded",
        "{lines:#?}\n{}",
        r.stderr
    );
    let planned = events_of(&r, "planned");
    assert_eq!(
        planned[0]["waves"].as_array().unwrap().len(),
        1,
        "{planned:#?}"
    );
    assert!(events_of(&r, "analysis_started").is_empty(), "{lines:#?}");
    let verified: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["type"] == "host_event"
                && v["event"]["type"] == "task_finished"
                && v["event"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("verify 1.0.0 is healthy"))
        })
        .collect();
    assert_eq!(verified.len(), HOSTS, "{lines:#?}");
    // Fewer checks than the deploy's own verification ran: the warning and optional ones
    // were left out.
    let checks = |msg: &Value| -> usize {
        let m = msg.as_str().unwrap_or("");
        m.split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{m}"))
    };
    let deployed = deploy_lines
        .iter()
        .find(|v| {
            v["type"] == "host_event"
                && v["event"]["type"] == "task_finished"
                && v["event"]["action"] == "health"
        })
        .expect("the deploy's health suite");
    let (all, critical) = (
        checks(&deployed["event"]["msg"]),
        checks(&verified[0]["event"]["msg"]),
    );
    assert!(
        critical < all && critical > 0,
        "{critical} of {all}: {:#}",
        verified[0]
    );
    assert_eq!(c.serving(), vec![v("1.0.0"); HOSTS]);
}

/// Deploys `version` (healthy by its checks, bad by its traffic) and checks it was caught by
/// `check` in the first stage and rolled back on the upgraded host.
fn caught_in_the_first_stage(version: &str, check: &str) {
    let c = Canary::start(STAGES, "", Some(RATE));
    caught_by(&c, version, check);
}

/// Deploys `version` on `c` and checks it was caught by `check` in the first stage and rolled
/// back on the upgraded host; the deployment's output.
fn caught_by(c: &Canary, version: &str, check: &str) -> Vec<Value> {
    let r = c.fleet.deploy(version, &[]);
    let lines = r.json();
    let f = finished(&lines);
    assert_eq!(f["outcome"], "rolled_back", "{lines:#?}\n{}", r.stderr);
    assert_eq!(
        verdicts(&lines),
        vec![(0, "fail".into(), check.to_string())],
        "{lines:#?}"
    );
    // Its health checks passed: the host itself succeeded before the analysis judged it.
    let h1 = events_of(&r, "host_finished")
        .into_iter()
        .find(|h| h["host"] == "h1" && h["fleet_rescue"] == false)
        .expect("h1's own transaction");
    assert_eq!(h1["state"], "succeeded", "{h1:#}");
    let rescue = events_of(&r, "fleet_rescue_started");
    assert_eq!(rescue[0]["hosts"], serde_json::json!(["h1"]), "{rescue:#?}");
    let reason = rescue[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("canary analysis failed") && reason.contains(check),
        "{reason}"
    );
    assert_eq!(c.serving(), vec![v("1.0.0"); HOSTS]);
    // Counted as an analysis rollback, and the analysis as failed (the controller's /metrics,
    // scraped by the Prometheus fleet's Prometheus).
    if let Some(prom) = &c.prometheus {
        let t = Duration::from_secs(30);
        prom.wait_until(
            r#"rampart_rollbacks_total{environment="prod",reason="analysis"}"#,
            t,
            |s| s.len() == 1 && s[0].1 == 1.0,
        );
        prom.wait_until(
            r#"rampart_analysis_runs_total{environment="prod",verdict="fail"}"#,
            t,
            |s| s.len() == 1 && s[0].1 == 1.0,
        );
        let q = format!(
            r#"rampart_analysis_check_verdict{{environment="prod",check="{check}",verdict="fail"}}"#
        );
        prom.wait_until(&q, t, |s| s.len() == 1 && s[0].1 == 1.0);
    }
    let evals = events_of(&r, "analysis_evaluated");
    let failing = evals
        .iter()
        .flat_map(|e| e["checks"].as_array().cloned().unwrap_or_default())
        .find(|c| c["check"] == check && c["verdict"] == "fail")
        .expect("the failing evaluation");
    if check == "error_rate" {
        let rate = failing["detail"]["canary"]["value"].as_f64().unwrap();
        assert!((0.03..0.08).contains(&rate), "{failing:#}");
    } else {
        let shift = failing["detail"]["effect"]["difference"].as_f64().unwrap();
        assert!(shift >= 150.0, "{failing:#}");
    }
    lines
}

#[test]
fn a_release_with_errors_is_caught_by_error_rate() {
    caught_in_the_first_stage("2.1.0", "error_rate");
}

#[test]
fn a_slower_release_is_caught_by_latency() {
    caught_in_the_first_stage("2.2.0", "latency_p95");
}

#[test]
fn agent_probes_catch_the_latency_regression_without_prometheus() {
    let c = Canary::start_measured(Measured::Probe, STAGES, "", Some(RATE));
    assert!(c.prometheus.is_none());
    let lines = caught_by(&c, "2.2.0", "latency_p95");
    let started: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "analysis_started")
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(started[0]["source"], "probe", "{:#}", started[0]);
    // The judgement came from the agents' samples of h1 against the five others.
    let evals: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "analysis_evaluated" && v["fast_path"] == false)
        .collect();
    let last = evals.last().expect("an evaluation");
    let lat = last["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "latency_p95")
        .expect("latency_p95's result");
    let query = &lat["detail"]["queries"][0];
    assert!(
        query["query"]
            .as_str()
            .unwrap()
            .starts_with("probe latency"),
        "{lat:#}"
    );
    let probed = query["result"]["hosts"].as_object().unwrap();
    assert_eq!(probed.len(), HOSTS, "{lat:#}");
    // Every h1 step is slower than 200 ms; the baseline's are not.
    let h1: Vec<f64> = probed["h1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(h1.iter().all(|ms| *ms >= 200.0), "{h1:?}");
    assert!(
        probed["h2"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_f64().unwrap() < 200.0),
        "{lat:#}"
    );
}

fn deployment_id(live: &mut LiveCli) -> String {
    let ev = live.wait_for("the first event", Duration::from_secs(60), |v| {
        v["deployment_id"].is_string()
    });
    ev["deployment_id"].as_str().unwrap().to_string()
}

#[test]
fn too_little_traffic_waits_for_approval() {
    // No load: the error-rate check never has its 200 requests.
    let c = Canary::start(
        "stages = [{ hosts = 1, analysis = \"4s\" }, { hosts = \"100%\" }]",
        "",
        None,
    );
    // A deployment may reshape its stages, not skip or shorten the analysis.
    for (stages, why) in [
        (&["100%"][..], "needs an analysis window"),
        (&["1=1s", "100%"][..], "at least 4s"),
    ] {
        let mut args = vec![];
        for s in stages {
            args.extend(["--stage", s]);
        }
        let r = c.fleet.deploy("2.0.0", &args);
        assert_eq!(r.code, 2, "{stages:?}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(why), "{stages:?}: {}", r.stderr);
    }
    let mut live = c
        .fleet
        .spawn_deploy("2.0.0", &["--stage", "2=4s", "--stage", "100%"]);
    let id = deployment_id(&mut live);
    let paused = live.wait_for("the pause", Duration::from_secs(90), |v| {
        v["type"] == "awaiting_approval"
    });
    assert_eq!(paused["after_wave"], 0, "{paused:#}");
    let reason = paused["reason"].as_str().unwrap();
    assert!(reason.contains("paused after wave 1"), "{reason}");
    let started = live
        .seen
        .iter()
        .find(|v| v["type"] == "analysis_started")
        .cloned()
        .expect("the first stage's analysis");
    assert_eq!(
        started["canary_hosts"],
        serde_json::json!(["h1", "h2"]),
        "{started:#}"
    );
    let done = live
        .seen
        .iter()
        .find(|v| v["type"] == "analysis_finished")
        .cloned()
        .expect("the first stage's verdict");
    assert_eq!(done["verdict"], "inconclusive", "{done:#}");
    // Only the deployment's first stage (two hosts) was upgraded; the others wait.
    assert_eq!(c.serving()[..3], [v("2.0.0"), v("2.0.0"), v("1.0.0")]);
    let shown = c.fleet.cli(&["deployment", "show", &id, "--json"]);
    let d: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(d["state"], "awaiting_approval", "{d:#}");
    let a = c
        .fleet
        .cli(&["approve", &id, "--comment", "traffic is low tonight"]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let (code, lines) = live.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(finished(&lines)["outcome"], "succeeded");
    assert_eq!(c.serving(), vec![v("2.0.0"); HOSTS]);
}

#[test]
fn prometheus_down_is_an_error_never_a_pass() {
    let mut c = Canary::start(STAGES, "", Some(RATE));
    let mut live = c.fleet.spawn_deploy("2.0.0", &[]);
    let id = deployment_id(&mut live);
    live.wait_for("the first stage's analysis", Duration::from_secs(60), |v| {
        v["type"] == "analysis_started"
    });
    c.prometheus.as_mut().expect("a prometheus fleet").kill();
    let paused = live.wait_for("the pause", Duration::from_secs(90), |v| {
        v["type"] == "awaiting_approval"
    });
    assert_eq!(paused["after_wave"], 0, "{paused:#}");
    let vs = verdicts(&live.seen);
    assert_eq!(vs.len(), 1, "{vs:?}");
    assert_eq!(vs[0].1, "error", "{vs:?}");
    assert!(
        !live
            .seen
            .iter()
            .any(|v| v["type"] == "analysis_finished" && v["verdict"] == "pass"),
        "{:#?}",
        live.seen
    );
    let a = c
        .fleet
        .cli(&["abort", &id, "--reason", "no metrics: not taking the risk"]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let (_, lines) = live.finish(Duration::from_secs(120));
    assert_eq!(finished(&lines)["outcome"], "rolled_back", "{lines:#?}");
    assert_eq!(c.serving(), vec![v("1.0.0"); HOSTS]);
}
