//! The requests each sink gets (pure builders), the one blocking HTTP call, and the steps of a
//! delivery to each sink.
//!
//! - GitHub (REST, `X-GitHub-Api-Version: 2022-11-28`): an incident opens an issue titled
//!   `[Production Rollback] <failed_version> → <rollback_version>`, labelled
//!   `production-rollback`, `incident`, `high-priority`, whose body ends with the hidden marker
//!   `<!-- rampart-incident: ID -->`. Before creating it, the open issues with those labels are
//!   listed (following `Link: rel="next"`, at most [`GITHUB_PAGES`] pages, pull requests
//!   skipped) and an issue carrying the marker is taken instead: one issue per incident, even
//!   when a controller died after GitHub created it and before it heard so. Its number is
//!   noted on the outbox row. A resolution comments on the issue, then closes it
//!   (`state_reason: completed`); each step is noted, so a retry does not comment twice.
//! - Slack (incoming webhook): `text` and one attachment whose `color` is `danger` (critical,
//!   error), `warning` (warning, approval) or `good` (resolved, succeeded), with fields.
//! - PagerDuty (Events v2): `trigger` with `dedup_key` `rampart/<env>/<incident id>`, then
//!   `resolve` with the same key.
//! - Webhook: the JSON document of the notice, `X-Rampart-Timestamp` (Unix seconds) and
//!   `X-Rampart-Signature: sha256=<hex>`, the HMAC-SHA256 with the configured secret of
//!   `<timestamp>.<exact body>`: the timestamp is signed too, so a receiver that refuses old
//!   timestamps (say, more than 5 minutes) cannot be fed a replay.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use rampart_proto::v1 as pb;
use serde_json::{Value, json};

use super::{HTTP_TIMEOUT, NoticeEvent, Secret, Verdict, verdict};
use crate::incident::rfc3339;

/// How many pages of open issues are read looking for an incident's marker (100 each).
pub const GITHUB_PAGES: usize = 10;
/// The labels of an incident's issue.
pub const GITHUB_LABELS: [&str; 3] = ["production-rollback", "incident", "high-priority"];
/// The largest response body read.
const MAX_BODY: u64 = 4 << 20;
/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("rampart-controller/", env!("CARGO_PKG_VERSION"));

/// What a notice is about, read from the store when it is delivered.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An incident (opened or resolved).
    Incident(pb::Incident),
    /// A deployment (awaiting approval, or succeeded).
    Deployment(pb::Deployment),
}

/// The hidden marker in an incident's GitHub issue.
pub fn marker(incident_id: &str) -> String {
    format!("<!-- rampart-incident: {incident_id} -->")
}

/// The GitHub issue's title.
pub fn github_title(inc: &pb::Incident) -> String {
    let back = if inc.rollback_version.is_empty() {
        "(rollback failed)"
    } else {
        &inc.rollback_version
    };
    format!(
        "[Production Rollback] {} → {back}",
        dash(&inc.failed_version)
    )
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn severity_name(inc: &pb::Incident) -> &'static str {
    match inc.severity() {
        pb::IncidentSeverity::Critical => "critical",
        pb::IncidentSeverity::Warning => "warning",
        // ERROR, and anything unknown: PagerDuty has no lower "unspecified".
        _ => "error",
    }
}

