//! The controller's PostgreSQL store against a real PostgreSQL 15: the schema migrated with
//! Rampart's own Flyway-compatible migrator (idempotent, history in
//! `rampart_controller.flyway_schema_history`), every method's round trip, and what several
//! controllers sharing one database rely on: environment locks as session advisory locks (held
//! across stores, released and reclaimed when the holder goes away) and orphans found by
//! heartbeats on the database's clock.

use std::time::{Duration, Instant};

use rampart_controller::store::postgres::PostgresStore;
use rampart_controller::store::{LockAttempt, Store, StoreError};
use rampart_proto::v1 as pb;
use rampart_tests::pg::{PASSWORD, Pg};

/// The libpq-style URL of a database of the test cluster.
fn url(pg: &Pg, db: &str) -> String {
    format!(
        "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
        pg.port
    )
}

fn deployment(id: &str, env: &str, state: pb::DeploymentState) -> pb::Deployment {
    pb::Deployment {
        id: id.into(),
        environment: env.into(),
        version: "2.0.0".into(),
        state: state as i32,
        ..Default::default()
    }
}

fn event(id: &str, seq: u64) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        seq,
        deployment_id: id.into(),
        ..Default::default()
    }
}

fn incident(id: &str, env: &str, state: pb::IncidentState) -> pb::Incident {
    pb::Incident {
        id: id.into(),
        environment: env.into(),
        deployment_id: "d1".into(),
        state: state as i32,
        summary: "rollback failed on web1".into(),
        ..Default::default()
    }
}

fn acquired(from: Option<&str>) -> LockAttempt {
    LockAttempt::Acquired {
        reclaimed_from: from.map(str::to_owned),
    }
}

fn held(deployment_id: &str, instance: &str) -> LockAttempt {
    LockAttempt::Held {
        deployment_id: deployment_id.into(),
        instance: instance.into(),
    }
}

fn ids(ds: &[pb::Deployment]) -> Vec<&str> {
    ds.iter().map(|d| d.id.as_str()).collect()
}

