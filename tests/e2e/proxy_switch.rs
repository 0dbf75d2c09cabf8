//! `proxy_switch` against a real nginx and a real HAProxy (Debian's packages, started by the
//! test on free 127.0.0.1 ports with their own configs), with the sample app on two slots
//! (`blue` 1.0.0, `green` 2.0.0) and a paced load through the proxy during every switch:
//!
//! - nginx: blue → green → blue under ~300 requests/s: no non-2xx answer, no connection error,
//!   `/actuator/info` through nginx shows the new version after each switch, p99 within 50 ms of
//!   a load before the switches; the
//!   same switch again changes nothing;
//! - nginx refusing: a config that fails `nginx -t` fails the task with nginx's message, the
//!   include stays the old one and traffic stays on the old slot; a switch the proxy never
//!   confirms is undone and fails, traffic back on the old slot;
//! - HAProxy: the same switches over the admin socket, under load, with `show servers state`
//!   showing the new server ready and the old one draining; an unreachable socket, an unknown
//!   backend and an unknown server are clear errors with nothing changed;
//! - check mode: predicts the switch, changes nothing, on both.

use std::path::Path;
use std::time::{Duration, Instant};

use rampart_host::proxy::Slot;
use rampart_host::proxy::nginx::render;
use rampart_tests::deploy::get;
use rampart_tests::load::{Load, LoadReport, Target};
use rampart_tests::proxy::{HaproxyProc, NGINX, NginxProc, SlotApp};
use rampart_tests::{CliRun, run_local_json, write_file};
use serde_json::Value;

/// The paced load through the proxy, requests/s.
const RATE: f64 = 300.0;
const ADMIN_DRAIN: u8 = 0x08;
/// `srv_admin_state` flags that keep a server from new traffic (maintenance and drain; not
/// `0x04`, which only records `disabled` in the config).
const ADMIN_NOT_READY: u8 = 0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x40;

fn slot(name: &str, app: &SlotApp) -> Slot {
    Slot {
        name: name.into(),
        target: app.addr(),
    }
}

/// The result of the task named `switch` in a run's JSON lines.
fn switch_result(run: &CliRun) -> Value {
    run.json()
        .into_iter()
        .find(|v| v["type"] == "task" && v["name"] == "switch")
        .unwrap_or_else(|| panic!("no task `switch`:\n{}\n{}", run.stdout, run.stderr))["result"]
        .clone()
}

/// Runs a one-task playbook whose task `switch` is `proxy_switch` with `args` (YAML lines,
/// indented 8); returns the run and its wall time.
fn run_switch(dir: &Path, args: &str, extra: &[&str]) -> (CliRun, Duration) {
    let pb = format!(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: switch\n      proxy_switch:\n{args}"
    );
    let path = write_file(dir, "switch.yml", &pb);
    let started = Instant::now();
    let args = [&["--diff"], extra].concat();
    let run = run_local_json(&path, &dir.join("state"), &args);
    (run, started.elapsed())
}

fn nginx_args(n: &NginxProc, blue: &SlotApp, green: &SlotApp, to: &str, version: &str) -> String {
    format!(
        "        proxy: nginx\n        upstream: app\n        slots: {{blue: \"{b}\", green: \"{g}\"}}\n        to: {to}\n        include: {inc}\n        nginx: {NGINX}\n        conf: {conf}\n        prefix: {prefix}\n        confirm_url: http://127.0.0.1:{port}/actuator/info\n        confirm_expect: '\"version\":\"{version}\"'\n",
        b = blue.addr(),
        g = green.addr(),
        inc = n.include().display(),
        conf = n.conf().display(),
        prefix = n.dir.path().display(),
        port = n.port,
    )
}

fn haproxy_args(socket: &Path, backend: &str, green_server: &str, to: &str) -> String {
    format!(
        "        proxy: haproxy\n        backend: {backend}\n        slots: {{blue: blue, green: {green_server}}}\n        to: {to}\n        socket: {}\n        ready_timeout: 5\n        drain_timeout: 5\n",
        socket.display()
    )
}

