//! Artifacts shared through the PostgreSQL store: two real controllers on one throwaway
//! PostgreSQL, each with a state directory of its own (so nothing is shared through the
//! filesystem), and a fleet of real agents. A controller that takes a deployment over from one
//! killed mid-rollout delivers the artifact the dead one received, read from PostgreSQL, and
//! finishes the rollout.

use std::time::Duration;

use rampart_tests::fleet::{ControllerProc, Fleet, finished};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(240);

/// The URL of database `rampart` of `pg`.
fn url(pg: &rampart_tests::pg::Pg) -> String {
    format!(
        "postgresql://postgres:{}@127.0.0.1:{}/rampart",
        rampart_tests::pg::PASSWORD,
        pg.port
    )
}

/// A second controller of `fleet` (whose configuration names `instance = "one"`): same store
/// and environment, its own address, instance name `instance` and state directory.
fn peer_controller(fleet: &Fleet, instance: &str) -> ControllerProc {
    let text = std::fs::read_to_string(&fleet.config).unwrap();
    let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    let state = text.lines().find(|l| l.starts_with("state_dir = ")).unwrap();
    let own_state = fleet.dir.path().join(format!("controller-{instance}"));
    let config = fleet.dir.path().join(format!("controller-{instance}.toml"));
    std::fs::write(
        &config,
        text.replace(
            listen,
            &format!(
                "listen = \"127.0.0.1:{}\"",
                rampart_tests::deploy::free_port()
            ),
        )
        .replace(state, &format!("state_dir = \"{}\"", own_state.display()))
        .replace("instance = \"one\"", &format!("instance = \"{instance}\"")),
    )
    .unwrap();
    ControllerProc::start(&config)
}

/// Controller one receives 2.0.0's artifact and is SIGKILLed once the first of three waves
/// finished; controller two, which never received the artifact, takes the deployment over
/// when one's heartbeat goes stale and delivers the artifact to the later hosts from
/// PostgreSQL: the deployment succeeds and every host serves 2.0.0.
#[test]
fn a_controller_taking_over_mid_rollout_delivers_the_artifact_another_received() {
    let pg = rampart_tests::pg::Pg::start();
    pg.create_db("rampart");
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    rampart_tests::deploy::package_sample_app(&dist);
    let mut fleet = Fleet::start_with_dist(
        dir,
        dist,
        3,
        "serial = 1\n",
        &format!("instance = \"one\"\n[store]\nurl = \"{}\"\n", url(&pg)),
        |_, _| {},
    );
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let two = peer_controller(&fleet, "two");

    let mut live = fleet.spawn_deploy("2.0.0", &["--reconnect-timeout", "5"]);
    let first = live.wait_for("the first wave finished on one", LONG, |v| {
        v["type"] == "wave_finished" && v["index"] == 0
    });
    assert_eq!(first["succeeded"], 1, "{first:#}");
    let id = first["deployment_id"].as_str().unwrap().to_string();
    let mut one = fleet.controller.take().expect("controller one runs");
    one.kill9();
    drop(live);

    // Controller two adopts the deployment once one's heartbeat is stale (10 s).
    fleet.controller = Some(two);
    let watch = fleet.spawn_cli(&["watch", &id, "--json"]);
    let (code, lines) = watch.finish(LONG);
    let fin = finished(&lines);
    assert_eq!(fin["outcome"], "succeeded", "{lines:#?}");
    assert_eq!(code, 0, "{fin:#}");
    let resumed = lines
        .iter()
        .find(|v| v["type"] == "resumed")
        .unwrap_or_else(|| panic!("no takeover in {lines:#?}"));
    assert_eq!(resumed["controller"], "two", "{resumed:#}");
    let failed: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "host_finished" && v["state"] != "succeeded")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(fleet.serving(), vec![Some("2.0.0".to_string()); 3]);
    for h in &fleet.hosts {
        assert_eq!(h.scenario.current().as_deref(), Some("2.0.0"), "{}", h.name);
    }
    // Two kept its own copy, verified, in its cache (the file is named by its digest).
    let sha = rampart_tests::sha256_hex(
        &std::fs::read(fleet.dist.join("sample-app-2.0.0.tar.gz")).unwrap(),
    );
    let cached = fleet
        .dir
        .path()
        .join("controller-two/artifacts/sha256")
        .join(&sha);
    assert!(cached.is_file(), "{} missing", cached.display());
}
