//! Local stand-ins for GitHub's issues API, a Slack incoming webhook, PagerDuty's Events API v2
//! and a signed webhook, on one HTTP/1.1 server on 127.0.0.1, for the notification tests.
//!
//! Every request is checked against the documented shape (method, path, headers, JSON fields;
//! `docs` of each API as recorded in the project's observability notes) and answered as the
//! real API documents it: GitHub 201 with `number`/`html_url` (401 on a bad token, 422 on a bad
//! body, `Link: rel="next"` pagination of open issues, pull requests among them), Slack 200 with
//! body `ok` (400 `invalid_payload`), PagerDuty 202 with `status`/`message`/`dedup_key` (400
//! `invalid event`), the webhook 200 (401 on a bad signature). A shape violation is also kept in
//! [`FakeApis::problems`], so a test asserts there were none.
//!
//! Scripting: [`FakeApis::script`] queues answers for an API's next requests: a status (e.g.
//! 429 with `Retry-After`, 500), or a hang (the answer held back, after the request took
//! effect, as when GitHub created an issue but the caller never heard). Every request is
//! recorded with its arrival time. Connections are served one thread each and closed after
//! one answer; every wait is bounded.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

/// The APIs served, by path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// `/github/...` (the REST API's base URL is `http://ADDR/github`).
    Github,
    /// `/slack/hook`.
    Slack,
    /// `/pagerduty/v2/enqueue`.
    Pagerduty,
    /// `/webhook`.
    Webhook,
}

/// A scripted answer for an API's next request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Answer as the API documents (to let a later scripted answer reach a later request).
    Normal,
    /// Answer this status (with `Retry-After` when given) and do nothing.
    Status(u16, Option<String>),
    /// Do what the request asks, then hold the answer back this long (the caller times out).
    HangAfterApply(Duration),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which API.
    pub api: Api,
    /// The method.
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`Null` when none or not JSON).
    pub json: Value,
    /// The raw body.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// A GitHub issue (or pull request) the fake holds.
#[derive(Debug, Clone)]
pub struct Issue {
    /// Its number.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Labels.
    pub labels: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
    /// `completed`, ... once closed.
    pub state_reason: Option<String>,
    /// Comment bodies.
    pub comments: Vec<String>,
    /// Whether it is a pull request (the issues list returns those too).
    pub pull_request: bool,
}

#[derive(Debug, Default)]
struct State {
    requests: Vec<Recorded>,
    problems: Vec<String>,
    scripts: BTreeMap<Api, VecDeque<Answer>>,
    issues: Vec<Issue>,
}

/// What the fake expects of its callers.
#[derive(Debug, Clone)]
pub struct Expect {
    /// `owner/name` of the GitHub repository.
    pub repository: String,
    /// The GitHub token.
    pub github_token: String,
    /// The PagerDuty routing key.
    pub routing_key: String,
    /// The webhook's HMAC key.
    pub webhook_secret: String,
}

/// The server.
#[derive(Debug)]
pub struct FakeApis {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    expect: Expect,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The longest a hang holds an answer back.
const MAX_HANG: Duration = Duration::from_secs(120);

impl FakeApis {
    /// Starts the server on a free port of 127.0.0.1.
    pub fn start(expect: Expect) -> FakeApis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake APIs");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, ex) = (state.clone(), stop.clone(), expect.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, ex, st) = (s.clone(), ex.clone(), st.clone());
                        std::thread::spawn(move || serve(conn, &s, &ex, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeApis {
            addr,
            state,
            stop,
            expect,
        }
    }

    /// The base URL of `api` as the controller's configuration names it.
    pub fn url(&self, api: Api) -> String {
        let path = match api {
            Api::Github => "/github",
            Api::Slack => "/slack/hook",
            Api::Pagerduty => "/pagerduty/v2/enqueue",
            Api::Webhook => "/webhook",
        };
        format!("http://{}{path}", self.addr)
    }

    /// What the fake expects.
    pub fn expect(&self) -> &Expect {
        &self.expect
    }

    /// Queues answers for `api`'s next requests.
    pub fn script(&self, api: Api, answers: &[Answer]) {
        lock(&self.state)
            .scripts
            .entry(api)
            .or_default()
            .extend(answers.iter().cloned());
    }

    /// Every request `api` received, in order.
    pub fn requests(&self, api: Api) -> Vec<Recorded> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.api == api)
            .cloned()
            .collect()
    }

