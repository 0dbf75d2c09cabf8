//! Rollbacks across a fleet, end to end: a real controller, real agents (one state dir per host)
//! and the sample app. A release left by the fleet rescue is set apart on every rescued host, so
//! later pruning keeps the good ones; `rampart rollback --to V` re-delivers V from the
//! controller's store to a host that no longer has it; a rollback that does not reach its target
//! ends `failed`; and a host whose components ran different versions gets each one back.

use std::path::Path;
use std::process::Command;

use rampart_tests::fleet::{Fleet, break_v2_on, events_of, finished};
use rampart_tests::sha256_hex;
use serde_json::{Value, json};

/// Writes `sample-app-<to>.tar.gz` into `dist`: the healthy 1.0.0 with another version file and
/// one more file, so its digest is its own.
fn package_variant(dist: &Path, to: &str) {
    let work = tempfile::tempdir().unwrap();
    let from = dist.join("sample-app-1.0.0.tar.gz");
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&from)
        .arg("-C")
        .arg(work.path())
        .status()
        .unwrap();
    assert!(ok.success(), "untar {}", from.display());
    std::fs::write(work.path().join("version.txt"), format!("{to}\n")).unwrap();
    std::fs::write(work.path().join("variant"), format!("{to}\n")).unwrap();
    let out = dist.join(format!("sample-app-{to}.tar.gz"));
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(work.path())
        .args(["bin", "db", "health", "start.sh", "version.txt", "variant"])
        .status()
        .unwrap();
    assert!(ok.success(), "tar {}", out.display());
}

