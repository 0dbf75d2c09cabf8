//! The shipped `playbooks/rollback-production-safe.yml`, end to end with real processes: the
//! sample app is deployed v1 → v2 with the deploy playbook, then rolled back to a named version.
//! A rollback to a release that is missing or was tampered with on disk is refused before any
//! service stops; a rollback whose target does not come up healthy puts back what ran before.

use std::os::unix::fs::PermissionsExt;

use rampart_tests::CliRun;
use rampart_tests::deploy::{Scenario, rollback_playbook, tree_snapshot};
use serde_json::Value;

fn rollback(sc: &Scenario, version: &str) -> CliRun {
    let mut vars = sc.vars("2.0.0");
    vars["rollback_version"] = Value::from(version);
    sc.run(&rollback_playbook(), &vars, &[])
}

/// Deploys 1.0.0 then 2.0.0 and checks 2.0.0 serves.
fn on_v2() -> Scenario {
    let sc = Scenario::new();
    for v in ["1.0.0", "2.0.0"] {
        let run = sc.deploy(v, &[]);
        assert_eq!(run.code, 0, "deploy {v}\n{}\n{}", run.stdout, run.stderr);
    }
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
    sc
}

fn bundles(sc: &Scenario) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sc.path().join("forensics"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn failed_task_msg(run: &CliRun) -> String {
    run.json()
        .iter()
        .filter(|v| v["type"] == "task" && v["status"] == "failed")
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rolls back to `version`, which must be refused (exit 1) with a failed task naming `needle`,
/// while the app keeps running as `pid`.
fn assert_refused(sc: &Scenario, version: &str, needle: &str, pid: i32) {
    let run = rollback(sc, version);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let msg = failed_task_msg(&run);
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    assert_eq!(sc.app_pid(), Some(pid), "the app was touched");
}

#[test]
fn rollback_then_redeploy() {
    let sc = on_v2();
    let run = rollback(&sc, "1.0.0");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary()["outcome"], "succeeded");
    assert_eq!(sc.serving().as_deref(), Some("1.0.0"));
    assert_eq!(sc.current().as_deref(), Some("1.0.0"));
    // Forensics of the release that was left.
    let b = bundles(&sc);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].starts_with("2.0.0-"), "{b:?}");

    // Rolling back to the version already running changes nothing.
    let pid = sc.app_pid();
    let again = rollback(&sc, "1.0.0");
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let changed: Vec<_> = again
        .tasks()
        .into_iter()
        .filter(|t| t.2 == "changed")
        .collect();
    assert!(
        changed.is_empty(),
        "second rollback changed {changed:?}\n{}",
        again.stdout
    );
    assert_eq!(sc.app_pid(), pid, "the app was restarted");
    assert_eq!(bundles(&sc).len(), 1);

    // Deploy → rollback → redeploy: 2.0.0 is staged already and comes back.
    let redeploy = sc.deploy("2.0.0", &[]);
    assert_eq!(redeploy.code, 0, "{}\n{}", redeploy.stdout, redeploy.stderr);
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
    assert_eq!(sc.current().as_deref(), Some("2.0.0"));
}

#[test]
fn tampered_or_missing_release_is_refused_before_anything_stops() {
    let sc = on_v2();
    let pid = sc.app_pid().expect("app running");
    let apps = sc.state.join("apps");

    // A release that was never staged.
    let before = tree_snapshot(&apps);
    assert_refused(&sc, "0.9.0", "not staged", pid);
    assert_eq!(tree_snapshot(&apps), before);

    // One file of 1.0.0 changed on disk after it was staged.
    let release = apps.join("app/releases/1.0.0");
    let start = release.join("start.sh");
    let mut text = std::fs::read_to_string(&start).unwrap();
    text.push_str("\n# edited by hand\n");
    std::fs::write(&start, text).unwrap();
    let before = tree_snapshot(&apps);
    assert_refused(&sc, "1.0.0", "modified (1): start.sh", pid);
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
    assert_eq!(tree_snapshot(&apps), before);
    assert!(!sc.state.join("locks/deploy.json").exists());

    // Put start.sh back: 1.0.0 is intact again, and a changed mode, then a removed file, are
    // caught as well.
    let text = std::fs::read_to_string(&start).unwrap();
    std::fs::write(&start, text.trim_end_matches("\n# edited by hand\n")).unwrap();
    let health = release.join("health");
    std::fs::set_permissions(&health, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_refused(&sc, "1.0.0", "modified (1): health", pid);
    std::fs::remove_file(&health).unwrap();
    assert_refused(&sc, "1.0.0", "missing (1): health", pid);
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
}

#[test]
fn unhealthy_rollback_target_puts_back_what_ran_before() {
    let sc = on_v2();
    // Stage the broken 3.0.0 (it starts but reports DOWN) without activating it.
    let stage = format!(
        "- hosts: all\n  tasks:\n    - release:\n        component: app\n        version: 3.0.0\n        artifact: {}\n        sha256: {}\n        state: staged\n",
        sc.dist.join("sample-app-3.0.0.tar.gz").display(),
        rampart_tests::deploy::sha256_of(&sc.dist, "3.0.0"),
    );
    let pb = rampart_tests::write_file(sc.path(), "stage.yml", &stage);
    let run = sc.run(
        std::path::Path::new(&pb),
        &Value::Object(Default::default()),
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let before = tree_snapshot(&sc.state.join("apps/app/releases"));
    let run = rollback(&sc, "3.0.0");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary()["outcome"], "rolled_back");
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));
    assert_eq!(sc.current().as_deref(), Some("2.0.0"));
    assert_eq!(
        tree_snapshot(&sc.state.join("apps/app/releases")),
        before,
        "releases changed on disk"
    );
    assert!(!sc.state.join("locks/deploy.json").exists());
}