#[test]
fn migrates_once_and_round_trips() {
    let pg = Pg::start();
    pg.create_db("ctl");
    let a = PostgresStore::open(&url(&pg, "ctl")).expect("first open");
    // A second controller (and a restart) runs the migration again: nothing to do.
    let b = PostgresStore::open(&url(&pg, "ctl")).expect("second open");
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT string_agg(version || ':' || success, ',' ORDER BY installed_rank) FROM rampart_controller.flyway_schema_history WHERE version IS NOT NULL AND type = 'SQL'"
        ),
        "1:true"
    );
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT count(*) FROM rampart_controller.flyway_schema_history WHERE version = '1'"
        ),
        "1"
    );
    assert_eq!(
        a.describe(),
        format!("postgresql://127.0.0.1:{}/ctl", pg.port)
    );
    assert!(!a.describe().contains(PASSWORD));
    assert!(!format!("{a:?}").contains(PASSWORD));

    // Deployments: written by one controller, read by the other.
    use pb::DeploymentState::{Finished, Queued, Running};
    let mut d1 = deployment("d1", "prod", Queued);
    d1.hosts.push(pb::HostResult {
        host: "web1".into(),
        ..Default::default()
    });
    a.insert_deployment(&d1, "instA").unwrap();
    b.insert_deployment(&deployment("d2", "prod", Queued), "instB")
        .unwrap();
    a.insert_deployment(&deployment("d3", "staging", Queued), "instA")
        .unwrap();
    match b.insert_deployment(&d1, "instB") {
        Err(StoreError::AlreadyExists(m)) => assert!(m.contains("d1"), "{m}"),
        other => panic!("duplicate deployment: {other:?}"),
    }
    assert_eq!(b.get_deployment("d1").unwrap(), Some(d1.clone()));
    assert_eq!(b.get_deployment("nope").unwrap(), None);
    assert_eq!(b.queue_position("prod", "d1").unwrap(), 1);
    assert_eq!(b.queue_position("prod", "d2").unwrap(), 2);
    assert_eq!(b.queue_position("staging", "d3").unwrap(), 1);
    assert_eq!(b.queue_position("prod", "d3").unwrap(), 0);
    d1.state = Running as i32;
    a.save_deployment(&d1).unwrap();
    assert_eq!(b.get_deployment("d1").unwrap(), Some(d1.clone()));
    assert_eq!(b.queue_position("prod", "d1").unwrap(), 0);
    assert_eq!(b.queue_position("prod", "d2").unwrap(), 1);
    assert!(matches!(
        a.save_deployment(&deployment("ghost", "prod", Queued)),
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(
        ids(&b.list_deployments(None, &[], 0).unwrap()),
        ["d3", "d2", "d1"]
    );
    assert_eq!(
        ids(&b.list_deployments(Some("prod"), &[], 0).unwrap()),
        ["d2", "d1"]
    );
    assert_eq!(
        ids(&b.list_deployments(None, &[Running], 0).unwrap()),
        ["d1"]
    );
    assert_eq!(
        ids(&b.list_deployments(None, &[Running, Queued], 2).unwrap()),
        ["d3", "d2"]
    );
    assert!(b.list_deployments(None, &[Finished], 0).unwrap().is_empty());
    b.set_owner("d1", "instB").unwrap();
    assert!(matches!(
        b.set_owner("ghost", "instB"),
        Err(StoreError::Unavailable(_))
    ));

    // Events.
    assert_eq!(a.last_seq("d1").unwrap(), None);
    for seq in 0..4 {
        a.append_event(&event("d1", seq)).unwrap();
    }
    match b.append_event(&event("d1", 2)) {
        Err(StoreError::AlreadyExists(m)) => assert!(m.contains("d1"), "{m}"),
        other => panic!("duplicate event: {other:?}"),
    }
    assert_eq!(b.last_seq("d1").unwrap(), Some(3));
    assert_eq!(
        b.events("d1", 0, 0).unwrap(),
        (0..4).map(|s| event("d1", s)).collect::<Vec<_>>()
    );
    let seqs = |v: Vec<pb::DeploymentEvent>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(b.events("d1", 1, 2).unwrap()), [1, 2]);
    assert_eq!(seqs(b.events("d1", 3, 10).unwrap()), [3]);
    assert!(b.events("d2", 0, 0).unwrap().is_empty());

    // Incidents.
    use pb::IncidentState::{Acknowledged, Open, Resolved};
    let mut i1 = incident("i1", "prod", Open);
    a.insert_incident(&i1).unwrap();
    a.insert_incident(&incident("i2", "staging", Open)).unwrap();
    a.insert_incident(&incident("i3", "prod", Resolved))
        .unwrap();
    assert!(matches!(
        b.insert_incident(&i1),
        Err(StoreError::AlreadyExists(_))
    ));
    i1.state = Acknowledged as i32;
    i1.acknowledged_by = "ops".into();
    b.save_incident(&i1).unwrap();
    assert_eq!(a.get_incident("i1").unwrap(), Some(i1));
    assert_eq!(a.get_incident("nope").unwrap(), None);
    let list = |env: Option<&str>, states: &[pb::IncidentState], limit| {
        a.list_incidents(env, states, limit)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(list(None, &[], 0), ["i3", "i2", "i1"]);
    assert_eq!(list(Some("prod"), &[], 0), ["i3", "i1"]);
    assert_eq!(list(None, &[Open, Acknowledged], 0), ["i2", "i1"]);
    assert_eq!(list(None, &[], 1), ["i3"]);
}

#[test]
fn environment_locks_across_two_controllers() {
    let pg = Pg::start();
    pg.create_db("ctl");
    let a = PostgresStore::open(&url(&pg, "ctl")).unwrap();
    let b = PostgresStore::open(&url(&pg, "ctl")).unwrap();

    assert_eq!(
        a.try_lock_env("prod", "d1", "instA").unwrap(),
        acquired(None)
    );
    assert_eq!(
        b.try_lock_env("prod", "d2", "instB").unwrap(),
        held("d1", "instA")
    );
    // The holder asks again; another deployment of the same controller waits too.
    assert_eq!(
        a.try_lock_env("prod", "d1", "instA").unwrap(),
        acquired(None)
    );
    assert_eq!(
        a.try_lock_env("prod", "d5", "instA").unwrap(),
        held("d1", "instA")
    );
    // Environments are independent.
    assert_eq!(
        b.try_lock_env("staging", "d3", "instB").unwrap(),
        acquired(None)
    );
    assert_eq!(
        a.try_lock_env("staging", "d4", "instA").unwrap(),
        held("d3", "instB")
    );
    // Unlocking by a non-holder changes nothing.
    b.unlock_env("prod", "d2").unwrap();
    a.unlock_env("prod", "d9").unwrap();
    assert_eq!(
        b.try_lock_env("prod", "d2", "instB").unwrap(),
        held("d1", "instA")
    );
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT string_agg(environment || '=' || deployment_id || '@' || instance, ',' ORDER BY environment) FROM rampart_controller.env_locks"
        ),
        "prod=d1@instA,staging=d3@instB"
    );

    // A clean release: the next one takes it with nothing to reclaim.
    a.unlock_env("prod", "d1").unwrap();
    assert_eq!(
        b.try_lock_env("prod", "d2", "instB").unwrap(),
        acquired(None)
    );
    assert_eq!(
        a.try_lock_env("prod", "d1", "instA").unwrap(),
        held("d2", "instB")
    );
    b.unlock_env("prod", "d2").unwrap();

    // A controller dies holding the lock: its session ends, the server releases the advisory
    // lock, and the other controller takes over from it.
    assert_eq!(
        a.try_lock_env("prod", "d1", "instA").unwrap(),
        acquired(None)
    );
    assert_eq!(
        b.try_lock_env("prod", "d2", "instB").unwrap(),
        held("d1", "instA")
    );
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    let attempt = loop {
        // The server notices the closed session asynchronously: allow it a moment.
        match b.try_lock_env("prod", "d2", "instB").unwrap() {
            LockAttempt::Held { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other,
        }
    };
    assert_eq!(attempt, acquired(Some("instA")));
    assert_eq!(
        b.try_lock_env("prod", "d2", "instB").unwrap(),
        acquired(None)
    );
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT deployment_id || '@' || instance FROM rampart_controller.env_locks WHERE environment = 'prod'"
        ),
        "d2@instB"
    );
    // A third controller sees B's locks.
    let c = PostgresStore::open(&url(&pg, "ctl")).unwrap();
    assert_eq!(
        c.try_lock_env("prod", "d7", "instC").unwrap(),
        held("d2", "instB")
    );
    assert_eq!(
        c.try_lock_env("staging", "d8", "instC").unwrap(),
        held("d3", "instB")
    );
    assert_eq!(
        c.try_lock_env("dev", "d9", "instC").unwrap(),
        acquired(None)
    );
    b.unlock_env("prod", "d2").unwrap();
    b.unlock_env("staging", "d3").unwrap();
    assert_eq!(
        c.try_lock_env("prod", "d7", "instC").unwrap(),
        acquired(None)
    );
    assert_eq!(
        c.try_lock_env("staging", "d8", "instC").unwrap(),
        acquired(None)
    );
}

