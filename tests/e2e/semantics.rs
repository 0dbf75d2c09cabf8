//! Ansible's block/rescue/always semantics, as observed on ansible-core 2.19
//! (`docs/notes/ansible-semantics.md`), through real processes: every case runs with
//! `rampart run --local` and through a real `rampart-agent` over gRPC on 127.0.0.1, and each
//! asserts the task sequence, the statuses, the recap, the outcome and the exit code.

use std::path::Path;

use rampart_tests::{AgentProc, CliRun, rampart, run_local_json, write_file};
use serde_json::{Value, json};

/// What a run must show.
struct Expect<'a> {
    /// (task name, section, status) in order.
    tasks: &'a [(&'a str, &'a str, &'a str)],
    /// ok, changed, failed, skipped, rescued, ignored.
    recap: [u64; 6],
    outcome: &'a str,
    code: i32,
}

fn check_run(run: &CliRun, want: &Expect<'_>, mode: &str) {
    let got: Vec<(String, String, String)> = run.tasks();
    let want_tasks: Vec<(String, String, String)> = want
        .tasks
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(
        got, want_tasks,
        "[{mode}] task sequence\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let s = run.summary();
    let r = &s["recap"];
    let recap = [
        r["ok"].as_u64().unwrap(),
        r["changed"].as_u64().unwrap(),
        r["failed"].as_u64().unwrap(),
        r["skipped"].as_u64().unwrap(),
        r["rescued"].as_u64().unwrap(),
        r["ignored"].as_u64().unwrap(),
    ];
    assert_eq!(
        recap, want.recap,
        "[{mode}] recap (ok changed failed skipped rescued ignored)\n{}",
        run.stdout
    );
    assert_eq!(s["outcome"], want.outcome, "[{mode}] outcome");
    assert_eq!(
        run.code, want.code,
        "[{mode}] exit code\nstderr: {}",
        run.stderr
    );
}

/// Runs the playbook locally and through an agent with `vars` (`-e` each); checks both; returns
/// both runs.
fn both(dir: &Path, playbook: &str, vars: &[&str], want: &Expect<'_>) -> [CliRun; 2] {
    let extra: Vec<&str> = vars.iter().flat_map(|v| ["-e", v]).collect();
    both_with(dir, playbook, &extra, want, |_, _| {})
}

/// Runs the playbook locally (state in `dir/state-local`) and through an agent (state in
/// `dir/state-agent`), each with `extra` arguments; checks each run against `want`, then hands
/// it to `each` with its mode (`local`, `agent`) before the next starts; returns both runs.
fn both_with(
    dir: &Path,
    playbook: &str,
    extra: &[&str],
    want: &Expect<'_>,
    mut each: impl FnMut(&str, &CliRun),
) -> [CliRun; 2] {
    let pb = write_file(dir, "playbook.yml", playbook);
    let mut run_in = |mode: &str| {
        let state = dir.join(format!("state-{mode}"));
        let run = if mode == "local" {
            run_local_json(&pb, &state, extra)
        } else {
            let agent = AgentProc::start(&state);
            rampart(
                &[
                    &["run", pb.as_str(), "--agent", agent.addr.as_str(), "--json"],
                    extra,
                ]
                .concat(),
            )
        };
        check_run(&run, want, mode);
        each(mode, &run);
        run
    };
    [run_in("local"), run_in("agent")]
}

fn task_result<'a>(run: &'a [Value], name: &str) -> &'a Value {
    &run.iter()
        .find(|v| v["type"] == "task" && v["name"] == name)
        .unwrap_or_else(|| panic!("no task {name}"))["result"]
}

#[test]
fn first_failure_in_block_runs_rescue_then_always_then_the_play_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: h01
  gather_facts: false
  tasks:
    - name: outer
      block:
        - name: b1 ok
          debug: msg=b1
        - name: b2 fails
          command: /bin/false
        - name: b3 never
          debug: msg=b3
      rescue:
        - name: r1 show failed task
          debug: var=ansible_failed_task
        - name: r2 show failed result
          debug: var=ansible_failed_result
      always:
        - name: a1
          debug: msg=always
    - name: after block
      debug: msg=after
