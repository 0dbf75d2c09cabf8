//! Crash safety: a real `rampart-agent` is SIGKILLed at every journal record boundary of a
//! multi-step transactional playbook, at random points inside tasks (seeded; the seed is printed)
//! and twice in a row (once more during its own recovery). After each restart the test asserts:
//! - the journal's demands were met: after the last `recovery` record, the rescue (or the rerun
//!   rescue) and the always section ran in full, in order;
//! - marker files show the host back in its pre-transaction state;
//! - every journal line parses, and the transaction is in history, none left in flight;
//! - the `rampart run --agent` client re-attached and reports `rolled_back`, exit 1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_tests::{
    AgentProc, CliRun, XorShift, bin, finished_journal, port_of, read_journals,
    reconnecting_client, write_file,
};
use serde_json::Value;

const PLAYBOOK: &str = include_str!("../fixtures/ok/crash-deploy.yml");

/// Journal records of an uninterrupted run: begin, play, 9 tasks × 2, end.
const RECORDS: u64 = 21;
const RESCUE: [&str; 3] = ["r1 restore release", "r2 remove markers", "r3 verify"];
const ALWAYS: [&str; 2] = ["a1 unlock", "a2 done"];

struct Host {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    state: std::path::PathBuf,
    playbook: String,
}

fn host() -> Host {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("release"), "v1").unwrap();
    std::fs::write(dir.join("locked"), "").unwrap();
    let playbook = write_file(tmp.path(), "deploy.yml", PLAYBOOK);
    Host {
        state: tmp.path().join("state"),
        dir,
        playbook,
        _tmp: tmp,
    }
}

