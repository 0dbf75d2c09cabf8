//! The shipped `playbooks/production-deploy-transactional.yml`, end to end with real processes:
//! the sample application is packaged (v1, v2, and a v3 that starts but reports DOWN), deployed
//! with `rampart run --local` v1 → v2 → v3, and v3 is rolled back: the app serves 2.0.0 again,
//! `current` and the public path point at 2.0.0, and the deploy lock is released.

use std::path::PathBuf;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_tests::deploy::Scenario;
use rampart_tests::{AgentProc, block_on};
use serde_json::Value;

#[test]
fn deploy_v1_v2_then_broken_v3_is_rolled_back() {
    let sc = Scenario::new();
    let dir = &sc.dir;
    let state = sc.state.clone();

    for (version, code, outcome, serving) in [
        ("1.0.0", 0, "succeeded", "1.0.0"),
        ("2.0.0", 0, "succeeded", "2.0.0"),
        ("3.0.0", 1, "rolled_back", "2.0.0"),
    ] {
        let run = sc.deploy(version, &[]);
        assert_eq!(
            run.code, code,
            "deploy {version}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(run.summary()["outcome"], outcome, "deploy {version}");
        assert_eq!(
            sc.serving().as_deref(),
            Some(serving),
            "app serving after deploy {version}"
        );
        let current = std::fs::read_link(state.join("apps/app/current")).unwrap();
        assert!(
            current.ends_with(serving),
            "current -> {} after {version}",
            current.display()
        );
        assert!(
            !state.join("locks/deploy.json").exists(),
            "deploy lock left after {version}"
        );
    }
    // The public path points at the component's `current`.
    let public = std::fs::read_link(dir.path().join("opt/app")).unwrap();
    assert_eq!(public, state.join("apps/app/current"));
    // One state capture before and one after each deploy (after the rollback, for the failed one).
    assert_eq!(
        std::fs::read_dir(dir.path().join("captures"))
            .unwrap()
            .count(),
        6
    );
    // The failed release was set apart, out of releases/.
    assert!(!state.join("apps/app/releases/3.0.0").exists());
    let failed: Vec<_> = std::fs::read_dir(state.join("apps/app/failed"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        failed.len() == 1 && failed[0].starts_with("3.0.0-tx-"),
        "{failed:?}"
    );

    // The failed v3 left a forensics bundle naming the failed health check.
    let bundles: Vec<PathBuf> = std::fs::read_dir(dir.path().join("forensics"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    assert!(
        bundles[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("3.0.0-")
    );
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(bundles[0].join("metadata.json")).unwrap())
            .unwrap();
    assert!(
        meta.to_string().contains("health suite for 3.0.0"),
        "{meta}"
    );
    assert!(bundles[0].join("journal.jsonl").exists());
    // And every check of the health suite: v3 reports DOWN.
    let health: Value =
        serde_json::from_str(&std::fs::read_to_string(bundles[0].join("health.json")).unwrap())
            .unwrap();
    let checks = health.as_array().unwrap();
    assert!(checks.len() >= 22, "{health}");
    let up = checks
        .iter()
        .find(|c| c["name"] == "backend health endpoint reports UP")
        .unwrap();
    assert_eq!(up["status"], "fail", "{up}");
    assert!(
        up["diagnostics"]["body"].as_str().unwrap().contains("DOWN"),
        "{up}"
    );

    // An agent on the same state dir reports the same host: its releases and its state.
    let agent = AgentProc::start(&state);
    block_on(async {
        let mut c = AgentClient::connect(format!("http://{}", agent.addr))
            .await
            .expect("connect");
        let releases = c
            .list_releases(pb::ListReleasesRequest {
                component: "app".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .releases;
        let mut versions: Vec<(&str, bool)> = releases
            .iter()
            .map(|r| (r.version.as_str(), r.current))
            .collect();
        versions.sort_unstable();
        assert_eq!(
            versions,
            [("1.0.0", false), ("2.0.0", true), ("3.0.0", false)]
        );
        assert!(
            releases
                .iter()
                .all(|r| r.artifact_sha256.len() == 64 && r.staged.is_some())
        );
        let state_json = c
            .capture_state(pb::CaptureStateRequest::default())
            .await
            .unwrap()
            .into_inner()
            .state_json;
        let captured: Value = serde_json::from_str(&state_json).unwrap();
        assert_eq!(captured["versions"]["app"], "2.0.0");
        let recent = captured["deployments"].as_array().unwrap();
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[0]["outcome"], "rolled_back");
        assert_eq!(recent[0]["version"], "3.0.0");
        let err = c
            .list_releases(pb::ListReleasesRequest {
                component: "../etc".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    });
}
