//! Property tests of the controller's gRPC request checks: arbitrary requests are fed straight
//! to the service's handlers (no network) over a real SQLite store. Every request is answered
//! without a panic, a refusal carries a client-error code, and — the API's invariant — a refused
//! request stores nothing.
//!
//! The one environment that can accept a request needs approval, so an accepted rollback waits
//! there and never reaches an agent. No artifact is ever uploaded, so no deploy can pass its
//! checks: the deploy property is that every refusal leaves the store as it was.
//! `UploadArtifact` takes a `tonic::Streaming`, which only a real connection makes.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use rampart_controller::agents::Agents;
use rampart_controller::config::{ControllerConfig, hash_token};
use rampart_controller::deployment::Controller;
use rampart_controller::service::{Caller, Service};
use rampart_controller::store::sqlite::SqliteStore;
use rampart_proto::v1 as pb;
use rampart_proto::v1::controller_server::Controller as Api;
use tonic::{Code, Request};

const TOKENS: &[&str] = &[
    "prod", "other", "1.2.3", "v", ".", "-", "_", "+", "/", "..", " ", "é", "a", "0",
];
const CALLERS: &[&str] = &["ci", "limited", "unknown"];

struct Fixture {
    _dir: tempfile::TempDir,
    ctl: Arc<Controller>,
    svc: Service,
}

/// One controller per test (`slot`), shared by its cases: `prod` and `other` (both need
/// approval), a token for all and one limited to `other`.
fn fixture(slot: usize) -> &'static Fixture {
    static F: [OnceLock<Fixture>; 3] = [const { OnceLock::new() }; 3];
    F[slot].get_or_init(|| {
        // Static, so never dropped: kept under the target dir rather than leaked into /tmp.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let inv = "all:\n  hosts:\n    w1:\n      rampart_agent: 127.0.0.1:1\n      components: [{name: backend}]\n";
        std::fs::write(dir.path().join("inv.yml"), inv).unwrap();
        let text = format!(
            "insecure_dev = true\nstate_dir = \"st\"\n\
             [[tokens]]\nname = \"ci\"\nsha256 = \"{}\"\n\
             [[tokens]]\nname = \"limited\"\nsha256 = \"{}\"\nenvironments = [\"other\"]\n\
             [environments.prod]\ninventory = \"inv.yml\"\nrequire_approval = true\nwait_timeout_seconds = 0.1\n\
             [environments.other]\ninventory = \"inv.yml\"\nrequire_approval = true\nwait_timeout_seconds = 0.1\n",
            hash_token("a"),
            hash_token("b"),
        );
        let cfg = ControllerConfig::parse(&text, dir.path()).unwrap();
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let store = SqliteStore::open(&cfg.state_dir.join("controller.db")).unwrap();
        let ctl = {
            let _rt = rampart_fuzz::runtime().enter();
            Controller::new(Arc::new(cfg), Arc::new(store), Agents::new(None).unwrap())
        };
        let svc = Service::new(ctl.clone());
        Fixture { _dir: dir, ctl, svc }
    })
}

fn request<T>(caller: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if caller != "unknown" {
        r.extensions_mut().insert(Caller(caller.to_string()));
    }
    r
}

fn stored(ctl: &Controller) -> usize {
    rampart_fuzz::runtime()
        .block_on(ctl.db(|s| s.list_deployments(None, &[], 0)))
        .unwrap()
        .len()
}

fn client_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
    )
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("prod".to_string()),
        Just("other".to_string()),
        Just("1.2.3".to_string()),
        rampart_fuzz::text(TOKENS, 8)
    ]
}

