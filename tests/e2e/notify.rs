//! Incidents reach GitHub, Slack, PagerDuty and a signed webhook through the controller's
//! outbox: a real controller and agents, the sinks played by `rampart_tests::fake_apis` (a local
//! server that checks every request's shape and answers as the APIs document, including 429
//! with Retry-After, 500 and a hang), and the post-mortem lifecycle through the CLI.

use std::path::Path;
use std::time::Duration;

use rampart_tests::fake_apis::{Answer, Api, Expect, FakeApis, Issue, Recorded};
use rampart_tests::fleet::{Fleet, finished};

const WAIT: Duration = Duration::from_secs(90);
const ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";

fn fake() -> FakeApis {
    FakeApis::start(Expect {
        repository: "acme/shop".into(),
        github_token: "ghp_test_token".into(),
        routing_key: ROUTING_KEY.into(),
        webhook_secret: "webhook-hmac-key".into(),
    })
}

/// Writes the secret files into `dir` and returns the `[environments.prod]` lines of a sink
/// per kind in `kinds`, pointed at `fake`.
fn sinks_toml(fake: &FakeApis, dir: &Path, kinds: &[&str]) -> String {
    let e = fake.expect();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        p.display().to_string()
    };
    let mut t = String::new();
    for k in kinds {
        t.push_str(&match *k {
            "github" => format!(
                "[environments.prod.notify.github]\napi_url = \"{}\"\nrepository = \"{}\"\ntoken_file = \"{}\"\n",
                fake.url(Api::Github),
                e.repository,
                write("gh-token", &e.github_token)
            ),
            "slack" => format!(
                "[environments.prod.notify.slack]\nwebhook_url_file = \"{}\"\nevents = [\"incident\", \"incident_resolved\"]\n",
                write("slack-url", &fake.url(Api::Slack))
            ),
            "pagerduty" => format!(
                "[environments.prod.notify.pagerduty]\nurl = \"{}\"\nrouting_key_file = \"{}\"\n",
                fake.url(Api::Pagerduty),
                write("pd-key", &e.routing_key)
            ),
            _ => format!(
                "[environments.prod.notify.webhook]\nurl = \"{}\"\nsecret_file = \"{}\"\nevents = [\"incident\", \"succeeded\"]\n",
                fake.url(Api::Webhook),
                write("wh-secret", &e.webhook_secret)
            ),
        });
    }
    t
}

fn accepted(rs: &[Recorded], status: u16) -> Vec<&Recorded> {
    rs.iter().filter(|r| r.status == status).collect()
}

