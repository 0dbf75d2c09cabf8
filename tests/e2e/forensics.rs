//! `forensics` end to end: a playbook whose block writes a file and then fails runs through a real
//! `rampart-agent`; its rescue records a forensics bundle, which `ListForensics` lists and
//! `GetForensics` streams back as a tar.gz naming the failed task and the transaction.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_tests::{AgentProc, block_on, rampart, write_file};
use serde_json::Value;
use tonic::Code;

fn playbook(marker: &Path, forensics: &Path) -> String {
    format!(
        r#"- hosts: all
  tasks:
    - name: deploy 2.0
      block:
        - name: write the new config
          copy:
            dest: {marker}
            content: "new\n"
        - name: health check 2.0
          fail:
            msg: health is DOWN
      rescue:
        - name: record forensics
          forensics:
            failed_version: "2.0"
            restored_version: "1.0"
            dest_dir: {forensics}
            failed_task: "{{{{ ansible_failed_task }}}}"
            failed_result: "{{{{ ansible_failed_result }}}}"
            health:
              status: DOWN
"#,
        marker = marker.display(),
        forensics = forensics.display(),
    )
}

#[test]
fn rescue_records_a_bundle_that_the_agent_lists_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let forensics_dir = dir.path().join("forensics");
    let marker = dir.path().join("app.conf");
    let agent = AgentProc::start_with(
        &dir.path().join("state"),
        "127.0.0.1:0",
        &["--forensics-dir", forensics_dir.to_str().unwrap()],
    );
    let pb_path = write_file(dir.path(), "deploy.yml", &playbook(&marker, &forensics_dir));
    let run = rampart(&["run", &pb_path, "--agent", &agent.addr, "--json"]);
    let summary = run.summary();
    assert_eq!(summary["outcome"], "rolled_back", "stderr: {}", run.stderr);
    let txid = summary["txid"].as_str().unwrap().to_string();
    assert!(
        marker.exists(),
        "the block's file was written before the failure"
    );

    let archive = block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to the agent");
        let mut c = AgentClient::new(ch);
        let list = c
            .list_forensics(pb::ListForensicsRequest { limit: 0 })
            .await
            .unwrap()
            .into_inner()
            .bundles;
        assert_eq!(list.len(), 1, "{list:?}");
        let b = &list[0];
        assert_eq!(b.txid, txid);
        assert_eq!(b.failed_version, "2.0");
        assert_eq!(b.restored_version, "1.0");
        assert!(b.id.starts_with("2.0-") && b.size > 0 && b.recorded.is_some());

        for (id, code) in [
            ("../etc", Code::InvalidArgument),
            (".x", Code::InvalidArgument),
        ] {
            let e = c
                .get_forensics(pb::GetForensicsRequest { id: id.into() })
                .await
                .err()
                .unwrap_or_else(|| panic!("GetForensics({id}) was accepted"));
            assert_eq!(e.code(), code, "{id}: {}", e.message());
        }
        let Err(e) = c
            .get_forensics(pb::GetForensicsRequest {
                id: "9.9-20200101T000000.000000Z".into(),
            })
            .await
        else {
            panic!("an unknown bundle was accepted");
        };
        assert_eq!(e.code(), Code::NotFound, "{}", e.message());

        let mut stream = c
            .get_forensics(pb::GetForensicsRequest { id: b.id.clone() })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            assert!(chunk.data.len() <= 64 * 1024);
            bytes.extend(chunk.data);
        }
        (b.id.clone(), bytes)
    });
    let (id, bytes) = archive;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut metadata = None;
    let mut journal = None;
    let mut health = None;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        assert!(path.starts_with(&id), "{path}");
        let mut text = String::new();
        if entry.header().entry_type().is_file() {
            entry.read_to_string(&mut text).unwrap();
        }
        match path.strip_prefix(&format!("{id}/")) {
            Some("metadata.json") => metadata = Some(text),
            Some("journal.jsonl") => journal = Some(text),
            Some("health.json") => health = Some(text),
            _ => {}
        }
    }
    let metadata: Value = serde_json::from_str(&metadata.expect("metadata.json")).unwrap();
    assert_eq!(metadata["txid"], txid);
    assert_eq!(metadata["failed_task"]["name"], "health check 2.0");
    assert_eq!(metadata["failed_result"]["msg"], "health is DOWN");
    let journal = journal.expect("journal.jsonl");
    let lines: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad journal line {l}: {e}")))
        .collect();
    assert!(lines.len() >= 3, "{journal}");
    assert!(lines.iter().all(|l| l["txid"] == txid));
    assert!(journal.contains("health check 2.0"));
    let health: Value = serde_json::from_str(&health.expect("health.json")).unwrap();
    assert_eq!(health["status"], "DOWN");
}

