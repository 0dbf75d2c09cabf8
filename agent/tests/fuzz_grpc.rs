//! Property tests of the agent's gRPC request conversions: arbitrary requests are fed straight to
//! the service's handlers (no network), with a throwaway state directory, and every one is
//! answered — a stream, a response or a refusal with a client-error code — without a panic and
//! without writing outside the state directory. Events read back from protobuf round-trip.
//!
//! `PutArtifact` takes a `tonic::Streaming`, which only a real connection makes; its chunks go
//! through `rampart_host::cas::Upload`, whose digest checks its own tests cover.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rampart_agent::journal::Durability;
use rampart_agent::server::{AgentService, from_proto, to_proto};
use rampart_agent::transaction::HostConfig;
use rampart_playbook::template::Templar;
use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_server::Agent;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

const PLAYBOOK: &str = "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug: msg=hi\n";
const TOKENS: &[&str] = &[
    "..", "/", ".", "-", "_", "a", "tx", "0", "%", "\\", "é", " ", "\n", "{", "}", "\"", ":",
];

/// A service over `dir/state`, with forensics in `dir/forensics`.
fn service(dir: &Path) -> AgentService {
    let mut host = HostConfig::new(dir.join("state"));
    host.durability = Durability::None;
    host.hostname = "fuzz".into();
    AgentService::new(host, Arc::new(Templar::new())).with_forensics_dir(dir.join("forensics"))
}

/// What a refusal may say: the request is wrong, names nothing, or conflicts with the host.
fn client_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition
    )
}

/// Only `state` and `forensics` may appear beside each other in `dir`.
fn nothing_outside(dir: &Path) -> Result<(), TestCaseError> {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name();
        prop_assert!(
            name == "state" || name == "forensics",
            "{name:?} written outside the state dir"
        );
    }
    Ok(())
}

fn run_request() -> impl Strategy<Value = pb::RunRequest> {
    let playbook = prop_oneof![
        Just(PLAYBOOK.to_string()),
        rampart_fuzz::text(
            &[
                "- hosts: all\n",
                "  tasks:\n",
                "    - debug: msg=x\n",
                "{{",
                "}}",
                ":",
                "- "
            ],
            12
        )
    ];
    let vars = prop_oneof![
        Just(String::new()),
        Just("{\"a\": 1}".to_string()),
        Just("[1]".to_string()),
        rampart_fuzz::text(&["{", "}", "\"a\"", ":", "1", ",", "[", "null"], 10)
    ];
    let txid = prop_oneof![
        Just(String::new()),
        "[a-z0-9._-]{1,70}",
        rampart_fuzz::text(TOKENS, 8)
    ];
    (
        playbook,
        rampart_fuzz::text(TOKENS, 6),
        vars,
        any::<bool>(),
        txid,
        0u64..3_000,
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "tasks.yml",
                    "roles/web/tasks/main.yml",
                    "../escape.yml",
                    "/etc/passwd",
                    "a//b",
                    "",
                ]),
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            0..3,
        ),
        prop::collection::vec(
            prop::sample::select(vec!["web", "always", "never", ""]),
            0..2,
        ),
        prop_oneof![
            Just(String::new()),
            prop::sample::select(vec![
                r#"{"host":"a","groups":{"all":["a"],"web":["a"]},"hostvars":{"a":{"x":1}}}"#,
                r#"{"host":"a","groups":{"all":["b"]},"hostvars":{"a":{}}}"#,
                r#"{"host":"","groups":{},"hostvars":{}}"#,
                r#"{"host":"a","groups":{"all":["a","zz"]},"hostvars":{"a":{}}}"#,
                "[1,2]",
            ])
            .prop_map(str::to_string),
            rampart_fuzz::text(TOKENS, 4),
        ],
    )
        .prop_map(
            |(
                playbook,
                playbook_name,
                vars_json,
                check,
                txid,
                lock_timeout_ms,
                files,
                tags,
                inventory_json,
            )| {
                pb::RunRequest {
                    playbook,
                    playbook_name,
                    vars_json,
                    check,
                    txid,
                    lock_timeout_ms,
                    files: files
                        .into_iter()
                        .map(|(p, content)| pb::PlaybookFile {
                            path: p.to_string(),
                            content,
                        })
                        .collect(),
                    tags: tags.into_iter().map(str::to_string).collect(),
                    skip_tags: Vec::new(),
                    force_handlers: false,
                    diff: false,
                    inventory_json,
                }
            },
        )
}