#[test]
fn orphans_follow_heartbeats() {
    let pg = Pg::start();
    pg.create_db("ctl");
    let a = PostgresStore::open(&url(&pg, "ctl")).unwrap();
    let b = PostgresStore::open(&url(&pg, "ctl")).unwrap();
    use pb::DeploymentState::{Finished, Running};
    a.insert_deployment(&deployment("dA", "prod", Running), "instA")
        .unwrap();
    a.insert_deployment(&deployment("dA-done", "prod", Finished), "instA")
        .unwrap();
    b.insert_deployment(&deployment("dB", "staging", Running), "instB")
        .unwrap();
    b.insert_deployment(&deployment("dX", "dev", Running), "instX")
        .unwrap();
    let stale = Duration::from_millis(1500);
    a.heartbeat("instA").unwrap();
    let beat = Instant::now();
    b.heartbeat("instB").unwrap();
    // instX never sent a heartbeat: orphaned at once. A and B are alive.
    assert_eq!(ids(&b.orphaned("instB", stale).unwrap()), ["dX"]);
    assert_eq!(ids(&a.orphaned("instA", stale).unwrap()), ["dX"]);

    // A stops beating: after `stale`, B sees A's unfinished work as orphaned.
    let deadline = Instant::now() + Duration::from_secs(15);
    let orphans = loop {
        let orphans = b.orphaned("instB", stale).unwrap();
        if orphans.len() > 1 || Instant::now() > deadline {
            break orphans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        beat.elapsed() >= stale - Duration::from_millis(100),
        "orphaned after {:?}, stale is {stale:?}",
        beat.elapsed()
    );
    assert_eq!(ids(&orphans), ["dA", "dX"]);

    // A beats again: its work is its own again. B adopts dX.
    a.heartbeat("instA").unwrap();
    assert_eq!(ids(&b.orphaned("instB", stale).unwrap()), ["dX"]);
    b.set_owner("dX", "instB").unwrap();
    assert!(b.orphaned("instB", stale).unwrap().is_empty());
}