proptest! {
    #![proptest_config(rampart_fuzz::config(300))]

    #[test]
    fn fuzz_deploy_refusals_store_nothing(caller in prop::sample::select(CALLERS), environment in text(), version in text(), artifacts in prop::collection::btree_map(prop_oneof![Just("backend".to_string()), text()], prop_oneof![Just("ab".repeat(32)), text()], 0..3), vars_json in rampart_fuzz::text(&["{", "}", "\"a\"", ":", "1", "[", "]"], 6), serial in prop::collection::vec(rampart_fuzz::text(&["1", "50%", "%", "0", "-1", "x"], 3), 0..3), max_fail_percentage in prop::option::of(any::<u32>()), deployment_id in text(), wait_timeout_ms in 0u64..100) {
        let f = fixture(0);
        let before = stored(&f.ctl);
        let req = pb::DeployRequest { environment, version, artifacts: artifacts.into_iter().collect(), vars_json, ci_run_id: String::new(), commit: String::new(), wait_timeout_ms, check: false, serial, max_fail_percentage, deployment_id, commit_time: None, stages: Vec::new() };
        let got = rampart_fuzz::runtime().block_on(f.svc.deploy(request(caller, req)));
        let Err(status) = got else { return Err(TestCaseError::fail("a deploy of an artifact never uploaded was accepted")) };
        prop_assert!(client_error(status.code()), "{status:?}");
        prop_assert_eq!(stored(&f.ctl), before, "a refused deploy stored something: {:?}", status);
    }

    #[test]
    fn fuzz_rollback_is_checked_before_it_is_stored(caller in prop::sample::select(CALLERS), environment in text(), to_version in text(), reason in rampart_fuzz::text(&[" ", "why", "\n"], 3), deployment_id in text(), wait_timeout_ms in 0u64..100, database in prop_oneof![Just(String::new()), Just("undo".to_string()), Just("none".to_string()), text()]) {
        let f = fixture(1);
        let before = stored(&f.ctl);
        let req = pb::RollbackRequest { environment, to_version: to_version.clone(), reason: reason.clone(), ci_run_id: String::new(), wait_timeout_ms, deployment_id, database: database.clone(), emergency: false };
        match rampart_fuzz::runtime().block_on(f.svc.rollback(request(caller, req))) {
            Ok(_) => {
                prop_assert!(!reason.trim().is_empty() && !to_version.is_empty() && caller != "unknown");
                prop_assert!(["", "undo", "none"].contains(&database.as_str()), "database {database:?} accepted");
                prop_assert_eq!(stored(&f.ctl), before + 1);
            }
            Err(status) => {
                prop_assert!(client_error(status.code()), "{status:?}");
                prop_assert_eq!(stored(&f.ctl), before, "a refused rollback stored something: {:?}", status);
            }
        }
    }

    #[test]
    fn fuzz_lookups_are_answered(caller in prop::sample::select(CALLERS), id in text(), note in rampart_fuzz::text(&[" ", "done"], 2), states in prop::collection::vec(-2i32..12, 0..3), limit in any::<u32>(), flag in any::<bool>()) {
        let f = fixture(2);
        let before = stored(&f.ctl);
        let svc = &f.svc;
        let answers: Vec<Result<(), tonic::Status>> = rampart_fuzz::runtime().block_on(async {
            vec![
                svc.get_deployment(request(caller, pb::GetDeploymentRequest { deployment_id: id.clone() })).await.map(drop),
                svc.watch(request(caller, pb::WatchDeploymentRequest { deployment_id: id.clone(), from_seq: u64::from(limit) })).await.map(drop),
                svc.approve(request(caller, pb::ApproveRequest { deployment_id: id.clone(), comment: note.clone() })).await.map(drop),
                svc.abort(request(caller, pb::AbortRequest { deployment_id: id.clone(), reason: note.clone() })).await.map(drop),
                svc.list_deployments(request(caller, pb::ListDeploymentsRequest { environment: id.clone(), states: states.clone(), limit })).await.map(drop),
                svc.list_incidents(request(caller, pb::ListIncidentsRequest { environment: id.clone(), states: states.clone(), limit })).await.map(drop),
                svc.list_environments(request(caller, pb::ListEnvironmentsRequest { environment: id.clone() })).await.map(drop),
                svc.resolve_incident(request(caller, pb::ResolveIncidentRequest { incident_id: id.clone(), note: note.clone(), acknowledge_only: flag, ..Default::default() })).await.map(drop),
                svc.get_forensics(request(caller, pb::GetDeploymentForensicsRequest { deployment_id: id.clone(), host: note.clone() })).await.map(drop),
            ]
        });
        for answer in answers {
            if let Err(status) = answer {
                prop_assert!(client_error(status.code()), "{:?}", status);
            }
        }
        prop_assert_eq!(stored(&f.ctl), before);
    }
}