proptest! {
    #![proptest_config(rampart_fuzz::config(200))]

    #[test]
    fn fuzz_run_request_is_answered(req in run_request()) {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let txid_ok = rampart_agent::transaction::check_txid(&req.txid).is_ok() || req.txid.is_empty();
        rampart_fuzz::runtime().block_on(async {
            match svc.run(Request::new(req)).await {
                Ok(stream) => {
                    prop_assert!(txid_ok, "an invalid txid was accepted");
                    // The transaction runs on its own thread: wait for its last event (bounded).
                    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(30), stream.into_inner().collect::<Vec<_>>()).await.map_err(|_| TestCaseError::fail("no end in 30 s"))?;
                    prop_assert!(events.iter().all(Result::is_ok));
                }
                Err(s) => prop_assert!(client_error(s.code()), "{s:?}"),
            }
            Ok(())
        })?;
        nothing_outside(dir.path())?;
    }

    #[test]
    fn fuzz_lookups_by_name_are_answered(name in rampart_fuzz::text(TOKENS, 10), seq in any::<u64>(), limit in any::<u32>()) {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        rampart_fuzz::runtime().block_on(async {
            let refused = |r: Result<(), tonic::Status>| match r {
                Ok(()) => Ok(()),
                Err(s) if client_error(s.code()) => Ok(()),
                Err(s) => Err(TestCaseError::fail(format!("{s:?}"))),
            };
            // Nothing ran here, so nothing can be found.
            let watch = svc.watch(Request::new(pb::WatchRequest { txid: name.clone(), from_seq: seq })).await;
            prop_assert!(watch.is_err());
            refused(watch.map(drop))?;
            let get = svc.get_transaction(Request::new(pb::GetTransactionRequest { txid: name.clone() })).await;
            prop_assert!(get.is_err());
            refused(get.map(drop))?;
            let forensics = svc.get_forensics(Request::new(pb::GetForensicsRequest { id: name.clone() })).await;
            prop_assert!(forensics.is_err());
            refused(forensics.map(drop))?;
            refused(svc.list_releases(Request::new(pb::ListReleasesRequest { component: name.clone() })).await.map(drop))?;
            refused(svc.has_artifact(Request::new(pb::HasArtifactRequest { sha256: name.clone() })).await.map(drop))?;
            refused(svc.list_forensics(Request::new(pb::ListForensicsRequest { limit })).await.map(drop))?;
            refused(svc.capture_state(Request::new(pb::CaptureStateRequest { components: vec![name.clone()], ..Default::default() })).await.map(drop))?;
            Ok(())
        })?;
        nothing_outside(dir.path())?;
    }

    #[test]
    fn prop_events_round_trip_through_protobuf(kind in 0u8..8, text in rampart_fuzz::text(TOKENS, 6), json in rampart_fuzz::text(&["{", "}", "\"a\"", ":", "1", "[", "]", ","], 8), n in any::<u32>(), enum_value in -2i32..12, seconds in prop_oneof![any::<i64>(), 0i64..4_000_000_000], nanos in any::<i32>()) {
        // Anything: never a panic, and what converts comes back the same.
        if let Ok(entry) = from_proto(event(kind, &text, &json, n, enum_value, seconds, nanos)) {
            prop_assert_eq!(from_proto(to_proto(&entry)), Ok(entry));
        }
    }

    #[test]
    fn prop_valid_events_convert_and_round_trip(kind in 0u8..8, text in rampart_fuzz::text(TOKENS, 6), json in rampart_fuzz::text(&["{", "}", "\"a\"", ":", "1", "[", "]", ","], 8), n in any::<u32>(), enum_value in 1i32..=3, seconds in 0i64..4_000_000_000, micros in 0i32..1_000_000) {
        // Every enum, time and kind the agent itself sends: it must convert (else the property
        // above could pass with a conversion that refuses everything).
        let ev = event(kind, &text, &json, n, enum_value, seconds, micros * 1000);
        let entry = from_proto(ev.clone());
        prop_assert!(entry.is_ok(), "{:?}: {:?}", ev, entry);
        let entry = entry.unwrap();
        prop_assert_eq!(from_proto(to_proto(&entry)), Ok(entry));
    }
}

/// A protobuf event of kind `kind` (0..8) made of the given values.
fn event(
    kind: u8,
    text: &str,
    json: &str,
    n: u32,
    enum_value: i32,
    seconds: i64,
    nanos: i32,
) -> pb::TransactionEvent {
    use pb::transaction_event::Kind;
    let text = text.to_string();
    let json = json.to_string();
    let kind = match kind {
        0 => Kind::Started(pb::TransactionStarted {
            playbook_name: text.clone(),
            host: text.clone(),
            check: n.is_multiple_of(2),
            pid: n,
        }),
        1 => Kind::PlayStarted(pb::PlayStarted {
            index: n,
            name: text.clone(),
        }),
        2 => Kind::TaskStarted(pb::TaskStarted {
            path: text.clone(),
            section: enum_value,
            name: text.clone(),
            action: text.clone(),
        }),
        3 => Kind::TaskFinished(pb::TaskFinished {
            path: text.clone(),
            section: enum_value,
            name: text.clone(),
            action: text.clone(),
            status: enum_value,
            result_json: json.clone(),
            duration_ms: u64::from(n),
        }),
        4 => Kind::TaskRetrying(pb::TaskRetrying {
            path: text.clone(),
            name: text.clone(),
            retries_left: n,
            result_json: json.clone(),
        }),
        5 => Kind::Recovery(pb::RecoveryStarted {
            interrupted_path: text.clone(),
            interrupted_section: enum_value,
            action: text.clone(),
            torn_tail: json.clone(),
            pid: n,
        }),
        6 => Kind::Finished(pb::TransactionFinished {
            outcome: enum_value,
            recap: Some(pb::Recap {
                ok: n,
                ..Default::default()
            }),
            recovered: n.is_multiple_of(3),
        }),
        _ => Kind::TaskProgress(pb::TaskProgress {
            path: text.clone(),
            name: text.clone(),
            data_json: json.clone(),
        }),
    };
    pb::TransactionEvent {
        seq: u64::from(n),
        txid: text.clone(),
        time: Some(prost_types::Timestamp { seconds, nanos }),
        kind: Some(kind),
    }
}