    /// Every shape violation seen.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.state).problems.clone()
    }

    /// The GitHub issues (and pull requests) held.
    pub fn issues(&self) -> Vec<Issue> {
        lock(&self.state).issues.clone()
    }

    /// Adds a pull request (or issue) to the repository, as if someone opened it.
    pub fn seed(&self, mut issue: Issue) {
        let mut s = lock(&self.state);
        issue.number = s.issues.len() as u64 + 1;
        s.issues.push(issue);
    }

    /// Waits up to `timeout` until `done` holds for `api`'s requests; whether it did.
    pub fn wait_for(
        &self,
        api: Api,
        timeout: Duration,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.requests(api)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FakeApis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request: (method, path, headers, body); `None` on a malformed or oversized one.
/// A request as read: method, path, headers, body.
type Raw = (String, String, BTreeMap<String, String>, Vec<u8>);

fn read_request(conn: &TcpStream) -> Option<Raw> {
    conn.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    for _ in 0..100 {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(Some(0), |v| v.parse().ok())?;
    if len > 1 << 20 {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

/// An answer: status, extra headers, body, content type.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    json: bool,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: body.to_string(),
        json: true,
    }
}

fn text(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: body.to_string(),
        json: false,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, ex: &Expect, stop: &AtomicBool) {
    let Some((method, path, headers, body)) = read_request(&conn) else {
        return;
    };
    let api = if path.starts_with("/github/") {
        Api::Github
    } else if path.starts_with("/slack/") {
        Api::Slack
    } else if path.starts_with("/pagerduty/") {
        Api::Pagerduty
    } else {
        Api::Webhook
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let scripted = lock(state)
        .scripts
        .get_mut(&api)
        .and_then(VecDeque::pop_front);
    let mut problems = Vec::new();
    let (answer, hang) = match scripted {
        Some(Answer::Status(status, retry_after)) => {
            let mut r = reply(status, json!({"message": "scripted failure"}));
            if let Some(ra) = retry_after {
                r.headers.push(("Retry-After".into(), ra));
            }
            (r, None)
        }
        other => {
            let hang = match other {
                Some(Answer::HangAfterApply(d)) => Some(d.min(MAX_HANG)),
                _ => None,
            };
            let r = match api {
                Api::Github => github(state, ex, &method, &path, &headers, &json, &mut problems),
                Api::Slack => slack(&method, &headers, &json, &mut problems),
                Api::Pagerduty => pagerduty(ex, &method, &headers, &json, &mut problems),
                Api::Webhook => webhook(ex, &method, &headers, &body, &json, &mut problems),
            };
            (r, hang)
        }
    };
    {
        let mut s = lock(state);
        s.problems.extend(
            problems
                .into_iter()
                .map(|p| format!("{api:?} {method} {path}: {p}")),
        );
        s.requests.push(Recorded {
            api,
            method,
            path,
            headers,
            json,
            body,
            status: answer.status,
            at: Instant::now(),
        });
    }
    if let Some(d) = hang {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The caller gave up long ago; the connection just closes.
        return;
    }
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status),
        if answer.json {
            "application/json; charset=utf-8"
        } else {
            "text/plain"
        },
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&answer.body);
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.flush();
}

fn json_content(headers: &BTreeMap<String, String>, problems: &mut Vec<String>) {
    if !headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        problems.push(format!(
            "content-type is {:?}, not application/json",
            headers.get("content-type")
        ));
    }
}

fn query(path: &str) -> BTreeMap<String, String> {
    path.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.replace("%2C", ",")))
                .collect()
        })
        .unwrap_or_default()
}