"#;
    let runs = both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[
                ("b1 ok", "block", "ok"),
                ("b2 fails", "block", "failed"),
                ("r1 show failed task", "rescue", "ok"),
                ("r2 show failed result", "rescue", "ok"),
                ("a1", "always", "ok"),
                ("after block", "block", "ok"),
            ],
            recap: [5, 0, 0, 0, 1, 0],
            outcome: "rolled_back",
            code: 1,
        },
    );
    for run in &runs {
        let lines = run.json();
        let t = &task_result(&lines, "r1 show failed task")["ansible_failed_task"];
        assert_eq!(t["name"], "b2 fails");
        assert_eq!(t["action"], "command");
        assert_eq!(t["args"]["_raw_params"], "/bin/false");
        let r = &task_result(&lines, "r2 show failed result")["ansible_failed_result"];
        assert_eq!(r["failed"], json!(true));
        assert_eq!(r["rc"], json!(1));
        assert_eq!(r["changed"], json!(true));
        assert_eq!(r["msg"], "non-zero return code");
        assert_eq!(
            task_result(&lines, "b2 fails")["cmd"],
            json!(["/bin/false"])
        );
    }
}

#[test]
fn failure_inside_rescue_skips_the_rest_runs_always_and_fails_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: h01
  gather_facts: false
  tasks:
    - block:
        - name: b fails
          fail: msg=boom
      rescue:
        - name: r fails too
          fail: msg=rescue-boom
        - name: r2 never
          debug: msg=r2
      always:
        - name: always runs?
          debug: msg=always-ran
    - name: after block
      debug: msg=after
"#;
    let runs = both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[
                ("b fails", "block", "failed"),
                ("r fails too", "rescue", "failed"),
                ("always runs?", "always", "ok"),
            ],
            recap: [1, 0, 1, 0, 1, 0],
            outcome: "rollback_failed",
            code: 4,
        },
    );
    assert_eq!(task_result(&runs[0].json(), "b fails")["msg"], "boom");
}

#[test]
fn nested_blocks_rescue_inside_and_propagate_without_rescue() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: h01
  gather_facts: false
  tasks:
    - name: outer
      block:
        - name: inner
          block:
            - name: inner fails
              fail: msg=inner-boom
          rescue:
            - name: inner rescue
              debug: msg="inner rescued {{ ansible_failed_task.name }}"
          always:
            - name: inner always
              debug: msg=inner-always
        - name: outer continues after inner rescued
          debug: msg=outer-continues
        - name: inner2 no rescue
          block:
            - name: inner2 fails
              fail: msg=inner2-boom
          always:
            - name: inner2 always
              debug: msg=inner2-always
        - name: outer never
          debug: msg=never
      rescue:
        - name: outer rescue
          debug: msg="outer rescued {{ ansible_failed_task.name }} / {{ ansible_failed_result.msg }}"
      always:
        - name: outer always
          debug: msg=outer-always
    - name: success block
      block:
        - debug: msg=ok
      rescue:
        - debug: msg=NOT-RUN
      always:
        - name: always after success
          debug: msg=always-after-success
"#;
    let runs = both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[
                ("inner fails", "block", "failed"),
                ("inner rescue", "rescue", "ok"),
                ("inner always", "always", "ok"),
                ("outer continues after inner rescued", "block", "ok"),
                ("inner2 fails", "block", "failed"),
                ("inner2 always", "always", "ok"),
                ("outer rescue", "rescue", "ok"),
                ("outer always", "always", "ok"),
                ("debug", "block", "ok"),
                ("always after success", "always", "ok"),
            ],
            recap: [8, 0, 0, 0, 2, 0],
            outcome: "rolled_back",
            code: 1,
        },
    );
    for run in &runs {
        let lines = run.json();
        assert_eq!(
            task_result(&lines, "inner rescue")["msg"],
            "inner rescued inner fails"
        );
        assert_eq!(
            task_result(&lines, "outer rescue")["msg"],
            "outer rescued inner2 fails / inner2-boom"
        );
    }
}

