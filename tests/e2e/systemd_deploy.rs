//! The shipped deploy playbook with `service.manager: systemd`, under a real systemd booted in
//! private namespaces (`rampart_tests::systemd::Sandbox`): the sample app runs as a unit whose
//! `ExecStart` is the component's public path, and `rampart run --local` reaches the sandbox's
//! systemctl and journalctl through `systemctl_prefix`. The same scenarios as with the command
//! manager: deploy, redeploy changes nothing, a release that fails its health check and one
//! whose unit does not start are both rolled back exactly, with the unit's journal in forensics.
//!
//! Scratch dirs live under /var/lib/rampart-tests: the sandbox hides the host's /tmp.

use std::path::Path;
use std::process::Command;

use rampart_tests::deploy::{Scenario, tree_snapshot};
use rampart_tests::systemd::Sandbox;
use rampart_tests::{CliRun, sha256_hex};
use serde_json::{Value, json};

const SCRATCH: &str = "/var/lib/rampart-tests";

fn unit_name(sc: &Scenario) -> String {
    format!("sample-app-{}.service", sc.port)
}

/// The playbook's vars with the app as a systemd unit.
fn vars(sc: &Scenario, sb: &Sandbox, version: &str, artifact: Option<(&str, &str)>) -> Value {
    let mut v = match artifact {
        Some((path, sha)) => sc.vars_with(version, path, sha),
        None => sc.vars(version),
    };
    v["service_timeout"] = json!(20);
    v["components"][0]["service"] = json!({
        "name": unit_name(sc),
        "manager": "systemd",
        "systemctl_prefix": sb.prefix(),
    });
    v
}

/// Everything a rollback must put back byte for byte: the good releases, `current`, the public
/// path (not `failed/`, `state.json`, captures or journals, which record the attempt).
fn host_tree(sc: &Scenario) -> Vec<String> {
    let mut t: Vec<String> = tree_snapshot(&sc.state.join("apps/app"))
        .into_iter()
        .filter(|l| !l.contains(" failed") && !l.contains("state.json"))
        .collect();
    t.push(format!(
        "public -> {:?}",
        std::fs::read_link(sc.public_path()).ok()
    ));
    t
}

fn changed_tasks(run: &CliRun) -> Vec<(String, String, String)> {
    run.tasks()
        .into_iter()
        .filter(|t| t.2 == "changed")
        .collect()
}

fn failed_task(run: &CliRun) -> Value {
    run.json()
        .into_iter()
        .find(|v| v["type"] == "task" && v["status"] == "failed")
        .unwrap_or_else(|| panic!("no failed task:\n{}", run.stdout))
}

/// A 4.0.0 made of 2.0.0 whose start.sh exits 1 at once; returns (path, sha256).
fn unstartable(sc: &Scenario) -> (String, String) {
    let work = sc.path().join("v4");
    std::fs::create_dir_all(&work).unwrap();
    let out = sc.path().join("sample-app-4.0.0.tar.gz");
    let script = format!(
        "tar xzf {src} -C {w} && printf '#!/bin/sh\\necho v4 will not start >&2\\nexit 1\\n' > {w}/start.sh \
         && echo 4.0.0 > {w}/version.txt && tar czf {out} -C {w} .",
        src = sc.dist.join("sample-app-2.0.0.tar.gz").display(),
        w = work.display(),
        out = out.display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success(), "building 4.0.0");
    let sha = sha256_hex(&std::fs::read(&out).unwrap());
    (out.display().to_string(), sha)
}

#[test]
fn deploys_and_rollbacks_with_the_systemd_manager() {
    let sb_dir = tempfile::tempdir().unwrap();
    let sb = Sandbox::boot(sb_dir.path());
    let sc = Scenario::new_in(Path::new(SCRATCH));
    let unit = unit_name(&sc);
    sb.add_units(&[(
        unit.as_str(),
        format!(
            "[Unit]\nDescription=rampart sample app\n[Service]\n\
             Environment=SAMPLE_APP_LISTEN=127.0.0.1:{port}\nExecStart={public}/start.sh\n",
            port = sc.port,
            public = sc.public_path().display()
        )
        .as_str(),
    )]);

    for v in ["1.0.0", "2.0.0"] {
        let run = sc.run(
            &rampart_tests::deploy::deploy_playbook(),
            &vars(&sc, &sb, v, None),
            &[],
        );
        assert_eq!(run.code, 0, "deploy {v}\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(sb.active_state(&unit), "active", "after {v}");
        assert_eq!(sc.serving().as_deref(), Some(v));
    }
    let main_pid = sb.main_pid(&unit).expect("MainPID");

    // The version already running: nothing changes, the unit is not restarted.
    let again = sc.run(
        &rampart_tests::deploy::deploy_playbook(),
        &vars(&sc, &sb, "2.0.0", None),
        &[],
    );
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(
        changed_tasks(&again).is_empty(),
        "{:?}",
        changed_tasks(&again)
    );
    assert_eq!(sb.main_pid(&unit), Some(main_pid));

    // Health fails on 3.0.0: rolled back to 2.0.0 exactly; the unit's journal in forensics.
    let before = host_tree(&sc);
    let run = sc.run(
        &rampart_tests::deploy::deploy_playbook(),
        &vars(&sc, &sb, "3.0.0", None),
        &[],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary()["outcome"], "rolled_back");
    assert_eq!(sb.active_state(&unit), "active");
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
    assert_eq!(host_tree(&sc), before);
    let bundle = std::fs::read_dir(sc.path().join("forensics"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("3.0.0-"))
        .expect("a forensics bundle of 3.0.0")
        .path();
    let log = std::fs::read_to_string(bundle.join("logs").join(format!("{unit}.log")))
        .unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
    assert!(
        log.contains(&format!("listening on 127.0.0.1:{}", sc.port)),
        "the unit's journal: {log}"
    );

    // 4.0.0's unit does not start: rolled back, the failure carries systemd's view of the unit.
    let (path, sha) = unstartable(&sc);
    let run = sc.run(
        &rampart_tests::deploy::deploy_playbook(),
        &vars(&sc, &sb, "4.0.0", Some((&path, &sha))),
        &[],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary()["outcome"], "rolled_back");
    let failed = failed_task(&run);
    assert!(
        failed["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("start "),
        "{failed}"
    );
    let result = failed["result"].to_string();
    assert!(
        result.contains("active_state") && result.contains("sub_state"),
        "{result}"
    );
    assert!(
        result.contains("v4 will not start"),
        "the unit's log lines: {result}"
    );
    assert_eq!(sb.active_state(&unit), "active");
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
    assert_eq!(host_tree(&sc), before);
}
