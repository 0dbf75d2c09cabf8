//! A test suite for store backends: what every [`Store`] must do, whichever database keeps the
//! data. Each function checks one behaviour and panics at the first assertion that fails;
//! [`run_all`] runs them all, each on a fresh store.
//!
//! This is test code, but not `cfg(test)`: the SQLite store's unit tests run it on a temp file,
//! and the end-to-end tests (`tests/e2e/controller_store.rs`) on a throwaway PostgreSQL. What
//! only one backend does (SQLite's file lock and schema version, PostgreSQL's advisory locks
//! shared by several controllers) is tested beside that backend, with the fixtures below.

use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;

use super::{
    ARTIFACT_CHUNK, ControlKind, ControlRequest, Delivery, LockAttempt, Notice, NoticeState, Store,
    StoreError,
};

/// A store under test, with what the suite cannot do through [`Store`].
pub trait Fixture {
    /// The store, empty when the fixture is made.
    fn store(&self) -> &dyn Store;
    /// A second handle on the same data, as a second controller sharing the store has one:
    /// what [`store`](Fixture::store) writes, it reads at once. A backend with one controller
    /// per store returns the store itself.
    fn peer(&self) -> &dyn Store;
    /// Records that `instance` last sent a heartbeat `age` ago, by the clock the store judges
    /// heartbeats with (inserting the instance when it never sent one).
    fn backdate_heartbeat(&self, instance: &str, age: Duration);
    /// Drops the store and its peer, as a controller that dies without releasing anything,
    /// and opens the same data again.
    fn reopen(&mut self);
}

/// A deployment of version 1.2.3 with nothing else set.
pub fn deployment(id: &str, env: &str, state: pb::DeploymentState) -> pb::Deployment {
    pb::Deployment {
        id: id.into(),
        environment: env.into(),
        version: "1.2.3".into(),
        state: state as i32,
        ..Default::default()
    }
}

/// Event `seq` of deployment `id`, timed `seq` seconds after 2023-11-14 22:13:20 UTC.
pub fn event(id: &str, seq: u64) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        seq,
        deployment_id: id.into(),
        time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + seq as i64,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// An incident of deployment `d1` on host `web1`.
pub fn incident(id: &str, env: &str, state: pb::IncidentState) -> pb::Incident {
    pb::Incident {
        id: id.into(),
        environment: env.into(),
        deployment_id: "d1".into(),
        state: state as i32,
        summary: format!("{id} summary"),
        hosts: vec!["web1".into()],
        ..Default::default()
    }
}

/// The lock taken, from `from` when it names the instance that held it and died.
pub fn acquired(from: Option<&str>) -> LockAttempt {
    LockAttempt::Acquired {
        reclaimed_from: from.map(str::to_owned),
    }
}

/// The lock held by `deployment_id`, run by `instance`.
pub fn held(deployment_id: &str, instance: &str) -> LockAttempt {
    LockAttempt::Held {
        deployment_id: deployment_id.into(),
        instance: instance.into(),
    }
}

/// The ids of deployments, in order.
pub fn ids(ds: &[pb::Deployment]) -> Vec<&str> {
    ds.iter().map(|d| d.id.as_str()).collect()
}

