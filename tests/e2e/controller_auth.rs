//! What a token may do, against a real `rampart-controller` (TLS, real agents) with a tonic
//! client: each RPC's scope (PERMISSION_DENIED naming the missing one), the variables a deploy
//! may set (`ci_vars`), four-eyes approval, request fields over their bounds (INVALID_ARGUMENT
//! with a short message, never an echo of the field), the environments an unknown
//! environment's NOT_FOUND lists, and `rampart status` showing a quiet environment beside a busy
//! one.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::controller_client::ControllerClient;
use rampart_proto::v1::deployment_event::Kind;
use rampart_tests::fleet::Fleet;
use rampart_tests::sha256_hex;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The longest wait for one answer or one stream message.
const STEP: Duration = Duration::from_secs(60);
/// More events than one deployment of one host produces: a longer stream is a runaway.
const MAX_EVENTS: usize = 2000;

type Client = ControllerClient<Channel>;

/// A `[[tokens]]` entry whose token text is `<name>-secret`.
fn token_toml(name: &str, scopes: &[&str], environments: Option<&[&str]>) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut t = format!(
        "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{}]\n",
        sha256_hex(secret(name).as_bytes()),
        list(scopes)
    );
    if let Some(e) = environments {
        t.push_str(&format!("environments = [{}]\n", list(e)));
    }
    t
}

/// The token text of `name` (`ci` is the fleet's own token, scope `admin`).
fn secret(name: &str) -> String {
    if name == "ci" {
        rampart_tests::fleet::TOKEN.to_string()
    } else {
        format!("{name}-secret")
    }
}

/// A one-host fleet whose controller has the extra `tokens` and `env_toml` (after prod's keys).
fn fleet(tokens: &str, env_toml: &str) -> Fleet {
    Fleet::start_with_toml(1, env_toml, tokens, |_, _| {})
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(fleet: &Fleet) -> Client {
    let addr = &fleet.controller.as_ref().unwrap().addr;
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let tls = rampart_rpc::tls::client_ca_only(&[fleet.certs().join("ca.pem")]).unwrap();
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(STEP);
    let ch = tokio::time::timeout(STEP, ep.connect())
        .await
        .expect("connect in time")
        .expect("connect");
    ControllerClient::new(ch).max_decoding_message_size(rampart_rpc::MAX_MESSAGE)
}

/// `msg` with the bearer token of `name`.
fn req<T>(name: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", secret(name)).parse().unwrap(),
    );
    r
}

/// One call, bounded by [`STEP`].
async fn call<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
        .map(tonic::Response::into_inner)
}

/// The error of a call that must fail with `code`.
fn refused<T: std::fmt::Debug>(what: &str, res: Result<T, Status>, code: Code) -> Status {
    match res {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: wrong code; message ({} bytes): {:.300}",
                s.message().len(),
                s.message()
            );
            s
        }
    }
}

/// Uploads `file` as `name`; its sha256.
async fn upload(c: &mut Client, token: &str, file: &Path) -> Result<String, Status> {
    let bytes = std::fs::read(file).unwrap();
    let sha = sha256_hex(&bytes);
    let mut msgs = Vec::new();
    for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
        msgs.push(pb::ArtifactUpload {
            name: if i == 0 {
                "sample-app.tar.gz".into()
            } else {
                String::new()
            },
            sha256: if i == 0 { sha.clone() } else { String::new() },
            size: if i == 0 { bytes.len() as u64 } else { 0 },
            data: chunk.to_vec(),
        });
    }
    call(
        "UploadArtifact",
        c.upload_artifact(req(token, tokio_stream::iter(msgs))),
    )
    .await
    .map(|r| r.sha256)
}

