//! Crash safety of the shipped `playbooks/production-deploy-transactional.yml`: a real
//! `rampart-agent` deploying the sample application is SIGKILLed at every journal record boundary
//! of a deploy (1.0.0 → 2.0.0, which succeeds when left alone) and of a failing deploy (→ the
//! broken 3.0.0, which is rolled back), and at seeded random points inside the extraction of a
//! large artifact. A new agent on the same state dir and port finishes the transaction before it
//! serves; the `rampart run --agent` client re-attaches and reports the outcome.
//!
//! After each restart the host must be wholly on one release, never mixed: `current`, the public
//! path, `state.json` and the running app agree on one version, that version is the old one when
//! the transaction rolled back (its release tree byte-for-byte as before) and the new one when it
//! succeeded; no staging dir, temp symlink, temp upload or deploy lock is left; every cached
//! artifact matches its digest; the journal is in history with no gap.
//!
//! With a database (a throwaway PostgreSQL the releases' migrations change inside the deploy),
//! the database must agree with the host: the schema and rows of before when the transaction
//! rolled back, the target's schema version when it succeeded, and no restore point left.
//!
//! The kill points hit use the agent's hidden `--debug-stop-after-record N` hook: it SIGSTOPs
//! itself right after writing journal record N, then the test SIGKILLs it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rampart_tests::deploy::{Scenario, deploy_playbook, package_sample_app, tree_snapshot};
use rampart_tests::pg::{PASSWORD, Pg};
use rampart_tests::{AgentProc, CliRun, XorShift, bin, port_of, process_state, read_journals};
use serde_json::{Value, json};

/// The release the host runs before each crashed deploy.
const OLD: &str = "1.0.0";
/// The healthy release deployed over it.
const NEW: &str = "2.0.0";
/// The release whose health check fails (packaged by `package.sh`).
const BROKEN: &str = "3.0.0";
/// A large healthy variant of 2.0.0 built by this test, slow enough to extract to crash inside.
const BIG: &str = "2.9.0";

/// Filler of the large artifact: directories × files × bytes (40 MB in 2,000 files).
const BIG_DIRS: usize = 40;
const BIG_FILES_PER_DIR: usize = 50;
const BIG_FILE_BYTES: usize = 20_000;

/// Health-check attempts for the healthy releases: they answer within milliseconds once up, but
/// under a loaded 2-core CI the app can take seconds to listen (25 × 0.2 s).
const HEALTH_RETRIES: u64 = 25;
/// Health-check attempts for the broken release: fewer, so each failing deploy is short.
const BROKEN_HEALTH_RETRIES: u64 = 5;

/// Random kill points inside extraction.
const RANDOM_KILLS: usize = 5;

/// Deploys run side by side (each on its own host, agent and app port).
const WORKERS: u64 = 2;

/// Bound on one whole client run, recovery included.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on reaching the kill point.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The journal path of the stage task in the shipped playbook (third task of the block).
const STAGE_PATH: &str = "0.0.block.2";

// ---------------------------------------------------------------------------------------------
// Hosts and runs

/// A database the deploys migrate (the playbook's `database` variable).
#[derive(Debug, Clone, Copy)]
struct Db<'a> {
    pg: &'a Pg,
    name: &'a str,
}

impl Db<'_> {
    /// The schema version the history records (what `capture_state` reads too).
    fn version(&self) -> String {
        self.pg.psql(
            self.name,
            "SELECT coalesce(max(version::int), 0) FROM flyway_schema_history WHERE success AND type = 'SQL'",
        )
    }

    /// Schema and rows, to compare before and after.
    fn snapshot(&self) -> (String, String, String) {
        (
            self.pg.schema_dump(self.name),
            self.pg.rows(self.name, "orders"),
            self.pg.rows(self.name, "flyway_schema_history"),
        )
    }
}

/// The shipped playbook's vars for `version`, with fewer health attempts for the broken one.
fn vars(sc: &Scenario, version: &str, db: Option<Db<'_>>) -> Value {
    let mut v = sc.vars(version);
    v["health_retries"] = json!(if version == BROKEN {
        BROKEN_HEALTH_RETRIES
    } else {
        HEALTH_RETRIES
    });
    if let Some(db) = db {
        v["database"] = json!({
            "url": db.pg.url(db.name),
            "user": "postgres",
            "password": PASSWORD,
            "restore_point": "dump",
        });
    }
    v
}