fn issue_json(addr_repo: &str, i: &Issue) -> Value {
    let mut v = json!({
        "id": 1000 + i.number,
        "number": i.number,
        "title": i.title,
        "body": i.body,
        "state": i.state,
        "state_reason": i.state_reason,
        "labels": i.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
        "url": format!("{addr_repo}/issues/{}", i.number),
        "html_url": format!("https://github.example/{}/issues/{}", addr_repo.rsplit("/repos/").next().unwrap_or(""), i.number),
    });
    if i.pull_request {
        v["pull_request"] = json!({"url": format!("{addr_repo}/pulls/{}", i.number)});
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn github(
    state: &Mutex<State>,
    ex: &Expect,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: &Value,
    problems: &mut Vec<String>,
) -> Reply {
    let h = |k: &str| headers.get(k).map(String::as_str).unwrap_or("");
    if h("authorization") != format!("Bearer {}", ex.github_token) {
        problems.push("authorization is not `Bearer <token>`".into());
        return reply(
            401,
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
        );
    }
    if h("accept") != "application/vnd.github+json" {
        problems.push(format!("accept is {:?}", h("accept")));
    }
    if h("x-github-api-version") != "2022-11-28" {
        problems.push(format!(
            "x-github-api-version is {:?}",
            h("x-github-api-version")
        ));
    }
    if h("user-agent").is_empty() {
        problems.push("no user-agent (GitHub requires one)".into());
        return reply(
            403,
            json!({"message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"}),
        );
    }
    let repo_prefix = format!("/github/repos/{}", ex.repository);
    let route = path.split('?').next().unwrap_or("");
    let Some(rest) = route.strip_prefix(&repo_prefix) else {
        problems.push(format!("not under {repo_prefix}"));
        return reply(404, json!({"message": "Not Found"}));
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let base = format!("http://{}{repo_prefix}", h("host"));
    let mut s = lock(state);
    match (method, segs.as_slice()) {
        ("GET", ["issues"]) => {
            let q = query(path);
            if q.get("state").map(String::as_str) != Some("open") {
                problems.push("listing without state=open".into());
            }
            let want: Vec<&str> = q.get("labels").map_or(vec![], |l| l.split(',').collect());
            let per_page: usize = q
                .get("per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(30)
                .clamp(1, 100);
            let page: usize = q
                .get("page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
                .max(1);
            let matching: Vec<&Issue> = s
                .issues
                .iter()
                .rev()
                .filter(|i| {
                    i.state == "open" && want.iter().all(|w| i.labels.iter().any(|l| l == w))
                })
                .collect();
            let items: Vec<Value> = matching
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|i| issue_json(&base, i))
                .collect();
            let mut r = reply(200, Value::Array(items));
            if page * per_page < matching.len() {
                let mut next = format!(
                    "{base}/issues?state=open&per_page={per_page}&page={}",
                    page + 1
                );
                if let Some(l) = q.get("labels") {
                    next.push_str(&format!("&labels={l}"));
                }
                r.headers
                    .push(("Link".into(), format!("<{next}>; rel=\"next\"")));
            }
            r
        }
        ("POST", ["issues"]) => {
            json_content(headers, problems);
            let title = body["title"].as_str().unwrap_or("");
            let labels: Option<Vec<String>> = body["labels"].as_array().map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect()
            });
            if title.is_empty() || !body["body"].is_string() || labels.is_none() {
                problems.push(format!("create body lacks title/body/labels: {body}"));
                return reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}]}),
                );
            }
            let issue = Issue {
                number: s.issues.len() as u64 + 1,
                title: title.into(),
                body: body["body"].as_str().unwrap_or("").into(),
                labels: labels.unwrap_or_default(),
                state: "open".into(),
                state_reason: None,
                comments: vec![],
                pull_request: false,
            };
            let v = issue_json(&base, &issue);
            s.issues.push(issue);
            reply(201, v)
        }
        ("POST", ["issues", n, "comments"]) => {
            json_content(headers, problems);
            let Some(i) = n
                .parse::<u64>()
                .ok()
                .and_then(|n| s.issues.iter_mut().find(|i| i.number == n))
            else {
                return reply(404, json!({"message": "Not Found"}));
            };
            let Some(text) = body["body"].as_str() else {
                problems.push("comment without body".into());
                return reply(422, json!({"message": "Validation Failed"}));
            };
            i.comments.push(text.into());
            reply(
                201,
                json!({"id": 5000 + i.comments.len(), "body": text, "html_url": format!("https://github.example/issue/{n}#comment")}),
            )
        }
        ("PATCH", ["issues", n]) => {
            json_content(headers, problems);
            let Some(i) = n
                .parse::<u64>()
                .ok()
                .and_then(|n| s.issues.iter_mut().find(|i| i.number == n))
            else {
                return reply(404, json!({"message": "Not Found"}));
            };
            match body["state"].as_str() {
                Some(st @ ("open" | "closed")) => i.state = st.into(),
                _ => {
                    problems.push(format!("patch state is {}", body["state"]));
                    return reply(422, json!({"message": "Validation Failed"}));
                }
            }
            if let Some(r) = body["state_reason"].as_str() {
                if !matches!(r, "completed" | "not_planned" | "reopened") {
                    problems.push(format!("state_reason {r}"));
                }
                i.state_reason = Some(r.into());
            }
            let v = issue_json(&base, i);
            reply(200, v)
        }
        _ => {
            problems.push(format!("no such endpoint {method} {route}"));
            reply(404, json!({"message": "Not Found"}))
        }
    }
}