fn deploy_req(env: &str, version: &str, sha: &str, vars: Option<Value>) -> pb::DeployRequest {
    pb::DeployRequest {
        environment: env.into(),
        version: version.into(),
        artifacts: [("app".to_string(), sha.to_string())].into(),
        vars_json: vars.map(|v| v.to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

/// Reads a deployment's events until `stop` matches one; returns it.
async fn until(
    stream: &mut tonic::Streaming<pb::DeploymentEvent>,
    what: &str,
    stop: impl Fn(&Kind) -> bool,
) -> pb::DeploymentEvent {
    for _ in 0..MAX_EVENTS {
        let ev = tokio::time::timeout(STEP, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: no event within {STEP:?}"))
            .unwrap_or_else(|s| panic!("{what}: stream failed: {s:?}"))
            .unwrap_or_else(|| panic!("{what}: the stream ended first"));
        if ev.kind.as_ref().is_some_and(&stop) {
            return ev;
        }
    }
    panic!("{what}: runaway stream");
}

async fn deployments(c: &mut Client) -> Vec<pb::Deployment> {
    call(
        "ListDeployments",
        c.list_deployments(req(
            "ci",
            pb::ListDeploymentsRequest {
                limit: 1000,
                ..Default::default()
            },
        )),
    )
    .await
    .unwrap()
    .deployments
}

#[test]
fn each_rpc_needs_its_scope_and_a_deploy_sets_only_the_allowed_variables() {
    let tokens = [
        token_toml("reader", &["read"], None),
        token_toml("deployer", &["deploy", "read"], Some(&["prod"])),
        token_toml("approver", &["approve", "read"], None),
        token_toml("blind", &["approve"], None),
    ]
    .concat();
    let fleet = fleet(
        &tokens,
        "\n[environments.staging]\ninventory = \"inventory.yml\"\n",
    );
    let marker = fleet.dir.path().join("pwned");
    let artifact = fleet.dist.join("sample-app-1.0.0.tar.gz");
    runtime().block_on(async {
        let mut c = client(&fleet).await;
        // Refused for want of a scope, before anything else is looked at.
        let sha = "ab".repeat(32);
        let denied: Vec<(&str, &str, Result<(), Status>)> = vec![
            (
                "reader",
                "deploy",
                upload(&mut c, "reader", &artifact).await.map(drop),
            ),
            (
                "reader",
                "deploy",
                call(
                    "Deploy",
                    c.deploy(req("reader", deploy_req("prod", "1.0.0", &sha, None))),
                )
                .await
                .map(drop),
            ),
            (
                "approver",
                "deploy",
                call(
                    "Deploy",
                    c.deploy(req("approver", deploy_req("prod", "1.0.0", &sha, None))),
                )
                .await
                .map(drop),
            ),
            (
                "reader",
                "deploy",
                call(
                    "Rollback",
                    c.rollback(req(
                        "reader",
                        pb::RollbackRequest {
                            environment: "prod".into(),
                            reason: "x".into(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "reader",
                "deploy",
                call(
                    "Abort",
                    c.abort(req(
                        "reader",
                        pb::AbortRequest {
                            deployment_id: "d-1".into(),
                            reason: "x".into(),
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "deployer",
                "approve",
                call(
                    "Approve",
                    c.approve(req(
                        "deployer",
                        pb::ApproveRequest {
                            deployment_id: "d-1".into(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "deployer",
                "admin",
                call(
                    "ResolveIncident",
                    c.resolve_incident(req(
                        "deployer",
                        pb::ResolveIncidentRequest {
                            incident_id: "inc-1".into(),
                            note: "x".into(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "approver",
                "admin",
                call(
                    "GetForensics",
                    c.get_forensics(req(
                        "approver",
                        pb::GetDeploymentForensicsRequest {
                            deployment_id: "d-1".into(),
                            host: "h1".into(),
                        },
                    )),
                )
                .await
                .map(drop),
            ),
        ];
        // Looking needs `read`.
        let looks: Vec<Result<(), Status>> = vec![
            call(
                "GetDeployment",
                c.get_deployment(req(
                    "blind",
                    pb::GetDeploymentRequest {
                        deployment_id: "d-1".into(),
                    },
                )),
            )
            .await
            .map(drop),
            call(
                "Watch",
                c.watch(req(
                    "blind",
                    pb::WatchDeploymentRequest {
                        deployment_id: "d-1".into(),
                        from_seq: 0,
                    },
                )),
            )
            .await
            .map(drop),
            call(
                "ListDeployments",
                c.list_deployments(req("blind", pb::ListDeploymentsRequest::default())),
            )
            .await
            .map(drop),
            call(
                "ListEnvironments",
                c.list_environments(req("blind", pb::ListEnvironmentsRequest::default())),
            )
            .await
            .map(drop),
            call(
                "ListIncidents",
                c.list_incidents(req("blind", pb::ListIncidentsRequest::default())),
            )
            .await
            .map(drop),
            call(
                "DeploymentStats",
                c.deployment_stats(req(
                    "blind",
                    pb::DeploymentStatsRequest {
                        environment: "prod".into(),
                        since_seconds: 0,
                    },
                )),
            )
            .await
            .map(drop),
            call(
                "GetPostmortem",
                c.get_postmortem(req(
                    "blind",
                    pb::GetPostmortemRequest {
                        incident_id: "inc-1".into(),
                    },
                )),
            )
            .await
            .map(drop),
        ];
        let denied: Vec<(&str, &str, Result<(), Status>)> = denied
            .into_iter()
            .chain(looks.into_iter().map(|r| ("blind", "read", r)))
            .collect();
        for (i, (token, scope, res)) in denied.into_iter().enumerate() {
            let s = refused(&format!("call {i} by {token}"), res, Code::PermissionDenied);
            assert!(
                s.message().contains(&format!("`{scope}` scope")) && s.message().contains(token),
                "call {i}: {}",
                s.message()
            );
        }
        // `read` is enough to look.
        for token in ["reader", "deployer", "approver"] {
            call(
                "ListEnvironments",
                c.list_environments(req(token, pb::ListEnvironmentsRequest::default())),
            )
            .await
            .unwrap();
            call(
                "ListIncidents",
                c.list_incidents(req(token, pb::ListIncidentsRequest::default())),
            )
            .await
            .unwrap();
            call(
                "DeploymentStats",
                c.deployment_stats(req(
                    token,
                    pb::DeploymentStatsRequest {
                        environment: "prod".into(),
                        since_seconds: 3_600,
                    },
                )),
            )
            .await
            .unwrap();
        }

        // A deploy token may upload and deploy, but not rewrite what a host runs.
        let sha = upload(&mut c, "deployer", &artifact).await.unwrap();
        let mut evil = fleet.hosts[0]
            .scenario
            .vars_with("1.0.0", "sha256:none", "none");
        evil["components"][0]["service"]["start"] = json!(format!("touch {}", marker.display()));
        for (vars, name) in [
            (
                json!({ "components": evil["components"] }),
                "\"components\"",
            ),
            (
                json!({ "target_version": "1.0.0", "health_retries": 0 }),
                "\"health_retries\"",
            ),
        ] {
            let s = refused(
                &format!("Deploy setting {name}"),
                call(
                    "Deploy",
                    c.deploy(req(
                        "deployer",
                        deploy_req("prod", "1.0.0", &sha, Some(vars)),
                    )),
                )
                .await
                .map(drop),
                Code::InvalidArgument,
            );
            assert!(s.message().contains(name), "{}", s.message());
            assert!(s.message().contains("ci_vars"), "{}", s.message());
            assert!(!s.message().contains("target_version\""), "{}", s.message());
        }
        assert!(deployments(&mut c).await.is_empty(), "nothing was stored");

        // An unknown environment's NOT_FOUND lists only what the token may use.
        let s = refused(
            "Deploy to nope by deployer",
            call(
                "Deploy",
                c.deploy(req("deployer", deploy_req("nope", "1.0.0", &sha, None))),
            )
            .await
            .map(drop),
            Code::NotFound,
        );
        assert!(
            s.message().contains("prod") && !s.message().contains("staging"),
            "{}",
            s.message()
        );
        let s = refused(
            "Deploy to nope by ci",
            call(
                "Deploy",
                c.deploy(req("ci", deploy_req("nope", "1.0.0", &sha, None))),
            )
            .await
            .map(drop),
            Code::NotFound,
        );
        assert!(s.message().contains("prod, staging"), "{}", s.message());
        refused(
            "Deploy to staging by deployer",
            call(
                "Deploy",
                c.deploy(req("deployer", deploy_req("staging", "1.0.0", &sha, None))),
            )
            .await
            .map(drop),
            Code::PermissionDenied,
        );
        let envs = call(
            "ListEnvironments",
            c.list_environments(req("deployer", pb::ListEnvironmentsRequest::default())),
        )
        .await
        .unwrap();
        let names: Vec<&str> = envs.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["prod"]);
        assert!(deployments(&mut c).await.is_empty(), "nothing was stored");
    });

    // The CLI says the same and exits 2 (usage); nothing runs on the host.
    let token_file = fleet.dir.path().join("deployer-token");
    std::fs::write(&token_file, secret("deployer")).unwrap();
    let vars = fleet.dir.path().join("evil.json");
    let mut evil = fleet.hosts[0]
        .scenario
        .vars_with("1.0.0", "sha256:none", "none");
    evil["components"][0]["service"]["start"] = json!(format!("touch {}", marker.display()));
    std::fs::write(
        &vars,
        json!({ "components": evil["components"] }).to_string(),
    )
    .unwrap();
    let mut args: Vec<String> = fleet.deploy_args("1.0.0", &[]);
    args.extend([
        "-e".to_string(),
        format!("@{}", vars.display()),
        "--controller".into(),
        format!("https://{}", fleet.controller.as_ref().unwrap().addr),
        "--ca".into(),
        fleet.certs().join("ca.pem").display().to_string(),
        "--token-file".into(),
        token_file.display().to_string(),
    ]);
    let r = rampart_tests::rampart(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("components"), "{}", r.stderr);
    assert!(!marker.exists(), "the overridden start command ran");
    assert_eq!(fleet.serving(), vec![None]);
}

#[test]
fn four_eyes_refuses_the_requester_and_accepts_a_second_token() {
    let tokens = [
        token_toml("deployer", &["deploy", "approve", "read"], None),
        token_toml("approver", &["approve", "read"], None),
    ]
    .concat();
    let fleet = fleet(&tokens, "require_approval = true\nfour_eyes = true\n");
    runtime().block_on(async {
        let mut c = client(&fleet).await;
        let sha = upload(
            &mut c,
            "deployer",
            &fleet.dist.join("sample-app-1.0.0.tar.gz"),
        )
        .await
        .unwrap();
        // `target_version` is in the default `ci_vars`.
        let vars = json!({ "target_version": "1.0.0" });
        let mut stream = call(
            "Deploy",
            c.deploy(req(
                "deployer",
                deploy_req("prod", "1.0.0", &sha, Some(vars)),
            )),
        )
        .await
        .unwrap();
        let ev = until(&mut stream, "awaiting approval", |k| {
            matches!(k, Kind::AwaitingApproval(_))
        })
        .await;
        let id = ev.deployment_id;
        let approve = |token: &'static str| {
            req(
                token,
                pb::ApproveRequest {
                    deployment_id: id.clone(),
                    comment: "ok".into(),
                },
            )
        };
        let s = refused(
            "Approve by the requester",
            call("Approve", c.approve(approve("deployer"))).await,
            Code::PermissionDenied,
        );
        assert!(
            s.message().contains("four-eyes") && s.message().contains("another token"),
            "{}",
            s.message()
        );
        let d = call(
            "GetDeployment",
            c.get_deployment(req(
                "approver",
                pb::GetDeploymentRequest {
                    deployment_id: id.clone(),
                },
            )),
        )
        .await
        .unwrap();
        assert_eq!(d.state(), pb::DeploymentState::AwaitingApproval);
        assert_eq!(d.approved_by, "");
        assert_eq!(d.requested_by, "deployer");

        let a = call("Approve", c.approve(approve("approver")))
            .await
            .unwrap();
        assert_eq!(a.deployment.unwrap().approved_by, "approver");
        let fin = until(&mut stream, "finished", |k| matches!(k, Kind::Finished(_))).await;
        let Some(Kind::Finished(f)) = fin.kind else {
            unreachable!()
        };
        assert_eq!(f.outcome(), pb::DeploymentOutcome::Succeeded, "{f:#?}");
    });
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);
}

#[test]
fn oversized_fields_answer_invalid_argument_with_a_short_message() {
    let fleet = fleet("", "");
    let long = "x".repeat(100_000);
    runtime().block_on(async {
        let mut c = client(&fleet).await;
        let sha = "ab".repeat(32);
        let mut bad_artifact = deploy_req("prod", "1.0.0", &sha, None);
        bad_artifact.artifacts = [(long.clone(), sha.clone())].into();
        let mut bad_id = deploy_req("prod", "1.0.0", &sha, None);
        bad_id.deployment_id = long.clone();
        let results: Vec<(&str, Result<(), Status>)> = vec![
            (
                "GetDeployment.deployment_id",
                call(
                    "GetDeployment",
                    c.get_deployment(req(
                        "ci",
                        pb::GetDeploymentRequest {
                            deployment_id: long.clone(),
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "Watch.deployment_id",
                call(
                    "Watch",
                    c.watch(req(
                        "ci",
                        pb::WatchDeploymentRequest {
                            deployment_id: long.clone(),
                            from_seq: 0,
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "Approve.deployment_id",
                call(
                    "Approve",
                    c.approve(req(
                        "ci",
                        pb::ApproveRequest {
                            deployment_id: long.clone(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "Abort.deployment_id",
                call(
                    "Abort",
                    c.abort(req(
                        "ci",
                        pb::AbortRequest {
                            deployment_id: long.clone(),
                            reason: "x".into(),
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "ResolveIncident.incident_id",
                call(
                    "ResolveIncident",
                    c.resolve_incident(req(
                        "ci",
                        pb::ResolveIncidentRequest {
                            incident_id: long.clone(),
                            note: "x".into(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "Deploy.version",
                call(
                    "Deploy",
                    c.deploy(req("ci", deploy_req("prod", &long, &sha, None))),
                )
                .await
                .map(drop),
            ),
            (
                "Deploy.environment",
                call(
                    "Deploy",
                    c.deploy(req("ci", deploy_req(&long, "1.0.0", &sha, None))),
                )
                .await
                .map(drop),
            ),
            (
                "Deploy.artifacts key",
                call("Deploy", c.deploy(req("ci", bad_artifact)))
                    .await
                    .map(drop),
            ),
            (
                "Deploy.deployment_id",
                call("Deploy", c.deploy(req("ci", bad_id))).await.map(drop),
            ),
            (
                "Rollback.environment",
                call(
                    "Rollback",
                    c.rollback(req(
                        "ci",
                        pb::RollbackRequest {
                            environment: long.clone(),
                            reason: "x".into(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "Rollback.to_version",
                call(
                    "Rollback",
                    c.rollback(req(
                        "ci",
                        pb::RollbackRequest {
                            environment: "prod".into(),
                            to_version: long.clone(),
                            reason: "x".into(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "GetForensics.host",
                call(
                    "GetForensics",
                    c.get_forensics(req(
                        "ci",
                        pb::GetDeploymentForensicsRequest {
                            deployment_id: "d-1".into(),
                            host: long.clone(),
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "ListDeployments.environment",
                call(
                    "ListDeployments",
                    c.list_deployments(req(
                        "ci",
                        pb::ListDeploymentsRequest {
                            environment: long.clone(),
                            ..Default::default()
                        },
                    )),
                )
                .await
                .map(drop),
            ),
            (
                "UploadArtifact.sha256",
                call(
                    "UploadArtifact",
                    c.upload_artifact(req(
                        "ci",
                        tokio_stream::iter(vec![pb::ArtifactUpload {
                            name: "a.tar.gz".into(),
                            sha256: long.clone(),
                            size: 1,
                            data: vec![0],
                        }]),
                    )),
                )
                .await
                .map(drop),
            ),
        ];
        for (what, res) in results {
            let s = refused(what, res, Code::InvalidArgument);
            assert!(
                s.message().len() < 1024,
                "{what}: {} bytes: {:.200}",
                s.message().len(),
                s.message()
            );
            assert!(
                s.message().contains("(100000 characters)"),
                "{what}: {}",
                s.message()
            );
        }
        assert!(deployments(&mut c).await.is_empty(), "nothing was stored");
    });
}

#[test]
fn status_shows_a_quiet_environment_beside_a_busy_one() {
    let fleet = fleet(
        "",
        "\n[environments.busy]\ninventory = \"inventory.yml\"\nrequire_approval = true\n\
         \n[environments.empty]\ninventory = \"inventory.yml\"\n",
    );
    // prod: one real deployment, then nothing.
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    // busy: 21 deployments since, each dropped while awaiting approval (no host touched).
    runtime().block_on(async {
        let mut c = client(&fleet).await;
        let sha = upload(&mut c, "ci", &fleet.dist.join("sample-app-2.0.0.tar.gz"))
            .await
            .unwrap();
        for i in 0..21 {
            let mut stream = call(
                "Deploy",
                c.deploy(req("ci", deploy_req("busy", "2.0.0", &sha, None))),
            )
            .await
            .unwrap();
            let ev = until(&mut stream, "awaiting approval", |k| {
                matches!(k, Kind::AwaitingApproval(_))
            })
            .await;
            call(
                "Abort",
                c.abort(req(
                    "ci",
                    pb::AbortRequest {
                        deployment_id: ev.deployment_id,
                        reason: format!("test {i}"),
                    },
                )),
            )
            .await
            .unwrap();
            until(&mut stream, "finished", |k| matches!(k, Kind::Finished(_))).await;
        }
    });
    let s = fleet.cli(&["status", "--json"]);
    assert_eq!(s.code, 0, "status: {}\n{}", s.stdout, s.stderr);
    let list: Value = serde_json::from_str(&s.stdout).unwrap();
    let env = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["environment"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in status: {list:#}"))
    };
    let prod = env("prod");
    assert_eq!(prod["current_version"], "1.0.0", "{prod:#}");
    assert_eq!(prod["last_finished"]["outcome"], "succeeded", "{prod:#}");
    assert_eq!(prod["active"], json!([]), "{prod:#}");
    let busy = env("busy");
    assert_eq!(busy["current_version"], Value::Null, "{busy:#}");
    assert_eq!(busy["last_finished"]["outcome"], "aborted", "{busy:#}");
    let empty = env("empty");
    assert_eq!(empty["last_finished"], Value::Null, "{empty:#}");
    assert_eq!(empty["hosts"], 1, "{empty:#}");

    let t = fleet.cli(&["status"]);
    assert_eq!(t.code, 0, "status: {}\n{}", t.stdout, t.stderr);
    let row = |env: &str| {
        t.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{env} ")))
            .unwrap_or_else(|| panic!("no {env} row in\n{}", t.stdout))
            .to_string()
    };
    assert!(row("prod").contains("1.0.0") && row("prod").contains("last: succeeded"));
    assert!(row("busy").contains("last: aborted"), "{}", t.stdout);
    assert!(row("empty").contains("no deployments"), "{}", t.stdout);
}