/// Asks for an environment's lock until it is not `Held` (a backend may notice a dead holder
/// only after a moment: PostgreSQL ends a closed session's advisory locks asynchronously),
/// for at most 10 s; the last answer.
fn lock_when_free(
    s: &dyn Store,
    environment: &str,
    deployment_id: &str,
    instance: &str,
) -> LockAttempt {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s
            .try_lock_env(environment, deployment_id, instance)
            .unwrap()
        {
            LockAttempt::Held { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Deployments: insert (ids are unique), read, save, list newest first filtered by environment
/// and states with a limit, change owners. `a` writes and `b` reads (two handles on one store,
/// or the same one twice).
pub fn deployments_round_trip(a: &dyn Store, b: &dyn Store) {
    use pb::DeploymentState::{Finished, Queued, Running};
    let mut d1 = deployment("d1", "prod", Queued);
    d1.hosts.push(pb::HostResult {
        host: "web1".into(),
        ..Default::default()
    });
    a.insert_deployment(&d1, "i1").unwrap();
    b.insert_deployment(&deployment("d2", "staging", Running), "i2")
        .unwrap();
    a.insert_deployment(&deployment("d3", "prod", Queued), "i1")
        .unwrap();
    assert_eq!(b.get_deployment("d1").unwrap(), Some(d1.clone()));
    assert_eq!(a.get_deployment("d1").unwrap(), Some(d1.clone()));
    assert_eq!(b.get_deployment("nope").unwrap(), None);
    for s in [a, b] {
        match s.insert_deployment(&d1, "i2") {
            Err(StoreError::AlreadyExists(m)) => assert!(m.contains("d1"), "{m}"),
            other => panic!("duplicate deployment: {other:?}"),
        }
    }
    assert!(b.list_deployments(None, &[Finished], 0).unwrap().is_empty());

    d1.state = Finished as i32;
    d1.outcome = pb::DeploymentOutcome::Succeeded as i32;
    a.save_deployment(&d1).unwrap();
    assert_eq!(b.get_deployment("d1").unwrap(), Some(d1.clone()));
    assert!(matches!(
        a.save_deployment(&deployment("ghost", "prod", Queued)),
        Err(StoreError::Unavailable(_))
    ));

    let list = |env: Option<&str>, states: &[pb::DeploymentState], limit| {
        ids(&b.list_deployments(env, states, limit).unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(list(None, &[], 0), ["d3", "d2", "d1"]);
    assert_eq!(list(Some("prod"), &[], 0), ["d3", "d1"]);
    assert_eq!(list(None, &[Finished], 0), ["d1"]);
    assert_eq!(list(None, &[Running], 0), ["d2"]);
    assert_eq!(list(None, &[Finished, Running], 0), ["d2", "d1"]);
    assert_eq!(list(None, &[Running, Queued], 2), ["d3", "d2"]);
    assert_eq!(list(None, &[], 1), ["d3"]);
    assert!(list(Some("prod"), &[Running], 0).is_empty());
    assert!(list(Some("dev"), &[], 0).is_empty());

    b.set_owner("d1", "i2").unwrap();
    assert_eq!(a.get_deployment("d1").unwrap(), Some(d1));
    assert!(matches!(
        b.set_owner("ghost", "i2"),
        Err(StoreError::Unavailable(_))
    ));
}

/// Queue positions: 1 for an environment's oldest `QUEUED` deployment, 0 for one not queued
/// (or not there); a deployment leaving the queue moves the later ones up. `a` writes, `b`
/// reads.
pub fn queue_positions(a: &dyn Store, b: &dyn Store) {
    use pb::DeploymentState::{Queued, Running};
    a.insert_deployment(&deployment("p-run", "prod", Running), "i1")
        .unwrap();
    a.insert_deployment(&deployment("p1", "prod", Queued), "i1")
        .unwrap();
    b.insert_deployment(&deployment("s1", "staging", Queued), "i2")
        .unwrap();
    a.insert_deployment(&deployment("p2", "prod", Queued), "i1")
        .unwrap();
    assert_eq!(b.queue_position("prod", "p1").unwrap(), 1);
    assert_eq!(b.queue_position("prod", "p2").unwrap(), 2);
    assert_eq!(b.queue_position("staging", "s1").unwrap(), 1);
    assert_eq!(b.queue_position("prod", "p-run").unwrap(), 0);
    assert_eq!(b.queue_position("prod", "s1").unwrap(), 0);
    assert_eq!(b.queue_position("prod", "nope").unwrap(), 0);
    // p1 leaves the queue: p2 moves up.
    a.save_deployment(&deployment("p1", "prod", Running))
        .unwrap();
    assert_eq!(b.queue_position("prod", "p1").unwrap(), 0);
    assert_eq!(b.queue_position("prod", "p2").unwrap(), 1);
    assert_eq!(b.queue_position("staging", "s1").unwrap(), 1);
}

/// Events: read back in seq order (whatever order they were appended in) from a seq on, with
/// a limit; a (deployment, seq) stored already is refused and not stored twice; the last seq.
/// `a` writes, `b` reads.
pub fn events_in_seq_order_without_duplicates(a: &dyn Store, b: &dyn Store) {
    assert_eq!(b.last_seq("d1").unwrap(), None);
    for seq in [0, 1, 2, 4, 3] {
        a.append_event(&event("d1", seq)).unwrap();
    }
    a.append_event(&event("d2", 0)).unwrap();
    for s in [a, b] {
        match s.append_event(&event("d1", 3)) {
            Err(StoreError::AlreadyExists(m)) => assert!(m.contains("d1"), "{m}"),
            other => panic!("duplicate event: {other:?}"),
        }
    }
    assert_eq!(b.last_seq("d1").unwrap(), Some(4));
    assert_eq!(b.last_seq("d2").unwrap(), Some(0));
    assert_eq!(b.last_seq("nope").unwrap(), None);
    assert_eq!(
        b.events("d1", 0, 0).unwrap(),
        (0..5).map(|q| event("d1", q)).collect::<Vec<_>>()
    );
    let seqs = |v: Vec<pb::DeploymentEvent>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(b.events("d1", 2, 0).unwrap()), [2, 3, 4]);
    assert_eq!(seqs(b.events("d1", 1, 2).unwrap()), [1, 2]);
    assert_eq!(seqs(b.events("d1", 3, 10).unwrap()), [3, 4]);
    assert_eq!(seqs(b.events("d1", 9, 0).unwrap()), Vec::<u64>::new());
    assert_eq!(
        seqs(b.events("d1", u64::MAX, 0).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(seqs(b.events("d2", 0, 0).unwrap()), [0]);
    assert!(b.events("nope", 0, 0).unwrap().is_empty());
}

/// Incidents: insert (ids are unique), read, save (acknowledged), list newest first filtered by
/// environment and states with a limit. `a` writes and reads, `b` too, each seeing the other's.
pub fn incidents_round_trip_and_filters(a: &dyn Store, b: &dyn Store) {
    use pb::IncidentState::{Acknowledged, Open, Resolved};
    let mut i1 = incident("i1", "prod", Open);
    a.insert_incident(&i1, &[]).unwrap();
    a.insert_incident(&incident("i2", "staging", Open), &[])
        .unwrap();
    a.insert_incident(&incident("i3", "prod", Resolved), &[])
        .unwrap();
    for s in [a, b] {
        assert!(matches!(
            s.insert_incident(&i1, &[]),
            Err(StoreError::AlreadyExists(_))
        ));
    }
    assert_eq!(b.get_incident("i1").unwrap(), Some(i1.clone()));
    assert_eq!(b.get_incident("nope").unwrap(), None);
    i1.state = Acknowledged as i32;
    i1.acknowledged_by = "ops".into();
    b.save_incident(&i1, &[]).unwrap();
    assert_eq!(a.get_incident("i1").unwrap(), Some(i1));
    assert!(matches!(
        a.save_incident(&incident("ghost", "prod", Open), &[]),
        Err(StoreError::Unavailable(_))
    ));
    for s in [a, b] {
        let list = |env: Option<&str>, states: &[pb::IncidentState], limit| {
            s.list_incidents(env, states, limit)
                .unwrap()
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(list(None, &[], 0), ["i3", "i2", "i1"]);
        assert_eq!(list(Some("prod"), &[], 0), ["i3", "i1"]);
        assert_eq!(list(None, &[Open], 0), ["i2"]);
        assert_eq!(list(None, &[Open, Acknowledged], 0), ["i2", "i1"]);
        assert_eq!(list(Some("prod"), &[Resolved], 0), ["i3"]);
        assert_eq!(list(None, &[], 2), ["i3", "i2"]);
        assert_eq!(list(None, &[], 1), ["i3"]);
        assert!(list(Some("dev"), &[], 0).is_empty());
    }
}

/// Environment locks within one controller: taken when free, taken again by the holder, held
/// against another deployment, independent per environment, released only by the holder (and
/// releasing twice is harmless).
pub fn env_lock_semantics(s: &dyn Store) {
    assert_eq!(s.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
    // The holder again.
    assert_eq!(s.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
    // Another deployment of the same (live) instance waits.
    assert_eq!(
        s.try_lock_env("prod", "d2", "i1").unwrap(),
        held("d1", "i1")
    );
    // Another environment is independent.
    assert_eq!(
        s.try_lock_env("staging", "d3", "i1").unwrap(),
        acquired(None)
    );
    assert_eq!(
        s.try_lock_env("staging", "d4", "i1").unwrap(),
        held("d3", "i1")
    );
    // Unlock by a non-holder (or by a deployment that never asked): nothing changes.
    s.unlock_env("prod", "d2").unwrap();
    s.unlock_env("prod", "d9").unwrap();
    assert_eq!(
        s.try_lock_env("prod", "d2", "i1").unwrap(),
        held("d1", "i1")
    );
    // Unlock by the holder frees it, for the next one with nothing to reclaim.
    s.unlock_env("prod", "d1").unwrap();
    assert_eq!(s.try_lock_env("prod", "d2", "i1").unwrap(), acquired(None));
    assert_eq!(
        s.try_lock_env("prod", "d1", "i1").unwrap(),
        held("d2", "i1")
    );
    assert_eq!(
        s.try_lock_env("staging", "d4", "i1").unwrap(),
        held("d3", "i1")
    );
    s.unlock_env("prod", "d2").unwrap();
    s.unlock_env("prod", "d2").unwrap();
    s.unlock_env("staging", "d3").unwrap();
    assert_eq!(s.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
    assert_eq!(
        s.try_lock_env("staging", "d4", "i1").unwrap(),
        acquired(None)
    );
    s.unlock_env("prod", "d1").unwrap();
    s.unlock_env("prod", "d1").unwrap();
}

/// A lock whose holder died without releasing it is taken over by the next controller, which
/// is told the dead instance; the dead holder's own deployment, adopted, takes its lock over
/// too.
pub fn env_lock_taken_over_from_a_dead_holder(f: &mut dyn Fixture) {
    let s = f.store();
    assert_eq!(s.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
    assert_eq!(
        s.try_lock_env("staging", "d3", "i1").unwrap(),
        acquired(None)
    );
    f.reopen();
    let s = f.store();
    assert_eq!(lock_when_free(s, "prod", "d2", "i2"), acquired(Some("i1")));
    assert_eq!(s.try_lock_env("prod", "d2", "i2").unwrap(), acquired(None));
    assert_eq!(
        s.try_lock_env("prod", "d1", "i2").unwrap(),
        held("d2", "i2")
    );
    assert_eq!(
        lock_when_free(s, "staging", "d3", "i2"),
        acquired(Some("i1"))
    );
    assert_eq!(
        s.try_lock_env("staging", "d3", "i2").unwrap(),
        acquired(None)
    );
    s.unlock_env("prod", "d2").unwrap();
    assert_eq!(s.try_lock_env("prod", "d1", "i2").unwrap(), acquired(None));
}

/// A holder that lost its lock's session while its controller lives (a PostgreSQL restart ends
/// every session, and with them the advisory locks) keeps its environment: another deployment
/// is refused while the lock row names an unfinished deployment whose owner's heartbeat is
/// fresh, and the holder takes its lock again with nothing reclaimed. The lock passes on once
/// the holding deployment finished, or its owner's heartbeat went stale.
pub fn env_lock_kept_for_a_live_holder_that_lost_its_session(f: &mut dyn Fixture) {
    use pb::DeploymentState::{Finished, Running};
    let s = f.store();
    s.insert_deployment(&deployment("d1", "prod", Running), "i1")
        .unwrap();
    s.insert_deployment(&deployment("e1", "staging", Running), "i1")
        .unwrap();
    s.heartbeat("i1").unwrap();
    assert_eq!(s.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
    assert_eq!(
        s.try_lock_env("staging", "e1", "i1").unwrap(),
        acquired(None)
    );
    // Every session ends; i1 goes on beating.
    f.reopen();
    f.store().heartbeat("i1").unwrap();
    // Another controller's deployment asks, again and again: refused every time.
    for _ in 0..20 {
        assert_eq!(
            f.peer().try_lock_env("prod", "d2", "i2").unwrap(),
            held("d1", "i1")
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    // The holder takes it again, as its own.
    assert_eq!(
        lock_when_free(f.store(), "prod", "d1", "i1"),
        acquired(None)
    );
    assert_eq!(
        f.peer().try_lock_env("prod", "d2", "i2").unwrap(),
        held("d1", "i1")
    );
    // A holder that finished without releasing its lock keeps nothing.
    f.store()
        .save_deployment(&deployment("e1", "staging", Finished))
        .unwrap();
    assert_eq!(
        lock_when_free(f.peer(), "staging", "e2", "i2"),
        acquired(Some("i1"))
    );
    // i1 dies (its sessions end, its heartbeat goes stale): d2 gets prod.
    f.reopen();
    f.backdate_heartbeat("i1", Duration::from_secs(60));
    assert_eq!(
        lock_when_free(f.peer(), "prod", "d2", "i2"),
        acquired(Some("i1"))
    );
}

/// Orphans: the unfinished deployments of other instances whose heartbeat is stale or missing,
/// oldest first; an instance beating again owns its work again, and an adopted deployment is
/// no orphan. Written through the store, read through its peer.
pub fn orphans_follow_heartbeats(f: &dyn Fixture) {
    use pb::DeploymentState::{Finished, Queued, Running};
    let (a, b) = (f.store(), f.peer());
    a.insert_deployment(&deployment("dead-1", "prod", Running), "dead")
        .unwrap();
    a.insert_deployment(&deployment("live-1", "prod", Running), "live")
        .unwrap();
    a.insert_deployment(&deployment("mine", "prod", Running), "me")
        .unwrap();
    a.insert_deployment(&deployment("dead-done", "prod", Finished), "dead")
        .unwrap();
    a.insert_deployment(&deployment("never", "prod", Queued), "silent")
        .unwrap();
    a.insert_deployment(&deployment("dead-2", "staging", Queued), "dead")
        .unwrap();
    a.heartbeat("live").unwrap();
    b.heartbeat("me").unwrap();
    // A heartbeat a minute old.
    f.backdate_heartbeat("dead", Duration::from_secs(60));
    let stale = Duration::from_secs(30);
    assert_eq!(
        ids(&b.orphaned("me", stale).unwrap()),
        ["dead-1", "never", "dead-2"]
    );
    // The live instance sees the same orphans (its own work is not among them).
    assert_eq!(
        ids(&a.orphaned("live", stale).unwrap()),
        ["dead-1", "never", "dead-2"]
    );
    // The dead instance comes back: its work is its own again.
    a.heartbeat("dead").unwrap();
    assert_eq!(ids(&b.orphaned("me", stale).unwrap()), ["never"]);
    // Adopted.
    b.set_owner("never", "me").unwrap();
    assert!(a.orphaned("me", stale).unwrap().is_empty());
    assert!(matches!(
        b.set_owner("ghost", "me"),
        Err(StoreError::Unavailable(_))
    ));
    // With no tolerance at all, every other owner's work looks orphaned once time moves.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        ids(&b.orphaned("me", Duration::ZERO).unwrap()),
        ["dead-1", "live-1", "dead-2"]
    );
}

/// Giving a deployment up: its owner is cleared, so every controller (the one that gave it up
/// too) finds it orphaned at once; its lock's row stays, so its adopter takes the lock over
/// from the instance that gave it up. Giving up what another instance owns changes nothing.
/// `owned` lists an instance's unfinished deployments, oldest first. `a` and `b` are two
/// controllers' stores.
pub fn given_up_deployments_are_orphans_at_once(f: &dyn Fixture) {
    use pb::DeploymentState::{Finished, Queued, Running};
    let (a, b) = (f.store(), f.peer());
    a.insert_deployment(&deployment("d1", "prod", Running), "i1")
        .unwrap();
    a.insert_deployment(&deployment("d2", "prod", Queued), "i1")
        .unwrap();
    a.insert_deployment(&deployment("done", "prod", Finished), "i1")
        .unwrap();
    b.insert_deployment(&deployment("other", "staging", Running), "i2")
        .unwrap();
    a.heartbeat("i1").unwrap();
    b.heartbeat("i2").unwrap();
    let stale = Duration::from_secs(30);
    assert_eq!(ids(&a.owned("i1").unwrap()), ["d1", "d2"]);
    assert_eq!(ids(&b.owned("i2").unwrap()), ["other"]);
    assert!(b.owned("nobody").unwrap().is_empty());
    assert_eq!(a.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
    assert!(b.orphaned("i2", stale).unwrap().is_empty());
    // Not its owner: nothing changes.
    b.disown("d1", "i2").unwrap();
    b.disown("ghost", "i2").unwrap();
    assert!(b.orphaned("i2", stale).unwrap().is_empty());
    assert_eq!(ids(&a.owned("i1").unwrap()), ["d1", "d2"]);
    // Given up by its owner, whose heartbeat is fresh: an orphan for everyone.
    a.disown("d1", "i1").unwrap();
    assert_eq!(ids(&b.orphaned("i2", stale).unwrap()), ["d1"]);
    assert_eq!(ids(&a.orphaned("i1", stale).unwrap()), ["d1"]);
    assert_eq!(ids(&a.owned("i1").unwrap()), ["d2"]);
    // Its adopter takes the lock over, told whom from.
    assert_eq!(lock_when_free(b, "prod", "d1", "i2"), acquired(Some("i1")));
    b.set_owner("d1", "i2").unwrap();
    assert!(a.orphaned("i1", stale).unwrap().is_empty());
    assert_eq!(ids(&b.owned("i2").unwrap()), ["d1", "other"]);
    assert_eq!(
        a.try_lock_env("prod", "d2", "i1").unwrap(),
        held("d1", "i2")
    );
}

/// Control requests: what one controller records, another reads at once; the first request of
/// each kind wins and a later one changes nothing; requests are per deployment and come back
/// oldest first, their text as given (including the empty comment).
pub fn control_requests_reach_every_controller(a: &dyn Store, b: &dyn Store) {
    let request = |kind, by: &str, text: &str| ControlRequest {
        kind,
        by: by.into(),
        text: text.into(),
    };
    assert!(b.control_requests("d1").unwrap().is_empty());
    let approve = request(ControlKind::Approve, "ops", "");
    assert!(a.request_control("d1", &approve).unwrap());
    assert_eq!(b.control_requests("d1").unwrap(), vec![approve.clone()]);
    // Approved once: a second approval, through either store, is not recorded.
    for s in [a, b] {
        assert!(
            !s.request_control("d1", &request(ControlKind::Approve, "ci", "again"))
                .unwrap()
        );
    }
    let abort = request(ControlKind::Abort, "ci", "wrong version: it's Friday");
    assert!(b.request_control("d1", &abort).unwrap());
    assert!(
        !a.request_control("d1", &request(ControlKind::Abort, "ops", "second"))
            .unwrap()
    );
    assert!(a.request_control("d2", &abort).unwrap());
    for s in [a, b] {
        assert_eq!(
            s.control_requests("d1").unwrap(),
            vec![approve.clone(), abort.clone()]
        );
        assert_eq!(s.control_requests("d2").unwrap(), vec![abort.clone()]);
        assert!(s.control_requests("nope").unwrap().is_empty());
    }
}

/// `n` bytes that differ for every `seed`.
pub fn artifact_bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// An artifact read back whole, and the length of each chunk handed over.
pub type ReadBack = (Vec<u8>, Vec<usize>);

/// Reads a stored artifact whole (test code: artifacts here are small).
pub fn read_whole(s: &dyn Store, sha256: &str) -> Result<Option<ReadBack>, StoreError> {
    let (mut all, mut pieces) = (Vec::new(), Vec::new());
    let size = s.read_artifact(sha256, &mut |c| {
        all.extend_from_slice(c);
        pieces.push(c.len());
        Ok(())
    })?;
    Ok(size.map(|n| {
        assert_eq!(n, all.len() as u64, "the size returned is what was read");
        (all, pieces)
    }))
}

/// A reader of `data` that hands over its first `pause_after` bytes, then says so on `started`
/// and waits for `go` before the rest: an upload caught in the middle.
struct PausedReader {
    data: std::io::Cursor<Vec<u8>>,
    pause_after: u64,
    started: Option<std::sync::mpsc::Sender<()>>,
    go: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for PausedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.data.position();
        if at >= self.pause_after
            && let Some(started) = self.started.take()
        {
            let _ = started.send(());
            self.go
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| std::io::Error::other("never told to go on"))?;
        }
        let room = if at < self.pause_after {
            buf.len().min((self.pause_after - at) as usize)
        } else {
            buf.len()
        };
        self.data.read(&mut buf[..room])
    }
}

/// Artifacts: a store that holds them (PostgreSQL) shares them between controllers — what one
/// stores whole, the other claims and reads back in chunks of [`ARTIFACT_CHUNK`], verified;
/// bytes that do not hash to their digest, or are more or fewer than announced, leave nothing;
/// an upload in progress is neither readable, nor claimable, nor collected, and a second upload
/// of the same artifact waits for it and stores nothing; a collection removes only what is
/// still unused for the grace period, from every controller. A store that does not hold them
/// (SQLite) refuses every artifact call, `Unavailable`.
pub fn artifacts_shared_between_controllers(a: &dyn Store, b: &dyn Store) {
    use rampart_host::digest::sha256_hex;
    if !a.holds_artifacts() {
        let refused = |r: Result<(), StoreError>| match r {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("state_dir"), "{m}"),
            other => panic!("{other:?}"),
        };
        refused(
            a.put_artifact(&"0".repeat(64), 1, "one", &mut &[0u8][..])
                .map(drop),
        );
        refused(a.claim_artifact(&"0".repeat(64)).map(drop));
        refused(a.read_artifact(&"0".repeat(64), &mut |_| Ok(())).map(drop));
        refused(a.list_artifacts().map(drop));
        refused(a.remove_artifacts(&[], Duration::ZERO).map(drop));
        return;
    }
    let data = artifact_bytes(2 * ARTIFACT_CHUNK + 12_345, 1);
    let sha = sha256_hex(&data);
    let size = data.len() as u64;
    assert_eq!(b.claim_artifact(&sha).unwrap(), None);
    assert!(read_whole(b, &sha).unwrap().is_none());
    assert!(a.put_artifact(&sha, size, "one", &mut &data[..]).unwrap());
    assert_eq!(b.claim_artifact(&sha).unwrap(), Some(size));
    let (back, pieces) = read_whole(b, &sha).unwrap().expect("stored");
    assert!(back == data, "read back as written");
    assert_eq!(pieces, [ARTIFACT_CHUNK, ARTIFACT_CHUNK, 12_345]);
    // Stored already: nothing written.
    assert!(!b.put_artifact(&sha, size, "two", &mut &data[..]).unwrap());
    // The empty artifact has no chunk.
    let empty = sha256_hex(b"");
    assert!(a.put_artifact(&empty, 0, "one", &mut &b""[..]).unwrap());
    assert_eq!(
        read_whole(b, &empty).unwrap().unwrap().1,
        Vec::<usize>::new()
    );

    // Bytes that are not what was announced: refused, nothing left (not even a header).
    let other = artifact_bytes(ARTIFACT_CHUNK + 1, 2);
    let other_sha = sha256_hex(&other);
    let mut tampered = other.clone();
    tampered[ARTIFACT_CHUNK] ^= 1;
    for (bytes, announced) in [
        (&tampered, other.len() as u64),
        (&other, other.len() as u64 + 1),
        (&other, other.len() as u64 - 1),
    ] {
        match a.put_artifact(&other_sha, announced, "one", &mut &bytes[..]) {
            Err(StoreError::Corrupt(m)) => assert!(m.contains(&other_sha), "{m}"),
            r => panic!("announced {announced}: {r:?}"),
        }
        assert_eq!(b.claim_artifact(&other_sha).unwrap(), None);
        assert!(
            b.list_artifacts()
                .unwrap()
                .iter()
                .all(|r| r.sha256 != other_sha)
        );
    }
    let rows = b.list_artifacts().unwrap();
    let mut listed: Vec<(&str, u64, bool)> = rows
        .iter()
        .map(|r| (r.sha256.as_str(), r.size, r.complete))
        .collect();
    listed.sort();
    let mut expected = vec![(sha.as_str(), size, true), (empty.as_str(), 0, true)];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(
        rows.iter().all(|r| r.unused_for < Duration::from_secs(60)),
        "{rows:?}"
    );

    // An upload caught in the middle, on a.
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let slow = artifact_bytes(3 * ARTIFACT_CHUNK, 3);
    let slow_sha = sha256_hex(&slow);
    std::thread::scope(|scope| {
        let mut reader = PausedReader {
            data: std::io::Cursor::new(slow.clone()),
            pause_after: ARTIFACT_CHUNK as u64 + 10,
            started: Some(started_tx),
            go: go_rx,
        };
        let (s, n) = (&slow_sha, slow.len() as u64);
        let first = scope.spawn(move || a.put_artifact(s, n, "one", &mut reader));
        started
            .recv_timeout(Duration::from_secs(60))
            .expect("the upload began");
        let row = b
            .list_artifacts()
            .unwrap()
            .into_iter()
            .find(|r| r.sha256 == slow_sha)
            .expect("an upload in progress is listed (it counts in the quota)");
        assert!(!row.complete && row.size == slow.len() as u64, "{row:?}");
        assert_eq!(b.claim_artifact(&slow_sha).unwrap(), None);
        assert!(read_whole(b, &slow_sha).unwrap().is_none());
        assert!(
            b.remove_artifacts(std::slice::from_ref(&slow_sha), Duration::ZERO)
                .unwrap()
                .is_empty(),
            "an upload in progress is never collected"
        );
        // The same artifact through b meanwhile: it waits for a's upload, and stores nothing.
        let second =
            scope.spawn(|| b.put_artifact(&slow_sha, slow.len() as u64, "two", &mut &slow[..]));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !second.is_finished(),
            "the second upload waits for the first"
        );
        go.send(()).unwrap();
        assert!(first.join().unwrap().unwrap(), "the first upload stored it");
        assert!(
            !second.join().unwrap().unwrap(),
            "the second found it stored"
        );
    });
    assert_eq!(read_whole(b, &slow_sha).unwrap().unwrap().0, slow);

    // Collection: only what is unused for the grace period, for both controllers.
    let all = [sha.clone(), empty.clone(), slow_sha.clone()];
    assert!(
        b.remove_artifacts(&all, Duration::from_secs(3600))
            .unwrap()
            .is_empty()
    );
    let mut gone = vec![(sha.clone(), size), (empty.clone(), 0)];
    gone.sort();
    assert_eq!(b.remove_artifacts(&all[..2], Duration::ZERO).unwrap(), gone);
    assert_eq!(a.claim_artifact(&sha).unwrap(), None);
    assert!(read_whole(a, &sha).unwrap().is_none());
    assert_eq!(
        a.claim_artifact(&slow_sha).unwrap(),
        Some(slow.len() as u64)
    );
    assert_eq!(
        a.remove_artifacts(&all, Duration::ZERO).unwrap(),
        [(slow_sha.clone(), slow.len() as u64)]
    );
    assert!(b.list_artifacts().unwrap().is_empty());
}

/// The outbox ids of `subject`'s rows with their states, oldest first.
fn outbox_of(s: &dyn Store, subject: &str) -> Vec<(String, NoticeState)> {
    s.notices(subject)
        .unwrap()
        .into_iter()
        .map(|r| (r.notice.id, r.state))
        .collect()
}

/// The outbox: rows are written in the transaction of what they tell of (and not at all when
/// it fails), once per id; read back by subject; counted when pending by (environment, sink).
pub fn outbox_rows_travel_with_their_records(a: &dyn Store, b: &dyn Store) {
    use NoticeState::Pending;
    let gh = Notice::new("prod", "github", "incident", "i1");
    let slack = Notice::new("prod", "slack", "incident", "i1");
    let mut i1 = incident("i1", "prod", pb::IncidentState::Open);
    a.insert_incident(&i1, &[gh.clone(), slack.clone()])
        .unwrap();
    assert_eq!(
        outbox_of(b, "i1"),
        [
            ("i1/incident/github".to_string(), Pending),
            ("i1/incident/slack".to_string(), Pending)
        ]
    );
    let r = &b.notices("i1").unwrap()[0];
    assert_eq!(
        (r.attempts, r.note.as_str(), r.last_error.as_str()),
        (0, "", "")
    );
    assert_eq!(r.notice, gh);
    // Opening it again stores nothing, not even a new notice.
    let extra = Notice::new("prod", "webhook", "incident", "i1");
    assert!(matches!(
        a.insert_incident(&i1, std::slice::from_ref(&extra)),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(outbox_of(b, "i1").len(), 2);
    // A resolution adds its rows; a row already stored is kept once.
    i1.state = pb::IncidentState::Resolved as i32;
    let resolved = Notice::new("prod", "github", "incident_resolved", "i1");
    b.save_incident(&i1, &[resolved.clone(), gh.clone()])
        .unwrap();
    assert_eq!(a.get_incident("i1").unwrap(), Some(i1.clone()));
    assert_eq!(outbox_of(a, "i1").len(), 3);
    // Saving an incident that does not exist stores no notice either.
    assert!(
        a.save_incident(
            &incident("ghost", "prod", pb::IncidentState::Open),
            &[Notice::new("prod", "slack", "incident_resolved", "ghost")]
        )
        .is_err()
    );
    assert!(outbox_of(b, "ghost").is_empty());
    // Events: the notice is stored with its event, and not with a duplicate one.
    let approval = Notice::new("prod", "slack", "approval", "d1");
    a.append_event_notifying(&event("d1", 0), std::slice::from_ref(&approval))
        .unwrap();
    assert_eq!(b.events("d1", 0, 0).unwrap(), [event("d1", 0)]);
    assert!(matches!(
        b.append_event_notifying(
            &event("d1", 0),
            &[Notice::new("prod", "slack", "succeeded", "d1")]
        ),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        outbox_of(a, "d1"),
        [("d1/approval/slack".to_string(), Pending)]
    );
    a.append_event(&event("d1", 1)).unwrap();
    assert_eq!(b.last_seq("d1").unwrap(), Some(1));
    assert_eq!(
        b.pending_notices().unwrap(),
        [
            ("prod".to_string(), "github".to_string(), 2),
            ("prod".to_string(), "slack".to_string(), 2)
        ]
    );
}

/// A claim for one sink takes only that sink's rows (the worker runs one claimer per sink, so a
/// sink that hangs holds back only its own notices).
pub fn outbox_claims_by_sink(a: &dyn Store) {
    let long = Duration::from_secs(600);
    let gh = Notice::new("prod", "github", "incident", "i9");
    let slack = Notice::new("prod", "slack", "incident", "i9");
    a.insert_incident(
        &incident("i9", "prod", pb::IncidentState::Open),
        &[gh.clone(), slack.clone()],
    )
    .unwrap();
    assert!(
        a.claim_notices("one", long, 10, "pagerduty")
            .unwrap()
            .is_empty()
    );
    let got = a.claim_notices("one", long, 10, "slack").unwrap();
    assert_eq!(
        got.iter().map(|r| r.notice.id.as_str()).collect::<Vec<_>>(),
        vec![slack.id.as_str()]
    );
    let got = a.claim_notices("one", long, 10, "github").unwrap();
    assert_eq!(
        got.iter().map(|r| r.notice.id.as_str()).collect::<Vec<_>>(),
        vec![gh.id.as_str()]
    );
}

/// A row leased to a controller that is gone (its heartbeat stale, or never sent) is taken by
/// another at once, not after its lease: a controller restarted under a new name (the default
/// one has its pid) resumes what its predecessor had in flight.
pub fn outbox_rows_of_a_dead_controller_are_taken_at_once(f: &dyn Fixture) {
    let (a, b) = (f.store(), f.peer());
    let long = Duration::from_secs(600);
    a.heartbeat("alive").unwrap();
    let n = Notice::new("prod", "webhook", "incident", "i8");
    a.insert_incident(
        &incident("i8", "prod", pb::IncidentState::Open),
        std::slice::from_ref(&n),
    )
    .unwrap();
    assert_eq!(a.claim_notices("alive", long, 10, "").unwrap().len(), 1);
    assert!(
        b.claim_notices("other", long, 10, "").unwrap().is_empty(),
        "a live controller's lease holds"
    );
    // Dead: a heartbeat older than OWNER_STALE.
    f.backdate_heartbeat("alive", super::OWNER_STALE + Duration::from_secs(5));
    let got = b.claim_notices("other", long, 10, "").unwrap();
    assert_eq!(
        got.iter()
            .map(|r| (r.notice.id.as_str(), r.attempts))
            .collect::<Vec<_>>(),
        [(n.id.as_str(), 2)],
        "taken at once from the dead controller"
    );
}

/// Claims: one controller at a time holds a row (a lease); the holder settles it (delivered,
/// retried later, failed) and notes its steps; another controller takes a row whose lease ran
/// out, and a controller restarted under the same name takes its own rows again at once.
pub fn outbox_claims_are_leased_and_settled(a: &dyn Store, b: &dyn Store) {
    let long = Duration::from_secs(600);
    // Live controllers: their leases hold until they run out.
    for i in ["one", "two", "three", "four"] {
        a.heartbeat(i).unwrap();
    }
    let n1 = Notice::new("prod", "github", "incident", "i1");
    let n2 = Notice::new("prod", "slack", "incident", "i1");
    a.insert_incident(
        &incident("i1", "prod", pb::IncidentState::Open),
        &[n1.clone(), n2.clone()],
    )
    .unwrap();
    let got = a.claim_notices("one", long, 1, "").unwrap();
    assert_eq!(got.len(), 1, "the limit holds");
    assert_eq!(
        (got[0].notice.id.as_str(), got[0].attempts),
        (n1.id.as_str(), 1)
    );
    let got = b.claim_notices("two", long, 10, "").unwrap();
    assert_eq!(
        got.len(),
        1,
        "two gets only the row one did not claim: {got:?}"
    );
    assert_eq!(got[0].notice.id, n2.id);
    assert!(
        a.claim_notices("three", long, 10, "").unwrap().is_empty(),
        "both are leased"
    );
    // Only the holder settles or notes.
    assert!(
        !b.settle_notice(&n1.id, "two", &Delivery::Delivered)
            .unwrap()
    );
    assert!(!b.note_notice(&n1.id, "two", "issue=9").unwrap());
    assert!(a.note_notice(&n1.id, "one", "issue=7").unwrap());
    let retry = Delivery::Retry {
        after: Duration::ZERO,
        error: "HTTP 500".into(),
    };
    assert!(a.settle_notice(&n1.id, "one", &retry).unwrap());
    assert!(
        !a.settle_notice(&n1.id, "one", &Delivery::Delivered)
            .unwrap(),
        "the lease was let go"
    );
    // Due again at once, for anyone: the note and the error are kept, the attempts counted.
    let again = b.claim_notices("three", long, 10, "").unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (
            again[0].attempts,
            again[0].note.as_str(),
            again[0].last_error.as_str()
        ),
        (2, "issue=7", "HTTP 500")
    );
    assert!(
        b.settle_notice(&n1.id, "three", &Delivery::Delivered)
            .unwrap()
    );
    assert!(
        b.claim_notices("three", long, 10, "").unwrap().is_empty(),
        "delivered is done"
    );
    // A retry later is not due yet.
    assert!(
        b.settle_notice(
            &n2.id,
            "two",
            &Delivery::Retry {
                after: long,
                error: "429".into()
            }
        )
        .unwrap()
    );
    assert!(
        a.claim_notices("one", long, 10, "").unwrap().is_empty(),
        "not due before its pause"
    );
    let rows = a.notices("i1").unwrap();
    assert_eq!(
        rows.iter().map(|r| r.state).collect::<Vec<_>>(),
        [NoticeState::Delivered, NoticeState::Pending]
    );
    assert_eq!(
        a.pending_notices().unwrap(),
        [("prod".to_string(), "slack".to_string(), 1)]
    );

    // A lease that runs out frees the row for another controller; a restart under the same
    // name takes its own rows at once.
    let n3 = Notice::new("prod", "webhook", "incident", "i2");
    let n4 = Notice::new("prod", "pagerduty", "incident", "i2");
    a.insert_incident(
        &incident("i2", "prod", pb::IncidentState::Open),
        &[n3.clone(), n4.clone()],
    )
    .unwrap();
    assert_eq!(
        a.claim_notices("one", Duration::from_millis(300), 1, "")
            .unwrap()[0]
            .notice
            .id,
        n3.id
    );
    assert_eq!(
        a.claim_notices("four", long, 1, "").unwrap()[0].notice.id,
        n4.id
    );
    assert!(b.claim_notices("two", long, 10, "").unwrap().is_empty());
    let own = a.claim_notices("four", long, 10, "").unwrap();
    assert_eq!(
        own.iter().map(|r| r.notice.id.as_str()).collect::<Vec<_>>(),
        [n4.id.as_str()],
        "its own leased rows only: a restarted controller resumes them"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stolen = Vec::new();
    while stolen.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        stolen = b.claim_notices("two", long, 10, "").unwrap();
    }
    assert_eq!(stolen.len(), 1, "the expired lease's row only");
    assert_eq!(
        (stolen[0].notice.id.as_str(), stolen[0].attempts),
        (n3.id.as_str(), 2)
    );
    assert!(
        !a.settle_notice(&n3.id, "one", &Delivery::Delivered)
            .unwrap(),
        "one lost it"
    );
    assert!(
        b.settle_notice(
            &n3.id,
            "two",
            &Delivery::Failed {
                error: "HTTP 404".into()
            }
        )
        .unwrap()
    );
    let r = a.notices("i2").unwrap();
    assert_eq!(
        (r[0].state, r[0].last_error.as_str()),
        (NoticeState::Failed, "HTTP 404")
    );
    assert!(
        b.claim_notices("two", long, 10, "").unwrap().is_empty(),
        "failed is done"
    );
}

/// Runs every function of the suite, each on a new fixture from `fresh`, saying on stderr which
/// one runs (so a failure's output names it).
pub fn run_all<'a>(fresh: &dyn Fn() -> Box<dyn Fixture + 'a>) {
    let run = |name: &str, test: &dyn Fn(&mut dyn Fixture)| {
        eprintln!("store conformance: {name}");
        test(&mut *fresh());
    };
    run("deployments_round_trip", &|f| {
        deployments_round_trip(f.store(), f.peer())
    });
    run("queue_positions", &|f| queue_positions(f.store(), f.peer()));
    run("events_in_seq_order_without_duplicates", &|f| {
        events_in_seq_order_without_duplicates(f.store(), f.peer())
    });
    run("incidents_round_trip_and_filters", &|f| {
        incidents_round_trip_and_filters(f.store(), f.peer())
    });
    run("env_lock_semantics", &|f| env_lock_semantics(f.store()));
    run(
        "env_lock_taken_over_from_a_dead_holder",
        &env_lock_taken_over_from_a_dead_holder,
    );
    run(
        "env_lock_kept_for_a_live_holder_that_lost_its_session",
        &env_lock_kept_for_a_live_holder_that_lost_its_session,
    );
    run("orphans_follow_heartbeats", &|f| {
        orphans_follow_heartbeats(f)
    });
    run("given_up_deployments_are_orphans_at_once", &|f| {
        given_up_deployments_are_orphans_at_once(f)
    });
    run("control_requests_reach_every_controller", &|f| {
        control_requests_reach_every_controller(f.store(), f.peer())
    });
    run("outbox_rows_travel_with_their_records", &|f| {
        outbox_rows_travel_with_their_records(f.store(), f.peer())
    });
    run("outbox_claims_by_sink", &|f| {
        outbox_claims_by_sink(f.store())
    });
    run("outbox_claims_are_leased_and_settled", &|f| {
        outbox_claims_are_leased_and_settled(f.store(), f.peer())
    });
    run("artifacts_shared_between_controllers", &|f| {
        artifacts_shared_between_controllers(f.store(), f.peer())
    });
}
