//! The chaos suite's entry points (the harness is `rampart_tests::chaos`), and the `watch` case
//! the suite leans on: after SIGKILLing the CLI it learns a deployment's outcome with `rampart
//! watch ID --from-seq N`, where N may already be past the end.
//!
//! - `ci_budget`: a fixed seed and a few rounds on each store (SQLite, two controllers on
//!   PostgreSQL); part of `tests/run.sh`.
//! - `long_run` (ignored): `RAMPART_CHAOS_ROUNDS`, `RAMPART_CHAOS_STORE=sqlite|postgres|both`,
//!   `RAMPART_CHAOS_SEED`, or `RAMPART_CHAOS_ONLY=SEED:ROUND` to replay one round; prints a table
//!   of rounds. README.md ("Tests") says how to run it.

use std::time::{Duration, Instant};

use rampart_tests::chaos::{self, Plan, StoreKind};
use rampart_tests::fleet::{Fleet, finished};

/// `watch ID --from-seq N` with N past a finished deployment's last event: prints the outcome
/// and exits with its code at once, in text and in JSON.
#[test]
fn watch_past_the_end_of_a_finished_deployment_prints_its_outcome_and_exits_with_its_code() {
    let fleet = Fleet::start(1, "", |_, _| {});
    let reconnect = 20u64;
    // 1.0.0 succeeds (0); the broken 3.0.0 is rolled back (1).
    for (version, outcome, code) in [("1.0.0", "succeeded", 0), ("3.0.0", "rolled_back", 1)] {
        let r = fleet.deploy(version, &[]);
        assert_eq!(r.code, code, "deploy {version}: {}\n{}", r.stdout, r.stderr);
        let fin = finished(&r.json());
        assert_eq!(fin["outcome"], outcome, "{fin:#}");
        let id = fin["deployment_id"].as_str().unwrap().to_string();
        let last = fin["seq"].as_u64().unwrap();
        let past = (last + 5).to_string();
        let timeout = reconnect.to_string();
        let args = [
            "watch",
            id.as_str(),
            "--from-seq",
            past.as_str(),
            "--reconnect-timeout",
            timeout.as_str(),
        ];

        let t = Instant::now();
        let w = fleet.cli(&[&args[..], &["--json"]].concat());
        let took = t.elapsed();
        assert_eq!(
            w.code, code,
            "watch {id} --from-seq {past} --json: {}\n{}",
            w.stdout, w.stderr
        );
        let fin = finished(&w.json());
        assert_eq!(fin["outcome"], outcome, "{fin:#}");
        assert_eq!(fin["deployment_id"], id.as_str(), "{fin:#}");
        assert!(
            !w.stderr.contains("continues on the controller"),
            "a finished deployment does not continue: {}",
            w.stderr
        );
        // It did not wait out the reconnect timeout.
        assert!(
            took < Duration::from_secs(reconnect / 2),
            "watch --json took {took:?}"
        );

        let w = fleet.cli(&args);
        assert_eq!(
            w.code, code,
            "watch {id} --from-seq {past}: {}\n{}",
            w.stdout, w.stderr
        );
        assert!(
            w.stdout.contains(&format!("finished: {outcome}")),
            "the outcome is printed: {}\n{}",
            w.stdout,
            w.stderr
        );
    }
}

/// The CI budget: a fixed seed, a few rounds on each store. Fails naming seed, round, store,
/// the fault schedule and the round's logs.
#[test]
fn ci_budget() {
    let plan = Plan::ci();
    let report = chaos::run(&plan);
    println!("{}", report.table());
    report.assert_ok();
}

/// The long run, set by the environment (README.md, "Tests"):
/// `RAMPART_CHAOS_ROUNDS=200 RAMPART_CHAOS_STORE=both cargo test -p rampart-tests --test e2e
/// chaos::long_run -- --ignored --nocapture`.
#[test]
#[ignore = "long: RAMPART_CHAOS_ROUNDS rounds (README.md, Tests)"]
fn long_run() {
    let plan = Plan::from_env(|k| std::env::var(k).ok()).unwrap_or_else(|e| panic!("{e}"));
    let report = chaos::run(&plan);
    println!("{}", report.table());
    report.assert_ok();
}

/// Plans read from the environment as README.md says: `both` alternates the stores by round
/// (even rounds SQLite, odd rounds PostgreSQL), so `SEED:ROUND` alone names a round's store.
#[test]
fn chaos_plans_read_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let p = Plan::from_env(env(&[
        ("RAMPART_CHAOS_ROUNDS", "7"),
        ("RAMPART_CHAOS_STORE", "both"),
        ("RAMPART_CHAOS_SEED", "42"),
    ]))
    .unwrap();
    assert_eq!(p.seed, 42);
    let stores: Vec<(u64, StoreKind)> = p.rounds.iter().map(|r| (r.round, r.store)).collect();
    assert_eq!(stores.len(), 7, "{stores:?}");
    assert_eq!(stores[0], (0, StoreKind::Sqlite), "{stores:?}");
    assert_eq!(stores[1], (1, StoreKind::Postgres), "{stores:?}");
    // One store: every round on it.
    let p = Plan::from_env(env(&[
        ("RAMPART_CHAOS_ROUNDS", "3"),
        ("RAMPART_CHAOS_STORE", "postgres"),
    ]))
    .unwrap();
    assert!(p.rounds.iter().all(|r| r.store == StoreKind::Postgres));
    // A replay: the store of round 17 under `both` unless one is named.
    let p = Plan::from_env(env(&[("RAMPART_CHAOS_ONLY", "42:17")])).unwrap();
    assert_eq!(p.seed, 42);
    assert_eq!(p.rounds.len(), 1);
    assert_eq!(
        (p.rounds[0].round, p.rounds[0].store),
        (17, StoreKind::Postgres)
    );
    let p = Plan::from_env(env(&[
        ("RAMPART_CHAOS_ONLY", "42:17"),
        ("RAMPART_CHAOS_STORE", "sqlite"),
    ]))
    .unwrap();
    assert_eq!(p.rounds[0].store, StoreKind::Sqlite);
    assert!(Plan::from_env(env(&[("RAMPART_CHAOS_STORE", "redis")])).is_err());
    assert!(Plan::from_env(env(&[("RAMPART_CHAOS_ONLY", "42")])).is_err());
    // The same (seed, round) always draws the same round.
    assert_eq!(
        chaos::draw(42, 17, StoreKind::Postgres),
        chaos::draw(42, 17, StoreKind::Postgres)
    );
}
