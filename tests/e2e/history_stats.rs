//! `rampart history --stats` through a real controller and agent: the delivery figures
//! (deployment frequency, lead time from the commit times the CLI sends, change failure rate,
//! time to restore, SC-001 and SC-002) computed by `DeploymentStats` from the store.

use rampart_tests::fleet::{Fleet, finished};
use serde_json::Value;

fn rfc3339_ago(secs: i64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - secs;
    // Through `date`, so the test does not compute the calendar itself.
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn stats_count_outcomes_lead_time_and_restore_time() {
    let fleet = Fleet::start(1, "", |_, _| {});

    // Nothing deployed yet: no figures, no verdicts.
    let s = fleet.cli(&["history", "--env", "prod", "--stats", "--json"]);
    assert_eq!(s.code, 0, "{}\n{}", s.stdout, s.stderr);
    let v: Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["deployments"]["finished"], 0, "{v:#}");
    assert!(
        v["sc001"]["met"].is_null() && v["sc002"]["met"].is_null(),
        "{v:#}"
    );

    // 1.0.0, committed an hour ago (unix seconds through --commit-time).
    let hour_ago = (now_secs() - 3600).to_string();
    let r = fleet.deploy(
        "1.0.0",
        &["--commit", "4f2a9c1e", "--commit-time", &hour_ago],
    );
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    // The broken 3.0.0 is rolled back and opens an incident, which is resolved.
    let r = fleet.deploy("3.0.0", &["--commit-time", &rfc3339_ago(600)]);
    assert_eq!(r.code, 1, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let inc = fin["incident_id"].as_str().unwrap().to_string();
    let res = fleet.cli(&["incidents", "resolve", &inc, "--note", "fixed", "--json"]);
    assert_eq!(res.code, 0, "{}\n{}", res.stdout, res.stderr);

    // 2.0.0, committed two hours ago (an RFC 3339 time given as --commit).
    let commit2 = rfc3339_ago(7200);
    let r = fleet.deploy("2.0.0", &["--commit", &commit2]);
    assert_eq!(r.code, 0, "deploy 2.0.0: {}\n{}", r.stdout, r.stderr);

    // A check-mode run is not a change.
    let r = fleet.deploy("2.0.0", &["--check"]);
    assert_eq!(r.code, 0, "check 2.0.0: {}\n{}", r.stdout, r.stderr);

    // The record keeps the commit time.
    let h = fleet.cli(&["history", "--env", "prod", "--json"]);
    assert_eq!(h.code, 0, "{}\n{}", h.stdout, h.stderr);
    let list: Value = serde_json::from_str(&h.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4, "{list:#?}");
    // Newest first: the check run (no commit), 2.0.0, 3.0.0, 1.0.0.
    assert!(list[0]["commit_time"].is_null(), "{:#}", list[0]);
    assert_eq!(
        list[1]["commit_time"],
        commit2.replace('Z', ".000Z"),
        "{:#}",
        list[1]
    );
    assert_eq!(list[3]["commit"], "4f2a9c1e");
    assert!(list[3]["commit_time"].is_string(), "{:#}", list[3]);

    let s = fleet.cli(&[
        "history", "--env", "prod", "--stats", "--since", "1d", "--json",
    ]);
    assert_eq!(s.code, 0, "{}\n{}", s.stdout, s.stderr);
    let v: Value = serde_json::from_str(&s.stdout).unwrap();
    let d = &v["deployments"];
    assert_eq!(
        (
            &d["finished"],
            &d["succeeded"],
            &d["rolled_back"],
            &d["rollback_failed"],
            &d["failed"]
        ),
        (
            &Value::from(3),
            &Value::from(2),
            &Value::from(1),
            &Value::from(0),
            &Value::from(0)
        ),
        "{v:#}"
    );
    assert!(
        (v["deployment_frequency_per_day"].as_f64().unwrap() - 3.0).abs() < 1e-9,
        "{v:#}"
    );
    assert!(
        (v["change_failure_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9,
        "{v:#}"
    );
    assert!(
        (v["sc001"]["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{v:#}"
    );
    assert_eq!(v["sc001"]["met"], false, "{v:#}");
    // Lead time of the two succeeded deploys: about 3600 s and 7200 s (plus their run time).
    assert_eq!(v["lead_time"]["samples"], 2, "{v:#}");
    let median = v["lead_time"]["median_seconds"].as_f64().unwrap();
    let p95 = v["lead_time"]["p95_seconds"].as_f64().unwrap();
    assert!(
        (5400.0..5400.0 + 600.0).contains(&median),
        "median {median}: {v:#}"
    );
    assert!((7200.0..7200.0 + 600.0).contains(&p95), "p95 {p95}: {v:#}");
    // Each deploy took seconds: SC-002 met.
    let dur = v["sc002"]["p95_duration_seconds"].as_f64().unwrap();
    assert!(dur > 0.0 && dur < 600.0, "{v:#}");
    assert_eq!(v["sc002"]["met"], true, "{v:#}");
    assert_eq!(v["time_to_restore"]["incidents_opened"], 1, "{v:#}");
    assert_eq!(v["time_to_restore"]["incidents_resolved"], 1, "{v:#}");
    assert!(
        v["time_to_restore"]["median_seconds"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
    assert_eq!(v["truncated"], false, "{v:#}");

    // The table for people.
    let t = fleet.cli(&["history", "--env", "prod", "--stats", "--since", "12h"]);
    assert_eq!(t.code, 0, "{}\n{}", t.stdout, t.stderr);
    assert!(t.stdout.starts_with("prod, last 12h ("), "{}", t.stdout);
    assert!(
        t.stdout.contains("66.7% (target >= 95%): FAIL"),
        "{}",
        t.stdout
    );
    let line = |k: &str| {
        t.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(k))
            .unwrap_or("")
    };
    assert!(
        line("change failure rate").ends_with(" 33.3%"),
        "{}",
        t.stdout
    );
    assert!(
        line("deployment frequency").ends_with(" 6.00 per day"),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout.contains("(target <= 10m00s): PASS"),
        "{}",
        t.stdout
    );

    // Bad input: a window the CLI refuses, a commit time from the future the controller refuses.
    let b = fleet.cli(&["history", "--env", "prod", "--stats", "--since", "30w"]);
    assert_eq!(b.code, 2, "{}\n{}", b.stdout, b.stderr);
    assert!(b.stderr.contains("d, h or m"), "{}", b.stderr);
    let b = fleet.cli(&["history", "--env", "nope", "--stats"]);
    assert_eq!(b.code, 2, "{}\n{}", b.stdout, b.stderr);
    assert!(b.stderr.contains("no environment \"nope\""), "{}", b.stderr);
    let future = (now_secs() + 3 * 86_400).to_string();
    let r = fleet.deploy("2.0.0", &["--commit-time", &future]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("more than a day in the future"),
        "{}",
        r.stderr
    );
}