#[test]
fn ignore_errors_failed_when_and_changed_when() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: h01
  gather_facts: false
  tasks:
    - name: ignored failure
      command: /bin/false
      ignore_errors: true
      register: r
    - name: show r
      debug: msg="r.failed={{ r.failed }} rc={{ r.rc }}"
    - name: failed_when false on rc!=0
      command: sh -c 'exit 3'
      register: r2
      failed_when: r2.rc not in [0, 3]
    - name: failed_when true on success
      command: echo hello
      register: r3
      failed_when: "'hello' in r3.stdout"
      ignore_errors: yes
    - name: changed_when false
      command: echo hi
      changed_when: false
    - name: ignore_errors inside block - rescue not triggered
      block:
        - name: ignored in block
          command: /bin/false
          ignore_errors: true
        - name: block continues
          debug: msg=block-continues
      rescue:
        - name: not run
          debug: msg=NOT-RUN
"#;
    let runs = both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[
                ("ignored failure", "block", "ignored"),
                ("show r", "block", "ok"),
                ("failed_when false on rc!=0", "block", "changed"),
                ("failed_when true on success", "block", "ignored"),
                ("changed_when false", "block", "ok"),
                ("ignored in block", "block", "ignored"),
                ("block continues", "block", "ok"),
            ],
            recap: [7, 4, 0, 0, 0, 3],
            outcome: "succeeded",
            code: 0,
        },
    );
    for run in &runs {
        let lines = run.json();
        assert_eq!(task_result(&lines, "show r")["msg"], "r.failed=True rc=1");
        let f = task_result(&lines, "failed_when true on success");
        assert_eq!(f["failed_when_result"], json!(true));
        assert_eq!(f["msg"], "");
        assert_eq!(f["rc"], json!(0));
    }
    // The human output marks ignored failures the way Ansible does.
    let pbp = dir.path().join("playbook.yml");
    let human = rampart(&[
        "run",
        pbp.to_str().unwrap(),
        "--local",
        "--state-dir",
        dir.path().join("h").to_str().unwrap(),
    ]);
    assert!(
        human.stdout.contains("fatal: [") && human.stdout.contains("...ignoring"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains(
            "ok=7    changed=4    unreachable=0    failed=0    skipped=0    rescued=0    ignored=3"
        ),
        "{}",
        human.stdout
    );
}

#[test]
fn until_retries_run_n_plus_one_times_and_report_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: h01
  gather_facts: false
  tasks:
    - name: succeeds on 3rd attempt
      shell: "echo x >> {{ dir }}/{{ rampart_txid }}-cnt; test $(wc -l < {{ dir }}/{{ rampart_txid }}-cnt) -ge 3"
      register: r
      until: r.rc == 0
      retries: 5
      delay: 0
    - name: show attempts
      debug: msg="attempts={{ r.attempts }}"
    - name: never succeeds
      shell: "echo x >> {{ dir }}/{{ rampart_txid }}-cnt2; exit 1"
      register: r2
      until: r2.rc == 0
      retries: 2
      delay: 0
      ignore_errors: true
    - name: show attempts 2
      debug: msg="attempts={{ r2.attempts }} failed={{ r2.failed }}"
    - name: executions
      command: wc -l {{ dir }}/{{ rampart_txid }}-cnt2
      register: wc
      changed_when: false
    - name: three executions
      assert:
        that: wc.stdout.split(' ')[0] == '3'
"#;
    // Counter files are per transaction, so the local and the agent run count separately.
    let var = format!("dir={}", dir.path().display());
    let runs = both(
        dir.path(),
        pb,
        &[var.as_str()],
        &Expect {
            tasks: &[
                ("succeeds on 3rd attempt", "block", "changed"),
                ("show attempts", "block", "ok"),
                ("never succeeds", "block", "ignored"),
                ("show attempts 2", "block", "ok"),
                ("executions", "block", "ok"),
                ("three executions", "block", "ok"),
            ],
            recap: [6, 2, 0, 0, 0, 1],
            outcome: "succeeded",
            code: 0,
        },
    );
    for run in &runs {
        let lines = run.json();
        assert_eq!(task_result(&lines, "show attempts")["msg"], "attempts=3");
        assert_eq!(
            task_result(&lines, "show attempts 2")["msg"],
            "attempts=2 failed=True"
        );
    }
}