/// The create-issue request body (`title`, `body`, `labels`).
pub fn github_issue(inc: &pb::Incident) -> Value {
    let body = format!(
        "## Production rollback in `{env}`\n\n\
         | | |\n|---|---|\n\
         | incident | `{id}` ({sev}) |\n\
         | opened | {opened} |\n\
         | deployment | `{dep}` |\n\
         | failed version | `{failed}` |\n\
         | rolled back to | `{back}` |\n\
         | reason | {reason} |\n\
         | failed task | {task} |\n\
         | hosts | {hosts} |\n\
         | forensics | {forensics} |\n\n\
         {summary}\n\n\
         ### Required actions\n\n\
         - [ ] Acknowledge: `rampart incidents resolve {id} --ack --note \"looking\"`\n\
         - [ ] Fetch the forensics: `rampart forensics get {dep} HOST`\n\
         - [ ] Find the root cause of the failed task\n\
         - [ ] Fix the release and verify it in staging\n\
         - [ ] Write the post-mortem (`rampart incidents postmortem {id}`) by **{due}**\n\
         - [ ] Resolve: `rampart incidents resolve {id} --note \"...\" --postmortem URL`\n\n\
         Post-mortem due: **{due}**\n\n{marker}\n",
        env = inc.environment,
        id = inc.id,
        sev = severity_name(inc),
        opened = rfc3339(inc.opened.as_ref()),
        dep = inc.deployment_id,
        failed = dash(&inc.failed_version),
        back = dash(&inc.rollback_version),
        reason = dash(&inc.reason),
        task = dash(&inc.failed_task),
        hosts = dash(&inc.hosts.join(", ")),
        forensics = dash(&inc.forensics),
        summary = inc.summary,
        due = rfc3339(inc.postmortem_due.as_ref()),
        marker = marker(&inc.id),
    );
    json!({"title": github_title(inc), "body": body, "labels": GITHUB_LABELS})
}

/// The comment a resolution leaves on the issue.
pub fn github_resolution_comment(inc: &pb::Incident) -> Value {
    let pm = if inc.postmortem_url.is_empty() {
        "no post-mortem link was given".to_string()
    } else {
        format!("post-mortem: {}", inc.postmortem_url)
    };
    json!({"body": format!(
        "Resolved by `{}` at {}: {}\n\n{pm}",
        dash(&inc.resolved_by),
        rfc3339(inc.resolved.as_ref()),
        inc.resolution
    )})
}

/// The Slack message of a notice.
pub fn slack_message(event: NoticeEvent, subject: &Subject) -> Value {
    let field =
        |t: &str, v: &str, short: bool| json!({"title": t, "value": dash(v), "short": short});
    match subject {
        Subject::Incident(inc) => {
            let resolved = event == NoticeEvent::IncidentResolved;
            let color = if resolved {
                "good"
            } else if inc.severity() == pb::IncidentSeverity::Warning {
                "warning"
            } else {
                "danger"
            };
            let text = if resolved {
                format!("Resolved: incident {} in {}", inc.id, inc.environment)
            } else {
                format!(
                    "{} incident {} in {}: {}",
                    severity_name(inc).to_uppercase(),
                    inc.id,
                    inc.environment,
                    github_title(inc)
                )
            };
            let mut fields = vec![
                field("Environment", &inc.environment, true),
                field("Severity", severity_name(inc), true),
                field("Failed version", &inc.failed_version, true),
                field("Rolled back to", &inc.rollback_version, true),
                field("Reason", &inc.reason, true),
                field(
                    "Post-mortem due",
                    &rfc3339(inc.postmortem_due.as_ref()),
                    true,
                ),
                field("Failed task", &inc.failed_task, false),
                field("Forensics", &inc.forensics, false),
            ];
            if resolved {
                fields.push(field("Resolution", &inc.resolution, false));
                fields.push(field("Post-mortem", &inc.postmortem_url, false));
            }
            json!({
                "text": text,
                "attachments": [{
                    "fallback": text,
                    "color": color,
                    "title": github_title(inc),
                    "text": inc.summary,
                    "fields": fields,
                    "footer": format!("rampart · {}", inc.deployment_id),
                    "ts": inc.opened.as_ref().map_or(0, |t| t.seconds),
                }]
            })
        }
        Subject::Deployment(d) => {
            let (color, text) = if event == NoticeEvent::Approval {
                (
                    "warning",
                    format!(
                        "Deployment {} of {} to {} awaits approval: `rampart approve {}`",
                        d.id, d.version, d.environment, d.id
                    ),
                )
            } else {
                (
                    "good",
                    format!(
                        "Deployment {} of {} to {} succeeded",
                        d.id, d.version, d.environment
                    ),
                )
            };
            json!({
                "text": text,
                "attachments": [{
                    "fallback": text,
                    "color": color,
                    "fields": [
                        field("Environment", &d.environment, true),
                        field("Version", &d.version, true),
                        field("Requested by", &d.requested_by, true),
                        field("Commit", &d.commit, true),
                    ],
                    "footer": format!("rampart · {}", d.id),
                }]
            })
        }
    }
}

