//! The shape most Ansible deploy playbooks have, run unchanged through the controller:
//! `playbooks/examples/role-deploy` (a play that imports the role `deployment`, whose tasks
//! notify a restart handler and include `comprehensive-health-checks.yml`, inside
//! block / rescue / always) deployed to real agents, then a release that fails those checks
//! rolled back by the playbook's own rescue, which notifies the role's handler and re-runs the
//! checks file for the restored version.

use std::path::Path;

use rampart_tests::fleet::{Fleet, finished};
use serde_json::Value;

/// `(name, status)` of every task `host` finished in a deploy's JSON lines.
fn tasks(lines: &[Value], host: &str) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|v| {
            v["type"] == "host_event" && v["host"] == host && v["event"]["type"] == "task_finished"
        })
        .map(|v| {
            (
                v["event"]["name"].as_str().unwrap_or_default().to_string(),
                v["event"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn count(tasks: &[(String, String)], name: &str) -> usize {
    tasks.iter().filter(|(n, _)| n == name).count()
}

const RESTART: &str = "deployment : restart the application";

#[test]
fn a_role_with_a_restart_handler_and_an_included_checks_file_deploys_and_rolls_back_through_the_controller()
 {
    let site = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../playbooks/examples/role-deploy/site.yml")
        .canonicalize()
        .unwrap();
    let fleet = Fleet::start(
        2,
        &format!(
            "playbook = \"{}\"\nserial = [1]\nmax_fail_percentage = 0\n",
            site.display()
        ),
        |_, _| {},
    );

    // 1.0.0 then 2.0.0 on both hosts: the handler restarts the app once per deploy (notified by
    // the activation and by the settings template), after which the included checks pass.
    for version in ["1.0.0", "2.0.0"] {
        let r = fleet.deploy(version, &[]);
        assert_eq!(r.code, 0, "deploy {version}: {}\n{}", r.stdout, r.stderr);
        let lines = r.json();
        assert_eq!(finished(&lines)["outcome"], "succeeded");
        assert_eq!(fleet.serving(), vec![Some(version.to_string()); 2]);
        for host in ["h1", "h2"] {
            let t = tasks(&lines, host);
            assert_eq!(count(&t, RESTART), 1, "{host} {version}: {t:#?}");
            let restart = t.iter().position(|(n, _)| n == RESTART).unwrap();
            let checks = t
                .iter()
                .position(|(n, _)| n == "deployment : the application answers on /api/health")
                .unwrap_or_else(|| panic!("no health check on {host}: {t:#?}"));
            assert!(
                restart < checks,
                "the flush comes before the checks: {t:#?}"
            );
            assert!(
                t.iter().any(
                    |(n, s)| n == &format!("deployment : it reports version {version}")
                        && s == "ok"
                ),
                "{t:#?}"
            );
            for (n, s) in &t {
                assert_ne!(s, "failed", "{host} {version}: {n} failed: {t:#?}");
            }
        }
        // The role's template wrote the settings with the version.
        for h in &fleet.hosts {
            let env =
                std::fs::read_to_string(format!("{}.env", h.scenario.public_path().display()))
                    .unwrap();
            assert!(env.contains(&format!("APP_VERSION={version}\n")), "{env}");
        }
    }

    // 3.0.0 starts but reports DOWN: the included checks fail on h1 (wave 1), its rescue restores
    // 2.0.0, the handler it notified restarts the app, and the checks file runs again for 2.0.0.
    // h2 is never touched.
    let r = fleet.deploy("3.0.0", &[]);
    assert_ne!(r.code, 0, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    assert_eq!(finished(&lines)["outcome"], "rolled_back", "{}", r.stdout);
    let t = tasks(&lines, "h1");
    let failed: Vec<_> = t.iter().filter(|(_, s)| s == "failed").collect();
    assert_eq!(
        failed,
        [&(
            "deployment : the application answers on /api/health".to_string(),
            "failed".to_string()
        )],
        "{t:#?}"
    );
    assert_eq!(
        count(&t, RESTART),
        2,
        "once in block, once in rescue: {t:#?}"
    );
    assert!(
        t.iter()
            .any(|(n, s)| n == "deployment : it reports version 2.0.0" && s == "ok"),
        "the rollback is verified by the same checks: {t:#?}"
    );
    assert!(tasks(&lines, "h2").is_empty(), "h2 untouched");
    assert_eq!(fleet.serving(), vec![Some("2.0.0".to_string()); 2]);
    assert_eq!(fleet.hosts[0].scenario.current().as_deref(), Some("2.0.0"));
}