#[test]
fn a_rolled_back_deploy_reaches_every_sink_retries_and_resolving_closes_it() {
    let fake = fake();
    let secrets = tempfile::tempdir().unwrap();
    let sinks = sinks_toml(
        &fake,
        secrets.path(),
        &["github", "slack", "pagerduty", "webhook"],
    );
    // A hanging webhook first (its success notice of 1.0.0), a rate-limited Slack, a
    // PagerDuty that fails once.
    fake.script(
        Api::Webhook,
        &[Answer::HangAfterApply(Duration::from_secs(25))],
    );
    fake.script(Api::Slack, &[Answer::Status(429, Some("3".into()))]);
    fake.script(Api::Pagerduty, &[Answer::Status(500, None)]);
    let fleet = Fleet::start_with_toml(
        1,
        // `notify` tables last: they end the environment's table.
        &format!("require_postmortem = true\n{sinks}"),
        "",
        |_, _| {},
    );
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    assert!(
        fake.wait_for(Api::Webhook, WAIT, |rs| !rs.is_empty()),
        "the success notice reaches the webhook"
    );
    // The webhook hangs now: the next deploy runs and rolls back regardless.
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let inc = fin["incident_id"].as_str().unwrap().to_string();
    assert!(
        fake.requests(Api::Webhook).len() == 1,
        "the deploy finished while the webhook's first delivery still hung"
    );

    // GitHub: one issue, the facts in it, found by its marker.
    assert!(fake.wait_for(Api::Github, WAIT, |rs| rs.iter().any(|r| r.status == 201)));
    let issues = fake.issues();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let issue = &issues[0];
    assert_eq!(issue.title, "[Production Rollback] 3.0.0 → 1.0.0");
    assert_eq!(
        issue.labels,
        ["production-rollback", "incident", "high-priority"]
    );
    for want in [
        format!("<!-- rampart-incident: {inc} -->"),
        "Post-mortem due".into(),
        "- [ ] ".into(),
        "| reason | health |".into(),
        "| forensics | h1:".into(),
    ] {
        assert!(issue.body.contains(&want), "{want:?} not in {}", issue.body);
    }
    let gh = fake.requests(Api::Github);
    assert_eq!(
        gh[0].method, "GET",
        "the marker is searched for before creating: {gh:#?}"
    );
    assert!(
        gh[0]
            .path
            .contains("labels=production-rollback,incident,high-priority"),
        "{}",
        gh[0].path
    );

    // Slack: 429 then, after its Retry-After (3 s, longer than the 1 s backoff), 200 ok.
    assert!(fake.wait_for(Api::Slack, WAIT, |rs| !accepted(rs, 200).is_empty()));
    let sl = fake.requests(Api::Slack);
    assert_eq!(sl[0].status, 429);
    assert!(
        sl[1].at.duration_since(sl[0].at) >= Duration::from_millis(2900),
        "Retry-After honoured: {:?}",
        sl[1].at.duration_since(sl[0].at)
    );
    assert_eq!(
        sl[1].json["attachments"][0]["color"], "danger",
        "{:#}",
        sl[1].json
    );
    assert!(sl[1].json["text"].as_str().unwrap().contains(&inc));

    // PagerDuty: 500 retried, then a trigger with the deterministic dedup_key.
    assert!(fake.wait_for(Api::Pagerduty, WAIT, |rs| !accepted(rs, 202).is_empty()));
    let pd = fake.requests(Api::Pagerduty);
    assert_eq!(pd[0].status, 500);
    let trig = accepted(&pd, 202)[0];
    assert_eq!(trig.json["event_action"], "trigger");
    assert_eq!(trig.json["dedup_key"], format!("rampart/prod/{inc}"));
    assert_eq!(trig.json["payload"]["severity"], "error");

    // The webhook: the hung notice retried, then the incident; both signed.
    assert!(fake.wait_for(Api::Webhook, WAIT, |rs| accepted(rs, 200).len() >= 2));
    let events: Vec<String> = accepted(&fake.requests(Api::Webhook), 200)
        .iter()
        .map(|r| r.json["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.contains(&"succeeded".to_string()) && events.contains(&"incident".to_string()),
        "{events:?}"
    );

    // The post-mortem draft names the facts.
    let pm = fleet.cli(&["incidents", "postmortem", &inc]);
    assert_eq!(pm.code, 0, "{}\n{}", pm.stdout, pm.stderr);
    for want in [
        inc.as_str(),
        "3.0.0",
        "1.0.0",
        "## Timeline",
        "took the environment lock",
        "## Root cause",
        "health",
    ] {
        assert!(pm.stdout.contains(want), "{want:?} not in\n{}", pm.stdout);
    }
    let out = fleet.dir.path().join("pm.md");
    let w = fleet.cli(&[
        "incidents",
        "postmortem",
        &inc,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), pm.stdout);

    // require_postmortem: no resolve without the link.
    let no = fleet.cli(&["incidents", "resolve", &inc, "--note", "fixed in 3.0.1"]);
    assert_eq!(no.code, 2, "{}\n{}", no.stdout, no.stderr);
    assert!(
        no.stderr.contains("require_postmortem") && no.stderr.contains("--postmortem"),
        "{}",
        no.stderr
    );
    let yes = fleet.cli(&[
        "incidents",
        "resolve",
        &inc,
        "--note",
        "fixed in 3.0.1",
        "--postmortem",
        "https://wiki.example/pm/1",
        "--json",
    ]);
    assert_eq!(yes.code, 0, "{}\n{}", yes.stdout, yes.stderr);
    let v: serde_json::Value = serde_json::from_str(&yes.stdout).unwrap();
    assert_eq!(v["postmortem_url"], "https://wiki.example/pm/1");
    assert_eq!(v["reason"], "health");

    // Resolution: GitHub commented then closed (completed); PagerDuty resolved; Slack green.
    assert!(fake.wait_for(Api::Github, WAIT, |rs| {
        rs.iter().any(|r| r.method == "PATCH")
    }));
    let issue = &fake.issues()[0];
    assert_eq!(
        (issue.state.as_str(), issue.state_reason.as_deref()),
        ("closed", Some("completed"))
    );
    assert_eq!(issue.comments.len(), 1, "{issue:#?}");
    assert!(issue.comments[0].contains("https://wiki.example/pm/1"));
    assert!(fake.wait_for(Api::Pagerduty, WAIT, |rs| {
        rs.iter().any(|r| r.json["event_action"] == "resolve")
    }));
    let res = fake
        .requests(Api::Pagerduty)
        .into_iter()
        .find(|r| r.json["event_action"] == "resolve")
        .unwrap();
    assert_eq!(res.json["dedup_key"], format!("rampart/prod/{inc}"));
    assert!(fake.wait_for(Api::Slack, WAIT, |rs| {
        rs.iter()
            .any(|r| r.json["attachments"][0]["color"] == "good")
    }));
    assert_eq!(fake.problems(), Vec::<String>::new());
}

#[test]
fn a_controller_killed_while_github_creates_the_issue_delivers_it_once_after_restart() {
    let fake = fake();
    let secrets = tempfile::tempdir().unwrap();
    let sinks = sinks_toml(&fake, secrets.path(), &["github"]);
    let mut fleet = Fleet::start_with_toml(1, &sinks, "instance = \"c1\"\n", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // The search answers; the create takes effect on GitHub, its answer never comes.
    fake.script(
        Api::Github,
        &[
            Answer::Normal,
            Answer::HangAfterApply(Duration::from_secs(60)),
        ],
    );
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let inc = finished(&r.json())["incident_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fake.wait_for(Api::Github, WAIT, |rs| {
        rs.iter().any(|r| r.method == "POST")
    }));
    assert_eq!(fake.issues().len(), 1);
    fleet.kill_controller();
    fleet.restart_controller();
    // After the restart: the search finds the marker, no second issue.
    assert!(
        fake.wait_for(Api::Github, WAIT, |rs| rs
            .iter()
            .filter(|r| r.method == "GET")
            .count()
            >= 2),
        "{:#?}",
        fake.requests(Api::Github)
    );
    std::thread::sleep(Duration::from_secs(3));
    let posts = fake
        .requests(Api::Github)
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "{:#?}", fake.requests(Api::Github));
    let issues = fake.issues();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(
        issues[0]
            .body
            .contains(&format!("<!-- rampart-incident: {inc} -->"))
    );
    // Resolving uses the issue found, the one there is.
    let yes = fleet.cli(&["incidents", "resolve", &inc, "--note", "done"]);
    assert_eq!(yes.code, 0, "{}", yes.stderr);
    assert!(fake.wait_for(Api::Github, WAIT, |rs| {
        rs.iter().any(|r| r.method == "PATCH")
    }));
    assert_eq!(fake.issues()[0].state, "closed");
    assert_eq!(fake.problems(), Vec::<String>::new());
}