/// The PagerDuty `dedup_key` of an incident.
pub fn pagerduty_dedup_key(inc: &pb::Incident) -> String {
    format!("rampart/{}/{}", inc.environment, inc.id)
}

/// The PagerDuty event of an incident notice: `trigger` when opened, `resolve` when resolved.
pub fn pagerduty_event(event: NoticeEvent, routing_key: &Secret, inc: &pb::Incident) -> Value {
    let key = pagerduty_dedup_key(inc);
    if event == NoticeEvent::IncidentResolved {
        return json!({
            "routing_key": routing_key.expose(),
            "event_action": "resolve",
            "dedup_key": key,
        });
    }
    let mut summary = format!("{}: {}", github_title(inc), inc.summary);
    if summary.len() > 1024 {
        summary = format!("{}...", crate::edge::cut(&summary, 1021));
    }
    json!({
        "routing_key": routing_key.expose(),
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": summary,
            "source": format!("rampart/{}", inc.environment),
            "severity": severity_name(inc),
            "timestamp": rfc3339(inc.opened.as_ref()),
            "component": inc.environment,
            "group": "deployments",
            "class": "rollback",
            "custom_details": {
                "incident": inc.id,
                "deployment": inc.deployment_id,
                "failed_version": inc.failed_version,
                "rollback_version": inc.rollback_version,
                "reason": inc.reason,
                "failed_task": inc.failed_task,
                "hosts": inc.hosts,
                "forensics": inc.forensics,
                "postmortem_due": rfc3339(inc.postmortem_due.as_ref()),
            }
        },
        "client": "rampart",
    })
}

/// The webhook's JSON document of a notice.
pub fn webhook_document(event: NoticeEvent, subject: &Subject, sent_at: i64) -> Value {
    let subject = match subject {
        Subject::Incident(inc) => json!({"incident": {
            "id": inc.id,
            "environment": inc.environment,
            "deployment_id": inc.deployment_id,
            "severity": severity_name(inc),
            "state": format!("{:?}", inc.state()).to_lowercase(),
            "summary": inc.summary,
            "hosts": inc.hosts,
            "opened": rfc3339(inc.opened.as_ref()),
            "resolved": inc.resolved.as_ref().map(|t| rfc3339(Some(t))),
            "resolution": inc.resolution,
            "postmortem_due": rfc3339(inc.postmortem_due.as_ref()),
            "postmortem_url": inc.postmortem_url,
            "failed_version": inc.failed_version,
            "rollback_version": inc.rollback_version,
            "reason": inc.reason,
            "failed_task": inc.failed_task,
            "forensics": inc.forensics,
        }}),
        Subject::Deployment(d) => json!({"deployment": {
            "id": d.id,
            "environment": d.environment,
            "version": d.version,
            "requested_by": d.requested_by,
            "commit": d.commit,
            "ci_run_id": d.ci_run_id,
            "summary": d.summary,
        }}),
    };
    let mut doc = json!({"event": event.name(), "sent_at": sent_at});
    if let (Value::Object(d), Value::Object(s)) = (&mut doc, subject) {
        d.extend(s);
    }
    doc
}

