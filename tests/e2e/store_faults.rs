//! Controllers whose PostgreSQL store fails under them, and controllers stopped or killed while
//! they run a deployment: a real PostgreSQL cluster stopped with `pg_ctl stop -m immediate`
//! (every session cut, as in a crash) and started again on the same port and data, real
//! controllers (SIGTERM, SIGKILL) and real agents serving the sample app.
//!
//! What must hold: a runner rides out a short outage and finishes its deployment with every
//! event stored once, in order; a runner whose outage outlasts `[store] outage_seconds` gives
//! its deployment up and a controller adopts it; a controller restarted under its configured
//! instance name resumes its own deployment; SIGTERM stops a PostgreSQL-backed controller with
//! exit 0 and no panic.

use std::path::Path;
use std::time::Duration;

use rampart_tests::fleet::{ControllerProc, Fleet, finished, pg_store_toml};
use rampart_tests::pg::Pg;
use serde_json::Value;

/// The longest a deployment of these small fleets may take, faults included.
const LONG: Duration = Duration::from_secs(180);

/// How long the store is down in the short outage: several of the runner's store calls fall in
/// it, and it is far below the default `outage_seconds`.
const SHORT_OUTAGE: Duration = Duration::from_secs(3);

/// A fleet of `n` agents whose controller, instance `one`, keeps its store in a fresh database
/// of `pg`; `store_extra` goes into its `[store]` section.
fn pg_fleet(
    pg: &Pg,
    n: usize,
    env_toml: &str,
    store_extra: &str,
    host_vars: impl Fn(usize, &mut Value),
) -> Fleet {
    pg.create_db("rampart");
    Fleet::start_with_toml(
        n,
        env_toml,
        &pg_store_toml(pg, "rampart", "one", store_extra),
        host_vars,
    )
}

/// Makes a host's app take 2 s to start, so that a host's transaction lasts a few seconds and
/// a fault lands inside one.
fn slow_start(_: usize, vars: &mut Value) {
    let start = vars["components"][0]["service"]["start"]
        .as_str()
        .unwrap()
        .to_string();
    vars["components"][0]["service"]["start"] = Value::String(format!("sleep 2; {start}"));
}

/// The deployment id of a CLI run's JSON lines.
fn deployment_id(lines: &[Value]) -> String {
    lines
        .iter()
        .find_map(|v| v["deployment_id"].as_str())
        .unwrap_or_else(|| panic!("no deployment id in {lines:#?}"))
        .to_string()
}

/// Every stored event of a deployment, as `rampart watch ID --json` prints them from seq 0.
fn stored_events(fleet: &Fleet, id: &str) -> Vec<Value> {
    let w = fleet.cli(&["watch", id, "--json"]);
    let events: Vec<Value> = w.json().into_iter().filter(|v| v["seq"].is_u64()).collect();
    assert!(!events.is_empty(), "watch {id}: {}\n{}", w.stdout, w.stderr);
    events
}

/// Asserts that the seqs of `events` are 0, 1, …, N-1 in order: nothing lost, nothing twice.
fn assert_contiguous(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "stored event seqs");
}

/// The record `rampart deployment show ID --json` prints.
fn show(fleet: &Fleet, id: &str) -> Value {
    let s = fleet.cli(&["deployment", "show", id, "--json"]);
    assert_eq!(s.code, 0, "deployment show: {}\n{}", s.stdout, s.stderr);
    serde_json::from_str(&s.stdout).unwrap()
}

/// Asserts that every host of the record succeeded (none left `pending` or `running`).
fn assert_every_host_succeeded(record: &Value) {
    let hosts = record["hosts"].as_array().unwrap();
    assert!(!hosts.is_empty(), "{record:#}");
    for h in hosts {
        assert_eq!(h["state"], "succeeded", "{}: {record:#}", h["host"]);
    }
}

/// Asserts that each host ran exactly one transaction of deployment `id` (its journal files
/// name the txid, which names the deployment).
fn assert_one_transaction_per_host(fleet: &Fleet, id: &str) {
    for h in &fleet.hosts {
        let runs = rampart_tests::read_journals(&h.scenario.state)
            .into_iter()
            .filter(|(p, _)| p.file_name().unwrap().to_string_lossy().contains(id))
            .count();
        assert_eq!(runs, 1, "{}: transactions of {id}", h.name);
    }
}

/// Deploys 1.0.0 then 2.0.0 (the later in waves of one host, watched in the background),
/// applies `fault` once wave 2's host is under way, and returns the 2.0.0 deploy's exit code
/// and JSON lines.
fn rollout_with_fault(fleet: &mut Fleet, fault: impl FnOnce(&mut Fleet)) -> (i32, Vec<Value>) {
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let mut live = fleet.spawn_deploy("2.0.0", &["--reconnect-timeout", "150"]);
    live.wait_for("h2's transaction under way", LONG, |v| {
        v["type"] == "host_event" && v["host"] == "h2"
    });
    fault(fleet);
    live.finish(LONG)
}

