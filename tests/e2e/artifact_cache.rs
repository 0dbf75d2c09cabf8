//! The agent's artifact cache is pruned with the releases: a real `rampart-agent` runs N deploys
//! of distinct artifacts (stage, activate, then `release state=pruned keep=K`, as the shipped
//! playbook's `always` does); after each one, `artifacts/sha256/` holds exactly the artifacts of
//! the releases still on the host, and the pruned releases' artifacts are gone from disk.

use std::collections::BTreeSet;
use std::path::Path;

use rampart_tests::{AgentProc, dir_names, rampart, sha256_hex, write_file};
use serde_json::Value;

const DEPLOYS: usize = 6;
const KEEP: usize = 2;

/// A release tarball of `version` with some content of its own.
fn artifact(dir: &Path, version: &str) -> (String, String) {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [
        ("bin/app", format!("#!/bin/sh\necho {version}\n")),
        ("data/blob", version.repeat(4096)),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    let path = dir.join(format!("app-{version}.tar.gz"));
    std::fs::write(&path, &bytes).unwrap();
    (path.display().to_string(), sha256_hex(&bytes))
}

fn playbook(version: &str, artifact: &str, sha: &str, public: &Path) -> String {
    format!(
        r#"- hosts: all
  gather_facts: false
  tasks:
    - name: deploy {version}
      block:
        - name: stage {version}
          release: {{component: app, version: "{version}", artifact: "{artifact}", sha256: "{sha}", state: staged}}
        - name: activate {version}
          release: {{component: app, version: "{version}", path: "{public}", state: active}}
      always:
        - name: prune old releases
          release: {{component: app, state: pruned, keep: {KEEP}}}
          register: pruned
        - name: report
          debug: {{var: pruned}}
"#,
        public = public.display()
    )
}

#[test]
fn the_cache_holds_only_the_artifacts_of_kept_releases() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let public = dir.path().join("opt-app");
    let agent = AgentProc::start(&state);
    let cache = state.join("artifacts/sha256");
    let mut digests: Vec<(String, String)> = Vec::new();
    for i in 0..DEPLOYS {
        let version = format!("1.0.{i}");
        let (path, sha) = artifact(dir.path(), &version);
        digests.push((version.clone(), sha.clone()));
        let pb = write_file(
            dir.path(),
            &format!("deploy-{version}.yml"),
            &playbook(&version, &path, &sha, &public),
        );
        let run = rampart(&["run", &pb, "--agent", &agent.addr, "--json"]);
        assert_eq!(
            run.summary()["outcome"],
            "succeeded",
            "deploy {version}\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
        let kept = dir_names(&state.join("apps/app/releases"))
            .into_iter()
            .collect::<BTreeSet<String>>();
        let expected_kept: BTreeSet<String> = digests
            .iter()
            .rev()
            .take(KEEP)
            .map(|(v, _)| v.clone())
            .collect();
        assert_eq!(kept, expected_kept, "releases after deploy {version}");
        // Exactly the kept releases' artifacts are cached: what their metadata names.
        let referenced: BTreeSet<String> = kept
            .iter()
            .map(|v| {
                let meta: Value = serde_json::from_slice(
                    &std::fs::read(
                        state
                            .join("apps/app/releases")
                            .join(v)
                            .join(".rampart-release.json"),
                    )
                    .unwrap(),
                )
                .unwrap();
                meta["artifact_sha256"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            dir_names(&cache).into_iter().collect::<BTreeSet<String>>(),
            referenced,
            "cache after deploy {version} (kept {kept:?})"
        );
        // What the prune step reported removing is what left the disk.
        let report = run
            .json()
            .into_iter()
            .find(|e| e["type"] == "task" && e["name"] == "prune old releases")
            .expect("the prune task's event");
        let removed = report["result"]["removed_artifacts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if i >= KEEP {
            let gone = &digests[i - KEEP].1;
            assert_eq!(
                removed,
                vec![Value::from(gone.as_str())],
                "deploy {version}"
            );
            assert!(report["result"]["freed_bytes"].as_u64().unwrap() > 0);
            assert!(!cache.join(gone).exists());
        } else {
            assert!(removed.is_empty(), "deploy {version}: {removed:?}");
        }
    }
}
