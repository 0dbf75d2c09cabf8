//! The shipped `playbooks/production-deploy-transactional.yml`, end to end with real processes:
//! the sample application is packaged (v1, v2, and a v3 that starts but reports DOWN), deployed
//! with `rampart run --local` v1 → v2 → v3, and v3 is rolled back: the app serves 2.0.0 again,
//! `current` and the public path point at 2.0.0, and the deploy lock is released.

use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_tests::{AgentProc, bin, rampart};
use serde_json::{Value, json};

/// Stops the app this test started (by the pid file its start command wrote).
struct AppGuard(PathBuf);
impl Drop for AppGuard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn vars(dir: &Path, dist: &Path, port: u16, version: &str) -> Value {
    let tarball = dist.join(format!("sample-app-{version}.tar.gz"));
    let sha_line =
        std::fs::read_to_string(dist.join(format!("sample-app-{version}.tar.gz.sha256"))).unwrap();
    let sha = sha_line.split_whitespace().next().unwrap().to_string();
    let pid = dir.join("app.pid");
    let app = dir.join("opt/app");
    json!({
        "target_version": version,
        "health_url": format!("http://127.0.0.1:{port}/actuator/health"),
        "health_retries": 10,
        "health_delay": 0.2,
        "state_capture_dir": dir.join("captures"),
        "forensics_dir": dir.join("forensics"),
        "components": [{
            "name": "app",
            "artifact": tarball,
            "sha256": sha,
            "path": app,
            "service": {
                "name": "sample-app",
                "log_file": dir.join("app.log"),
                "start": format!(
                    "SAMPLE_APP_LISTEN=127.0.0.1:{port} nohup {app}/start.sh > {log} 2>&1 & echo $! > {pid}",
                    app = app.display(), log = dir.join("app.log").display(), pid = pid.display()
                ),
                "stop": format!(
                    "if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null; \
                     for i in $(seq 50); do kill -0 $(cat {pid}) 2>/dev/null || break; sleep 0.1; done; rm -f {pid}; fi",
                    pid = pid.display()
                ),
                "status": format!("test -f {pid} && kill -0 $(cat {pid})", pid = pid.display()),
            }
        }]
    })
}

#[test]
fn deploy_v1_v2_then_broken_v3_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    let pkg = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/sample-app/package.sh"))
        .arg(&dist)
        .env("SAMPLE_APP_BIN", bin("rampart-sample-app"))
        .output()
        .unwrap();
    assert!(
        pkg.status.success(),
        "package.sh: {}",
        String::from_utf8_lossy(&pkg.stderr)
    );
    let _guard = AppGuard(dir.path().join("app.pid"));
    let port = free_port();
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../playbooks/production-deploy-transactional.yml");
    let state = dir.path().join("state");
    let info = format!("http://127.0.0.1:{port}/actuator/info");

    for (version, code, outcome, serving) in [
        ("1.0.0", 0, "succeeded", "1.0.0"),
        ("2.0.0", 0, "succeeded", "2.0.0"),
        ("3.0.0", 1, "rolled_back", "2.0.0"),
    ] {
        let vars_file = dir.path().join(format!("vars-{version}.json"));
        std::fs::write(
            &vars_file,
            vars(dir.path(), &dist, port, version).to_string(),
        )
        .unwrap();
        let run = rampart(&[
            "run",
            playbook.to_str().unwrap(),
            "--local",
            "--json",
            "--state-dir",
            state.to_str().unwrap(),
            "-e",
            &format!("@{}", vars_file.display()),
        ]);
        assert_eq!(
            run.code, code,
            "deploy {version}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(run.summary()["outcome"], outcome, "deploy {version}");
        let body = get(&info).unwrap_or_else(|| panic!("app not serving after deploy {version}"));
        assert!(
            body.contains(&format!("\"version\":\"{serving}\"")),
            "after {version}: {body}"
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
    // One state capture before and one after each successful deploy, one before the failed one.
    assert_eq!(
        std::fs::read_dir(dir.path().join("captures"))
            .unwrap()
            .count(),
        5
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
    assert!(meta.to_string().contains("health check"), "{meta}");
    assert!(bundles[0].join("journal.jsonl").exists());

    // An agent on the same state dir reports the same host: its releases and its state.
    let agent = AgentProc::start(&state);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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
            .capture_state(pb::CaptureStateRequest { components: vec![] })
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
