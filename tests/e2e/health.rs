//! The health suite against real servers: the sample application (HTTP), a throwaway
//! PostgreSQL, a real redis-server, a real rampart-agent (grpc.health.v1), a small HTTP server
//! of this test for slow and flapping endpoints, and a small tmpfs for disk thresholds; run
//! through `rampart health` and through a playbook whose rescue must see the results.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rampart_tests::deploy::free_port;
use rampart_tests::pg::{self, Pg};
use rampart_tests::redis::{self, Redis};
use rampart_tests::{AgentProc, bin, rampart, run_local_json};
use serde_json::{Value, json};

fn production_suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/health/production.yml")
}

/// The sample application on a free port, serving `version`; killed on drop.
struct App {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl App {
    fn start(version: &str) -> App {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("version.txt"), format!("{version}\n")).unwrap();
        std::fs::write(root.path().join("health"), "UP\n").unwrap();
        let port = free_port();
        let child = Command::new(bin("rampart-sample-app"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--root"])
            .arg(root.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sample app did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        App { child, port, root }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_health(&self, text: &str) {
        std::fs::write(self.root.path().join("health"), text).unwrap();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small HTTP server: `/slow` answers after 3 s, `/flap` answers 503 the first time and 200
/// after, anything else 200. Serves until the test process ends (bounded: 200 connections).
fn test_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let flaps = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200).flatten() {
            let flaps = flaps.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let code = match path.as_str() {
                    "/slow" => {
                        std::thread::sleep(Duration::from_secs(3));
                        200
                    }
                    "/flap" if flaps.fetch_add(1, Ordering::SeqCst) == 0 => 503,
                    _ => 200,
                };
                let body = format!("{{\"path\":\"{path}\"}}");
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

fn health(suite: &Path, vars: &Value, extra: &[&str]) -> (i32, Vec<Value>) {
    let mut args = vec!["health", suite.to_str().unwrap(), "--json", "-e"];
    let vars = vars.to_string();
    args.push(&vars);
    args.extend_from_slice(extra);
    let run = rampart(&args);
    let lines = run.json();
    assert!(
        lines.last().is_some_and(|l| l["type"] == "summary"),
        "no summary\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    (run.code, lines)
}

fn by_name<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no result for {name}: {lines:#?}"))
}

fn write_suite(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("suite.yml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A database with the Flyway fixtures applied (schema version 2).
fn migrated_db(pg: &Pg) -> String {
    pg.create_db("app");
    pg.migrate_fixtures("app", &[]);
    pg.url("app")
}

#[test]
fn the_production_suite_passes_against_healthy_servers() {
    let app = App::start("2.0.0");
    let pg = Pg::start();
    let db_url = migrated_db(&pg);
    let redis = Redis::start();
    let external = test_server();
    let vars = json!({
        "target_version": "2.0.0",
        "backend_url": app.url(),
        "db_url": db_url,
        "db_user": "postgres",
        "db_password": pg::PASSWORD,
        "expected_schema_version": "2",
        "min_tables": 4,
        "redis_port": redis.port,
        "redis_password": redis::PASSWORD,
        "external_health_url": format!("{external}/ok"),
        "release_version_file": app.root.path().join("version.txt"),
        "load_max": 1000,
        "memory_max_percent": 100,
        "disk_max_percent": 100,
    });
    let (code, lines) = health(&production_suite(), &vars, &[]);
    let checks: Vec<&Value> = lines.iter().filter(|l| l["type"] == "check").collect();
    assert!(checks.len() >= 22, "{} checks", checks.len());
    let categories: std::collections::BTreeSet<&str> = checks
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    assert_eq!(
        categories.into_iter().collect::<Vec<_>>(),
        [
            "backend", "database", "deploy", "external", "frontend", "redis", "services", "system"
        ]
    );
    for c in &checks {
        let expected = if c["category"] == "services" {
            "skipped"
        } else {
            "pass"
        };
        assert_eq!(c["status"], expected, "{c}");
    }
    assert_eq!(code, 0);
    assert_eq!(
        by_name(&lines, "backend runs the target version")["value"],
        "2.0.0"
    );
    assert_eq!(
        by_name(&lines, "database schema is at the latest migration")["value"],
        "2"
    );
    assert_eq!(by_name(&lines, "redis answers PING")["value"], "PONG");
    let summary = lines.last().unwrap();
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["fail"], 0);
}

#[test]
fn each_kind_fails_with_its_reason_and_a_critical_failure_exits_1() {
    let app = App::start("2.0.0");
    app.set_health("DOWN\n");
    let pg = Pg::start();
    let db_url = migrated_db(&pg);
    let mut redis = Redis::start();
    let redis_port = redis.port;
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("version.txt"), "1.0.0\n").unwrap();
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
defaults: {{attempts: 1, timeout: 5}}
checks:
  - {{name: http status, category: backend, http: {{url: "{app}/actuator/health", json: {{status: UP}}}}}}
  - {{name: wrong version, category: backend, http: {{url: "{app}/actuator/info", version: "3.0.0", version_path: app.version}}}}
  - {{name: tcp closed, category: system, tcp: {{port: {closed}}}}}
  - {{name: db wrong password, category: database, postgres: {{url: "{db_url}", user: postgres, password: nope}}}}
  - {{name: db down, category: database, postgres: {{url: "jdbc:postgresql://127.0.0.1:{closed}/app", user: postgres, password: x}}}}
  - {{name: db too few tables, category: database, postgres: {{url: "{db_url}", user: postgres, password: "{pgpw}", min_tables: 50}}}}
  - {{name: db old schema, category: database, postgres: {{url: "{db_url}", user: postgres, password: "{pgpw}", schema_version: "3"}}}}
  - {{name: redis wrong password, category: redis, redis: {{port: {redis_port}, password: nope}}}}
  - {{name: file differs, category: deploy, file: {{path: "{vfile}", equals: "2.0.0"}}}}
  - {{name: command fails, category: system, command: {{cmd: "echo broken >&2; exit 3"}}}}
  - {{name: grpc closed, category: services, grpc: {{address: "127.0.0.1:{closed}"}}}}
  - {{name: warning only, category: external, severity: warning, tcp: {{port: {closed}}}}}
  - {{name: memory over, category: system, memory: {{max_percent: 0}}}}
  - {{name: load over, category: system, load: {{max: -1}}}}
"#,
            app = app.url(),
            pgpw = pg::PASSWORD,
            vfile = dir.path().join("version.txt").display(),
        ),
    );
    let (code, lines) = health(&suite, &json!({}), &[]);
    assert_eq!(code, 1);
    for (name, fragment) in [
        ("http status", "answered 503"),
        (
            "wrong version",
            "reports version \"2.0.0\", expected \"3.0.0\"",
        ),
        ("tcp closed", "Connection refused"),
        ("db wrong password", "password authentication failed"),
        ("db down", "cannot connect"),
        ("db too few tables", "expected at least 50"),
        ("db old schema", "schema version is 2, expected 3"),
        ("redis wrong password", "AUTH refused"),
        ("file differs", "holds \"1.0.0\", expected \"2.0.0\""),
        ("command fails", "exited 3"),
        ("grpc closed", "cannot connect"),
        ("memory over", "used, over 0%"),
        ("load over", "over -1"),
    ] {
        let c = by_name(&lines, name);
        assert_eq!(c["status"], "fail", "{c}");
        assert!(
            c["message"].as_str().unwrap().contains(fragment),
            "{name}: {c}"
        );
    }
    // Diagnostics say why: the response body, the command's stderr.
    assert!(
        by_name(&lines, "http status")["diagnostics"]["body"]
            .as_str()
            .unwrap()
            .contains("DOWN")
    );
    assert!(
        by_name(&lines, "command fails")["diagnostics"]["stderr"]
            .as_str()
            .unwrap()
            .contains("broken")
    );
    assert_eq!(by_name(&lines, "warning only")["status"], "warn");

    // A failing warning-only check does not fail the suite.
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
checks:
  - {{name: fine, category: system, command: {{cmd: "true"}}}}
  - {{name: only a warning, category: external, severity: warning, tcp: {{port: {closed}}}}}
  - {{name: optional dependency, category: external, severity: optional, tcp: {{port: {closed}}}}}
"#
        ),
    );
    let (code, lines) = health(&suite, &json!({}), &[]);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(by_name(&lines, "only a warning")["status"], "warn");
    assert_eq!(by_name(&lines, "optional dependency")["status"], "warn");
    assert_eq!(lines.last().unwrap()["passed"], true);

    // Redis down, and Redis not configured (skipped, not failed).
    redis.stop();
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
checks:
  - {{name: redis down, category: redis, attempts: 1, redis: {{port: {redis_port}}}}}
  - {{name: redis not configured, category: redis, when: "other_redis_port is defined", redis: {{port: "{{{{ other_redis_port }}}}"}}}}
"#
        ),
    );
    let (code, lines) = health(&suite, &json!({}), &[]);
    assert_eq!(code, 1);
    assert_eq!(by_name(&lines, "redis down")["status"], "fail");
    let skipped = by_name(&lines, "redis not configured");
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["message"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{skipped}"
    );
}

#[test]
fn slow_endpoints_time_out_and_flapping_ones_pass_on_a_retry() {
    let server = test_server();
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
checks:
  - {{name: slow, category: backend, attempts: 1, timeout: 0.5, http: {{url: "{server}/slow"}}}}
  - {{name: flapping, category: frontend, attempts: 2, delay: 0.2, http: {{url: "{server}/flap"}}}}
  - {{name: depends on slow, category: backend, depends_on: slow, http: {{url: "{server}/ok"}}}}
"#
        ),
    );
    let started = Instant::now();
    let (code, lines) = health(&suite, &json!({}), &[]);
    assert_eq!(code, 1);
    let slow = by_name(&lines, "slow");
    assert_eq!(slow["status"], "fail", "{slow}");
    assert!(
        slow["duration_ms"].as_u64().unwrap() < 2500,
        "timeout not honoured: {slow}"
    );
    let flap = by_name(&lines, "flapping");
    assert_eq!(flap["status"], "pass", "{flap}");
    assert_eq!(flap["attempts"], 2, "{flap}");
    let dep = by_name(&lines, "depends on slow");
    assert_eq!(dep["status"], "skipped");
    assert!(
        dep["message"]
            .as_str()
            .unwrap()
            .contains("depends on 'slow'"),
        "{dep}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The suite's deadline bounds every check, whatever its own timeout says.
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
deadline: 1
checks:
  - {{name: slow past the deadline, category: backend, attempts: 1, timeout: 10, http: {{url: "{server}/slow"}}}}
"#
        ),
    );
    let started = Instant::now();
    let (code, lines) = health(&suite, &json!({}), &[]);
    assert_eq!(code, 1);
    let late = by_name(&lines, "slow past the deadline");
    assert_eq!(late["status"], "fail", "{late}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "deadline not honoured: {late}"
    );
}