/// A release tarball holding `files`.
fn release_tarball(path: &Path, files: &[(&str, &str)]) -> String {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    std::fs::write(path, &bytes).unwrap();
    rampart_tests::sha256_hex(&bytes)
}

fn time_of(entries: &[Value], kind: &str, name: &str) -> String {
    entries
        .iter()
        .find(|e| e["type"] == kind && e["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} of `{name}` in the journal"))["time"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The shipped playbook's split: `phase: capture` in rescue before the restore, `phase: complete`
/// in always once the failed release is set apart. The bundle has the same files as a one-step
/// record; the logs and journal are from before the restore; the manifest was computed after it,
/// from `failed/<version>-<txid>`, and covers every file of the failed release.
#[test]
fn the_manifest_is_recorded_after_the_restore_and_covers_the_failed_release() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let forensics = d.join("forensics");
    let public = d.join("opt-app");
    let log = d.join("app.log");
    let files_v2 = [
        ("bin/app", "#!/bin/sh\necho 2.0\n"),
        ("conf/app.yml", "port: 8080\n"),
        ("lib/a.jar", "jar a"),
        ("lib/b.jar", "jar b"),
        ("static/index.html", "<html>2.0</html>"),
    ];
    let a1 = d.join("app-1.0.tar.gz");
    let s1 = release_tarball(&a1, &[("bin/app", "#!/bin/sh\necho 1.0\n")]);
    let a2 = d.join("app-2.0.tar.gz");
    let s2 = release_tarball(&a2, &files_v2);
    let agent = AgentProc::start(&d.join("state"));
    let setup = write_file(
        d,
        "setup.yml",
        &format!(
            r#"- hosts: all
  gather_facts: false
  tasks:
    - name: stage 1.0
      release: {{component: app, version: "1.0", artifact: "{a1}", sha256: "{s1}", state: staged}}
    - name: activate 1.0
      release: {{component: app, version: "1.0", path: "{public}", state: active}}
"#,
            a1 = a1.display(),
            public = public.display()
        ),
    );
    let run = rampart(&["run", &setup, "--agent", &agent.addr, "--json"]);
    assert_eq!(run.summary()["outcome"], "succeeded", "{}", run.stderr);
    std::fs::write(&log, "2.0 started\n2.0 health DOWN\n").unwrap();
    let deploy = write_file(
        d,
        "deploy.yml",
        &format!(
            r#"- hosts: all
  gather_facts: false
  tasks:
    - name: deploy 2.0
      block:
        - name: stage 2.0
          release: {{component: app, version: "2.0", artifact: "{a2}", sha256: "{s2}", state: staged}}
        - name: activate 2.0
          release: {{component: app, version: "2.0", path: "{public}", state: active}}
        - name: health check 2.0
          fail:
            msg: health is DOWN
      rescue:
        - name: capture forensics
          forensics:
            phase: capture
            failed_version: "2.0"
            restored_version: "1.0"
            components: [app]
            services: [{{name: rampart-no-such-unit-xyz, log_file: "{log}"}}]
            dest_dir: "{forensics}"
            failed_task: "{{{{ ansible_failed_task }}}}"
            failed_result: "{{{{ ansible_failed_result }}}}"
            state: {{versions: {{app: "1.0"}}}}
            health: {{status: DOWN}}
        - name: restore 1.0
          release: {{component: app, version: "1.0", path: "{public}", state: restored}}
        - name: the restored app logs
          shell: echo "1.0 restored" >> {log}
        - name: set 2.0 apart
          release: {{component: app, version: "2.0", path: "{public}", state: failed}}
      always:
        - name: complete forensics
          forensics:
            phase: complete
            failed_version: "2.0"
            components: [app]
            dest_dir: "{forensics}"
"#,
            a2 = a2.display(),
            public = public.display(),
            log = log.display(),
            forensics = forensics.display(),
        ),
    );
    let run = rampart(&["run", &deploy, "--agent", &agent.addr, "--json"]);
    let summary = run.summary();
    assert_eq!(summary["outcome"], "rolled_back", "{}", run.stderr);
    let txid = summary["txid"].as_str().unwrap().to_string();

    // One bundle, no capture left behind, with the files a one-step record has.
    let names: Vec<String> = std::fs::read_dir(&forensics)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let bundle = forensics.join(&names[0]);
    assert!(names[0].starts_with("2.0-"), "{names:?}");
    let mut found: Vec<String> = rampart_tests::deploy::tree_snapshot(&bundle)
        .into_iter()
        .filter(|l| l.starts_with("F "))
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "files.json",
            "health.json",
            "journal.jsonl",
            "logs/rampart-no-such-unit-xyz.log",
            "metadata.json",
            "state.json",
        ],
        "the bundle's files"
    );
    let read = |p: &str| std::fs::read_to_string(bundle.join(p)).unwrap();
    let meta: Value = serde_json::from_str(&read("metadata.json")).unwrap();
    assert_eq!(meta["txid"], txid);
    assert_eq!(meta["id"], names[0]);
    assert_eq!(meta["failed_task"]["name"], "health check 2.0");
    assert_eq!(meta["restored_version"], "1.0");
    assert_eq!(
        serde_json::from_str::<Value>(&read("state.json")).unwrap()["versions"]["app"],
        "1.0"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&read("health.json")).unwrap()["status"],
        "DOWN"
    );

    // The volatile part is from before the restore, the manifest from after it.
    let logged = read("logs/rampart-no-such-unit-xyz.log");
    assert!(logged.contains("2.0 health DOWN"), "{logged}");
    assert!(!logged.contains("1.0 restored"), "{logged}");
    let bundle_journal: Vec<Value> = read("journal.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        bundle_journal
            .iter()
            .any(|e| e["type"] == "task_start" && e["name"] == "capture forensics"),
        "the journal so far reaches the capture"
    );
    assert!(
        !bundle_journal.iter().any(|e| e["name"] == "restore 1.0"),
        "the bundle's journal is from before the restore"
    );
    let text = std::fs::read_to_string(d.join(format!("state/history/{txid}.jsonl"))).unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let captured = meta["captured"].as_str().unwrap();
    let recorded = meta["recorded"].as_str().unwrap();
    // RFC 3339 UTC with microseconds on both sides: text order is time order.
    assert!(
        captured < time_of(&entries, "task_start", "restore 1.0").as_str(),
        "captured {captured} after the restore began"
    );
    assert!(
        recorded > time_of(&entries, "task_end", "set 2.0 apart").as_str(),
        "recorded {recorded} before the failed release was set apart"
    );

    // The manifest is the failed release's, read where it was set apart, every file of it.
    let files: Value = serde_json::from_str(&read("files.json")).unwrap();
    let app = &files[0];
    assert_eq!(app["component"], "app");
    assert_eq!(app["artifact_sha256"], s2.as_str());
    let release_path = app["release_path"].as_str().unwrap();
    assert!(
        release_path.ends_with(&format!("apps/app/failed/2.0-{txid}")),
        "{release_path}"
    );
    let listed: Vec<(&str, &str)> = app["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "file")
        .map(|f| (f["path"].as_str().unwrap(), f["status"].as_str().unwrap()))
        .collect();
    for (name, _) in files_v2 {
        assert!(
            listed.contains(&(name, "unchanged")),
            "{name} not in the manifest as unchanged: {listed:?}"
        );
    }
    assert_eq!(
        listed.len(),
        files_v2.len() + 2,
        "every file, plus version.txt and the release metadata: {listed:?}"
    );
}
