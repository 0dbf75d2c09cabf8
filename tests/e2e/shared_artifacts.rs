//! Artifacts shared through the PostgreSQL store: two real controllers on one throwaway
//! PostgreSQL, each with a state directory of its own (so nothing is shared through the
//! filesystem), and a fleet of real agents. A controller that takes a deployment over from one
//! killed mid-rollout delivers the artifact the dead one received, read from PostgreSQL, and
//! finishes the rollout.

use std::time::Duration;

use rampart_tests::fleet::{ControllerProc, Fleet, finished, pg_store_toml};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(240);

/// A second controller of `fleet` (whose configuration names `instance = "one"`): same store
/// and environment, its own address, instance name `instance` and state directory.
fn peer_controller(fleet: &Fleet, instance: &str) -> ControllerProc {
    let text = std::fs::read_to_string(&fleet.config).unwrap();
    let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    let state = text
        .lines()
        .find(|l| l.starts_with("state_dir = "))
        .unwrap();
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
    let mut fleet = Fleet::start_with_toml(
        3,
        "serial = 1\n",
        &pg_store_toml(&pg, "rampart", "one", ""),
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

/// Two controllers' artifact stores on one PostgreSQL, each with its own state directory:
/// what one publishes the other caches, verified; a chunk changed or removed in the database
/// is refused and nothing is cached; the quota counts what the shared store holds; a
/// collection by one removes from PostgreSQL what nothing references, for both.
#[test]
fn a_torn_or_tampered_shared_artifact_is_refused_and_collection_is_shared() {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use rampart_controller::artifact_store::{ArtifactStore, Refusal};
    use rampart_controller::config::ArtifactConfig;
    use rampart_controller::store::conformance::artifact_bytes;
    use rampart_controller::store::postgres::PostgresStore;
    use rampart_controller::store::{ARTIFACT_CHUNK, Store};
    use rampart_host::cas;

    let pg = rampart_tests::pg::Pg::start();
    pg.create_db("rampart");
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let limits = ArtifactConfig {
        min_free_bytes: 0,
        gc_grace: Duration::ZERO,
        ..ArtifactConfig::default()
    };
    let open = |dir: &std::path::Path, instance: &str, limits: ArtifactConfig| {
        let store: Arc<dyn Store> =
            Arc::new(PostgresStore::open(&pg.store_url("rampart")).unwrap());
        ArtifactStore::new(dir, limits).with_store(store, instance)
    };
    let one = open(dirs.0.path(), "one", limits.clone());
    let two = open(dirs.1.path(), "two", limits.clone());
    assert!(one.is_shared() && two.is_shared());
    // An upload to one: verified into its cache, then published.
    let upload = |data: &[u8]| {
        let sha = rampart_tests::sha256_hex(data);
        let mut up = cas::Upload::new(dirs.0.path()).unwrap();
        up.write(data).unwrap();
        up.finish(&sha).unwrap();
        assert!(!one.publish(&sha).unwrap(), "new to the shared store");
        assert!(one.publish(&sha).unwrap(), "stored already");
        sha
    };
    let cached_in_two = || -> Vec<String> {
        let mut names = Vec::new();
        for sub in [cas::SHA256_DIR, cas::TMP_DIR] {
            let dir = dirs.1.path().join(cas::ARTIFACTS_DIR).join(sub);
            if let Ok(rd) = std::fs::read_dir(dir) {
                names.extend(
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        names.sort();
        names
    };

    let good = artifact_bytes(2 * ARTIFACT_CHUNK + 77, 1);
    let good_sha = upload(&good);
    assert_eq!(two.claim(&good_sha), Some(good.len() as u64));
    let path = two
        .local_copy(&good_sha)
        .expect("two reads it from PostgreSQL");
    assert!(std::fs::read(&path).unwrap() == good, "cached as uploaded");
    assert_eq!(cached_in_two(), std::slice::from_ref(&good_sha));

    // One byte changed in the middle chunk: refused, nothing cached.
    let tampered = artifact_bytes(3 * ARTIFACT_CHUNK, 2);
    let tampered_sha = upload(&tampered);
    pg.psql(
        "rampart",
        &format!(
            "UPDATE rampart_controller.artifact_chunks SET data = set_byte(data, 5, (get_byte(data, 5) + 1) % 256) WHERE sha256 = '{tampered_sha}' AND idx = 1"
        ),
    );
    let e = two.local_copy(&tampered_sha).unwrap_err();
    assert!(e.contains(&tampered_sha) && e.contains("hash"), "{e}");
    assert_eq!(cached_in_two(), std::slice::from_ref(&good_sha));
    // A chunk gone (a torn row set): refused, nothing cached.
    let torn = artifact_bytes(3 * ARTIFACT_CHUNK - 5, 3);
    let torn_sha = upload(&torn);
    pg.psql(
        "rampart",
        &format!(
            "DELETE FROM rampart_controller.artifact_chunks WHERE sha256 = '{torn_sha}' AND idx = 2"
        ),
    );
    let e = two.local_copy(&torn_sha).unwrap_err();
    assert!(e.contains("chunk 2 of 3 is missing"), "{e}");
    assert_eq!(cached_in_two(), std::slice::from_ref(&good_sha));

    // The quota counts what the shared store holds, whoever uploaded it.
    let stored = (good.len() + tampered.len() + torn.len()) as u64;
    let tight = open(
        dirs.1.path(),
        "two",
        ArtifactConfig {
            quota_bytes: stored + 10,
            ..limits.clone()
        },
    );
    assert_eq!(tight.stored_bytes().unwrap(), stored);
    match tight.admit(11) {
        Err(Refusal::OverQuota { stored: s, .. }) => assert_eq!(s, stored),
        other => panic!("{other:?}"),
    }

    // Two collects with only the good one referenced: the others leave PostgreSQL, for one too.
    let refs: BTreeSet<String> = [good_sha.clone()].into();
    let report = two.sweep(&refs).unwrap();
    let mut gone = vec![
        (tampered_sha.clone(), tampered.len() as u64),
        (torn_sha.clone(), torn.len() as u64),
    ];
    gone.sort();
    assert_eq!(report.removed, gone);
    assert_eq!(report.kept, 1);
    assert_eq!(one.claim(&tampered_sha), None);
    assert_eq!(one.claim(&good_sha), Some(good.len() as u64));
    assert_eq!(
        pg.psql(
            "rampart",
            "SELECT count(*) FROM rampart_controller.artifact_chunks"
        ),
        "3",
        "only the good artifact's chunks stay"
    );
    // Referenced and only in one's cache (received before the store held artifacts): one's
    // collection stores it in PostgreSQL, for two.
    let legacy = artifact_bytes(ARTIFACT_CHUNK / 2, 4);
    let legacy_sha = rampart_tests::sha256_hex(&legacy);
    let mut up = cas::Upload::new(dirs.0.path()).unwrap();
    up.write(&legacy).unwrap();
    up.finish(&legacy_sha).unwrap();
    assert_eq!(two.claim(&legacy_sha), None);
    let refs: BTreeSet<String> = [good_sha.clone(), legacy_sha.clone()].into();
    let report = one.sweep(&refs).unwrap();
    assert_eq!(report.published, std::slice::from_ref(&legacy_sha));
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(two.claim(&legacy_sha), Some(legacy.len() as u64));

    // Unreferenced, they go from the store and from each cache that collects.
    let report = one.sweep(&BTreeSet::new()).unwrap();
    let mut gone = vec![
        (good_sha.clone(), good.len() as u64),
        (legacy_sha.clone(), legacy.len() as u64),
    ];
    gone.sort();
    assert_eq!(report.removed, gone);
    assert!(
        report.uncached.iter().any(|(s, _)| *s == good_sha),
        "{report:?}"
    );
    assert!(
        two.local_copy(&good_sha).is_ok(),
        "two's cached copy is still whole"
    );
    two.sweep(&BTreeSet::new()).unwrap();
    assert!(cached_in_two().is_empty());
    assert!(
        two.local_copy(&good_sha)
            .unwrap_err()
            .contains("upload it again")
    );
}
