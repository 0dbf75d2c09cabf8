//! The shipped transactional playbook with a database: the sample app's releases carry their
//! Flyway migrations (`db/migration`), each deploy migrates a real PostgreSQL 15 inside the
//! transaction, and the broken v3 — whose migration succeeds but whose health check fails — is
//! rolled back together with its migration, with each restore strategy.

use rampart_tests::deploy::{Scenario, deploy_playbook};
use rampart_tests::pg::{PASSWORD, Pg};
use serde_json::{Value, json};

fn vars(sc: &Scenario, pg: &Pg, version: &str, restore_point: &str) -> Value {
    let mut v = sc.vars(version);
    v["database"] = json!({
        "url": pg.url("shop"),
        "user": "postgres",
        "password": PASSWORD,
        "restore_point": restore_point,
    });
    v
}

fn deploy_v1_v2_then_v3_rolls_back_the_database(restore_point: &str) {
    let pg = Pg::start();
    pg.create_db("shop");
    let sc = Scenario::new();
    for (version, code) in [("1.0.0", 0), ("2.0.0", 0)] {
        let run = sc.run(
            &deploy_playbook(),
            &vars(&sc, &pg, version, restore_point),
            &[],
        );
        assert_eq!(
            run.code, code,
            "deploy {version}\n{}\n{}",
            run.stdout, run.stderr
        );
    }
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(version, ',' ORDER BY installed_rank) FROM flyway_schema_history"
        ),
        "1,2"
    );
    // Production writes between deploys: the restore must keep them.
    pg.psql("shop", "INSERT INTO orders (item) VALUES ('tea')");
    let schema = pg.schema_dump("shop");
    let orders = pg.rows("shop", "orders");
    let history = pg.rows("shop", "flyway_schema_history");

    let run = sc.run(
        &deploy_playbook(),
        &vars(&sc, &pg, "3.0.0", restore_point),
        &[],
    );
    assert_eq!(
        run.code, 1,
        "v3 rolled back\n{}\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.summary()["outcome"], "rolled_back");
    assert!(
        run.stdout.contains("applied 1 migration(s): 2 -> 3"),
        "{}",
        run.stdout
    );
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));

    assert_eq!(
        pg.schema_dump("shop"),
        schema,
        "{restore_point}: schema back to v2"
    );
    assert_eq!(
        pg.rows("shop", "orders"),
        orders,
        "{restore_point}: rows back to v2"
    );
    if restore_point != "undo" {
        assert_eq!(pg.rows("shop", "flyway_schema_history"), history);
    }
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_class WHERE relname = 'order_totals'"
        ),
        "0"
    );
    // The state captures record the database's schema version: 2 before v3, 2 once restored.
    let mut captures: Vec<_> = std::fs::read_dir(sc.dir.path().join("captures"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    captures.sort();
    let versions: Vec<Value> = captures
        .iter()
        .rev()
        .take(2)
        .map(|p| serde_json::from_slice::<Value>(&std::fs::read(p).unwrap()).unwrap()["versions"]["database"].clone())
        .collect();
    assert_eq!(versions, [json!("2"), json!("2")], "{captures:?}");

    // Deploying 2.0.0 again is a no-op for the database.
    let again = sc.run(
        &deploy_playbook(),
        &vars(&sc, &pg, "2.0.0", restore_point),
        &[],
    );
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert_eq!(pg.rows("shop", "orders"), orders);
}

#[test]
fn broken_v3_rolls_back_its_migration_with_a_dump() {
    deploy_v1_v2_then_v3_rolls_back_the_database("dump");
}

#[test]
fn broken_v3_rolls_back_its_migration_with_undo_scripts() {
    deploy_v1_v2_then_v3_rolls_back_the_database("undo");
}

#[test]
fn broken_v3_rolls_back_its_migration_with_a_template_copy() {
    deploy_v1_v2_then_v3_rolls_back_the_database("template");
}

/// The agent's `CaptureState` (what the controller captures before a deploy) is the playbook's
/// capture: the components' versions, the services and the database's schema version.
#[test]
fn capture_state_rpc_records_services_and_the_database_as_the_playbook_does() {
    use rampart_proto::v1 as pb;
    use rampart_proto::v1::agent_client::AgentClient;
    use rampart_tests::{AgentProc, block_on};

    let pg = Pg::start();
    pg.create_db("shop");
    let sc = Scenario::new();
    for version in ["1.0.0", "2.0.0"] {
        let run = sc.run(&deploy_playbook(), &vars(&sc, &pg, version, "dump"), &[]);
        assert_eq!(
            run.code, 0,
            "deploy {version}\n{}\n{}",
            run.stdout, run.stderr
        );
    }
    // The playbook's last capture ("record the deployed state" has no services; the first
    // capture of the 2.0.0 deploy has them).
    let mut files: Vec<_> = std::fs::read_dir(sc.path().join("captures"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let playbook: Vec<Value> = files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    let before_v2 = playbook
        .iter()
        .rev()
        .find(|c| c["versions"]["app"] == "1.0.0" && c["services"]["sample-app"].is_string())
        .unwrap_or_else(|| panic!("no capture before 2.0.0 in {playbook:#?}"));
    assert_eq!(before_v2["versions"]["database"], "1", "{before_v2:#}");

    let agent = AgentProc::start(&sc.state);
    let database = vars(&sc, &pg, "2.0.0", "dump")["database"].clone();
    let captured: Value = block_on(async {
        let mut c = AgentClient::connect(format!("http://{}", agent.addr))
            .await
            .expect("connect");
        let state_json = c
            .capture_state(pb::CaptureStateRequest {
                components: vec!["app".into()],
                services: vec!["sample-app".into()],
                database_json: database.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .state_json;
        // A database that is not a JSON object is refused at the edge.
        let err = c
            .capture_state(pb::CaptureStateRequest {
                database_json: "[1]".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        // Names that would climb out of apps/ or pass for a systemctl option are refused too.
        for (components, services) in [
            (vec!["../../etc".to_string()], vec![]),
            (vec!["/etc".to_string()], vec![]),
            (vec![], vec!["--help".to_string()]),
            (vec![], vec!["a b".to_string()]),
        ] {
            let err = c
                .capture_state(pb::CaptureStateRequest {
                    components: components.clone(),
                    services: services.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{components:?} {services:?}: {err:?}"
            );
        }
        serde_json::from_str(&state_json).unwrap()
    });
    assert_eq!(captured["versions"]["app"], "2.0.0", "{captured:#}");
    assert_eq!(captured["versions"]["database"], "2", "{captured:#}");
    assert_eq!(
        captured["services"]["sample-app"], before_v2["services"]["sample-app"],
        "{captured:#}"
    );
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&captured),
        keys(before_v2),
        "the two captures differ in shape"
    );
}