/// The entries of `apps/<component>/<dir>` on host `i` whose names start with `version`.
fn entries(fleet: &Fleet, i: usize, component: &str, dir: &str, version: &str) -> Vec<String> {
    let d = fleet.hosts[i]
        .scenario
        .state
        .join("apps")
        .join(component)
        .join(dir);
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n == version || n.starts_with(&format!("{version}-")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn current(fleet: &Fleet, i: usize, component: &str) -> Option<String> {
    let link = fleet.hosts[i]
        .scenario
        .state
        .join("apps")
        .join(component)
        .join("current");
    let t = std::fs::read_link(link).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

fn rollback(fleet: &Fleet, to: &str) -> rampart_tests::CliRun {
    fleet.cli(&[
        "rollback",
        "--env",
        "prod",
        "--to",
        to,
        "--reason",
        "e2e rollback",
        "--json",
    ])
}

#[test]
fn a_fleet_rescue_sets_the_left_release_apart_and_rollback_redelivers_what_a_host_lost() {
    let other = rampart_tests::deploy::free_port();
    let fleet = Fleet::start(2, "max_fail_percentage = 0\n", |i, vars| {
        if i == 1 {
            break_v2_on(vars, other);
        }
    });
    for v in ["4.0.0", "5.0.0"] {
        package_variant(&fleet.dist, v);
    }
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    // 2.0.0 fails on h2 (its own rescue) and the fleet rescue takes h1 back: on both, 2.0.0 is
    // set apart under failed/, not left among the good releases.
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 2.0.0: {}\n{}", r.stdout, r.stderr);
    assert_eq!(
        finished(&r.json())["outcome"],
        "rolled_back",
        "{}",
        r.stdout
    );
    assert_eq!(
        events_of(&r, "fleet_rescue_started").len(),
        1,
        "{}",
        r.stdout
    );
    for i in 0..2 {
        assert_eq!(
            current(&fleet, i, "app").as_deref(),
            Some("1.0.0"),
            "h{}",
            i + 1
        );
        assert!(
            entries(&fleet, i, "app", "releases", "2.0.0").is_empty(),
            "h{}: 2.0.0 left among the good releases",
            i + 1
        );
        assert_eq!(
            entries(&fleet, i, "app", "failed", "2.0.0").len(),
            1,
            "h{}: 2.0.0 not set apart",
            i + 1
        );
    }

    // Two good deploys later (keep_releases 3), 1.0.0 is still on every host.
    for v in ["4.0.0", "5.0.0"] {
        let r = fleet.deploy(v, &[]);
        assert_eq!(r.code, 0, "deploy {v}: {}\n{}", r.stdout, r.stderr);
    }
    for i in 0..2 {
        assert_eq!(
            entries(&fleet, i, "app", "releases", "1.0.0"),
            ["1.0.0"],
            "h{}: 1.0.0 pruned",
            i + 1
        );
    }

    // h2 loses 1.0.0 and its cached artifact (removed by hand, as an operator or a cache
    // clean-up would): the rollback delivers it from the controller and stages it again.
    let h2 = &fleet.hosts[1].scenario.state;
    std::fs::remove_dir_all(h2.join("apps/app/releases/1.0.0")).unwrap();
    let sha = rampart_tests::deploy::sha256_of(&fleet.dist, "1.0.0");
    let cached = h2.join("artifacts/sha256").join(&sha);
    assert!(cached.is_file(), "{} not cached", cached.display());
    std::fs::remove_file(&cached).unwrap();
    let r = rollback(&fleet, "1.0.0");
    assert_eq!(r.code, 0, "rollback to 1.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "succeeded", "{fin:#}");
    assert_eq!(fin["environment_version"], "1.0.0", "{fin:#}");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
    assert!(cached.is_file(), "1.0.0 was not delivered again");

    // A rollback that cannot reach its target ends `failed`, never `rolled_back`: 2.0.0 is
    // delivered and staged again but fails its health checks on h2, and the fleet goes back.
    let r = rollback(&fleet, "2.0.0");
    assert_eq!(r.code, 1, "rollback to 2.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "failed", "{fin:#}");
    assert_eq!(fin["environment_version"], "1.0.0", "{fin:#}");
    assert!(
        fin["summary"]
            .as_str()
            .is_some_and(|s| s.contains("did not reach")),
        "{fin:#}"
    );
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);

    // A version the controller never deployed and no host has: refused on every host before
    // anything stops, and reported as failed.
    let pids: Vec<_> = fleet.hosts.iter().map(|h| h.scenario.app_pid()).collect();
    let r = rollback(&fleet, "9.9.9");
    assert_eq!(r.code, 1, "rollback to 9.9.9: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "failed", "{fin:#}");
    let now: Vec<_> = fleet.hosts.iter().map(|h| h.scenario.app_pid()).collect();
    assert_eq!(now, pids, "an app was restarted");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
}

/// A second component (same artifacts; its service is a marker file beside the public path), so
/// a host holds two components that can be on different versions.
fn add_worker(vars: &mut Value) {
    let app = vars["components"][0]["path"].as_str().unwrap().to_string();
    let worker = Path::new(&app).with_file_name("worker");
    let running = Path::new(&app).with_file_name("worker.running");
    let running = running.display();
    vars["components"].as_array_mut().unwrap().push(json!({
        "name": "worker",
        "path": worker,
        "service": {
            "name": "worker",
            "start": format!("touch {running}"),
            "stop": format!("rm -f {running}"),
            "status": format!("test -f {running}"),
        }
    }));
}

#[test]
fn the_fleet_rescue_rolls_each_component_back_to_its_own_version() {
    let other = rampart_tests::deploy::free_port();
    let fleet = Fleet::start(2, "max_fail_percentage = 0\n", |i, vars| {
        if i == 1 {
            break_v2_on(vars, other);
        }
        add_worker(vars);
    });
    package_variant(&fleet.dist, "1.1.0");
    let artifact = |c: &str, v: &str| {
        format!(
            "{c}={}",
            fleet.dist.join(format!("sample-app-{v}.tar.gz")).display()
        )
    };
    let deploy = |v: &str| {
        let (a, w) = (artifact("app", v), artifact("worker", v));
        fleet.cli(&[
            "deploy",
            "--env",
            "prod",
            "--version",
            v,
            "--artifact",
            &a,
            "--artifact",
            &w,
            "--json",
        ])
    };
    let r = deploy("1.0.0");
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    // The worker moves on to 1.1.0 on its own (a local transaction on each host's state dir).
    let tarball = fleet.dist.join("sample-app-1.1.0.tar.gz");
    for h in &fleet.hosts {
        let sc = &h.scenario;
        let worker = sc.public_path().with_file_name("worker");
        let pb = format!(
            "- hosts: all\n  tasks:\n    - release:\n        component: worker\n        version: 1.1.0\n        artifact: {}\n        sha256: {}\n        state: staged\n    - release:\n        component: worker\n        version: 1.1.0\n        path: {}\n        state: active\n",
            tarball.display(),
            sha256_hex(&std::fs::read(&tarball).unwrap()),
            worker.display(),
        );
        let pb = rampart_tests::write_file(sc.path(), "worker-1.1.0.yml", &pb);
        let run = sc.run(Path::new(&pb), &json!({}), &[]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }

    // 2.0.0 fails on h2; the fleet rescue takes h1's app back to 1.0.0 and its worker to 1.1.0.
    let r = deploy("2.0.0");
    assert_eq!(r.code, 1, "deploy 2.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let rescued = events_of(&r, "fleet_rescue_started");
    assert_eq!(rescued.len(), 1, "{}", r.stdout);
    assert_eq!(rescued[0]["hosts"], json!(["h1"]), "{}", r.stdout);
    for i in 0..2 {
        let h = i + 1;
        assert_eq!(current(&fleet, i, "app").as_deref(), Some("1.0.0"), "h{h}");
        assert_eq!(
            current(&fleet, i, "worker").as_deref(),
            Some("1.1.0"),
            "h{h}"
        );
        for c in ["app", "worker"] {
            assert!(
                entries(&fleet, i, c, "releases", "2.0.0").is_empty(),
                "h{h}: {c} 2.0.0 left among the good releases"
            );
        }
    }
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
}

/// The `msg` of the finished `debug` task that reports the database after a rollback.
fn database_note(r: &rampart_tests::CliRun) -> String {
    r.json()
        .iter()
        .filter(|v| v["type"] == "host_event" && v["event"]["type"] == "task_finished")
        .filter_map(|v| v["event"]["msg"].as_str())
        .find(|m| m.starts_with("database: "))
        .unwrap_or_else(|| panic!("no database note in {}", r.stdout))
        .to_string()
}

#[test]
fn rollback_database_none_names_the_schema_and_undo_runs_the_u_scripts() {
    use rampart_tests::pg::{PASSWORD, Pg};
    let pg = Pg::start();
    pg.create_db("shop");
    let url = pg.url("shop");
    let fleet = Fleet::start(1, "", |_, vars| {
        vars["database"] = json!({
            "url": url,
            "user": "postgres",
            "password": PASSWORD,
            "restore_point": "dump",
        });
    });
    let schema = || {
        pg.psql(
            "shop",
            "SELECT string_agg(version || ':' || type, ',' ORDER BY installed_rank) FROM flyway_schema_history",
        )
    };
    for v in ["1.0.0", "2.0.0"] {
        let r = fleet.deploy(v, &[]);
        assert_eq!(r.code, 0, "deploy {v}: {}\n{}", r.stdout, r.stderr);
    }
    assert_eq!(schema(), "1:SQL,2:SQL");

    // The default leaves the schema and says so.
    let r = rollback(&fleet, "1.0.0");
    assert_eq!(r.code, 0, "rollback: {}\n{}", r.stdout, r.stderr);
    assert_eq!(
        database_note(&r),
        "database: 1.0.0 runs on schema version 2 (left as it was: rollback_database none)"
    );
    assert_eq!(schema(), "1:SQL,2:SQL");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);

    // Forward again, then back with --database undo: U2 runs, the schema is 1's.
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 2.0.0 again: {}\n{}", r.stdout, r.stderr);
    let r = fleet.cli(&[
        "rollback",
        "--env",
        "prod",
        "--to",
        "1.0.0",
        "--database",
        "undo",
        "--reason",
        "V2 breaks reports",
        "--json",
    ]);
    assert_eq!(
        r.code, 0,
        "rollback --database undo: {}\n{}",
        r.stdout, r.stderr
    );
    assert_eq!(
        database_note(&r),
        "database: 1.0.0 runs on schema version 1 (undone from 2 by this rollback)"
    );
    assert_eq!(schema(), "1:SQL,2:SQL,2:UNDO_SQL");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);

    // Anything else is refused before anything is stored.
    let r = fleet.cli(&[
        "rollback",
        "--env",
        "prod",
        "--to",
        "1.0.0",
        "--database",
        "drop",
        "--reason",
        "x",
    ]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
}