fn start_client(h: &Host, addr: &str) -> std::process::Child {
    reconnecting_client(&h.playbook, addr, &h.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rampart run")
}

/// Asserts the host and the journals after the transaction finished.
fn assert_recovered(h: &Host, client: std::process::Child, what: &str) {
    let out = client.wait_with_output().expect("client output");
    let run = CliRun::from_output(out);
    assert_eq!(
        run.code, 1,
        "[{what}] client exit code\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.summary()["outcome"], "rolled_back", "[{what}]");

    // The host is back where it was.
    let release = std::fs::read_to_string(h.dir.join("release")).unwrap();
    assert_eq!(release, "v1", "[{what}] release not restored");
    for gone in ["state_b1", "state_b3", "locked", "release.tmp"] {
        assert!(!h.dir.join(gone).exists(), "[{what}] {gone} left behind");
    }
    assert!(
        h.dir.join("always_done").exists(),
        "[{what}] always did not finish"
    );

    // Every journal parses; nothing is left in flight.
    let (_, entries) = finished_journal(&h.state, what);
    let end = entries.last().unwrap();
    assert_eq!(end["type"], "end", "[{what}]");
    assert_eq!(end["outcome"], "rolled_back", "[{what}]");

    // The last recovery's demand was met, in order.
    let Some(rec_at) = entries.iter().rposition(|e| e["type"] == "recovery") else {
        return; // the kill came after the last record: nothing to recover but the move
    };
    let action = entries[rec_at]["action"].as_str().unwrap().to_string();
    let after: Vec<&Value> = entries[rec_at + 1..]
        .iter()
        .filter(|e| e["type"] == "task_end")
        .collect();
    let mut names: Vec<&str> = after.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let expected: Vec<&str> = match action.as_str() {
        "rescue" => {
            // At most one block task: the interrupted one, failed as interrupted.
            if let Some(first) = after.first()
                && first["section"] == "block"
            {
                assert_eq!(first["status"], "failed", "[{what}]");
                assert_eq!(first["result"]["interrupted"], true, "[{what}]");
                names.remove(0);
            }
            RESCUE.iter().chain(ALWAYS.iter()).copied().collect()
        }
        "rerun_rescue" => RESCUE.iter().chain(ALWAYS.iter()).copied().collect(),
        "rerun_always" => ALWAYS.to_vec(),
        "finish" => Vec::new(),
        other => panic!("[{what}] unknown recovery action {other}"),
    };
    assert_eq!(names, expected, "[{what}] tasks after recovery ({action})");
    for e in &after {
        if e["section"] != "block" {
            assert!(
                e["status"] == "ok" || e["status"] == "changed",
                "[{what}] {} {}",
                e["name"],
                e["status"]
            );
        }
    }
}

/// Stops the agent right after record `n`, SIGKILLs it, restarts it (optionally stopping and
/// killing it again after record `second` of the recovery), and checks the result.
fn kill_after_record(n: u64, second: Option<u64>) {
    let h = host();
    let what = match second {
        Some(s) => format!("kill after record {n}, then after record {s} during recovery"),
        None => format!("kill after record {n}"),
    };
    let n_arg = n.to_string();
    let mut agent = AgentProc::start_with(
        &h.state,
        "127.0.0.1:0",
        &["--debug-stop-after-record", &n_arg],
    );
    let listen = format!("127.0.0.1:{}", port_of(&agent.addr));
    let mut client = start_client(&h, &agent.addr);
    if !agent.wait_stopped(Duration::from_secs(30)) {
        let _ = client.kill();
        let run = CliRun::from_output(client.wait_with_output().expect("client output"));
        panic!(
            "[{what}] agent never reached record {n}\nclient stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
    }
    agent.kill9();
    if let Some(s) = second {
        let s_arg = s.to_string();
        // The restarted agent recovers before serving; it stops inside recovery, so it never
        // prints its address: start it by hand.
        let mut child = Command::new(bin("rampart-agent"))
            .args([
                "--listen",
                &listen,
                "--insecure-dev",
                "--debug-stop-after-record",
                &s_arg,
            ])
            .arg("--state-dir")
            .arg(&h.state)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while rampart_tests::process_state(child.id()) != Some('T') {
            if let Ok(Some(status)) = child.try_wait() {
                // The recovery finished before reaching that record: nothing more to crash.
                assert!(
                    status.success() || status.code().is_none(),
                    "[{what}] agent exited {status}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[{what}] recovery never reached record {s}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let _agent = AgentProc::start_with(&h.state, &listen, &[]);
    assert_recovered(&h, client, &what);
}

#[test]
fn sigkill_at_every_record_boundary_of_the_block() {
    // Records 1..=9: play start, and every start/end of the four block tasks.
    for n in 1..=9 {
        kill_after_record(n, None);
    }
}

#[test]
fn sigkill_at_every_record_boundary_of_rescue_always_and_end() {
    // Records 10..=20: rescue and always tasks, and the `end` record before the move to history.
    for n in 10..RECORDS {
        kill_after_record(n, None);
    }
}

#[test]
fn sigkill_again_during_recovery() {
    // First crash in the block, second in the rerun; first crash in rescue, second in its rerun.
    // Record numbers of the second crash count on from the first journal's last record.
    for (first, second) in [(5, 9), (7, 12), (13, 17), (17, 20)] {
        kill_after_record(first, Some(second));
    }
}

fn wait_for_line(journal_dir: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(rd) = std::fs::read_dir(journal_dir) {
            for e in rd.flatten() {
                if std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn sigkill_at_random_points_inside_tasks() {
    let (seed, mut rng) = XorShift::from_env();
    let slow = [
        "b2 switch release",
        "b3 more work",
        "b4 health check fails",
        "r2 remove markers",
        "a1 unlock",
    ];
    for i in 0..8 {
        let task = slow[(rng.next() % slow.len() as u64) as usize];
        let delay_ms = rng.next() % 180;
        let what = format!("random #{i}: {delay_ms} ms into `{task}` (seed {seed})");
        let h = host();
        let mut agent = AgentProc::start(&h.state);
        let listen = format!("127.0.0.1:{}", port_of(&agent.addr));
        let client = start_client(&h, &agent.addr);
        let found = wait_for_line(
            &h.state.join("journal"),
            &format!("\"name\":\"{task}\""),
            Duration::from_secs(30),
        );
        assert!(found, "[{what}] task never started");
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill9();
        let _agent = AgentProc::start_with(&h.state, &listen, &[]);
        assert_recovered(&h, client, &what);
    }
}

#[test]
fn torn_last_journal_line_is_reported_and_recovered() {
    let h = host();
    let mut agent =
        AgentProc::start_with(&h.state, "127.0.0.1:0", &["--debug-stop-after-record", "6"]);
    let listen = format!("127.0.0.1:{}", port_of(&agent.addr));
    let client = start_client(&h, &agent.addr);
    assert!(
        agent.wait_stopped(Duration::from_secs(30)),
        "agent never reached record 6"
    );
    agent.kill9();
    // A crash cut the next record short: half a JSON line, no newline.
    let journal_dir = h.state.join("journal");
    let journal = std::fs::read_dir(&journal_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let torn = "{\"seq\":7,\"txid\":\"x\",\"time\":\"2026-";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, torn.as_bytes()).unwrap();
    drop(f);
    let _agent = AgentProc::start_with(&h.state, &listen, &[]);
    assert_recovered(&h, client, "torn tail after record 6");
    let journals = read_journals(&h.state);
    let recovery = journals[0]
        .1
        .iter()
        .find(|e| e["type"] == "recovery")
        .expect("recovery record");
    assert_eq!(
        recovery["torn_tail"], torn,
        "the torn bytes are kept in the recovery record"
    );
}

/// What a power loss can leave and a SIGKILL cannot: a task began (its side effects are on the
/// host) but its `task_start`, which the journal leaves to the next fdatasync when the task
/// before it ended in the same place (`agent/src/journal.rs`), never reached the disk. The agent
/// is SIGKILLed while the task runs and that last line is removed before the restart: recovery
/// must treat the task as interrupted without running a block task again.
#[test]
fn lost_unsynced_task_start_is_recovered_like_the_crash_before_it() {
    for (task, tag, in_block) in [
        ("b2 switch release", "b2", true),
        ("b3 more work", "b3", true),
        ("b4 health check fails", "b4", true),
        ("r2 remove markers", "r2", false),
    ] {
        let what = format!("lost task_start of `{task}` after it began");
        let h = host();
        let mut agent = AgentProc::start(&h.state);
        let listen = format!("127.0.0.1:{}", port_of(&agent.addr));
        let client = start_client(&h, &agent.addr);
        let trace = h.dir.join("trace");
        let traced = |t: &str| {
            std::fs::read_to_string(&trace)
                .unwrap_or_default()
                .lines()
                .filter(|l| *l == t)
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while traced(tag) == 0 {
            assert!(Instant::now() < deadline, "[{what}] task never began");
            std::thread::sleep(Duration::from_millis(2));
        }
        agent.kill9();
        let journal = std::fs::read_dir(h.state.join("journal"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = std::fs::read_to_string(&journal).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let last: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
        let before: Value = serde_json::from_str(lines[lines.len() - 2]).unwrap();
        assert_eq!(
            (last["type"].as_str(), last["name"].as_str()),
            (Some("task_start"), Some(task)),
            "[{what}] the kill came while the task ran"
        );
        assert_eq!(
            before["type"], "task_end",
            "[{what}] an unsynced start follows a task's end"
        );
        let kept = lines[..lines.len() - 1].join("\n") + "\n";
        std::fs::write(&journal, kept).unwrap();

        let _agent = AgentProc::start_with(&h.state, &listen, &[]);
        assert_recovered(&h, client, &what);
        let (_, entries) = finished_journal(&h.state, &what);
        let recovery = entries
            .iter()
            .find(|e| e["type"] == "recovery")
            .expect("recovery record");
        assert_eq!(
            recovery["interrupted_path"], before["path"],
            "[{what}] recovery saw the journal end at the task before"
        );
        if in_block {
            assert_eq!(traced(tag), 1, "[{what}] the block task ran again");
            let end = entries
                .iter()
                .find(|e| e["type"] == "task_end" && e["name"] == task)
                .expect("the task's end");
            assert_eq!(end["status"], "failed", "[{what}]");
            assert_eq!(end["result"]["interrupted"], true, "[{what}]");
        }
    }
}