#[test]
fn disk_thresholds_on_a_small_tmpfs_and_a_real_agents_grpc_health() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a tmpfs: run the tests as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    std::fs::write(mnt.join("fill"), vec![7u8; 960 * 1024]).unwrap();
    let state = dir.path().join("agent");
    let agent = AgentProc::start(&state);
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
checks:
  - {{name: full disk, category: system, attempts: 1, disk: {{path: "{mnt}", max_percent: 90}}}}
  - {{name: roomy threshold, category: system, attempts: 1, disk: {{path: "{mnt}", max_percent: 99}}}}
  - {{name: agent grpc, category: services, grpc: {{address: "{agent}"}}}}
"#,
            mnt = mnt.display(),
            agent = agent.addr
        ),
    );
    let (code, lines) = health(&suite, &json!({}), &[]);
    let full = by_name(&lines, "full disk");
    assert_eq!(full["status"], "fail", "{full}");
    assert!(full["value"].as_f64().unwrap() > 90.0, "{full}");
    assert_eq!(by_name(&lines, "roomy threshold")["status"], "pass");
    let grpc = by_name(&lines, "agent grpc");
    assert_eq!(grpc["status"], "pass", "{grpc}");
    assert_eq!(grpc["value"], "SERVING");
    assert_eq!(code, 1);
}

