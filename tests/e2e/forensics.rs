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
