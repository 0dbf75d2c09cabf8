//! The `service` module against a real systemd: `rampart run --local` drives units of a systemd
//! booted as PID 1 of fresh PID/mount/UTS/IPC namespaces, as `docs/notes/systemd-sandbox.md`
//! describes (private tmpfs on /run, /tmp and /var/tmp, a minimal `sandbox.target`), reached
//! through `systemctl_prefix: [nsenter, -t, PID, -m, -p, -u, -i]`. The sandbox itself is
//! `rampart_tests::systemd`.
//!
//! Needs root, `unshare`, `nsenter` and `/lib/systemd/systemd`; without them the test fails and
//! says what is missing. The sandbox's systemd gets SIGKILL when the test ends, also on failure.

use std::path::Path;

use rampart_tests::systemd::Sandbox;
use rampart_tests::{CliRun, run_local_json, write_file};
use serde_json::Value;

fn playbook(prefix: &[String], task: &str) -> String {
    let items: String = prefix
        .iter()
        .map(|w| format!("            - \"{w}\"\n"))
        .collect();
    format!(
        r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: svc
      service:
{task}
        timeout: 30
        systemctl_prefix:
{items}"#
    )
}

fn run_task(dir: &Path, state_dir: &Path, prefix: &[String], task: &str) -> (CliRun, Value) {
    run_task_with(dir, state_dir, prefix, task, &[])
}

fn run_task_with(
    dir: &Path,
    state_dir: &Path,
    prefix: &[String],
    task: &str,
    extra: &[&str],
) -> (CliRun, Value) {
    let pb = write_file(dir, "service.yml", &playbook(prefix, task));
    let run = run_local_json(&pb, state_dir, extra);
    let lines = run.json();
    let result = lines
        .iter()
        .find(|v| v["type"] == "task" && v["name"] == "svc")
        .unwrap_or_else(|| {
            panic!(
                "no task line for `svc`\nstdout:\n{}\nstderr:\n{}",
                run.stdout, run.stderr
            )
        })
        .clone();
    (run, result)
}

fn status_of(line: &Value) -> &str {
    line["status"].as_str().unwrap_or_default()
}

#[test]
fn service_module_drives_a_real_systemd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let sb = Sandbox::boot(dir.path());

    sb.add_units(&[
        (
            "rampart-demo.service",
            "[Unit]\nDescription=rampart demo\n[Service]\nExecStart=/bin/sleep 300\n",
        ),
        (
            "rampart-broken.service",
            "[Unit]\nDescription=rampart broken\n[Service]\nExecStart=/bin/false\n",
        ),
    ]);
    // systemd's own messages ("Main process exited ...") go to the journal from now on.
    sb.start_journal();
    let prefix = sb.prefix();

    let demo_started = "        name: rampart-demo.service\n        state: started";
    // Check mode: would change, changes nothing.
    let (run, line) = run_task_with(dir.path(), &state_dir, &prefix, demo_started, &["--check"]);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.active_state("rampart-demo.service"), "inactive");

    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_started);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(line["result"]["active_state"], "active", "{line}");
    assert_eq!(sb.active_state("rampart-demo.service"), "active");

    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_started);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);
    assert_eq!(line["result"]["changed"], false, "{line}");

    let demo_stopped = "        name: rampart-demo.service\n        state: stopped";
    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_stopped);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.active_state("rampart-demo.service"), "inactive");

    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_stopped);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);

    let broken = "        name: rampart-broken.service\n        state: started";
    let (run, line) = run_task(dir.path(), &state_dir, &prefix, broken);
    assert_eq!(status_of(&line), "failed", "{line}\n{}", run.stdout);
    assert_ne!(run.code, 0, "a failed play exits non-zero");
    let r = &line["result"];
    assert_eq!(r["active_state"], "failed", "{line}");
    assert_eq!(r["sub_state"], "failed", "{line}");
    assert_eq!(r["result"], "exit-code", "{line}");
    assert!(
        !r["msg"].as_str().unwrap_or_default().is_empty(),
        "no message: {line}"
    );
    let log = r["log"].as_array().cloned().unwrap_or_default();
    assert!(
        log.iter().any(|l| l
            .as_str()
            .unwrap_or_default()
            .contains("rampart-broken.service")),
        "no journal lines for the broken unit: {line}"
    );
}