#[test]
fn a_critical_failure_inside_a_block_runs_the_rescue_with_every_result() {
    let app = App::start("2.0.0");
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("deploy.yml");
    std::fs::write(
        &playbook,
        format!(
            r#"- hosts: localhost
  gather_facts: false
  tasks:
    - block:
        - name: health suite
          health:
            suite: {suite}
            vars:
              target_version: "3.0.0"
              backend_url: "{app}"
              critical_attempts: 1
              page_attempts: 1
              load_max: 1000
              memory_max_percent: 100
              disk_max_percent: 100
      rescue:
        - name: what failed
          debug:
            msg: "{{{{ ansible_failed_result.summary.failed }}}} / {{{{ ansible_failed_result.checks | length }}}} checks"
"#,
            suite = production_suite().display(),
            app = app.url()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let run = run_local_json(&playbook, &state, &[]);
    assert_eq!(
        run.code, 1,
        "rolled back by the rescue\n{}\n{}",
        run.stdout, run.stderr
    );
    let lines = run.json();
    let health_task = lines
        .iter()
        .find(|l| l["type"] == "task" && l["name"] == "health suite")
        .unwrap();
    assert_eq!(health_task["status"], "failed", "{health_task}");
    assert!(
        health_task["result"]["msg"]
            .as_str()
            .unwrap()
            .contains("backend runs the target version")
    );
    // The frontend's version check depends on the backend's: skipped, with the reason.
    let checks = health_task["result"]["checks"].as_array().unwrap();
    let frontend = checks
        .iter()
        .find(|c| c["name"] == "frontend version equals the backend's")
        .unwrap();
    assert_eq!(frontend["status"], "skipped", "{frontend}");
    assert!(
        frontend["message"]
            .as_str()
            .unwrap()
            .contains("backend runs the target version")
    );
    // Each check's verdict was streamed as it landed, before the task ended: 23 progress
    // events of the health task, journaled with their own sequence numbers.
    let progress: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "progress" && l["name"] == "health suite")
        .collect();
    assert_eq!(progress.len(), 23, "{progress:#?}");
    assert!(
        progress
            .iter()
            .all(|p| p["seq"].as_u64() < health_task["seq"].as_u64())
    );
    let streamed: std::collections::BTreeSet<&str> = progress
        .iter()
        .map(|p| p["data"]["check"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(streamed.len(), 23);
    // The rescue sees every result.
    let rescue = lines
        .iter()
        .find(|l| l["type"] == "task" && l["name"] == "what failed")
        .unwrap();
    let msg = rescue["result"]["msg"].as_str().unwrap();
    assert_eq!(msg, "['backend runs the target version'] / 23 checks");
}

#[test]
fn systemd_units_under_a_real_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sb = rampart_tests::systemd::Sandbox::boot(dir.path());
    sb.add_units(&[
        (
            "rampart-ok.service",
            "[Unit]\nDescription=healthy\n[Service]\nExecStart=/bin/sleep 300\n",
        ),
        (
            "rampart-broken.service",
            "[Unit]\nDescription=broken\n[Service]\n\
             ExecStart=/bin/sh -c \"echo cannot open config >&2; exit 3\"\n",
        ),
    ]);
    // systemd's own messages ("Main process exited ...") go to the journal from now on.
    sb.start_journal();
    sb.must(&["systemctl", "start", "rampart-ok.service"]);
    let _ = sb.run(&["systemctl", "start", "rampart-broken.service"]);
    let prefix = serde_json::to_string(&sb.prefix()).unwrap();
    let suite = write_suite(
        dir.path(),
        &format!(
            r#"
checks:
  - {{name: healthy unit, category: services, attempts: 1, systemd: {{units: [rampart-ok.service], systemctl_prefix: {prefix}}}}}
  - {{name: broken unit, category: services, attempts: 1, systemd: {{units: [rampart-ok.service, rampart-broken.service], systemctl_prefix: {prefix}}}}}
"#
        ),
    );
    let (code, lines) = health(&suite, &json!({}), &[]);
    assert_eq!(code, 1);
    let ok = by_name(&lines, "healthy unit");
    assert_eq!(ok["status"], "pass", "{ok}");
    let broken = by_name(&lines, "broken unit");
    assert_eq!(broken["status"], "fail", "{broken}");
    assert_eq!(
        broken["diagnostics"]["unit"], "rampart-broken.service",
        "{broken}"
    );
    assert_eq!(broken["diagnostics"]["ActiveState"], "failed", "{broken}");
    let log = broken["diagnostics"]["log"].to_string();
    assert!(
        log.contains("cannot open config"),
        "the unit's last log lines: {broken}"
    );
}