#[test]
fn bad_sink_configurations_are_refused_at_start_naming_the_key() {
    let fake = fake();
    let secrets = tempfile::tempdir().unwrap();
    let good = sinks_toml(&fake, secrets.path(), &["github"]);
    let fleet = Fleet::start(1, "", |_, _| {});
    let base = std::fs::read_to_string(&fleet.config).unwrap();
    let empty = secrets.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let cases = [
        (
            "[environments.prod.notify.teams]\nurl = \"https://x\"\n".to_string(),
            "notify.teams: unknown sink type",
        ),
        (
            good.replace("repository = \"acme/shop\"", "repository = \"shop\""),
            "notify.github.repository",
        ),
        (
            good.replace("gh-token", "missing-token"),
            "notify.github.token_file: cannot read",
        ),
        (
            format!(
                "[environments.prod.notify.pagerduty]\nrouting_key_file = \"{}\"\n",
                empty.display()
            ),
            "notify.pagerduty.routing_key_file",
        ),
        (
            format!(
                "[environments.prod.notify.webhook]\nurl = \"not a url\"\nsecret_file = \"{}\"\n",
                secrets.path().join("gh-token").display()
            ),
            "notify.webhook.url",
        ),
        (
            good.replace("api_url", "api_uri"),
            "notify.github.api_uri: unknown key",
        ),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let cfg = fleet.dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&cfg, format!("{base}\n{extra}")).unwrap();
        let out = std::process::Command::new(rampart_tests::bin("rampart-controller"))
            .args(["--config", cfg.to_str().unwrap(), "check"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra} was accepted");
        assert!(stderr.contains(want), "{extra}: {stderr} lacks {want}");
        assert!(!stderr.contains("ghp_test_token"), "a secret in {stderr}");
    }
    // And the good one passes.
    let cfg = fleet.dir.path().join("good.toml");
    std::fs::write(&cfg, format!("{base}\n{good}")).unwrap();
    let out = std::process::Command::new(rampart_tests::bin("rampart-controller"))
        .args(["--config", cfg.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hanging_sink_does_not_hold_back_another_sinks_retry() {
    let fake = fake();
    let secrets = tempfile::tempdir().unwrap();
    let sinks = sinks_toml(&fake, secrets.path(), &["slack", "webhook"]);
    // The webhook takes 1.0.0's success notice, then hangs on the incident's (the worker gives
    // up on it at its 10 s HTTP timeout); Slack asks for a retry after 1 s.
    fake.script(
        Api::Webhook,
        &[
            Answer::Status(200, None),
            Answer::HangAfterApply(Duration::from_secs(30)),
        ],
    );
    fake.script(Api::Slack, &[Answer::Status(429, Some("1".into()))]);
    let fleet = Fleet::start_with_toml(1, &sinks, "", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    assert!(fake.wait_for(Api::Webhook, WAIT, |rs| !rs.is_empty()));
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    assert!(fake.wait_for(Api::Slack, WAIT, |rs| !accepted(rs, 200).is_empty()));
    let sl = fake.requests(Api::Slack);
    assert_eq!(sl[0].status, 429, "{sl:#?}");
    let waited = sl[1].at.duration_since(sl[0].at);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(6),
        "Slack's retry came {waited:?} after its 429 (Retry-After 1 s), not after the hanging webhook's timeout"
    );
    assert_eq!(
        fake.requests(Api::Webhook).len(),
        2,
        "the webhook got its incident notice"
    );
}

#[test]
fn a_deployment_awaiting_approval_is_announced_with_the_command_that_approves_it() {
    let fake = fake();
    let secrets = tempfile::tempdir().unwrap();
    let e = fake.expect();
    let url = secrets.path().join("slack-url");
    std::fs::write(&url, format!("{}\n", fake.url(Api::Slack))).unwrap();
    let hook_secret = secrets.path().join("wh-secret");
    std::fs::write(&hook_secret, format!("{}\n", e.webhook_secret)).unwrap();
    let sinks = format!(
        "[environments.prod.notify.slack]\nwebhook_url_file = \"{}\"\nevents = [\"approval\"]\n\
         [environments.prod.notify.webhook]\nurl = \"{}\"\nsecret_file = \"{}\"\nevents = [\"approval\", \"succeeded\"]\n",
        url.display(),
        fake.url(Api::Webhook),
        hook_secret.display()
    );
    let fleet = Fleet::start_with_toml(
        1,
        &format!("require_approval = true\n{sinks}"),
        "",
        |_, _| {},
    );
    let mut live = fleet.spawn_deploy("1.0.0", &[]);
    let waiting = live.wait_for("awaits approval", WAIT, |v| {
        v["type"] == "awaiting_approval"
    });
    let id = waiting["deployment_id"].as_str().unwrap().to_string();
    // Announced while it waits: Slack in the warning colour with the command, the webhook with
    // the event and the deployment.
    assert!(fake.wait_for(Api::Slack, WAIT, |rs| !accepted(rs, 200).is_empty()));
    let sl = fake.requests(Api::Slack);
    let text = sl[0].json["text"].as_str().unwrap();
    assert!(text.contains(&format!("rampart approve {id}")), "{text}");
    assert_eq!(
        sl[0].json["attachments"][0]["color"], "warning",
        "{:#}",
        sl[0].json
    );
    assert!(fake.wait_for(Api::Webhook, WAIT, |rs| !accepted(rs, 200).is_empty()));
    let wh = accepted(&fake.requests(Api::Webhook), 200)[0].json.clone();
    assert_eq!(wh["event"], "approval", "{wh:#}");
    assert!(wh.to_string().contains(&id), "{wh:#}");

    let ap = fleet.cli(&["approve", &id, "--comment", "go"]);
    assert_eq!(ap.code, 0, "approve: {}\n{}", ap.stdout, ap.stderr);
    let (code, lines) = live.finish(WAIT);
    assert_eq!(code, 0, "{lines:#?}");
    // Then its success reaches the webhook (Slack takes only approvals here).
    assert!(fake.wait_for(Api::Webhook, WAIT, |rs| accepted(rs, 200).len() >= 2));
    let events: Vec<String> = accepted(&fake.requests(Api::Webhook), 200)
        .iter()
        .map(|r| r.json["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(events, ["approval", "succeeded"]);
    assert_eq!(
        fake.requests(Api::Slack).len(),
        1,
        "Slack was not told of the success"
    );
}

#[test]
fn github_pages_through_every_open_incident_issue_before_it_creates_one() {
    let fake = fake();
    let labels: Vec<String> = ["production-rollback", "incident", "high-priority"]
        .map(String::from)
        .to_vec();
    // 150 open incident issues of earlier rollbacks (two pages of 100; the Link header's URL
    // carries the comma-separated labels), and a pull request with the labels, which the list
    // returns too.
    for i in 0..150 {
        fake.seed(Issue {
            number: 0,
            title: format!("[Production Rollback] 0.{i}.1 → 0.{i}.0"),
            body: format!("<!-- rampart-incident: inc-old-{i} -->"),
            labels: labels.clone(),
            state: "open".into(),
            state_reason: None,
            comments: Vec::new(),
            pull_request: i == 149,
        });
    }
    let secrets = tempfile::tempdir().unwrap();
    let sinks = sinks_toml(&fake, secrets.path(), &["github"]);
    let fleet = Fleet::start_with_toml(1, &sinks, "", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    let inc = finished(&r.json())["incident_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fake.wait_for(Api::Github, WAIT, |rs| rs.iter().any(|r| r.status == 201)));
    let gh = fake.requests(Api::Github);
    let lists: Vec<&Recorded> = gh.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(lists.len(), 2, "both pages read before creating: {gh:#?}");
    assert!(lists[1].path.contains("page=2"), "{}", lists[1].path);
    assert_eq!(
        gh.iter().position(|r| r.method == "POST"),
        Some(2),
        "the create comes after the second page"
    );
    let ours = fake
        .issues()
        .into_iter()
        .filter(|i| {
            i.body
                .contains(&format!("<!-- rampart-incident: {inc} -->"))
        })
        .count();
    assert_eq!(ours, 1, "one issue for the incident");
    assert!(fake.problems().is_empty(), "{:?}", fake.problems());
}