/// `sha256=<hex of HMAC-SHA256(secret, "<timestamp>." + body)>`.
pub fn signature(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST` or `PATCH`.
    pub method: &'static str,
    /// Where.
    pub url: String,
    /// Headers beyond `User-Agent` (and `Content-Type` with a body).
    pub headers: Vec<(&'static str, String)>,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Its status.
    pub status: u16,
    /// Its `Retry-After` header.
    pub retry_after: Option<String>,
    /// Its `Link` header.
    pub link: Option<String>,
    /// Its body (at most 4 MiB read).
    pub body: String,
}

/// Sends `r` (blocking, at most [`HTTP_TIMEOUT`]): the answer, or why none came (the URL in
/// the error is given by the caller, never this request's, which may hold a secret).
pub fn send(r: &Request) -> Result<Response, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut b = ureq::http::Request::builder()
        .method(r.method)
        .uri(&r.url)
        .header("User-Agent", USER_AGENT);
    for (k, v) in &r.headers {
        b = b.header(*k, v);
    }
    let result = match &r.body {
        Some(body) => {
            let req = b
                .header("Content-Type", "application/json")
                .body(body.clone())
                .map_err(|e| format!("building the request: {e}"))?;
            agent.run(req)
        }
        None => {
            let req = b
                .body(())
                .map_err(|e| format!("building the request: {e}"))?;
            agent.run(req)
        }
    };
    let mut resp = result.map_err(|e| match e {
        ureq::Error::Timeout(_) => format!("no answer within {} s", HTTP_TIMEOUT.as_secs()),
        ureq::Error::Io(e) => format!("connection failed: {}", e.kind()),
        other => format!("request failed: {}", short_error(&other)),
    })?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (retry_after, link) = (header("retry-after"), header("link"));
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .unwrap_or_default();
    Ok(Response {
        status,
        retry_after,
        link,
        body,
    })
}

/// An error's text without any URL it may carry (a Slack webhook URL is a secret).
fn short_error(e: &ureq::Error) -> String {
    let t = e.to_string();
    t.split_whitespace()
        .filter(|w| !w.contains("://"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Delivered,
    /// Try again (after the pause, or the backoff's when `None`).
    Retry(Option<Duration>, String),
    /// Never going to work.
    Failed(String),
}

/// The outcome of an answer that was not what the step wanted: the status's verdict, the
/// error naming `what` and the status (and a short piece of the body).
fn refused(what: &str, r: &Response) -> Outcome {
    let excerpt: String = r.body.chars().take(200).collect();
    let error = format!("{what}: HTTP {} {}", r.status, excerpt.trim());
    match verdict(r.status, r.retry_after.as_deref()) {
        Verdict::Permanent => Outcome::Failed(error),
        Verdict::Retry(after) => Outcome::Retry(after, error),
        // A 2xx the step did not expect (e.g. Slack's 200 without `ok`) is tried again.
        Verdict::Ok => Outcome::Retry(None, error),
    }
}

/// Sends `r`; `Err` holds the outcome of a failed send (no answer: retried).
fn call(what: &str, r: &Request) -> Result<Response, Outcome> {
    send(r).map_err(|e| Outcome::Retry(None, format!("{what}: {e}")))
}

fn json_body(v: &Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).unwrap_or_default())
}

/// Delivers a Slack notice: 200 with body `ok` is success.
pub fn deliver_slack(url: &Secret, event: NoticeEvent, subject: &Subject) -> Outcome {
    let r = Request {
        method: "POST",
        url: url.expose().to_string(),
        headers: vec![],
        body: json_body(&slack_message(event, subject)),
    };
    match call("slack webhook", &r) {
        Err(o) => o,
        Ok(resp) if resp.status == 200 && resp.body.trim() == "ok" => Outcome::Delivered,
        Ok(resp) => refused("slack webhook", &resp),
    }
}

/// Delivers a PagerDuty event: 202 is success.
pub fn deliver_pagerduty(
    url: &str,
    key: &Secret,
    event: NoticeEvent,
    inc: &pb::Incident,
) -> Outcome {
    let r = Request {
        method: "POST",
        url: url.to_string(),
        headers: vec![],
        body: json_body(&pagerduty_event(event, key, inc)),
    };
    match call(&format!("pagerduty {url}"), &r) {
        Err(o) => o,
        Ok(resp) if resp.status == 202 => Outcome::Delivered,
        Ok(resp) => refused(&format!("pagerduty {url}"), &resp),
    }
}

/// Delivers a signed webhook: any 2xx is success.
pub fn deliver_webhook(
    url: &str,
    secret: &Secret,
    event: NoticeEvent,
    subject: &Subject,
) -> Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let body = serde_json::to_vec(&webhook_document(event, subject, now)).unwrap_or_default();
    let r = Request {
        method: "POST",
        url: url.to_string(),
        headers: vec![
            ("X-Rampart-Signature", signature(secret, now, &body)),
            ("X-Rampart-Timestamp", now.to_string()),
            ("X-Rampart-Event", event.name().to_string()),
        ],
        body: Some(body),
    };
    match call(&format!("webhook {url}"), &r) {
        Err(o) => o,
        Ok(resp) if (200..300).contains(&resp.status) => Outcome::Delivered,
        Ok(resp) => refused(&format!("webhook {url}"), &resp),
    }
}

/// A GitHub repository's API, with its token.
#[derive(Debug)]
pub struct Github<'a> {
    /// The API's base URL (no trailing `/`).
    pub api_url: &'a str,
    /// `owner/name`.
    pub repository: &'a str,
    /// The token.
    pub token: &'a Secret,
}

/// The `rel="next"` URL of a `Link` header. Each link is `<URL>; params`, and links are
/// separated by commas, which may also appear inside a URL (`labels=a,b`): the URL is read
/// between its angle brackets, never split.
pub fn next_link(link: Option<&str>) -> Option<String> {
    let mut rest = link?;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>')?;
        let url = &after[..end];
        let tail = &after[end + 1..];
        // This link's parameters run to the next link's `<`.
        let params_end = tail.find('<').unwrap_or(tail.len());
        let is_next = tail[..params_end]
            .split(';')
            .any(|p| p.trim().trim_end_matches(',').trim() == "rel=\"next\"");
        if is_next {
            return Some(url.to_string());
        }
        rest = &tail[params_end..];
    }
    None
}

impl Github<'_> {
    fn request(&self, method: &'static str, url: String, body: Option<Value>) -> Request {
        Request {
            method,
            url,
            headers: vec![
                ("Authorization", format!("Bearer {}", self.token.expose())),
                ("Accept", "application/vnd.github+json".into()),
                ("X-GitHub-Api-Version", "2022-11-28".into()),
            ],
            body: body.as_ref().and_then(json_body),
        }
    }

    fn repo_url(&self) -> String {
        format!("{}/repos/{}", self.api_url, self.repository)
    }

    /// The open issue carrying incident `id`'s marker: its number, `None` when there is none.
    pub fn find_issue(&self, id: &str) -> Result<Option<u64>, Outcome> {
        let mark = marker(id);
        let mut url = format!(
            "{}/issues?state=open&labels={}&per_page=100",
            self.repo_url(),
            GITHUB_LABELS.join(",")
        );
        for _ in 0..GITHUB_PAGES {
            let what = format!("github: listing open issues of {}", self.repository);
            let resp = call(&what, &self.request("GET", url.clone(), None))?;
            if resp.status != 200 {
                return Err(refused(&what, &resp));
            }
            let items: Vec<Value> = serde_json::from_str(&resp.body)
                .map_err(|e| Outcome::Retry(None, format!("{what}: not a JSON array: {e}")))?;
            for it in &items {
                if it.get("pull_request").is_some() {
                    continue;
                }
                if it["body"].as_str().is_some_and(|b| b.contains(&mark))
                    && let Some(n) = it["number"].as_u64()
                {
                    return Ok(Some(n));
                }
            }
            match next_link(resp.link.as_deref()) {
                // Never sends the token anywhere but the configured API.
                Some(next) if next.starts_with(&format!("{}/", self.api_url)) => url = next,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Creates the incident's issue: its number.
    pub fn create_issue(&self, inc: &pb::Incident) -> Result<u64, Outcome> {
        let what = format!("github: creating an issue in {}", self.repository);
        let resp = call(
            &what,
            &self.request(
                "POST",
                format!("{}/issues", self.repo_url()),
                Some(github_issue(inc)),
            ),
        )?;
        if resp.status != 201 {
            return Err(refused(&what, &resp));
        }
        let v: Value = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
        v["number"]
            .as_u64()
            .ok_or_else(|| Outcome::Retry(None, format!("{what}: the answer has no number")))
    }

    /// Comments on issue `n`.
    pub fn comment(&self, n: u64, body: Value) -> Result<(), Outcome> {
        let what = format!("github: commenting on issue #{n} of {}", self.repository);
        let resp = call(
            &what,
            &self.request(
                "POST",
                format!("{}/issues/{n}/comments", self.repo_url()),
                Some(body),
            ),
        )?;
        if resp.status != 201 {
            return Err(refused(&what, &resp));
        }
        Ok(())
    }

    /// Closes issue `n` as completed.
    pub fn close(&self, n: u64) -> Result<(), Outcome> {
        let what = format!("github: closing issue #{n} of {}", self.repository);
        let resp = call(
            &what,
            &self.request(
                "PATCH",
                format!("{}/issues/{n}", self.repo_url()),
                Some(json!({"state": "closed", "state_reason": "completed"})),
            ),
        )?;
        if resp.status != 200 {
            return Err(refused(&what, &resp));
        }
        Ok(())
    }
}

/// The issue number an outbox note records (`issue=N`, maybe followed by more steps).
pub fn noted_issue(note: &str) -> Option<u64> {
    note.split_whitespace()
        .find_map(|w| w.strip_prefix("issue="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident() -> pb::Incident {
        pb::Incident {
            id: "inc-1".into(),
            environment: "prod".into(),
            deployment_id: "d-1".into(),
            severity: pb::IncidentSeverity::Error as i32,
            state: pb::IncidentState::Open as i32,
            summary: "health failed; rolled back".into(),
            hosts: vec!["web1".into()],
            opened: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            postmortem_due: Some(prost_types::Timestamp {
                seconds: 1_714_737_600,
                nanos: 0,
            }),
            failed_version: "2.0.0".into(),
            rollback_version: "1.0.0".into(),
            reason: "health".into(),
            failed_task: "TASK [hc] (health) on web1".into(),
            forensics: "web1:2.0.0-x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_github_issue_has_title_labels_facts_checklist_due_date_and_marker() {
        let v = github_issue(&incident());
        assert_eq!(v["title"], "[Production Rollback] 2.0.0 → 1.0.0");
        assert_eq!(
            v["labels"],
            json!(["production-rollback", "incident", "high-priority"])
        );
        let body = v["body"].as_str().unwrap();
        for want in [
            "2024-05-01T12:00:00Z",
            "`2.0.0`",
            "`1.0.0`",
            "| reason | health |",
            "web1:2.0.0-x",
            "- [ ] ",
            "Post-mortem due: **2024-05-03T12:00:00Z**",
            "<!-- rampart-incident: inc-1 -->",
        ] {
            assert!(body.contains(want), "{want:?} not in {body}");
        }
        let mut c = incident();
        c.rollback_version.clear();
        assert_eq!(
            github_title(&c),
            "[Production Rollback] 2.0.0 → (rollback failed)"
        );
    }

    #[test]
    fn slack_colours_follow_severity_and_resolution() {
        let mut inc = incident();
        let m = slack_message(NoticeEvent::Incident, &Subject::Incident(inc.clone()));
        assert_eq!(m["attachments"][0]["color"], "danger");
        assert!(m["text"].as_str().unwrap().contains("inc-1"));
        assert!(m["attachments"][0]["fields"].as_array().unwrap().len() >= 6);
        inc.severity = pb::IncidentSeverity::Warning as i32;
        let m = slack_message(NoticeEvent::Incident, &Subject::Incident(inc.clone()));
        assert_eq!(m["attachments"][0]["color"], "warning");
        let m = slack_message(NoticeEvent::IncidentResolved, &Subject::Incident(inc));
        assert_eq!(m["attachments"][0]["color"], "good");
        let d = pb::Deployment {
            id: "d-2".into(),
            version: "3.0".into(),
            ..Default::default()
        };
        let m = slack_message(NoticeEvent::Approval, &Subject::Deployment(d.clone()));
        assert_eq!(m["attachments"][0]["color"], "warning");
        assert!(m["text"].as_str().unwrap().contains("rampart approve d-2"));
        let m = slack_message(NoticeEvent::Succeeded, &Subject::Deployment(d));
        assert_eq!(m["attachments"][0]["color"], "good");
    }

    #[test]
    fn pagerduty_events_share_a_deterministic_dedup_key() {
        let key = Secret::from_text("K");
        let t = pagerduty_event(NoticeEvent::Incident, &key, &incident());
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "rampart/prod/inc-1");
        assert_eq!(t["routing_key"], "K");
        assert_eq!(t["payload"]["severity"], "error");
        assert_eq!(t["payload"]["timestamp"], "2024-05-01T12:00:00Z");
        assert_eq!(t["payload"]["custom_details"]["reason"], "health");
        assert!(!t["payload"]["source"].as_str().unwrap().is_empty());
        let r = pagerduty_event(NoticeEvent::IncidentResolved, &key, &incident());
        assert_eq!(
            r,
            json!({"routing_key": "K", "event_action": "resolve", "dedup_key": "rampart/prod/inc-1"})
        );
        let mut long = incident();
        long.summary = "x".repeat(5000);
        let t = pagerduty_event(NoticeEvent::Incident, &key, &long);
        assert!(t["payload"]["summary"].as_str().unwrap().len() <= 1024);
    }

    #[test]
    fn the_webhook_signature_is_hmac_sha256_of_the_timestamp_and_the_body() {
        // RFC 4231 test case 2's key and text, after "<timestamp>." (computed with Python's hmac).
        let s = signature(
            &Secret::from_text("Jefe"),
            1_700_000_000,
            b"what do ya want for nothing?",
        );
        assert_eq!(
            s,
            "sha256=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
        assert_ne!(
            s,
            signature(
                &Secret::from_text("Jefe"),
                1_700_000_001,
                b"what do ya want for nothing?"
            ),
            "another timestamp, another signature"
        );
        let doc = webhook_document(NoticeEvent::Incident, &Subject::Incident(incident()), 7);
        assert_eq!(doc["event"], "incident");
        assert_eq!(doc["sent_at"], 7);
        assert_eq!(doc["incident"]["id"], "inc-1");
    }

    #[test]
    fn link_headers_and_notes_are_read() {
        let link = "<https://api.github.com/repositories/1/issues?page=2>; rel=\"next\", <https://api.github.com/repositories/1/issues?page=5>; rel=\"last\"";
        assert_eq!(
            next_link(Some(link)).as_deref(),
            Some("https://api.github.com/repositories/1/issues?page=2")
        );
        assert_eq!(next_link(Some("<https://x/?page=1>; rel=\"prev\"")), None);
        // Commas inside a URL (a label list) are part of it.
        assert_eq!(
            next_link(Some(
                "<https://x/issues?labels=a,b&page=1>; rel=\"prev\", <https://x/issues?labels=a,b&page=3>; rel=\"next\""
            ))
            .as_deref(),
            Some("https://x/issues?labels=a,b&page=3")
        );
        assert_eq!(next_link(None), None);
        assert_eq!(noted_issue("issue=12"), Some(12));
        assert_eq!(noted_issue("issue=12 commented"), Some(12));
        assert_eq!(noted_issue(""), None);
    }
}
