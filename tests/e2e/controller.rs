//! The controller end to end: a real `rampart-controller`, real agents (one process and state
//! dir per host), mutual TLS from `rampart certs init`, the `rampart` CLI with a bearer token,
//! and the sample app on every host.

use std::time::Duration;

use rampart_tests::fleet::{Fleet, break_v2_on, events_of, finished, pg_store_toml};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(240);

/// Whether a JSON line says `host` finished its staging task.
fn staged(v: &Value, host: &str) -> bool {
    v["type"] == "host_event"
        && v["host"] == host
        && v["event"]["type"] == "task_finished"
        && v["event"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("stage"))
}

fn host_states(fin: &Value) -> Vec<(String, String)> {
    fin["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn waves_deploy_then_a_failure_in_wave_two_rolls_back_waves_one_and_two() {
    let other = rampart_tests::deploy::free_port();
    let fleet = Fleet::start(
        5,
        "serial = [1, \"50%\", \"100%\"]\nmax_fail_percentage = 0\n",
        |i, vars| {
            if i == 1 {
                break_v2_on(vars, other);
            }
        },
    );

    // 1.0.0 everywhere, in waves of 1, 2 and 2.
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let plan = events_of(&r, "planned");
    assert_eq!(plan.len(), 1, "{}", r.stdout);
    let waves: Vec<Vec<String>> = plan[0]["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w.as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        waves,
        vec![vec!["h1"], vec!["h2", "h3"], vec!["h4", "h5"]],
        "{}",
        r.stdout
    );
    assert_eq!(events_of(&r, "wave_started").len(), 3);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "succeeded", "{fin:#}");
    assert_eq!(fin["environment_version"], "1.0.0", "{fin:#}");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 5]);
    // Each host ran as its inventory name, seeing the environment's inventory (every play
    // runs: the environment picked the hosts).
    for h in &fleet.hosts {
        let agent = h.agent.as_ref().unwrap();
        let journals = rampart_tests::read_journals(&agent.state_dir);
        let begin = &journals.last().expect("a journal").1[0];
        assert_eq!(begin["host"], h.name.as_str(), "{begin}");
        let view = &begin["flags"]["inventory"];
        assert_eq!(
            view["groups"]["all"],
            serde_json::json!(["h1", "h2", "h3", "h4", "h5"])
        );
        assert_eq!(view["every_play"], true, "{view}");
        assert!(view["hostvars"]["h5"].is_object(), "{view}");
    }

    // 2.0.0 fails its health checks on h2 (wave 2): waves 1 and 2 go back to 1.0.0, wave 3 is
    // never touched.
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 2.0.0: {}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    let fin = finished(&lines);
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    assert_eq!(fin["environment_version"], "1.0.0", "{fin:#}");
    let states = host_states(&fin);
    let state = |h: &str| states.iter().find(|(n, _)| n == h).unwrap().1.clone();
    for h in ["h1", "h2", "h3"] {
        assert_eq!(state(h), "rolled_back", "{h}: {fin:#}");
    }
    for h in ["h4", "h5"] {
        assert_eq!(state(h), "pending", "{h}: {fin:#}");
    }
    assert_eq!(
        events_of(&r, "wave_started").len(),
        2,
        "wave 3 must not start"
    );
    let rescue = events_of(&r, "fleet_rescue_started");
    assert_eq!(rescue.len(), 1, "{}", r.stdout);
    // h2 rolled itself back (its own rescue); h1 and h3 succeeded and are rolled back by the fleet.
    let mut rescued: Vec<String> = rescue[0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    rescued.sort();
    assert_eq!(rescued, ["h1", "h3"], "{}", r.stdout);
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 5]);
    for (i, h) in fleet.hosts.iter().enumerate() {
        assert_eq!(h.scenario.current().as_deref(), Some("1.0.0"), "h{}", i + 1);
        let app = h.scenario.state.join("apps/app");
        let staged = ["releases", "failed"].iter().any(|d| {
            std::fs::read_dir(app.join(d)).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("2.0.0"))
            })
        });
        assert_eq!(
            staged,
            i < 3,
            "h{}: 2.0.0 staged only where the rollout went",
            i + 1
        );
    }
    // h2's forensics bundle is recorded and fetched through the controller.
    let id = fin["deployment_id"]
        .as_str()
        .unwrap_or_else(|| lines[0]["deployment_id"].as_str().unwrap())
        .to_string();
    let out = fleet.dir.path().join("h2-bundle.tar.gz");
    let g = fleet.cli(&["forensics", "get", &id, "h2", "-o", out.to_str().unwrap()]);
    assert_eq!(g.code, 0, "forensics get: {}\n{}", g.stdout, g.stderr);
    let tgz = std::fs::read(&out).unwrap();
    assert!(
        tgz.len() > 100 && tgz[0] == 0x1f && tgz[1] == 0x8b,
        "not a gzip bundle"
    );

    // History names who asked and how each deployment ended.
    let h = fleet.cli(&["history", "--env", "prod", "--json"]);
    assert_eq!(h.code, 0, "history: {}\n{}", h.stdout, h.stderr);
    let hist: Value = serde_json::from_str(&h.stdout).unwrap();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 2, "{hist:#?}");
    assert_eq!(hist[0]["version"], "2.0.0");
    assert_eq!(hist[0]["outcome"], "rolled_back");
    assert_eq!(hist[0]["requested_by"], "ci");
    assert_eq!(hist[1]["outcome"], "succeeded");
}