/// One task `svc` of `module` with `task`'s lines (already indented) and the sandbox's prefix.
fn module_playbook(module: &str, prefix: &[String], task: &str) -> String {
    let items: String = prefix
        .iter()
        .map(|w| format!("            - \"{w}\"\n"))
        .collect();
    format!(
        r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: svc
      {module}:
{task}
        timeout: 30
        systemctl_prefix:
{items}"#
    )
}

fn run_module(
    dir: &Path,
    state_dir: &Path,
    module: &str,
    prefix: &[String],
    task: &str,
    extra: &[&str],
) -> (CliRun, Value) {
    let pb = write_file(dir, "systemd.yml", &module_playbook(module, prefix, task));
    let run = run_local_json(&pb, state_dir, extra);
    let line = run
        .json()
        .iter()
        .find(|v| v["type"] == "task" && v["name"] == "svc")
        .unwrap_or_else(|| panic!("no task line\n{}\n{}", run.stdout, run.stderr))
        .clone();
    (run, line)
}

#[test]
fn systemd_service_enables_masks_and_reloads_a_real_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let sb = Sandbox::boot(dir.path());
    // enable/mask write under /etc/systemd/system: give the sandbox a private one, so nothing
    // reaches the host's /etc.
    sb.must(&["mount", "-t", "tmpfs", "tmpfs", "/etc/systemd/system"]);
    let fstype = sb.must(&["stat", "-f", "-c", "%T", "/etc/systemd/system"]);
    assert_eq!(fstype.trim(), "tmpfs", "no private /etc/systemd/system");
    sb.add_units(&[(
        "rampart-en.service",
        "[Unit]\nDescription=rampart enable demo\n[Service]\nExecStart=/bin/sleep 300\n\
         ExecReload=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )]);
    let prefix = sb.prefix();
    let unit = "rampart-en.service";
    let go = |module: &str, task: &str, extra: &[&str]| {
        run_module(dir.path(), &state_dir, module, &prefix, task, extra)
    };
    let enabled_started =
        "        name: rampart-en.service\n        enabled: true\n        state: started";

    let (run, line) = go("systemd_service", enabled_started, &["--check"]);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.show(unit, "UnitFileState"), "disabled");
    assert_eq!(sb.active_state(unit), "inactive");

    let (run, line) = go("systemd_service", enabled_started, &[]);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    let r = &line["result"];
    assert_eq!(r["enabled"], true, "{line}");
    assert_eq!(r["state"], "started", "{line}");
    assert_eq!(
        r["status"]["UnitFileState"], "disabled",
        "before the task: {line}"
    );
    assert_eq!(r["status"]["LoadState"], "loaded", "{line}");
    assert!(r["status"]["MainPID"].is_string(), "{line}");
    assert_eq!(sb.show(unit, "UnitFileState"), "enabled");
    assert_eq!(sb.active_state(unit), "active");

    let (run, line) = go("systemd", enabled_started, &[]);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);

    let pid = sb.show(unit, "MainPID");
    let (run, line) = go(
        "service",
        "        name: rampart-en.service\n        state: reloaded",
        &[],
    );
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.show(unit, "MainPID"), pid, "a reload is not a restart");

    let (run, line) = go(
        "systemd_service",
        "        name: rampart-en.service\n        enabled: false",
        &[],
    );
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(line["result"]["enabled"], false, "{line}");
    assert_eq!(sb.show(unit, "UnitFileState"), "disabled");

    let stop_mask =
        "        name: rampart-en.service\n        state: stopped\n        masked: true";
    let (run, line) = go("systemd_service", stop_mask, &[]);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.show(unit, "UnitFileState"), "masked");
    assert_eq!(sb.active_state(unit), "inactive");
    let (run, line) = go("systemd_service", stop_mask, &[]);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);
    let (run, line) = go(
        "systemd_service",
        "        name: rampart-en.service\n        masked: false",
        &[],
    );
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.show(unit, "UnitFileState"), "disabled");

    // daemon_reload alone: no unit, no change.
    let (run, line) = go("systemd_service", "        daemon_reload: true", &[]);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);

    let (run, line) = go(
        "systemd_service",
        "        name: rampart-no-such.service\n        state: started",
        &[],
    );
    assert_eq!(status_of(&line), "failed", "{line}\n{}", run.stdout);
    assert_eq!(
        line["result"]["msg"], "Could not find the requested service rampart-no-such.service: host",
        "{line}"
    );
}
