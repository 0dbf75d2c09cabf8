//! `rampart run -i INVENTORY [--limit PATTERN]`: each selected host runs on its own real agent
//! (over gRPC on 127.0.0.1) as its own transaction, sees `inventory_hostname`, `groups`,
//! `hostvars` and its inventory variables, skips the plays that do not select it, and the
//! first host that does not succeed stops the run; `--local` runs as one host of it.
//!
//! The semantics themselves (precedence, patterns, magic variables) are compared with
//! ansible-core by the conformance scenarios 92 and 93.

use std::path::Path;

use rampart_tests::{AgentProc, finished_journal, rampart, write_file};
use serde_json::Value;

const SITE: &str = "\
- name: web
  hosts: web
  gather_facts: false
  tasks:
    - name: fail where asked
      fail: msg=asked
      when: inventory_hostname == (fail_on | default(''))
    - name: who
      copy:
        content: \"{{ inventory_hostname }} n={{ n }} web={{ groups['web'] }} db_agent={{ hostvars['db1'].rampart_agent is defined }} groups={{ group_names }}\\n\"
        dest: \"{{ out }}/{{ inventory_hostname }}\"

- name: db
  hosts: db
  gather_facts: false
  tasks:
    - name: db only
      copy: {content: \"db\\n\", dest: \"{{ out }}/db-{{ inventory_hostname }}\"}
";

struct Fleet {
    _tmp: tempfile::TempDir,
    agents: Vec<AgentProc>,
    inventory: String,
    site: String,
}

impl Fleet {
    fn start() -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let agents: Vec<AgentProc> = ["web1", "web2", "db1"]
            .iter()
            .map(|h| AgentProc::start(&tmp.path().join(format!("agent-{h}"))))
            .collect();
        let inventory = write_file(
            tmp.path(),
            "inventory.ini",
            &format!(
                "[web]\nweb1 rampart_agent={} n=1\nweb2 rampart_agent={} n=2\n[db]\ndb1 rampart_agent={}\n",
                agents[0].addr, agents[1].addr, agents[2].addr
            ),
        );
        let site = write_file(tmp.path(), "site.yml", SITE);
        Fleet {
            _tmp: tmp,
            agents,
            inventory,
            site,
        }
    }

    fn out(&self, name: &str) -> std::path::PathBuf {
        let d = self._tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("out dir");
        d
    }

    fn run(&self, out: &Path, extra: &[&str]) -> rampart_tests::CliRun {
        let out = format!("out={}", out.display());
        let mut args = vec![
            "run",
            &self.site,
            "-i",
            &self.inventory,
            "--json",
            "-e",
            &out,
        ];
        args.extend_from_slice(extra);
        rampart(&args)
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The final `{"hosts": [...]}` line.
fn hosts_line(run: &rampart_tests::CliRun) -> Value {
    run.json()
        .into_iter()
        .rev()
        .find(|v| v.get("hosts").is_some())
        .unwrap_or_else(|| panic!("no hosts line:\n{}\n{}", run.stdout, run.stderr))
}

#[test]
fn each_host_runs_on_its_own_agent_with_its_inventory_and_a_failure_stops_the_rest() {
    let fleet = Fleet::start();

    // Every host: web1 and web2 run the web play, db1 only the db play.
    let out = fleet.out("all");
    let run = fleet.run(&out, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        read(&out.join("web1")).as_deref(),
        Some("web1 n=1 web=['web1', 'web2'] db_agent=True groups=['web']\n")
    );
    assert_eq!(
        read(&out.join("web2")).as_deref(),
        Some("web2 n=2 web=['web1', 'web2'] db_agent=True groups=['web']\n")
    );
    assert_eq!(read(&out.join("db-db1")).as_deref(), Some("db\n"));
    for skipped in ["db1", "db-web1", "db-web2"] {
        assert!(!out.join(skipped).exists(), "{skipped} was written");
    }
    let hosts = hosts_line(&run);
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1", "web2", "db1"], "{hosts}");
    assert!(
        hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["exit"] == 0)
    );
    // Each host ran on its own agent: one finished journal there, begun as that host.
    for (agent, host) in fleet.agents.iter().zip(["web1", "web2", "db1"]) {
        let (_, entries) = finished_journal(&agent.state_dir, host);
        assert_eq!(
            entries[0]["flags"]["inventory"]["host"], host,
            "{}",
            entries[0]
        );
        assert_eq!(entries[0]["host"], host, "{}", entries[0]);
    }

    // --limit narrows the plays' hosts.
    let out = fleet.out("limited");
    let run = fleet.run(&out, &["--limit", "all:!web1:!db1"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(out.join("web2").exists());
    assert!(!out.join("web1").exists() && !out.join("db-db1").exists());
    assert_eq!(hosts_line(&run)["hosts"].as_array().unwrap().len(), 1);

    // web1 fails (no rescue: exit 6); web2 and db1 are never started.
    let out = fleet.out("failing");
    let run = fleet.run(&out, &["-e", "fail_on=web1"]);
    assert_eq!(run.code, 6, "{}\n{}", run.stdout, run.stderr);
    let hosts = hosts_line(&run);
    assert_eq!(hosts["exit"], 6, "{hosts}");
    assert_eq!(hosts["hosts"][0]["exit"], 6, "{hosts}");
    assert_eq!(hosts["hosts"][1]["not_run"], true, "{hosts}");
    assert_eq!(hosts["hosts"][2]["not_run"], true, "{hosts}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "a host ran");
}

#[test]
fn local_runs_as_one_host_of_the_inventory_and_bad_selections_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let inventory = write_file(
        tmp.path(),
        "inventory.yml",
        "all:\n  vars:\n    n: 0\n  children:\n    web:\n      hosts:\n        web1: {n: 1}\n        web2: {n: 2}\n    db:\n      hosts:\n        db1:\n",
    );
    let site = write_file(tmp.path(), "site.yml", SITE);
    let state = tmp.path().join("state");
    let out = format!("out={}", tmp.path().display());
    let state_s = state.to_str().unwrap();
    let local = |extra: &[&str]| {
        let mut args = vec![
            "run",
            &site,
            "--local",
            "--state-dir",
            state_s,
            "-i",
            &inventory,
            "-e",
            &out,
        ];
        args.extend_from_slice(extra);
        rampart(&args)
    };

    let run = local(&["--limit", "web2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        read(&tmp.path().join("web2")).as_deref(),
        Some("web2 n=2 web=['web1', 'web2'] db_agent=False groups=['web']\n")
    );
    assert!(!tmp.path().join("web1").exists());
    assert!(
        run.stdout.contains("changed: [web2]"),
        "the output names the inventory host: {}",
        run.stdout
    );

    // Three hosts and --local: which one?
    let run = local(&[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("selects 3 hosts (web1, web2, db1)") && run.stderr.contains("--limit"),
        "{}",
        run.stderr
    );
    // A limit that selects nothing, and one that does not parse.
    let run = local(&["--limit", "nope"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("selects no host"), "{}", run.stderr);
    let run = local(&["--limit", "~("]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("~("), "{}", run.stderr);
    // --limit needs an inventory.
    let run = rampart(&["run", &site, "--local", "--limit", "web1"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--inventory"), "{}", run.stderr);
    // Nothing of the refused runs reached the host.
    assert_eq!(std::fs::read_dir(state.join("history")).unwrap().count(), 1);
}