/// Deploys `versions` in turn with `rampart run --local`, each of which must succeed.
fn deploy_local(sc: &Scenario, versions: &[&str], what: &str, db: Option<Db<'_>>) {
    for v in versions {
        let run = sc.run(&deploy_playbook(), &vars(sc, v, db), &[]);
        assert_eq!(
            run.code, 0,
            "[{what}] setup deploy {v}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
    }
}

/// A `rampart run --agent` client, its output read while it runs.
#[derive(Debug)]
struct Client {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Client {
    /// Starts the shipped playbook on the agent at `addr`; it re-attaches for up to 60 s.
    fn start(sc: &Scenario, addr: &str, version: &str, db: Option<Db<'_>>) -> Client {
        let arg = sc.vars_arg(version, &vars(sc, version, db));
        let mut child = Command::new(bin("rampart"))
            .arg("run")
            .arg(deploy_playbook())
            .args(["--agent", addr, "--json", "--reconnect-timeout", "60", "-e"])
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rampart run");
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        Client {
            child,
            stdout,
            stderr,
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits (bounded) for the client to finish and returns what it printed.
    fn finish(mut self, what: &str) -> CliRun {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for rampart run") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        let run = CliRun {
            code: status.and_then(|s| s.code()).unwrap_or(-1),
            stdout: join(self.stdout.take()).unwrap_or_default(),
            stderr: join(self.stderr.take()).unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "[{what}] rampart run did not finish within {CLIENT_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
        run
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Journals

fn history(state: &Path) -> Vec<PathBuf> {
    read_journals(state).into_iter().map(|(p, _)| p).collect()
}

/// The journal of the one transaction that finished since `before`: every journal is in
/// history (none left in flight, within 5 s), every line parses, its sequence has no gap and ends with `end`.
fn new_finished_journal(state: &Path, before: &[PathBuf], what: &str) -> Vec<Value> {
    // The agent sends the final summary before it moves the journal to history: the client may
    // return a moment before the move.
    let deadline = Instant::now() + Duration::from_secs(5);
    let in_flight =
        || std::fs::read_dir(state.join("journal")).is_ok_and(|mut rd| rd.next().is_some());
    while in_flight() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let journals = read_journals(state);
    for (p, _) in &journals {
        assert!(
            p.to_string_lossy().contains("/history/"),
            "[{what}] {} left in flight",
            p.display()
        );
    }
    let mut new: Vec<(PathBuf, Vec<Value>)> = journals
        .into_iter()
        .filter(|(p, _)| !before.contains(p))
        .collect();
    assert_eq!(
        new.len(),
        1,
        "[{what}] new journals: {:?}",
        new.iter().map(|j| &j.0).collect::<Vec<_>>()
    );
    let (_, entries) = new.remove(0);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64), "[{what}] seq gap at {i}");
    }
    assert_eq!(
        entries.last().map(|e| e["type"].clone()),
        Some(json!("end")),
        "[{what}] journal does not end with `end`"
    );
    entries
}

/// A short description of a journal record, for messages and the run's table.
fn describe(e: &Value) -> String {
    match e["type"].as_str().unwrap_or_default() {
        t @ ("task_start" | "task_end" | "task_retry") => format!(
            "{t} {} `{}`",
            e["path"].as_str().unwrap_or_default(),
            e["name"].as_str().unwrap_or_default()
        ),
        t => t.to_string(),
    }
}

/// Parses the journal files in flight (a torn last line is skipped).
fn live_entries(state: &Path) -> Vec<Value> {
    let Ok(rd) = std::fs::read_dir(state.join("journal")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The host, wholly on one release

fn dot_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn sha256sum(path: &Path) -> String {
    rampart_tests::sha256_hex(&std::fs::read(path).unwrap())
}

/// What is wrong with the artifact cache: anything left in `tmp/`, or a file under `sha256/` that
/// does not hash to its name. Also returns the digests cached.
fn cache_problems(state: &Path) -> (Vec<String>, Vec<String>) {
    let mut bad = Vec::new();
    let tmp_dir = state.join("artifacts/tmp");
    let tmp: Vec<String> = std::fs::read_dir(&tmp_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    format!("{} ({len} bytes)", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    if !tmp.is_empty() {
        bad.push(format!(
            "temporary uploads left in {}: {tmp:?}",
            tmp_dir.display()
        ));
    }
    let mut cached = Vec::new();
    if let Ok(rd) = std::fs::read_dir(state.join("artifacts/sha256")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let actual = sha256sum(&e.path());
            if actual != name {
                bad.push(format!("cached artifact {name} hashes to {actual}"));
            }
            cached.push(name);
        }
    }
    (bad, cached)
}

/// Asserts the host is wholly on one release after a finished transaction and returns it:
/// `current`, the public path, `state.json`, the public path's `version.txt` and the app's
/// `/actuator/info` agree; no staging dir or temp symlink, no deploy lock, no temp upload, every
/// cached artifact verified. Every violation is named at once.
fn assert_whole(sc: &Scenario, what: &str) -> String {
    let app = sc.state.join("apps/app");
    let on = sc
        .current()
        .unwrap_or_else(|| panic!("[{what}] no `current` symlink"));
    let mut bad: Vec<String> = Vec::new();
    if !app.join("releases").join(&on).is_dir() {
        bad.push(format!("current -> {on}, which is not in releases/"));
    }
    let public = std::fs::read_link(sc.public_path()).ok();
    if public.as_deref() != Some(app.join("current").as_path()) {
        bad.push(format!("public path -> {public:?}, not current"));
    }
    let version_txt = std::fs::read_to_string(sc.public_path().join("version.txt"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("({e})"));
    if version_txt != on {
        bad.push(format!("public path's version.txt says {version_txt}"));
    }
    let state: Value = std::fs::read(app.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if state["current"] != json!(on) {
        bad.push(format!("state.json says {state}"));
    }
    if sc.app_pid().is_none() {
        bad.push("the app is not running".into());
    }
    let served = sc.serving();
    if served.as_deref() != Some(on.as_str()) {
        bad.push(format!("the app serves {served:?}"));
    }
    let public_parent = sc.public_path().parent().unwrap().to_path_buf();
    for dir in [app.clone(), app.join("releases"), public_parent] {
        let left = dot_entries(&dir);
        if !left.is_empty() {
            bad.push(format!(
                "staging dirs or temp files left in {}: {left:?}",
                dir.display()
            ));
        }
    }
    if let Ok(lock) = std::fs::read_to_string(sc.state.join("locks/deploy.json")) {
        bad.push(format!("deploy lock still held: {lock}"));
    }
    bad.extend(cache_problems(&sc.state).0);
    assert!(
        bad.is_empty(),
        "[{what}] host on {on} but:\n  {}",
        bad.join("\n  ")
    );
    on
}

/// A forensics bundle of `version` exists.
fn assert_forensics(sc: &Scenario, version: &str, what: &str) {
    let bundles: Vec<String> = std::fs::read_dir(sc.path().join("forensics"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        bundles
            .iter()
            .any(|b| b.starts_with(&format!("{version}-"))),
        "[{what}] no forensics bundle of {version}: {bundles:?}"
    );
}

/// Asserts a finished run's outcome against its journal and the host; returns (outcome, on).
fn assert_finished(
    sc: &Scenario,
    run: &CliRun,
    entries: &[Value],
    base: &str,
    base_tree: &[String],
    target: &str,
    what: &str,
) -> (String, String) {
    let end = entries.last().unwrap();
    let outcome = end["outcome"].as_str().unwrap_or_default().to_string();
    let output = format!("\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.summary()["outcome"],
        json!(outcome),
        "[{what}] client and journal disagree{output}"
    );
    let on = assert_whole(sc, what);
    match outcome.as_str() {
        "succeeded" => {
            assert_eq!(run.code, 0, "[{what}] exit code{output}");
            assert_eq!(on, target, "[{what}] succeeded but on {on}");
        }
        "rolled_back" => {
            assert_eq!(run.code, 1, "[{what}] exit code{output}");
            assert_eq!(on, base, "[{what}] rolled back but on {on}");
            assert_eq!(
                tree_snapshot(&sc.state.join("apps/app/releases").join(base)),
                base_tree,
                "[{what}] release {base} changed"
            );
            assert_forensics(sc, target, what);
        }
        other => panic!("[{what}] outcome {other}, exit {}{output}", run.code),
    }
    (outcome, on)
}

// ---------------------------------------------------------------------------------------------
// Kill at record boundaries

/// Where one kill landed and what the host ended on.
#[derive(Debug)]
struct Landed {
    n: u64,
    record: String,
    outcome: String,
    on: String,
}

/// A clean run of `target` over `base` through an agent: its number of the last record.
fn clean_run_records(dist: &Path, base: &[&str], target: &str, pg: Option<&Pg>) -> u64 {
    let what = format!("clean deploy {base:?} → {target}");
    let sc = Scenario::with_dist(dist);
    let name = "clean";
    if let Some(pg) = pg {
        pg.create_db(name);
    }
    let db = pg.map(|pg| Db { pg, name });
    deploy_local(&sc, base, &what, db);
    let base_last = base.last().unwrap();
    let tree = tree_snapshot(&sc.state.join("apps/app/releases").join(base_last));
    let before = history(&sc.state);
    let agent = AgentProc::start(&sc.state);
    let run = Client::start(&sc, &agent.addr, target, db).finish(&what);
    // The agent streams each health check's verdict over gRPC as it lands.
    assert!(
        run.json()
            .iter()
            .any(|l| l["type"] == "progress" && l["data"]["check"]["name"].is_string()),
        "[{what}] no health check progress streamed\n{}",
        run.stdout
    );
    let entries = new_finished_journal(&sc.state, &before, &what);
    let (outcome, _) = assert_finished(&sc, &run, &entries, base_last, &tree, target, &what);
    let expected = if target == BROKEN {
        "rolled_back"
    } else {
        "succeeded"
    };
    assert_eq!(outcome, expected, "[{what}]");
    entries.len() as u64 - 1
}

/// Deploys `target` over `base` on a fresh host, stops the agent right after record `n`,
/// SIGKILLs it, restarts it on the same state dir and port, and checks the finished host.
fn kill_after_record(dist: &Path, base: &[&str], target: &str, n: u64, pg: Option<&Pg>) -> Landed {
    let what = format!("deploy {base:?} → {target}, kill after record {n}");
    let sc = Scenario::with_dist(dist);
    let name = format!("kill_{n}");
    if let Some(pg) = pg {
        pg.create_db(&name);
    }
    let db = pg.map(|pg| Db { pg, name: &name });
    deploy_local(&sc, base, &what, db);
    let base_last = base.last().unwrap();
    let base_tree = tree_snapshot(&sc.state.join("apps/app/releases").join(base_last));
    let db_before = db.map(|db| db.snapshot());
    let before = history(&sc.state);

    let n_arg = n.to_string();
    let mut agent = AgentProc::start_with(
        &sc.state,
        "127.0.0.1:0",
        &["--debug-stop-after-record", &n_arg],
    );
    let listen = format!("127.0.0.1:{}", port_of(&agent.addr));
    let mut client = Client::start(&sc, &agent.addr, target, db);
    let deadline = Instant::now() + STOP_TIMEOUT;
    let stopped = loop {
        if process_state(agent.pid()) == Some('T') {
            break true;
        }
        if client.exited() {
            // This run wrote fewer records than the clean one counted (no health retry).
            break false;
        }
        if Instant::now() > deadline {
            let run = client.finish(&what);
            panic!(
                "[{what}] agent never reached record {n}\nstdout:\n{}\nstderr:\n{}",
                run.stdout, run.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let record = if stopped {
        let at = live_entries(&sc.state)
            .into_iter()
            .find(|e| e["seq"].as_u64() == Some(n))
            .map_or_else(|| "?".to_string(), |e| describe(&e));
        agent.kill9();
        agent = AgentProc::start_with(&sc.state, &listen, &[]);
        at
    } else {
        "not reached".to_string()
    };
    let run = client.finish(&what);
    let what = format!("{what} ({record})");
    let entries = new_finished_journal(&sc.state, &before, &what);
    let (outcome, on) = assert_finished(&sc, &run, &entries, base_last, &base_tree, target, &what);
    if stopped && record != "end" {
        // (After the `end` record only the move to history is left: no recovery record.)
        assert!(
            entries.iter().any(|e| e["type"] == "recovery"),
            "[{what}] no recovery record after the kill"
        );
    }
    if let (Some(db), Some(before)) = (db, db_before) {
        assert_database(db, &before, &outcome, &on, &sc, &what);
    }
    drop(agent);
    Landed {
        n,
        record,
        outcome,
        on,
    }
}

/// The database agrees with the host: as before when rolled back, at the target's schema
/// version when succeeded (each release's major number is its schema version), and no restore
/// point left behind.
fn assert_database(
    db: Db<'_>,
    before: &(String, String, String),
    outcome: &str,
    on: &str,
    sc: &Scenario,
    what: &str,
) {
    let major = on.split('.').next().unwrap_or_default();
    assert_eq!(
        db.version(),
        major,
        "[{what}] host on {on} ({outcome}) but the database is not"
    );
    if outcome == "rolled_back" {
        let after = db.snapshot();
        assert_eq!(
            after.0, before.0,
            "[{what}] schema differs after the rollback"
        );
        assert_eq!(after.1, before.1, "[{what}] rows differ after the rollback");
        assert_eq!(
            after.2, before.2,
            "[{what}] history differs after the rollback"
        );
    }
    let dumps: Vec<String> = std::fs::read_dir(sc.state.join("restore-points"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".dump"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        dumps.is_empty(),
        "[{what}] restore point dumps left: {dumps:?}"
    );
}

/// A panic's message.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

/// Runs `case(n)` for every `n` in `ns` on `workers` threads and collects every failure, so one
/// run names all failing kill points. Returns the results in order of `n`, and the failures.
fn run_all<T: Send>(
    ns: &[u64],
    workers: u64,
    case: &(dyn Fn(u64) -> T + Sync),
) -> (Vec<(u64, T)>, Vec<String>) {
    let mut results: Vec<(u64, std::thread::Result<T>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    ns.iter()
                        .filter(|n| *n % workers == w)
                        .map(|&n| {
                            let r =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(n)));
                            (n, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect()
    });
    results.sort_by_key(|(n, _)| *n);
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for (n, r) in results {
        match r {
            Ok(v) => ok.push((n, v)),
            Err(p) => failures.push(format!("#{n}: {}", panic_message(p.as_ref()))),
        }
    }
    (ok, failures)
}

/// Fails naming every failure, if any.
fn assert_no_failures(what: &str, total: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} kill points failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Kills at every record boundary in `ns` ([`WORKERS`] at a time); prints where each landed.
/// Returns how many kill points were hit.
fn every_kill_point(what: &str, ns: &[u64], case: &(dyn Fn(u64) -> Landed + Sync)) -> usize {
    let (landed, failures) = run_all(ns, WORKERS, case);
    for (_, l) in &landed {
        println!(
            "{what}: N={:>2} after {:<70} → {} on {}",
            l.n, l.record, l.outcome, l.on
        );
    }
    assert_no_failures(what, ns.len(), &failures);
    landed
        .iter()
        .filter(|(_, l)| l.record != "not reached")
        .count()
}

fn packaged() -> tempfile::TempDir {
    let dist = tempfile::tempdir().unwrap();
    package_sample_app(dist.path());
    dist
}

#[test]
fn sigkill_at_every_record_boundary_of_a_deploy() {
    let dist = packaged();
    let records = clean_run_records(dist.path(), &[OLD], NEW, None);
    let ns: Vec<u64> = (1..=records).collect();
    let hit = every_kill_point("deploy 1.0.0 → 2.0.0", &ns, &|n| {
        kill_after_record(dist.path(), &[OLD], NEW, n, None)
    });
    println!("deploy 1.0.0 → 2.0.0: {hit} of {records} kill points hit");
}

#[test]
fn sigkill_at_every_record_boundary_of_a_failing_deploy() {
    let dist = packaged();
    let records = clean_run_records(dist.path(), &[OLD], BROKEN, None);
    let ns: Vec<u64> = (1..=records).collect();
    // Over 1.0.0 for even N, over 2.0.0 (deployed after 1.0.0) for odd N.
    let hit = every_kill_point("deploy → broken 3.0.0", &ns, &|n| {
        let base: &[&str] = if n % 2 == 0 { &[OLD] } else { &[OLD, NEW] };
        kill_after_record(dist.path(), base, BROKEN, n, None)
    });
    println!("deploy → broken 3.0.0: {hit} of {records} kill points hit");
}

#[test]
fn sigkill_at_every_record_boundary_of_a_deploy_that_migrates() {
    let dist = packaged();
    let pg = Pg::start();
    let records = clean_run_records(dist.path(), &[OLD], NEW, Some(&pg));
    let ns: Vec<u64> = (1..=records).collect();
    let hit = every_kill_point("migrating deploy 1.0.0 → 2.0.0", &ns, &|n| {
        kill_after_record(dist.path(), &[OLD], NEW, n, Some(&pg))
    });
    println!("migrating deploy 1.0.0 → 2.0.0: {hit} of {records} kill points hit");
}

#[test]
fn sigkill_at_every_record_boundary_of_a_failing_deploy_that_migrates() {
    let dist = packaged();
    let pg = Pg::start();
    let records = clean_run_records(dist.path(), &[OLD, NEW], BROKEN, Some(&pg));
    let ns: Vec<u64> = (1..=records).collect();
    let hit = every_kill_point("migrating deploy 2.0.0 → broken 3.0.0", &ns, &|n| {
        kill_after_record(dist.path(), &[OLD, NEW], BROKEN, n, Some(&pg))
    });
    println!("migrating deploy 2.0.0 → broken 3.0.0: {hit} of {records} kill points hit");
}

// ---------------------------------------------------------------------------------------------
// Random points inside extraction

/// Writes `sample-app-2.9.0.tar.gz` (and its `.sha256`) into `dist`: the packaged 2.0.0 with
/// its version changed, plus 2,000 files of pseudo-random filler (40 MB), stored uncompressed
/// so building it is quick while extracting it still takes a while.
fn package_big(dist: &Path) {
    use flate2::Compression;
    use flate2::read::GzDecoder;
    use flate2::write::GzEncoder;

    let name = format!("sample-app-{BIG}.tar.gz");
    let path = dist.join(&name);
    let out = std::fs::File::create(&path).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::none()));
    let src = std::fs::File::open(dist.join(format!("sample-app-{NEW}.tar.gz"))).unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(src));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        if entry.path().unwrap() == Path::new("version.txt") {
            let text = format!("{BIG}\n");
            header.set_size(text.len() as u64);
            header.set_cksum();
            builder.append(&header, text.as_bytes()).unwrap();
        } else {
            builder.append(&header, &mut entry).unwrap();
        }
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0u8; BIG_FILE_BYTES];
    for d in 0..BIG_DIRS {
        for f in 0..BIG_FILES_PER_DIR {
            for chunk in data.chunks_mut(8) {
                let r = rng.next().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(
                    &mut header,
                    format!("filler/d{d:02}/f{f:03}"),
                    data.as_slice(),
                )
                .unwrap();
        }
    }
    builder.into_inner().unwrap().finish().unwrap();
    let digest = sha256sum(&path);
    std::fs::write(
        dist.join(format!("{name}.sha256")),
        format!("{digest}  {name}\n"),
    )
    .unwrap();
}

/// The stage task's journal records so far: (started, ended).
fn stage_progress(state: &Path) -> (bool, bool) {
    let entries = live_entries(state);
    let has = |t: &str| {
        entries
            .iter()
            .any(|e| e["type"] == t && e["path"] == STAGE_PATH)
    };
    (has("task_start"), has("task_end"))
}

/// Deploys [`BIG`] over [`OLD`] on a fresh host, SIGKILLs the agent `delay_ms` after the stage
/// task started, restarts it, checks the finished host, then deploys again, which must succeed.
/// Returns whether the kill landed inside the stage task.
fn kill_inside_staging(dist: &Path, i: u64, delay_ms: u64, seed: u64) -> bool {
    let what = format!("random #{i}: {delay_ms} ms into staging {BIG} (seed {seed})");
    let sc = Scenario::with_dist(dist);
    deploy_local(&sc, &[OLD], &what, None);
    let app_pid = sc.app_pid();
    let base_tree = tree_snapshot(&sc.state.join("apps/app/releases").join(OLD));
    let before = history(&sc.state);

    let mut agent = AgentProc::start(&sc.state);
    let listen = format!("127.0.0.1:{}", port_of(&agent.addr));
    let client = Client::start(&sc, &agent.addr, BIG, None);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !stage_progress(&sc.state).0 {
        assert!(Instant::now() < deadline, "[{what}] staging never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    agent.kill9();
    // Inside: the live journal shows the stage task started and not ended. A transaction that
    // already finished has moved its journal to history, which is "after", not "inside".
    let (started, ended) = stage_progress(&sc.state);
    let inside = started && !ended;
    let staging = dot_entries(&sc.state.join("apps/app"));
    let uploads: Vec<String> = std::fs::read_dir(sc.state.join("artifacts/tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let what = format!(
        "{what}, killed {} the stage task (on disk then: staging {staging:?}, temp uploads {uploads:?})",
        if inside { "inside" } else { "after" }
    );
    println!("[{what}]");

    let _agent = AgentProc::start_with(&sc.state, &listen, &[]);
    let run = client.finish(&what);
    // Checked in full after the re-run, so one run says both whether the crash left the host
    // whole and whether the deploy still converges.
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let entries = new_finished_journal(&sc.state, &before, &what);
        let (outcome, _) = assert_finished(&sc, &run, &entries, OLD, &base_tree, BIG, &what);
        if inside {
            // Interrupted while staging, before any service was stopped: rolled back, and the
            // old app kept running throughout.
            assert_eq!(outcome, "rolled_back", "[{what}]");
            assert_eq!(sc.app_pid(), app_pid, "[{what}] the old app was restarted");
        }
        outcome
    }));
    let (problems, cached) = cache_problems(&sc.state);
    let big_digest = rampart_tests::deploy::sha256_of(&sc.dist, BIG);
    println!(
        "[{what}] {}; artifact {} cached{}",
        crashed.as_deref().unwrap_or("NOT WHOLE"),
        if cached.contains(&big_digest) {
            "completely"
        } else {
            "not"
        },
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        }
    );

    // The same deploy again converges.
    let again = format!("{what}, re-run");
    let before = history(&sc.state);
    let run = Client::start(&sc, &listen, BIG, None).finish(&again);
    let rerun = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let entries = new_finished_journal(&sc.state, &before, &again);
        let (outcome, on) = assert_finished(&sc, &run, &entries, OLD, &base_tree, BIG, &again);
        assert_eq!(
            (outcome.as_str(), on.as_str()),
            ("succeeded", BIG),
            "[{again}]"
        );
    }));
    match (crashed, rerun) {
        (Ok(_), Ok(())) => inside,
        (crashed, rerun) => panic!(
            "after the crash: {}\nre-run: {}",
            crashed.map_or_else(|p| panic_message(p.as_ref()), |o| format!("ok ({o})")),
            rerun.map_or_else(|p| panic_message(p.as_ref()), |()| "ok".to_string()),
        ),
    }
}

#[test]
fn sigkill_at_random_points_inside_extraction() {
    let dist = packaged();
    package_big(dist.path());

    // A clean run first: it must succeed, and its stage time bounds the random delays.
    let stage_ms = {
        let what = format!("clean deploy {OLD} → {BIG}");
        let sc = Scenario::with_dist(dist.path());
        deploy_local(&sc, &[OLD], &what, None);
        let before = history(&sc.state);
        let agent = AgentProc::start(&sc.state);
        let run = Client::start(&sc, &agent.addr, BIG, None).finish(&what);
        assert_eq!(run.code, 0, "[{what}]\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(assert_whole(&sc, &what), BIG);
        let entries = new_finished_journal(&sc.state, &before, &what);
        entries
            .iter()
            .find(|e| e["type"] == "task_end" && e["path"] == STAGE_PATH)
            .and_then(|e| e["duration_ms"].as_u64())
            .expect("stage task duration")
    };
    println!("staging {BIG} takes {stage_ms} ms");

    let (seed, mut rng) = XorShift::from_env();
    let delays: Vec<u64> = (0..RANDOM_KILLS)
        .map(|_| rng.next() % (stage_ms * 9 / 10).max(1))
        .collect();

    let ns: Vec<u64> = (0..delays.len() as u64).collect();
    let (landed, failures) = run_all(&ns, 1, &|i| {
        kill_inside_staging(dist.path(), i, delays[i as usize], seed)
    });
    assert_no_failures("random kills inside extraction", ns.len(), &failures);
    let inside = landed.iter().filter(|(_, inside)| *inside).count();
    println!("{inside} of {RANDOM_KILLS} random kills landed inside the stage task");
    assert!(inside > 0, "no random kill landed inside the stage task");
}
