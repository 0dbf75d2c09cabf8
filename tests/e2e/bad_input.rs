//! Bad input is refused whole, before anything runs: every validation error names
//! `file:line:column`, the exit code is 2, the valid task placed before the error never ran (its
//! marker file is absent) and no journal was written. Fixtures: `tests/fixtures/malicious/`
//! documents are generated here (a 10 MB document, a billion-laughs alias bomb, deep nesting).

use rampart_tests::{AgentProc, rampart, write_file};

/// A valid first task that would leave a marker, followed by `rest` (indented as a task list).
fn with_marker_task(rest: &str) -> String {
    format!(
        "- hosts: all\n  tasks:\n    - name: would leave a marker\n      file: path=@MARKER@ state=touch\n{rest}"
    )
}

/// Runs the playbook (`@MARKER@` replaced by a path in its temp dir) locally and through an
/// agent; both must refuse it with `expect` in the message, at `line:col` when given, and leave
/// no marker and no journal behind.
fn refused(text: &str, expect: &str, line_col: Option<(usize, usize)>) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let text = text.replace("@MARKER@", marker.to_str().unwrap());
    let pb = write_file(dir.path(), "playbook.yml", &text);
    let state = dir.path().join("state");
    let local = rampart(&[
        "run",
        &pb,
        "--local",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(local.code, 2, "exit code for {expect}: {}", local.stderr);
    assert!(
        local.stderr.contains(expect),
        "expected `{expect}` in: {}",
        local.stderr
    );
    if let Some((l, c)) = line_col {
        let at = format!("playbook.yml:{l}:{c}:");
        assert!(
            local.stderr.contains(&at),
            "expected `{at}` in: {}",
            local.stderr
        );
    }
    assert!(
        local.stdout.is_empty(),
        "output before refusal: {}",
        local.stdout
    );
    assert!(!marker.exists(), "a task ran before the refusal ({expect})");
    assert!(
        std::fs::read_dir(state.join("journal")).map_or(true, |mut d| d.next().is_none()),
        "a journal was written for a refused playbook"
    );

    let agent = AgentProc::start(&dir.path().join("agent-state"));
    let remote = rampart(&["run", &pb, "--agent", &agent.addr]);
    assert_eq!(
        remote.code, 2,
        "agent exit code for {expect}: {}",
        remote.stderr
    );
    assert!(
        remote.stderr.contains(expect),
        "agent: expected `{expect}` in: {}",
        remote.stderr
    );
    assert!(
        !marker.exists(),
        "the agent ran a task before the refusal ({expect})"
    );
}

#[test]
fn unknown_task_keyword() {
    refused(
        &with_marker_task("    - name: typo\n      command: /bin/true\n      regster: out\n"),
        "unknown module or task keyword `regster`",
        Some((7, 7)),
    );
}

#[test]
fn unknown_module() {
    refused(
        &with_marker_task("    - name: nope\n      ansible.builtin.frobnicate: x=1\n"),
        "unknown module or task keyword `ansible.builtin.frobnicate`",
        Some((6, 7)),
    );
}

#[test]
fn unknown_module_argument() {
    refused(
        &with_marker_task("    - copy:\n        dest: /tmp/x\n        contents: typo\n"),
        "unsupported argument `contents` for module `copy`",
        Some((7, 9)),
    );
}

#[test]
fn missing_module_argument() {
    refused(
        &with_marker_task("    - copy:\n        content: x\n"),
        "module `copy` requires argument `dest`",
        Some((5, 7)),
    );
}

#[test]
fn free_form_that_is_not_key_value() {
    refused(
        &with_marker_task("    - file: /tmp/x absent\n"),
        "takes key=value pairs",
        Some((5, 13)),
    );
}

#[test]
fn yaml_syntax_error() {
    refused(
        &with_marker_task("    - debug: msg=ok\n     bad: [unclosed\n"),
        "YAML",
        None,
    );
}

#[test]
fn template_syntax_error() {
    refused(
        &with_marker_task("    - debug:\n        msg: \"{{ version | \"\n"),
        "template syntax error",
        Some((6, 14)),
    );
}

#[test]
fn condition_syntax_error() {
    refused(
        &with_marker_task("    - debug: msg=x\n      when: version ==\n"),
        "expression",
        Some((6, 13)),
    );
}

#[test]
fn bad_boolean_keyword() {
    refused(
        &with_marker_task("    - command: /bin/true\n      ignore_errors: sometimes\n"),
        "`ignore_errors` must be a boolean",
        Some((6, 22)),
    );
}

#[test]
fn not_a_list_of_plays() {
    refused(
        "hosts: all\ntasks: []\n",
        "a playbook must be a list of plays",
        Some((1, 1)),
    );
}

#[test]
fn ten_megabyte_document() {
    let mut text = String::from("- hosts: all\n  vars:\n    blob: [");
    while text.len() < 10 * 1024 * 1024 {
        text.push_str("\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\", ");
    }
    text.push_str("]\n  tasks: []\n");
    refused(&text, "the limit is", Some((1, 1)));
}

#[test]
fn billion_laughs_alias_bomb() {
    let mut text = String::from(
        "- hosts: all\n  vars:\n    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        text.push_str(&format!("    l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n", p = i - 1));
    }
    text.push_str("  tasks: []\n");
    refused(&text, "nodes", None);
}

#[test]
fn deeply_nested_document() {
    let depth = 100_000;
    let text = format!(
        "- hosts: all\n  vars:\n    deep: {}{}\n  tasks: []\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    refused(&text, "nest", None);
    let mut block = String::from("- hosts: all\n  vars:\n    deep:\n");
    for i in 0..2_000 {
        block.push_str(&" ".repeat(6 + i * 2));
        block.push_str("-\n");
    }
    refused(&block, "nest", None);
}

#[test]
fn unreadable_extra_vars_and_missing_playbook() {
    let dir = tempfile::tempdir().unwrap();
    let pb = write_file(dir.path(), "ok.yml", "- hosts: all\n  tasks: []\n");
    let r = rampart(&[
        "run",
        &pb,
        "--local",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "-e",
        "@/nonexistent.json",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot read"), "{}", r.stderr);
    let r = rampart(&[
        "run",
        "/nonexistent.yml",
        "--local",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("cannot read playbook /nonexistent.yml"),
        "{}",
        r.stderr
    );
}