/// What every rollout under a fault must end with: succeeded, every host serving 2.0.0, the
/// record saying so, the stored events contiguous, one transaction per host, and a next deploy
/// that gets the environment.
fn assert_rollout_finished_whole(fleet: &Fleet, code: i32, lines: &[Value]) -> Vec<Value> {
    let fin = finished(lines);
    assert_eq!(code, 0, "{fin:#}");
    assert_eq!(fin["outcome"], "succeeded", "{fin:#}");
    assert_eq!(
        fleet.serving(),
        vec![Some("2.0.0".to_string()); fleet.hosts.len()]
    );
    let id = deployment_id(lines);
    let record = show(fleet, &id);
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert_every_host_succeeded(&record);
    let events = stored_events(fleet, &id);
    assert_contiguous(&events);
    assert_eq!(
        events.iter().filter(|v| v["type"] == "finished").count(),
        1,
        "{events:#?}"
    );
    assert_one_transaction_per_host(fleet, &id);
    // The environment lock was released: the next deploy runs (not `lock_timeout`).
    let next = fleet.deploy("1.0.0", &["--wait-timeout", "30"]);
    assert_eq!(
        next.code, 0,
        "next deploy: {}\n{}",
        next.stdout, next.stderr
    );
    assert_eq!(finished(&next.json())["outcome"], "succeeded");
    events
}

#[test]
fn a_postgresql_restart_mid_rollout_is_ridden_out_with_every_event_stored_once() {
    let pg = Pg::start();
    let mut fleet = pg_fleet(&pg, 3, "serial = 1\n", "", slow_start);
    // The controller again, its log kept: it shows whether the runner met the outage.
    fleet.kill_controller();
    let log = fleet.dir.path().join("controller.log");
    fleet.controller = Some(ControllerProc::start_logging(&fleet.config, &log));
    let (code, lines) = rollout_with_fault(&mut fleet, |_| {
        pg.stop_immediate();
        // The fault's length, not a synchronisation.
        std::thread::sleep(SHORT_OUTAGE);
        pg.start_again();
    });
    let events = assert_rollout_finished_whole(&fleet, code, &lines);
    // Ridden out by the runner that ran it: nobody took it over.
    assert!(
        !events.iter().any(|v| v["type"] == "resumed"),
        "{events:#?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("retrying for up to") && text.contains("the store answers again"),
        "the runner never met the outage:\n{text}"
    );
    assert!(!text.contains("given up"), "{text}");
    assert_no_panic(&log);
    for line in text.lines().filter(|l| l.contains("answers again")) {
        println!("{line}");
    }
}

#[test]
fn a_store_outage_past_outage_seconds_gives_the_deployment_up_and_a_controller_adopts_it() {
    let pg = Pg::start();
    let mut fleet = pg_fleet(&pg, 3, "serial = 1\n", "outage_seconds = 1", slow_start);
    let _two = ControllerProc::start(&fleet.peer_config("two"));
    let (code, lines) = rollout_with_fault(&mut fleet, |_| {
        pg.stop_immediate();
        // Well past the 1 s bound: the runner gives up while the store is still down.
        std::thread::sleep(Duration::from_secs(6));
        pg.start_again();
    });
    let events = assert_rollout_finished_whole(&fleet, code, &lines);
    // Given up, then adopted (by either controller) and finished by its adopter.
    let resumed: Vec<&Value> = events.iter().filter(|v| v["type"] == "resumed").collect();
    assert_eq!(resumed.len(), 1, "{events:#?}");
    assert!(
        ["one", "two"].contains(&resumed[0]["controller"].as_str().unwrap()),
        "{resumed:#?}"
    );
}

#[test]
fn a_controller_restarted_at_once_under_its_instance_name_resumes_its_own_deployment() {
    let pg = Pg::start();
    let mut fleet = pg_fleet(&pg, 3, "serial = 1\n", "", slow_start);
    // A second controller on the same store: it must leave one's deployment to one, whose
    // heartbeat never goes stale.
    let _two = ControllerProc::start(&fleet.peer_config("two"));
    let (code, lines) = rollout_with_fault(&mut fleet, |fleet| {
        fleet.kill_controller();
        fleet.restart_controller();
    });
    let events = assert_rollout_finished_whole(&fleet, code, &lines);
    let resumed: Vec<&Value> = events.iter().filter(|v| v["type"] == "resumed").collect();
    assert_eq!(resumed.len(), 1, "{events:#?}");
    assert_eq!(resumed[0]["controller"], "one", "{resumed:#?}");
}

/// Asserts that a controller's log shows no panic.
fn assert_no_panic(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !text.contains("panicked"),
        "{} shows a panic:\n{text}",
        log.display()
    );
}

#[test]
fn a_postgresql_backed_controller_stops_on_sigterm_with_exit_0_and_no_panic() {
    let pg = Pg::start();
    let mut fleet = pg_fleet(&pg, 1, "require_approval = true\n", "", |_, _| {});
    fleet.kill_controller();
    let stop = |ctl: &mut ControllerProc, log: &Path, what: &str| {
        let status = ctl
            .terminate(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{what}: still running 30 s after SIGTERM"));
        assert_no_panic(log);
        assert_eq!(status.code(), Some(0), "{what}: {status:?}");
    };

    // Idle.
    let log = fleet.dir.path().join("controller-idle.log");
    let mut ctl = ControllerProc::start_logging(&fleet.config, &log);
    stop(&mut ctl, &log, "idle");

    // Holding the environment lock: a deployment waits for its approval.
    let log = fleet.dir.path().join("controller-locked.log");
    fleet.controller = Some(ControllerProc::start_logging(&fleet.config, &log));
    let mut waiting = fleet.spawn_deploy("1.0.0", &["--reconnect-timeout", "1"]);
    waiting.wait_for("the deployment holds the lock", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let mut ctl = fleet.controller.take().unwrap();
    stop(&mut ctl, &log, "holding a lock");
    drop(waiting);
}