fn slack(
    method: &str,
    headers: &BTreeMap<String, String>,
    body: &Value,
    problems: &mut Vec<String>,
) -> Reply {
    if method != "POST" {
        problems.push(format!("method {method}"));
        return text(405, "invalid_method");
    }
    json_content(headers, problems);
    let text_ok = body["text"].as_str().is_some_and(|t| !t.is_empty());
    let atts = body["attachments"].as_array();
    let att_ok = atts.is_some_and(|a| {
        a.len() == 1
            && a.iter().all(|x| {
                x["color"].as_str().is_some_and(|c| {
                    matches!(c, "good" | "warning" | "danger")
                        || (c.starts_with('#') && c.len() == 7)
                }) && x["fields"].as_array().is_some_and(|f| {
                    f.iter().all(|f| {
                        f["title"].is_string() && f["value"].is_string() && f["short"].is_boolean()
                    })
                })
            })
    });
    if !text_ok || !att_ok {
        problems.push(format!("payload shape: {body}"));
        return text(400, "invalid_payload");
    }
    text(200, "ok")
}

fn pagerduty(
    ex: &Expect,
    method: &str,
    headers: &BTreeMap<String, String>,
    body: &Value,
    problems: &mut Vec<String>,
) -> Reply {
    let invalid = |problems: &mut Vec<String>, why: String| {
        problems.push(why.clone());
        reply(
            400,
            json!({"status": "invalid event", "message": "Event object is invalid", "errors": [why]}),
        )
    };
    if method != "POST" {
        return invalid(problems, format!("method {method}"));
    }
    json_content(headers, problems);
    if body["routing_key"].as_str() != Some(ex.routing_key.as_str()) {
        return invalid(problems, "routing_key is not the integration key".into());
    }
    let key = body["dedup_key"].as_str().unwrap_or("");
    if key.is_empty() || key.len() > 255 {
        return invalid(problems, "dedup_key missing or over 255 characters".into());
    }
    match body["event_action"].as_str() {
        Some("trigger") => {
            let p = &body["payload"];
            let summary = p["summary"].as_str().unwrap_or("");
            if summary.is_empty() || summary.len() > 1024 {
                return invalid(problems, "payload.summary missing or over 1024".into());
            }
            if p["source"].as_str().is_none_or(str::is_empty) {
                return invalid(problems, "payload.source missing".into());
            }
            if !p["severity"]
                .as_str()
                .is_some_and(|s| matches!(s, "critical" | "error" | "warning" | "info"))
            {
                return invalid(problems, format!("payload.severity {}", p["severity"]));
            }
            if let Some(t) = p.get("timestamp")
                && !t
                    .as_str()
                    .is_some_and(|t| t.len() >= 20 && t.as_bytes()[10] == b'T')
            {
                return invalid(problems, format!("payload.timestamp {t} is not ISO 8601"));
            }
            if !p["custom_details"].is_object() {
                problems.push("payload.custom_details is not an object".into());
            }
        }
        Some("acknowledge" | "resolve") => {}
        other => return invalid(problems, format!("event_action {other:?}")),
    }
    reply(
        202,
        json!({"status": "success", "message": "Event processed", "dedup_key": key}),
    )
}

fn webhook(
    ex: &Expect,
    method: &str,
    headers: &BTreeMap<String, String>,
    raw: &[u8],
    body: &Value,
    problems: &mut Vec<String>,
) -> Reply {
    if method != "POST" {
        problems.push(format!("method {method}"));
        return reply(405, json!({"error": "method"}));
    }
    json_content(headers, problems);
    let ts = headers
        .get("x-rampart-timestamp")
        .cloned()
        .unwrap_or_default();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(ex.webhook_secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(raw);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if headers.get("x-rampart-signature").map(String::as_str) != Some(&format!("sha256={want}")) {
        problems.push("x-rampart-signature is not sha256=<HMAC of \"<timestamp>.<body>\">".into());
        return reply(401, json!({"error": "bad signature"}));
    }
    if headers
        .get("x-rampart-timestamp")
        .is_none_or(|t| t.parse::<u64>().is_err())
    {
        problems.push("x-rampart-timestamp is not Unix seconds".into());
    }
    if !body["event"].is_string() {
        problems.push("no event".into());
        return reply(400, json!({"error": "no event"}));
    }
    reply(200, json!({"received": true}))
}
