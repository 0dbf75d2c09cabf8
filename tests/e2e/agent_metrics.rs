//! The agent's side of observability against real parts: after a real deploy of the sample app
//! (`rampart run --local` with the shipped playbook), a real `rampart-agent` answers `CheckState`
//! consistent, then reports the right code for each way the host is broken (a staging dir left,
//! the service stopped, `current` removed); its `--metrics-textfile` is `promtool check metrics`
//! clean (Debian's `prometheus`) and carries the values of the host. A real Pushgateway
//! (Debian's `prometheus-pushgateway`) receives `rampart run --local --pushgateway` facts, and a
//! Pushgateway that is down only makes the run warn.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_tests::AgentProc;
use rampart_tests::deploy::{Scenario, free_port};
use rampart_tests::pushgateway::Pushgateway;
use tonic::transport::{Channel, Endpoint};

/// The longest wait for one gRPC answer, or for the textfile to show a value.
const STEP: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn client(addr: &str) -> AgentClient<Channel> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10));
    let ch = tokio::time::timeout(STEP, ep.connect())
        .await
        .expect("connect within the step")
        .expect("connect to the agent");
    AgentClient::new(ch)
}

async fn check(c: &mut AgentClient<Channel>, sc: &Scenario) -> pb::CheckStateResponse {
    let req = pb::CheckStateRequest {
        components: vec![pb::ComponentExpectation {
            name: "app".into(),
            path: sc.public_path().display().to_string(),
            version_url: format!("http://127.0.0.1:{}/actuator/info", sc.port),
        }],
    };
    tokio::time::timeout(STEP, c.check_state(req))
        .await
        .expect("CheckState answered within the step")
        .expect("CheckState succeeded")
        .into_inner()
}

fn codes(r: &pb::CheckStateResponse) -> Vec<(String, String)> {
    r.problems
        .iter()
        .map(|p| (p.component.clone(), p.code.clone()))
        .collect()
}

