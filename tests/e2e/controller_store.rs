//! The controller's PostgreSQL store against a real PostgreSQL 15: the schema migrated with
//! Rampart's own Flyway-compatible migrator (idempotent, history in
//! `rampart_controller.flyway_schema_history`), the store conformance suite
//! (`rampart_controller::store::conformance`, which the SQLite store runs too), and what several
//! controllers sharing one database rely on: environment locks as session advisory locks (held
//! across stores, released and reclaimed when the holder goes away) and orphans found by
//! heartbeats on the database's clock.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rampart_controller::store::conformance::{self, Fixture, acquired, deployment, held, ids};
use rampart_controller::store::postgres::PostgresStore;
use rampart_controller::store::{LockAttempt, Store};
use rampart_proto::v1 as pb;
use rampart_tests::pg::{PASSWORD, Pg};

/// A PostgreSQL store for the conformance suite: two controllers' stores on one database of
/// the test cluster.
struct PgFixture<'a> {
    pg: &'a Pg,
    db: String,
    /// `None` only while reopening.
    stores: Option<(PostgresStore, PostgresStore)>,
}

impl<'a> PgFixture<'a> {
    /// Creates database `db` and opens two stores on it.
    fn new(pg: &'a Pg, db: &str) -> PgFixture<'a> {
        pg.create_db(db);
        let mut f = PgFixture {
            pg,
            db: db.to_owned(),
            stores: None,
        };
        f.reopen();
        f
    }

    fn stores(&self) -> &(PostgresStore, PostgresStore) {
        self.stores.as_ref().expect("the stores are open")
    }
}

impl Fixture for PgFixture<'_> {
    fn store(&self) -> &dyn Store {
        &self.stores().0
    }

    fn peer(&self) -> &dyn Store {
        &self.stores().1
    }

    fn backdate_heartbeat(&self, instance: &str, age: Duration) {
        // By the database's clock, like the store's own heartbeats.
        self.pg.psql(
            &self.db,
            &format!(
                "INSERT INTO rampart_controller.instances (instance, heartbeat_ms)
                 VALUES ('{}', (extract(epoch FROM clock_timestamp()) * 1000)::bigint - {})
                 ON CONFLICT (instance) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms",
                instance.replace('\'', "''"),
                age.as_millis()
            ),
        );
    }

    fn reopen(&mut self) {
        // Dropping the stores ends their sessions, as a controller's death does.
        self.stores = None;
        let url = self.pg.store_url(&self.db);
        let a = PostgresStore::open(&url).expect("open the store");
        let b = PostgresStore::open(&url).expect("open the peer store");
        self.stores = Some((a, b));
    }
}

#[test]
fn migrates_once() {
    let pg = Pg::start();
    pg.create_db("ctl");
    let a = PostgresStore::open(&pg.store_url("ctl")).expect("first open");
    // A second controller (and a restart) runs the migration again: nothing to do.
    let _b = PostgresStore::open(&pg.store_url("ctl")).expect("second open");
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT string_agg(version || ':' || success, ',' ORDER BY installed_rank) FROM rampart_controller.flyway_schema_history WHERE version IS NOT NULL AND type = 'SQL'"
        ),
        "1:true,2:true,3:true,4:true"
    );
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT count(*) FROM rampart_controller.flyway_schema_history WHERE version = '1'"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "ctl",
            "SELECT count(*) FROM rampart_controller.flyway_schema_history WHERE version = '2'"
        ),
        "1"
    );
    assert_eq!(
        a.describe(),
        format!("postgresql://127.0.0.1:{}/ctl", pg.port)
    );
    assert!(!a.describe().contains(PASSWORD));
    assert!(!format!("{a:?}").contains(PASSWORD));
}

/// The store conformance suite (the one the SQLite store's unit tests run), each function on
/// a database of its own in one cluster, written and read through two controllers' stores.
#[test]
fn conformance() {
    let pg = Pg::start();
    let n = Cell::new(0);
    conformance::run_all(&|| {
        n.set(n.get() + 1);
        Box::new(PgFixture::new(&pg, &format!("conformance{}", n.get())))
    });
}

#[test]
fn environment_locks_across_two_controllers() {
    let pg = Pg::start();
    pg.create_db("ctl");
    let a = PostgresStore::open(&pg.store_url("ctl")).unwrap();
    let b = PostgresStore::open(&pg.store_url("ctl")).unwrap();

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
    let c = PostgresStore::open(&pg.store_url("ctl")).unwrap();
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
    let a = PostgresStore::open(&pg.store_url("ctl")).unwrap();
    let b = PostgresStore::open(&pg.store_url("ctl")).unwrap();
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