#[test]
fn check_mode_changes_nothing_and_skips_commands_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("check.txt");
    let marker = dir.path().join("touched");
    let really = dir.path().join("really");
    let pb = format!(
        r#"
- hosts: h01
  gather_facts: false
  tasks:
    - name: copy content
      copy: dest={target} content="new content\n"
    - name: command in check mode (skipped)
      command: touch {marker}
    - name: command forced to run in check mode
      command: touch {really}
      check_mode: false
    - name: show
      debug: msg="check={{{{ ansible_check_mode }}}}"
"#,
        target = target.display(),
        marker = marker.display(),
        really = really.display()
    );
    both_with(
        dir.path(),
        &pb,
        &["--check"],
        &Expect {
            tasks: &[
                ("copy content", "block", "changed"),
                ("command in check mode (skipped)", "block", "skipped"),
                ("command forced to run in check mode", "block", "changed"),
                ("show", "block", "ok"),
            ],
            recap: [3, 2, 0, 1, 0, 0],
            outcome: "check_only",
            code: 0,
        },
        |mode, run| {
            assert!(!target.exists(), "[{mode}] check mode wrote the file");
            assert!(!marker.exists(), "[{mode}] check mode ran a command");
            assert!(
                really.exists(),
                "[{mode}] check_mode: false did not run the command"
            );
            assert_eq!(task_result(&run.json(), "show")["msg"], "check=True");
            // So that the next run must touch it again.
            std::fs::remove_file(&really).unwrap();
        },
    );
}

#[test]
fn block_failure_without_rescue_runs_always_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: all
  tasks:
    - block:
        - name: boom
          fail:
            msg: "no rescue here"
      always:
        - name: cleanup
          debug: msg=cleanup
    - name: never
      debug: msg=never
"#;
    both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[("boom", "block", "failed"), ("cleanup", "always", "ok")],
            recap: [1, 0, 1, 0, 0, 0],
            outcome: "failed",
            code: 6,
        },
    );
}

#[test]
fn when_loop_register_set_fact_and_lazy_vars() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- name: vars and loops
  hosts: all
  vars:
    greeting: "hello {{ who }}"
    who: world
  tasks:
    - name: skipped by when
      debug: msg=never
      when: who == 'nobody'
    - name: loop with when per item
      command: echo {{ thing }}
      loop: [a, b, c]
      loop_control:
        loop_var: thing
      when: thing != 'b'
      register: echoed
      changed_when: false
    - name: remember
      set_fact:
        count: "{{ echoed.results | length }}"
        outputs: "{{ echoed.results | selectattr('stdout', 'defined') | map(attribute='stdout') | list }}"
    - name: check it all
      assert:
        that:
          - count | int == 3
          - outputs == ['a', 'c']
          - echoed.results[1].skipped
          - greeting == 'hello world'
          - extra == 'from-cli'
    - name: task vars win over play vars
      debug: msg="{{ who }}"
      vars:
        who: task
"#;
    let runs = both(
        dir.path(),
        pb,
        &["extra=from-cli"],
        &Expect {
            tasks: &[
                ("skipped by when", "block", "skipped"),
                ("loop with when per item", "block", "ok"),
                ("remember", "block", "ok"),
                ("check it all", "block", "ok"),
                ("task vars win over play vars", "block", "ok"),
            ],
            recap: [4, 0, 0, 1, 0, 0],
            outcome: "succeeded",
            code: 0,
        },
    );
    assert_eq!(
        task_result(&runs[1].json(), "task vars win over play vars")["msg"],
        "task"
    );
}

#[test]
fn a_second_identical_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("app");
    let pb = format!(
        r#"
- hosts: all
  tasks:
    - name: dir
      file: path={t} state=directory
    - name: file
      copy:
        dest: "{t}/version.txt"
        content: "2.0.1\n"
    - name: link
      file: path={t}/current src={t}/version.txt state=link
"#,
        t = target.display()
    );
    let pbp = write_file(dir.path(), "idem.yml", &pb);
    let state = dir.path().join("state");
    let first = run_local_json(&pbp, &state, &[]);
    assert_eq!(first.summary()["recap"]["changed"], 3, "{}", first.stdout);
    let second = run_local_json(&pbp, &state, &[]);
    assert_eq!(second.summary()["recap"]["changed"], 0, "{}", second.stdout);
    assert_eq!(second.summary()["recap"]["ok"], 3);
    assert_eq!(
        std::fs::read_to_string(target.join("version.txt")).unwrap(),
        "2.0.1\n"
    );
}