#[test]
fn an_agent_killed_mid_deploy_is_unreachable_then_its_journal_restores_it() {
    let mut fleet = Fleet::start(2, "max_fail_percentage = 0\n", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    let mut live = fleet.spawn_deploy("2.0.0", &[]);
    // Once h1 has staged 2.0.0, its agent dies mid-transaction.
    live.wait_for("h1 staged 2.0.0", LONG, |v| staged(v, "h1"));
    fleet.kill_agent(0);
    let un = live.wait_for("h1 unreachable", LONG, |v| {
        v["type"] == "host_finished" && v["host"] == "h1"
    });
    assert_eq!(un["state"], "unreachable", "{un:#}");
    // The agent comes back: its journal rolls h1 back; the controller learns it in the rescue.
    fleet.restart_agent(0);
    let (code, lines) = live.finish(LONG);
    let fin = finished(&lines);
    assert_eq!(code, 1, "{fin:#}");
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let states = host_states(&fin);
    assert_eq!(
        states,
        [
            ("h1".to_string(), "rolled_back".to_string()),
            ("h2".to_string(), "rolled_back".to_string())
        ],
        "{fin:#}"
    );
    // The verdict matches the hosts.
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
    for h in &fleet.hosts {
        assert_eq!(h.scenario.current().as_deref(), Some("1.0.0"));
    }
}

#[test]
fn a_controller_killed_mid_rollout_resumes_and_runs_no_transaction_twice() {
    let mut fleet = Fleet::start(3, "serial = 1\n", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    let mut live = fleet.spawn_deploy("2.0.0", &["--reconnect-timeout", "120"]);
    live.wait_for("wave 2 started", LONG, |v| {
        v["type"] == "wave_started" && v["index"] == 1
    });
    fleet.kill_controller();
    std::thread::sleep(Duration::from_millis(500));
    fleet.restart_controller();
    // The CLI re-attaches by itself (same address) and sees the deployment to its end.
    let (code, lines) = live.finish(LONG);
    let fin = finished(&lines);
    assert_eq!(code, 0, "{fin:#}");
    assert_eq!(fin["outcome"], "succeeded", "{fin:#}");
    assert!(
        lines.iter().any(|v| v["type"] == "resumed"),
        "the restarted controller announces the takeover"
    );
    let mut seqs: Vec<u64> = lines.iter().filter_map(|v| v["seq"].as_u64()).collect();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no event printed twice");
    assert_eq!(fleet.serving(), vec![Some("2.0.0".to_string()); 3]);
    // One deploy transaction of 2.0.0 per host, never two.
    for h in &fleet.hosts {
        let runs = rampart_tests::read_journals(&h.scenario.state)
            .into_iter()
            .filter(|(p, _)| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .contains(fin["deployment_id"].as_str().unwrap_or("d-"))
            })
            .count();
        assert_eq!(runs, 1, "{}: transactions of this deployment", h.name);
    }
}

#[test]
fn deploys_queue_in_order_wait_for_approval_time_out_and_refuse_bad_tokens() {
    let fleet = Fleet::start(1, "require_approval = true\n", |_, _| {});
    let mut a = fleet.spawn_deploy("1.0.0", &[]);
    let waiting = a.wait_for("A awaits approval", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let a_id = waiting["deployment_id"].as_str().unwrap().to_string();

    let mut b = fleet.spawn_deploy("1.0.0", &[]);
    let q = b.wait_for("B queued", LONG, |v| v["type"] == "queued");
    assert_eq!(q["position"], 1, "{q:#}");
    assert_eq!(q["holder_deployment_id"], a_id.as_str(), "{q:#}");
    let b_id = q["deployment_id"].as_str().unwrap().to_string();

    // C gives up after 1 s in the queue: exit 5, nothing touched.
    let c = fleet.deploy("1.0.0", &["--wait-timeout", "1"]);
    assert_eq!(c.code, 5, "C: {}\n{}", c.stdout, c.stderr);
    assert_eq!(finished(&c.json())["outcome"], "lock_timeout");

    // `status` shows A holding the environment and B first in line.
    let s = fleet.cli(&["status", "--env", "prod", "--json"]);
    assert_eq!(s.code, 0, "status: {}\n{}", s.stdout, s.stderr);
    let list: Value = serde_json::from_str(&s.stdout).unwrap();
    let list = list[0]["active"].clone();
    let find = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in status: {list:#}"))
    };
    assert_eq!(find(&a_id)["state"], "awaiting_approval");
    assert_eq!(find(&b_id)["state"], "queued");
    assert_eq!(find(&b_id)["queue_position"], 1);

    // A bad token is refused with exit 3.
    std::fs::write(fleet.dir.path().join("bad-token"), "nope\n").unwrap();
    let bad = rampart_tests::rampart(&[
        "status",
        "--controller",
        &format!("https://{}", fleet.controller.as_ref().unwrap().addr),
        "--ca",
        fleet.certs().join("ca.pem").to_str().unwrap(),
        "--token-file",
        fleet.dir.path().join("bad-token").to_str().unwrap(),
    ]);
    assert_eq!(bad.code, 3, "bad token: {}\n{}", bad.stdout, bad.stderr);

    // Approving A runs it; B then holds the lock and is aborted before it touches anything.
    let ap = fleet.cli(&["approve", &a_id, "--comment", "looks good"]);
    assert_eq!(ap.code, 0, "approve: {}\n{}", ap.stdout, ap.stderr);
    let (code, lines) = a.finish(LONG);
    assert_eq!(code, 0, "A: {lines:#?}");
    assert_eq!(finished(&lines)["outcome"], "succeeded");
    b.wait_for("B awaits approval", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let ab = fleet.cli(&["abort", &b_id, "--reason", "superseded"]);
    assert_eq!(ab.code, 0, "abort: {}\n{}", ab.stdout, ab.stderr);
    let (code, lines) = b.finish(LONG);
    assert_eq!(finished(&lines)["outcome"], "aborted", "{lines:#?}");
    assert_eq!(code, 1);
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);
}

#[test]
fn rollback_returns_the_environment_to_the_previous_version() {
    let fleet = Fleet::start(2, "", |_, _| {});
    for v in ["1.0.0", "2.0.0"] {
        let r = fleet.deploy(v, &[]);
        assert_eq!(r.code, 0, "deploy {v}: {}\n{}", r.stdout, r.stderr);
    }
    // No --to: the version before the current one, from history.
    let r = fleet.cli(&[
        "rollback",
        "--env",
        "prod",
        "--reason",
        "2.0.0 leaks memory",
        "--json",
    ]);
    assert_eq!(r.code, 0, "rollback: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "succeeded", "{fin:#}");
    assert_eq!(fin["environment_version"], "1.0.0", "{fin:#}");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
    let h = fleet.cli(&["history", "--env", "prod", "--json"]);
    let hist: Value = serde_json::from_str(&h.stdout).unwrap();
    assert_eq!(hist[0]["kind"], "rollback", "{hist:#}");
    assert_eq!(hist[0]["reason"], "2.0.0 leaks memory", "{hist:#}");
    // A reason is required; an unknown environment is a usage error; nothing runs.
    let r = fleet.cli(&["rollback", "--env", "nope", "--reason", "x"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

#[test]
fn the_controller_refuses_an_agent_from_another_ca_and_trusts_two_during_a_rotation() {
    let mut fleet = Fleet::start(2, "max_fail_percentage = 0\n", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    // h2's agent now presents a certificate from a second CA (it still trusts the first to
    // sign the controller's certificate).
    let certs2 = fleet.dir.path().join("certs2");
    let c = rampart_tests::rampart(&["certs", "init", certs2.to_str().unwrap(), "--agent", "h2"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let ca1 = fleet.certs().join("ca.pem");
    fleet.restart_agent_with(
        1,
        &certs2.join("agent-h2.pem"),
        &certs2.join("agent-h2.key"),
        std::slice::from_ref(&ca1),
    );
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 2.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let h2 = fin["hosts"][1].clone();
    assert_eq!(h2["state"], "unreachable", "{fin:#}");
    assert!(
        h2["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "the refusal names the certificate: {h2:#}"
    );
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);

    // Rotation: the controller trusts both CAs; every agent is accepted.
    fleet.edit_config(
        &format!("ca = [\"{}\"]", ca1.display()),
        &format!(
            "ca = [\"{}\", \"{}\"]",
            ca1.display(),
            certs2.join("ca.pem").display()
        ),
    );
    fleet.kill_controller();
    fleet.restart_controller();
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(
        r.code, 0,
        "deploy 2.0.0 after the rotation: {}\n{}",
        r.stdout, r.stderr
    );
    assert_eq!(fleet.serving(), vec![Some("2.0.0".to_string()); 2]);
}

#[test]
fn two_controllers_on_one_postgresql_store_never_run_one_environment_at_once() {
    let pg = rampart_tests::pg::Pg::start();
    pg.create_db("rampart");
    let mut one = Fleet::start_with_toml(
        1,
        "require_approval = true\n",
        &pg_store_toml(&pg, "rampart", "one", ""),
        |_, _| {},
    );
    // A second controller: same store and environment, its own address and instance name.
    let text = std::fs::read_to_string(&one.config).unwrap();
    let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    let other = format!(
        "listen = \"127.0.0.1:{}\"",
        rampart_tests::deploy::free_port()
    );
    let config2 = one.dir.path().join("controller2.toml");
    std::fs::write(
        &config2,
        text.replace(listen, &other)
            .replace("instance = \"one\"", "instance = \"two\""),
    )
    .unwrap();
    let two = rampart_tests::fleet::ControllerProc::start(&config2);

    let mut a = one.spawn_deploy("1.0.0", &[]);
    let w = a.wait_for("A awaits approval on one", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let a_id = w["deployment_id"].as_str().unwrap().to_string();
    drop(a);
    // B asks the other controller: it queues behind A.
    let ctl_one = one.controller.take().unwrap();
    one.controller = Some(two);
    let mut b = one.spawn_deploy("1.0.0", &[]);
    let q = b.wait_for("B queued on two", LONG, |v| v["type"] == "queued");
    assert_eq!(q["holder_deployment_id"], a_id.as_str(), "{q:#}");
    let b_id = q["deployment_id"].as_str().unwrap().to_string();

    // Controller one dies holding the lock: two takes A over (recording the reclaim) and
    // B keeps waiting behind it.
    let mut ctl_one = ctl_one;
    ctl_one.kill9();
    let mut watch = one.spawn_cli(&["watch", &a_id, "--json"]);
    let lock = watch.wait_for("A's lock reclaimed by two", LONG, |v| {
        v["type"] == "lock_acquired" && v["reclaimed_from"] == "one"
    });
    assert_eq!(lock["controller"], "two", "{lock:#}");
    let s = one.cli(&["status", "--env", "prod", "--json"]);
    let list: Value = serde_json::from_str(&s.stdout).unwrap();
    let list = list[0]["active"].clone();
    let state_of = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["state"].clone())
    };
    assert_eq!(
        state_of(&a_id),
        Some(Value::from("awaiting_approval")),
        "{list:#}"
    );
    assert_eq!(state_of(&b_id), Some(Value::from("queued")), "{list:#}");

    let ap = one.cli(&["approve", &a_id]);
    assert_eq!(ap.code, 0, "approve: {}\n{}", ap.stdout, ap.stderr);
    let (code, lines) = watch.finish(LONG);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(one.serving(), vec![Some("1.0.0".to_string())]);
    b.wait_for("B holds the lock after A", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let ab = one.cli(&["abort", &b_id, "--reason", "test over"]);
    assert_eq!(ab.code, 0, "abort: {}\n{}", ab.stdout, ab.stderr);
    let (_, lines) = b.finish(LONG);
    assert_eq!(finished(&lines)["outcome"], "aborted");
}

#[test]
fn check_mode_changes_nothing_waves_bake_and_a_rolled_back_deploy_opens_an_incident() {
    let fleet = Fleet::start(2, "serial = 1\nbake_seconds = 1\n", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let bake = events_of(&r, "bake_started");
    assert_eq!(bake.len(), 1, "one pause between two waves: {}", r.stdout);
    assert_eq!(bake[0]["duration_ms"], 1000);

    // Check mode: every host's transaction runs in check mode; nothing changes.
    let r = fleet.deploy("2.0.0", &["--check"]);
    assert_eq!(r.code, 0, "check 2.0.0: {}\n{}", r.stdout, r.stderr);
    assert_eq!(finished(&r.json())["outcome"], "check_only");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
    for h in &fleet.hosts {
        assert!(!h.scenario.state.join("apps/app/releases/2.0.0").exists());
        assert_eq!(h.scenario.current().as_deref(), Some("1.0.0"));
    }

    // The broken 3.0.0 is rolled back on h1 (wave 1 aborts: its only host failed) and opens an
    // incident, which a person resolves with a note.
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let inc_id = fin["incident_id"].as_str().unwrap().to_string();
    assert!(!inc_id.is_empty(), "{fin:#}");
    let l = fleet.cli(&["incidents", "--env", "prod", "--json"]);
    assert_eq!(l.code, 0, "{}\n{}", l.stdout, l.stderr);
    let list: Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(list[0]["id"], inc_id.as_str(), "{list:#}");
    assert_eq!(list[0]["severity"], "error", "{list:#}");
    assert_eq!(list[0]["state"], "open", "{list:#}");
    assert_eq!(list[0]["hosts"], serde_json::json!(["h1"]), "{list:#}");
    let res = fleet.cli(&[
        "incidents",
        "resolve",
        &inc_id,
        "--note",
        "3.0.0 health file fixed",
        "--json",
    ]);
    assert_eq!(res.code, 0, "{}\n{}", res.stdout, res.stderr);
    let l = fleet.cli(&["incidents", "--env", "prod", "--json"]);
    let list: Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(list[0]["state"], "resolved", "{list:#}");
    assert_eq!(list[0]["resolved_by"], "ci", "{list:#}");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);
}

#[test]
fn a_frozen_agent_misses_its_heartbeat_is_unreachable_and_rolled_back_when_it_thaws() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let fleet = Fleet::start(1, "", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let pid = Pid::from_raw(fleet.hosts[0].agent.as_ref().unwrap().pid() as i32);

    let mut live = fleet.spawn_deploy("2.0.0", &[]);
    live.wait_for("h1 staged 2.0.0", LONG, |v| staged(v, "h1"));
    // Frozen, not dead: its sockets stay open, only the HTTP/2 keepalive notices.
    kill(pid, Signal::SIGSTOP).unwrap();
    let un = live.wait_for("h1 unreachable", LONG, |v| v["type"] == "host_finished");
    let thawed = kill(pid, Signal::SIGCONT);
    assert_eq!(un["state"], "unreachable", "{un:#}");
    thawed.unwrap();
    // Thawed, it finishes its transaction; the fleet rescue learns how and rolls it back.
    let (code, lines) = live.finish(LONG);
    let fin = finished(&lines);
    assert_eq!(code, 1, "{fin:#}");
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    assert_eq!(fin["hosts"][0]["state"], "rolled_back", "{fin:#}");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);
}

#[test]
fn an_unapproved_deployment_ends_approval_timed_out_after_its_own_timeout_touching_nothing() {
    // The queue wait (wait_timeout_seconds, 120 s in every fleet) no longer bounds the
    // approval: approval_timeout_seconds does.
    let fleet = Fleet::start(
        1,
        "require_approval = true\napproval_timeout_seconds = 2\n",
        |_, _| {},
    );
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 1, "deploy: {}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    assert_eq!(events_of(&r, "awaiting_approval").len(), 1, "{}", r.stdout);
    let fin = finished(&lines);
    assert_eq!(fin["outcome"], "approval_timed_out", "{fin:#}");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("approval_timeout_seconds") && summary.contains("nothing was touched"),
        "{summary}"
    );
    assert_eq!(
        host_states(&fin),
        [("h1".to_string(), "pending".to_string())],
        "{fin:#}"
    );
    // Nothing reached the host: no transaction, no release, no app.
    let h = &fleet.hosts[0];
    assert!(rampart_tests::read_journals(&h.scenario.state).is_empty());
    assert!(!h.scenario.state.join("apps/app/releases/1.0.0").exists());
    assert_eq!(fleet.serving(), vec![None]);
    // The record says so too.
    let id = lines[0]["deployment_id"].as_str().unwrap();
    let show = fleet.cli(&["deployment", "show", id, "--json"]);
    assert_eq!(show.code, 0, "{}\n{}", show.stdout, show.stderr);
    let d: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(d["outcome"], "approval_timed_out", "{d:#}");
    assert_eq!(d["approved_by"], "", "{d:#}");
}

/// A second controller for `fleet`'s environment: same configuration (and store), its own
/// address and instance name `instance` (the fleet's config must name `instance = "one"`).
fn second_controller(fleet: &Fleet, instance: &str) -> rampart_tests::fleet::ControllerProc {
    let text = std::fs::read_to_string(&fleet.config).unwrap();
    let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    let other = format!(
        "listen = \"127.0.0.1:{}\"",
        rampart_tests::deploy::free_port()
    );
    let config = fleet.dir.path().join(format!("controller-{instance}.toml"));
    std::fs::write(
        &config,
        text.replace(listen, &other)
            .replace("instance = \"one\"", &format!("instance = \"{instance}\"")),
    )
    .unwrap();
    rampart_tests::fleet::ControllerProc::start(&config)
}

#[test]
fn approve_and_abort_work_through_a_controller_that_does_not_run_the_deployment() {
    let pg = rampart_tests::pg::Pg::start();
    pg.create_db("rampart");
    let fleet = Fleet::start_with_toml(
        1,
        "require_approval = true\n",
        &pg_store_toml(&pg, "rampart", "one", ""),
        |_, _| {},
    );
    let two = second_controller(&fleet, "two");

    // A runs on controller one and waits for approval; controller two approves it.
    let mut a = fleet.spawn_deploy("1.0.0", &[]);
    let w = a.wait_for("A awaits approval on one", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let a_id = w["deployment_id"].as_str().unwrap().to_string();
    let ap = fleet.cli_at(&two.addr, &["approve", &a_id, "--comment", "via two"]);
    assert_eq!(ap.code, 0, "approve via two: {}\n{}", ap.stdout, ap.stderr);
    assert!(ap.stdout.contains("forwarded"), "{}", ap.stdout);
    let (code, lines) = a.finish(LONG);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(finished(&lines)["outcome"], "succeeded");
    let approved: Vec<&Value> = lines.iter().filter(|v| v["type"] == "approved").collect();
    assert_eq!(approved.len(), 1, "{lines:#?}");
    assert_eq!(approved[0]["approved_by"], "ci", "{lines:#?}");
    assert_eq!(approved[0]["comment"], "via two", "{lines:#?}");
    let lock = lines.iter().find(|v| v["type"] == "lock_acquired").unwrap();
    assert_eq!(lock["controller"], "one", "one ran it: {lock:#}");
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);

    // B runs on one too; controller two aborts it before its first wave.
    let mut b = fleet.spawn_deploy("2.0.0", &[]);
    let w = b.wait_for("B awaits approval on one", LONG, |v| {
        v["type"] == "awaiting_approval"
    });
    let b_id = w["deployment_id"].as_str().unwrap().to_string();
    let ab = fleet.cli_at(&two.addr, &["abort", &b_id, "--reason", "not today"]);
    assert_eq!(ab.code, 0, "abort via two: {}\n{}", ab.stdout, ab.stderr);
    assert!(ab.stdout.contains("forwarded"), "{}", ab.stdout);
    let (code, lines) = b.finish(LONG);
    let fin = finished(&lines);
    assert_eq!(code, 1, "{fin:#}");
    assert_eq!(fin["outcome"], "aborted", "{fin:#}");
    assert!(
        fin["summary"].as_str().unwrap().contains("not today"),
        "{fin:#}"
    );
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);
    // Asking again once it is over is refused, on either controller.
    for again in [
        fleet.cli_at(&two.addr, &["abort", &b_id, "--reason", "again"]),
        fleet.cli(&["abort", &b_id, "--reason", "again"]),
    ] {
        assert_eq!(again.code, 2, "{}\n{}", again.stdout, again.stderr);
        assert!(
            again.stderr.contains("already finished"),
            "{}",
            again.stderr
        );
    }
}