/// `promtool check metrics` over `text`: (exit code, what it printed).
fn promtool_check(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits until the textfile holds every line of `want`; returns its text.
fn textfile_with(path: &Path, want: &[&str]) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if want.iter().all(|w| text.lines().any(|l| l == *w)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {want:?}; last:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn check_state_and_the_textfile_follow_the_host() {
    let sc = Scenario::new();
    let run = sc.deploy("1.0.0", &[]);
    assert_eq!(run.code, 0, "deploy 1.0.0\n{}\n{}", run.stdout, run.stderr);
    let textfile = sc.path().join("node-exporter/rampart.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    let agent = AgentProc::start_with(
        &sc.state,
        "127.0.0.1:0",
        &[
            "--metrics-textfile",
            textfile.to_str().unwrap(),
            "--check-interval-seconds",
            "1",
        ],
    );
    let rt = runtime();
    let mut c = rt.block_on(client(&agent.addr));

    // Whole after a real deploy: current, public path, state.json and the service agree.
    let r = rt.block_on(check(&mut c, &sc));
    assert!(r.consistent, "{:?}", r.problems);
    assert_eq!(r.in_progress, "");
    assert_eq!(r.components.len(), 1);
    assert_eq!(r.components[0].version, "1.0.0");
    assert_eq!(r.components[0].service_version, "1.0.0");
    assert!(r.checked.is_some());

    let text = textfile_with(
        &textfile,
        &[
            "rampart_agent_transactions_total{outcome=\"succeeded\"} 1",
            "rampart_agent_transactions_total{outcome=\"rolled_back\"} 0",
            "rampart_agent_recoveries_total 0",
            "rampart_host_release_info{component=\"app\",version=\"1.0.0\"} 1",
            "rampart_host_state_consistent 1",
            "rampart_host_state_problems{code=\"staging_left\"} 0",
        ],
    );
    let (code, said) = promtool_check(&text);
    assert_eq!(
        (code, said.trim()),
        (0, ""),
        "promtool check metrics:\n{text}"
    );
    assert!(text.contains("rampart_agent_last_check_timestamp_seconds "));
    assert!(text.contains("rampart_build_info{version=\""));

    // A staging dir of a transaction that is not running.
    let staging = sc.state.join("apps/app/.staging-2.0.0-tx-gone");
    std::fs::create_dir(&staging).unwrap();
    let r = rt.block_on(check(&mut c, &sc));
    assert!(!r.consistent);
    assert_eq!(codes(&r), [("app".into(), "staging_left".into())]);
    assert!(r.problems[0].message.contains(".staging-2.0.0-tx-gone"));
    // The periodic check writes it into the textfile too.
    textfile_with(
        &textfile,
        &[
            "rampart_host_state_consistent 0",
            "rampart_host_state_problems{code=\"staging_left\"} 1",
        ],
    );
    std::fs::remove_dir(&staging).unwrap();

    // The service stopped: its version URL does not answer.
    let pid = sc.app_pid().expect("the sample app runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + STEP;
    let r = loop {
        let r = rt.block_on(check(&mut c, &sc));
        if !r.consistent || Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(codes(&r), [("app".into(), "service_unreachable".into())]);
    assert_eq!(r.components[0].service_version, "");

    // `current` removed: missing, and the public path (a link to it) resolves to nothing.
    std::fs::remove_file(sc.state.join("apps/app/current")).unwrap();
    let r = rt.block_on(check(&mut c, &sc));
    assert_eq!(
        codes(&r),
        [
            ("app".into(), "current_missing".into()),
            ("app".into(), "path_mismatch".into()),
        ]
    );
    let text = textfile_with(
        &textfile,
        &[
            "rampart_host_state_consistent 0",
            "rampart_host_state_problems{code=\"current_missing\"} 1",
        ],
    );
    assert!(!text.contains("rampart_host_release_info{"), "{text}");
    assert_eq!(promtool_check(&text).0, 0, "{text}");

    // Bad requests are refused at the edge.
    let bad = pb::CheckStateRequest {
        components: vec![pb::ComponentExpectation {
            name: "app".into(),
            path: String::new(),
            version_url: "http://example.com/version".into(),
        }],
    };
    let s = rt.block_on(c.check_state(bad)).unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("127.0.0.1"), "{}", s.message());
}

#[test]
fn the_textfile_counts_history_again_after_a_restart() {
    let sc = Scenario::new();
    for v in ["1.0.0", "3.0.0"] {
        sc.deploy(v, &[]);
    }
    let textfile = sc.path().join("rampart.prom");
    let want = [
        "rampart_agent_transactions_total{outcome=\"succeeded\"} 1",
        "rampart_agent_transactions_total{outcome=\"rolled_back\"} 1",
        "rampart_host_release_info{component=\"app\",version=\"1.0.0\"} 1",
    ];
    for _restart in 0..2 {
        std::fs::remove_file(&textfile).ok();
        let _agent = AgentProc::start_with(
            &sc.state,
            "127.0.0.1:0",
            &[
                "--metrics-textfile",
                textfile.to_str().unwrap(),
                "--check-interval-seconds",
                "0",
            ],
        );
        // With the period off, the check at start still writes it.
        textfile_with(&textfile, &want);
    }
}

#[test]
fn run_local_pushes_its_facts_and_a_gateway_that_is_down_only_warns() {
    let gw = Pushgateway::start();
    let sc = Scenario::new();
    let run = sc.deploy(
        "1.0.0",
        &["--pushgateway", &gw.url, "--push-job", "deploys"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let host = rampart_host::facts::hostname();
    let series = |m: &str, labels: &str| {
        let sep = if labels.is_empty() { "" } else { "," };
        format!("{m}{{instance=\"{host}\",job=\"deploys\"{sep}{labels}}}")
    };
    let value = |text: &str, m: &str, labels: &str| -> Option<f64> {
        let prefix = format!("{} ", series(m, labels));
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    };
    let text = gw.metrics();
    assert_eq!(
        value(&text, "rampart_run_outcome", "outcome=\"succeeded\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "rampart_run_outcome", "outcome=\"rolled_back\""),
        Some(0.0)
    );
    assert!(value(&text, "rampart_run_duration_seconds", "").unwrap() > 0.0);
    assert!(value(&text, "rampart_run_tasks", "status=\"ok\"").unwrap() > 0.0);
    assert_eq!(
        value(&text, "rampart_run_tasks", "status=\"failed\""),
        Some(0.0)
    );
    // The pushgateway sorts labels by name: component, instance, job, version.
    assert!(
        text.contains(&format!(
            "rampart_host_release_info{{component=\"app\",instance=\"{host}\",job=\"deploys\",version=\"1.0.0\"}} 1"
        )),
        "{text}"
    );
    assert_eq!(value(&text, "rampart_host_state_consistent", ""), Some(1.0));
    assert_eq!(
        value(
            &text,
            "rampart_agent_transactions_total",
            "outcome=\"succeeded\""
        ),
        Some(1.0)
    );

    // A rolled-back run replaces the group: its outcome, and the history counts both runs.
    let run = sc.deploy(
        "3.0.0",
        &["--pushgateway", &gw.url, "--push-job", "deploys"],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let text = gw.metrics();
    assert_eq!(
        value(&text, "rampart_run_outcome", "outcome=\"rolled_back\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "rampart_run_outcome", "outcome=\"succeeded\""),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "rampart_agent_transactions_total",
            "outcome=\"rolled_back\""
        ),
        Some(1.0)
    );
    assert!(value(&text, "rampart_run_tasks", "status=\"rescued\"").unwrap() >= 1.0);
    assert!(text.contains(&format!(
        "rampart_host_release_info{{component=\"app\",instance=\"{host}\",job=\"deploys\",version=\"1.0.0\"}} 1"
    )));

    // Nobody listens: the run still succeeds, with a warning naming the push.
    let down = format!("http://127.0.0.1:{}", free_port());
    let run = sc.deploy("1.0.0", &["--pushgateway", &down]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("warning") && run.stderr.contains(&down),
        "{}",
        run.stderr
    );

    // A bad URL is refused before anything runs (exit 2).
    let before = std::fs::read_dir(sc.state.join("history")).unwrap().count();
    let run = sc.deploy("1.0.0", &["--pushgateway", "ftp://127.0.0.1:1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--pushgateway"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(sc.state.join("history")).unwrap().count(),
        before
    );
    assert!(gw.pid() > 0);
}