fn version_through(port: u16) -> String {
    let body = get(&format!("http://127.0.0.1:{port}/actuator/info")).unwrap_or_default();
    serde_json::from_str::<Value>(&body).unwrap_or_default()["app"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_no_failure(report: &LoadReport, what: &str) {
    let t = &report.targets[0];
    eprintln!("{what}: {report}");
    assert!(t.ok > 0, "{what}: nothing answered: {report}");
    assert_eq!(
        t.failed, 0,
        "{what}: connection errors: {report} ({:?})",
        t.last_failure
    );
    assert_eq!(t.server_errors, 0, "{what}: 5xx answers: {report}");
    assert_eq!(t.other_status, 0, "{what}: non-2xx answers: {report}");
}

/// The p99 of a short load before any switch, to compare the switches' p99 with.
fn baseline_p99(name: &str, port: u16) -> f64 {
    let report = Load::start(
        vec![Target::new(name, port, "/")],
        RATE,
        Duration::from_secs(2),
    )
    .wait(Duration::from_secs(20));
    assert_no_failure(&report, &format!("{name} before any switch"));
    report.targets[0].p99_ms().unwrap()
}

/// The bound: the p99 during the switches within 50 ms of the p99 before.
fn assert_p99_within(report: &LoadReport, before_ms: f64, what: &str) {
    let during = report.targets[0].p99_ms().unwrap();
    eprintln!("{what}: p99 before {before_ms:.1} ms, during the switches {during:.1} ms");
    assert!(
        during <= before_ms + 50.0,
        "{what}: p99 {during:.1} ms during the switches, {before_ms:.1} ms before"
    );
}

#[test]
fn nginx_switches_blue_green_blue_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let blue = SlotApp::start("1.0.0");
    let green = SlotApp::start("2.0.0");
    let nginx = NginxProc::start(&render("app", &slot("blue", &blue)));
    assert_eq!(version_through(nginx.port), "1.0.0", "{}", nginx.log());
    let before_p99 = baseline_p99("nginx", nginx.port);

    let load = Load::start(
        vec![Target::new("nginx", nginx.port, "/")],
        RATE,
        Duration::from_secs(12),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut walls = Vec::new();
    for (to, app) in [("green", &green), ("blue", &blue)] {
        let (run, wall) = run_switch(
            dir.path(),
            &nginx_args(&nginx, &blue, &green, to, &app.version),
            &[],
        );
        assert_eq!(
            run.code,
            0,
            "switch to {to}: {}\n{}\n{}",
            run.stdout,
            run.stderr,
            nginx.log()
        );
        let r = switch_result(&run);
        assert_eq!(r["changed"], true, "{r}");
        assert_eq!(r["after"]["name"], to, "{r}");
        assert_eq!(r["confirmed"], true, "{r}");
        assert!(
            r["diff"]["after"].as_str().unwrap().contains(&app.addr()),
            "{r}"
        );
        assert_eq!(
            version_through(nginx.port),
            app.version,
            "after the switch to {to}"
        );
        let include = std::fs::read_to_string(nginx.include()).unwrap();
        assert!(include.contains(&format!("live slot {to}\n")), "{include}");
        walls.push((to, wall, r["elapsed_ms"].clone(), r["attempts"].clone()));
        std::thread::sleep(Duration::from_millis(1500));
    }
    // Already live: nothing touched.
    let (run, _) = run_switch(
        dir.path(),
        &nginx_args(&nginx, &blue, &green, "blue", "1.0.0"),
        &[],
    );
    let r = switch_result(&run);
    assert_eq!((run.code, &r["changed"]), (0, &Value::Bool(false)), "{r}");
    assert_eq!(r["before"]["name"], "blue");

    let report = load.wait(Duration::from_secs(30));
    eprintln!("nginx switches (slot, task wall time, switch ms, confirm attempts): {walls:?}");
    assert_no_failure(&report, "nginx blue→green→blue");
    assert_p99_within(&report, before_p99, "nginx blue→green→blue");
    // The proxy's own config was never written.
    assert!(
        std::fs::read_to_string(nginx.conf())
            .unwrap()
            .contains("include")
    );
}

#[test]
fn nginx_refusing_the_change_fails_the_task_and_leaves_traffic_on_the_old_slot() {
    let dir = tempfile::tempdir().unwrap();
    let blue = SlotApp::start("1.0.0");
    let green = SlotApp::start("2.0.0");
    let before = render("app", &slot("blue", &blue));
    let nginx = NginxProc::start(&before);
    let load = Load::start(
        vec![Target::new("nginx", nginx.port, "/")],
        RATE,
        Duration::from_secs(6),
    );
    std::thread::sleep(Duration::from_millis(500));
    // Someone broke the proxy's config beside Rampart's include: `nginx -t` fails.
    std::fs::write(
        nginx.dir.path().join("extra/broken.conf"),
        "rampart_no_such_directive on;\n",
    )
    .unwrap();
    let (run, _) = run_switch(
        dir.path(),
        &nginx_args(&nginx, &blue, &green, "green", "2.0.0"),
        &[],
    );
    assert_ne!(run.code, 0, "{}", run.stdout);
    let r = switch_result(&run);
    let msg = r["msg"].as_str().unwrap();
    assert_eq!(r["failed"], true, "{r}");
    assert!(msg.contains("unknown directive"), "nginx's message: {msg}");
    assert!(msg.contains("rampart_no_such_directive"), "{msg}");
    assert!(msg.contains("traffic is unchanged"), "{msg}");
    assert_eq!(std::fs::read_to_string(nginx.include()).unwrap(), before);
    assert_eq!(version_through(nginx.port), "1.0.0");
    let leftovers: Vec<_> = std::fs::read_dir(nginx.dir.path().join("rampart"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");

    // nginx takes the change but the proxy never shows what was expected: the switch is
    // undone (previous include, reloaded again) and the task fails.
    std::fs::remove_file(nginx.dir.path().join("extra/broken.conf")).unwrap();
    let args = nginx_args(&nginx, &blue, &green, "green", "9.9.9") + "        confirm_timeout: 1\n";
    let (run, _) = run_switch(dir.path(), &args, &[]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let r = switch_result(&run);
    let msg = r["msg"].as_str().unwrap();
    assert!(msg.contains("did not confirm slot green"), "{msg}");
    assert!(
        msg.contains("traffic is back on the previous slot"),
        "{msg}"
    );
    assert_eq!(std::fs::read_to_string(nginx.include()).unwrap(), before);
    // nginx swaps its workers after the reload returns: within a bounded time, five answers
    // in a row are blue's. (The module's own check after an undo, five answers without the
    // expected text, cannot tell the slots apart here: neither serves 9.9.9.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 5 {
        assert!(Instant::now() < deadline, "not back on blue within 10 s");
        if version_through(nginx.port) == "1.0.0" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let report = load.wait(Duration::from_secs(20));
    assert_no_failure(&report, "nginx refusing, then not confirmed");
}

#[test]
fn haproxy_switches_over_its_admin_socket_under_load_ready_then_drain() {
    let dir = tempfile::tempdir().unwrap();
    let blue = SlotApp::start("1.0.0");
    let green = SlotApp::start("2.0.0");
    let hap = HaproxyProc::start(&[("blue", blue.port, false), ("green", green.port, true)]);
    assert!(
        hap.wait_checked_up(&["blue"], Duration::from_secs(10)),
        "{:?}\n{}",
        hap.servers_state(),
        hap.log()
    );
    assert_eq!(version_through(hap.port), "1.0.0");
    let before_p99 = baseline_p99("haproxy", hap.port);

    let load = Load::start(
        vec![Target::new("haproxy", hap.port, "/")],
        RATE,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut walls = Vec::new();
    for (to, app, old) in [("green", &green, "blue"), ("blue", &blue, "green")] {
        let (run, wall) = run_switch(
            dir.path(),
            &haproxy_args(&hap.socket(), "app", "green", to),
            &[],
        );
        assert_eq!(
            run.code, 0,
            "switch to {to}: {}\n{}",
            run.stdout, run.stderr
        );
        let r = switch_result(&run);
        assert_eq!(r["changed"], true, "{r}");
        assert_eq!(
            (&r["before"]["name"], &r["after"]["name"]),
            (&Value::from(old), &Value::from(to))
        );
        assert_eq!(r["confirmed"], true, "{r}");
        let state = hap.servers_state();
        let of = |n: &str| state.iter().find(|(s, _, _)| s == n).cloned().unwrap();
        let (_, op_new, admin_new) = of(to);
        let (_, _, admin_old) = of(old);
        assert_eq!(op_new, 2, "{to} running: {state:?}");
        assert_eq!(admin_new & ADMIN_NOT_READY, 0, "{to} ready: {state:?}");
        assert_ne!(admin_old & ADMIN_DRAIN, 0, "{old} draining: {state:?}");
        assert_eq!(version_through(hap.port), app.version);
        walls.push((to, wall, r["elapsed_ms"].clone(), r["drained"].clone()));
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (run, _) = run_switch(
        dir.path(),
        &haproxy_args(&hap.socket(), "app", "green", "blue"),
        &[],
    );
    let r = switch_result(&run);
    assert_eq!((run.code, &r["changed"]), (0, &Value::Bool(false)), "{r}");

    let report = load.wait(Duration::from_secs(30));
    eprintln!("haproxy switches (slot, task wall time, switch ms, drained): {walls:?}");
    assert_no_failure(&report, "haproxy blue→green→blue");
    assert_p99_within(&report, before_p99, "haproxy blue→green→blue");
}

#[test]
fn haproxy_bad_input_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let blue = SlotApp::start("1.0.0");
    let green = SlotApp::start("2.0.0");
    let hap = HaproxyProc::start(&[("blue", blue.port, false), ("green", green.port, true)]);
    assert!(hap.wait_checked_up(&["blue"], Duration::from_secs(10)));
    let before = hap.servers_state();
    let nowhere = dir.path().join("no-such.sock");
    let cases = [
        (
            haproxy_args(&nowhere, "app", "green", "green"),
            vec![
                nowhere.to_str().unwrap(),
                "stats socket",
                "traffic is unchanged",
            ],
        ),
        (
            haproxy_args(&hap.socket(), "nosuch", "green", "green"),
            vec!["no backend \"nosuch\""],
        ),
        (
            haproxy_args(&hap.socket(), "app", "nosuch", "green"),
            vec!["no server \"nosuch\"", "blue, green"],
        ),
    ];
    for (args, wants) in cases {
        let (run, _) = run_switch(dir.path(), &args, &[]);
        assert_ne!(run.code, 0, "{}", run.stdout);
        let r = switch_result(&run);
        let msg = r["msg"].as_str().unwrap();
        for want in wants {
            assert!(msg.contains(want), "{want:?} in {msg}");
        }
        let after: Vec<_> = hap
            .servers_state()
            .into_iter()
            .map(|(n, _, a)| (n, a))
            .collect();
        let was: Vec<_> = before.iter().map(|(n, _, a)| (n.clone(), *a)).collect();
        assert_eq!(after, was, "nothing changed after: {msg}");
    }
    assert_eq!(version_through(hap.port), "1.0.0");
}

#[test]
fn check_mode_predicts_the_switch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let blue = SlotApp::start("1.0.0");
    let green = SlotApp::start("2.0.0");
    let before = render("app", &slot("blue", &blue));
    let nginx = NginxProc::start(&before);
    let (run, _) = run_switch(
        dir.path(),
        &nginx_args(&nginx, &blue, &green, "green", "2.0.0"),
        &["--check"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = switch_result(&run);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(
        (&r["before"]["name"], &r["after"]["name"]),
        (&Value::from("blue"), &Value::from("green"))
    );
    assert_eq!(r["diff"]["before"], before.as_str());
    assert!(r["diff"]["after"].as_str().unwrap().contains(&green.addr()));
    assert_eq!(std::fs::read_to_string(nginx.include()).unwrap(), before);
    assert_eq!(version_through(nginx.port), "1.0.0");

    let hap = HaproxyProc::start(&[("blue", blue.port, false), ("green", green.port, true)]);
    assert!(hap.wait_checked_up(&["blue"], Duration::from_secs(10)));
    let state = hap.servers_state();
    let (run, _) = run_switch(
        dir.path(),
        &haproxy_args(&hap.socket(), "app", "green", "green"),
        &["--check"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = switch_result(&run);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(r["before"]["name"], "blue");
    let admin = |s: &[(String, u8, u8)]| {
        s.iter()
            .map(|(n, _, a)| (n.clone(), *a))
            .collect::<Vec<_>>()
    };
    assert_eq!(admin(&hap.servers_state()), admin(&state));
    assert_eq!(version_through(hap.port), "1.0.0");
}