#[test]
fn no_log_censors_output_but_keeps_the_registered_value() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: all
  tasks:
    - name: secret
      command: echo s3cr3t
      register: out
      no_log: true
    - name: use it
      assert:
        that: out.stdout == 's3cr3t'
"#;
    let runs = both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[("secret", "block", "changed"), ("use it", "block", "ok")],
            recap: [2, 1, 0, 0, 0, 0],
            outcome: "succeeded",
            code: 0,
        },
    );
    for run in &runs {
        assert!(
            !run.stdout.contains("s3cr3t"),
            "secret leaked: {}",
            run.stdout
        );
        assert!(task_result(&run.json(), "secret")["censored"].is_string());
    }
}

#[test]
fn capture_state_and_deploy_lock_in_a_transactional_playbook() {
    let dir = tempfile::tempdir().unwrap();
    let captures = dir.path().join("captures");
    let pb = format!(
        r#"
- hosts: all
  tasks:
    - name: deploy
      block:
        - name: capture
          capture_state:
            dest_dir: {captures}
        - name: lock
          deploy_lock: state=acquired
        - name: lock again is ok
          deploy_lock: state=acquired
        - name: health fails
          fail: msg=unhealthy
      rescue:
        - name: captured before the change
          assert:
            that:
              - rampart_state.txid == rampart_txid
              - rampart_state.versions.database is none
      always:
        - name: unlock
          deploy_lock: state=released
"#,
        captures = captures.display()
    );
    let runs = both(
        dir.path(),
        &pb,
        &[],
        &Expect {
            tasks: &[
                ("capture", "block", "changed"),
                ("lock", "block", "changed"),
                ("lock again is ok", "block", "ok"),
                ("health fails", "block", "failed"),
                ("captured before the change", "rescue", "ok"),
                ("unlock", "always", "changed"),
            ],
            recap: [5, 3, 0, 0, 1, 0],
            outcome: "rolled_back",
            code: 1,
        },
    );
    assert_eq!(
        std::fs::read_dir(&captures).unwrap().count(),
        2,
        "one capture per run"
    );
    for state in ["state-local", "state-agent"] {
        assert!(
            !dir.path().join(state).join("locks/deploy.json").exists(),
            "lock left behind in {state}"
        );
    }
    let txid = runs[0].summary()["txid"].as_str().unwrap().to_string();
    let capture = std::fs::read_dir(&captures)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains(&txid))
        .expect("capture file named after the txid");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(capture.path()).unwrap()).unwrap();
    assert_eq!(doc["txid"], txid.as_str());
}

#[test]
fn a_failed_loop_names_the_item_that_failed_and_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pb = r#"
- hosts: h01
  gather_facts: false
  vars:
    target_version: 2.0.0
    components: [{name: backend, ok: true}, {name: frontend, ok: false}]
  tasks:
    - block:
        - name: stage {{ item.name }} {{ target_version }}
          fail: msg="cannot stage {{ item.name }}"
          when: not item.ok
          loop: "{{ components }}"
      rescue:
        - name: rescued
          debug: msg="{{ ansible_failed_task.name }}"
"#;
    let runs = both(
        dir.path(),
        pb,
        &[],
        &Expect {
            tasks: &[
                ("stage frontend 2.0.0", "block", "failed"),
                ("rescued", "rescue", "ok"),
            ],
            recap: [1, 0, 0, 0, 1, 0],
            outcome: "rolled_back",
            code: 1,
        },
    );
    for run in &runs {
        let lines = run.json();
        assert_eq!(
            task_result(&lines, "rescued")["msg"],
            "stage frontend 2.0.0"
        );
        let failed = task_result(&lines, "stage frontend 2.0.0");
        assert_eq!(
            rampart_playbook::result::failure_message(failed).as_deref(),
            Some("cannot stage frontend")
        );
    }
    // The human output shows each item's verdict under its own name.
    let pbp = dir.path().join("playbook.yml");
    let state = dir.path().join("state-human");
    let human = rampart(&[
        "run",
        pbp.to_str().unwrap(),
        "--local",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let item_line = |status: &str, name: &str| {
        human
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("  {status}: [")) && l.ends_with(&format!("] {name}")))
    };
    assert!(
        item_line("skipped", "stage backend 2.0.0") && item_line("failed", "stage frontend 2.0.0"),
        "{}",
        human.stdout
    );
}
