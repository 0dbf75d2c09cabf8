//! The health-check suite: checks of many kinds, their retry and severity policy, run
//! concurrently under one deadline, and their verdict.
//!
//! Input: a suite ([`Suite`]), usually a YAML file such as `playbooks/health/production.yml`,
//! rendered with the caller's variables: each check has a `name`, a `category`, a `severity`
//! (`critical` fails the suite, `warning` and `optional` only report), optional `attempts`,
//! `delay`, `timeout`, `when` (false: reported `skipped`, not failed) and `depends_on` (names of
//! checks that must pass first, else `skipped` with the reason), and exactly one kind key
//! (`http`, `tcp`, `postgres`, `redis`, `systemd`, `disk`, `memory`, `load`, `command`, `file`,
//! `grpc`) holding its parameters ([`probes`]).
//!
//! Output: one [`CheckResult`] per check (status pass / warn / fail / skipped, attempts, time,
//! observed value, message, diagnostics on failure) and a [`Summary`] whose `passed` is false
//! when a critical check failed.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
pub mod probes;

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use minijinja::value::Value as MjValue;
use serde::Serialize;
use serde_json::{Map, Value};

use rampart_playbook::template::{Templar, from_json};

/// The shipped production suite (`playbooks/health/production.yml`), built in so agents (which
/// get playbooks without their directory) and the CLI have it too.
pub const PRODUCTION_SUITE: &str = include_str!("../../../playbooks/health/production.yml");

/// Attempts of a critical check unless it says otherwise (the production runbook's 3).
pub const DEFAULT_CRITICAL_ATTEMPTS: u32 = 3;
/// Attempts of warning and optional checks unless they say otherwise.
pub const DEFAULT_OTHER_ATTEMPTS: u32 = 1;
/// Seconds between attempts (the runbook's 5).
pub const DEFAULT_DELAY_SECS: f64 = 5.0;
/// Seconds one attempt may take (the runbook's 30).
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
/// Checks run at the same time.
pub const DEFAULT_PARALLELISM: usize = 16;
/// Seconds the whole suite may take.
pub const DEFAULT_DEADLINE_SECS: f64 = 300.0;
/// Upper bound on attempts, whatever a suite says.
const MAX_ATTEMPTS: u32 = 100;

/// How much a failing check matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Its failure fails the suite (and the task, so rescue runs).
    Critical,
    /// Reported, never fails the suite.
    Warning,
    /// An external dependency: reported as a warning.
    Optional,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// A warning or optional check failed.
    Warn,
    /// A critical check failed.
    Fail,
    /// Not run: its `when` was false, a dependency did not pass, or the deadline came.
    Skipped,
}

/// One check of a suite, before its parameters are rendered.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its name (unique in the suite).
    pub name: String,
    /// Its category (`backend`, `database`, ...).
    pub category: String,
    /// Its severity.
    pub severity: Severity,
    /// The kind (`http`, `tcp`, ...).
    pub kind: String,
    /// The kind's parameters, still templated.
    pub params: Value,
    /// Tries before it counts as failed, pause between tries and bound on one try: numbers,
    /// or templates rendered when the check runs.
    pub policy: [Value; 3],
    /// Names of checks that must pass first.
    pub depends_on: Vec<String>,
    /// A condition (Jinja expression); false: skipped.
    pub when: Option<String>,
}

/// A suite: its checks and its bounds.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The checks, in report order.
    pub checks: Vec<Check>,
    /// Checks run at the same time.
    pub parallelism: usize,
    /// Bound on the whole suite.
    pub deadline: Duration,
    /// Variables the suite defines (the caller's win).
    pub vars: Map<String, Value>,
}

/// What one try of a probe found.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Whether it passed.
    pub passed: bool,
    /// The observed value (status code, percentage, version, ...).
    pub value: Value,
    /// What was found, in words.
    pub message: String,
    /// Details that help on failure (response excerpt, unit state and log, error text).
    pub diagnostics: Value,
}

impl Probe {
    /// A pass with a value and message.
    pub fn pass(value: Value, message: impl Into<String>) -> Probe {
        Probe {
            passed: true,
            value,
            message: message.into(),
            diagnostics: Value::Null,
        }
    }

    /// A failure with a value and message.
    pub fn fail(value: Value, message: impl Into<String>) -> Probe {
        Probe {
            passed: false,
            value,
            message: message.into(),
            diagnostics: Value::Null,
        }
    }

    /// With diagnostics.
    pub fn with(mut self, diagnostics: Value) -> Probe {
        self.diagnostics = diagnostics;
        self
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Its name.
    pub name: String,
    /// Its category.
    pub category: String,
    /// Its severity.
    pub severity: Severity,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its verdict.
    pub status: Status,
    /// Tries made.
    pub attempts: u32,
    /// Milliseconds from its first try to its verdict.
    pub duration_ms: u64,
    /// The last observed value.
    pub value: Value,
    /// The last message.
    pub message: String,
    /// On failure, what helps to see why.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub diagnostics: Value,
}

/// The suite's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// False when a critical check failed.
    pub passed: bool,
    /// Checks per status.
    pub pass: usize,
    /// Warnings.
    pub warn: usize,
    /// Critical failures.
    pub fail: usize,
    /// Skipped.
    pub skipped: usize,
    /// Milliseconds for the whole suite.
    pub duration_ms: u64,
    /// Names of the failed critical checks.
    pub failed: Vec<String>,
}

fn secs(v: Option<&Value>, default: f64, what: &str, check: &str) -> Result<Duration, String> {
    let s = match v {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(default),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("check '{check}': {what} '{s}' is not a number of seconds"))?,
        Some(other) => {
            return Err(format!(
                "check '{check}': {what} {other} is not a number of seconds"
            ));
        }
    };
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!(
            "check '{check}': {what} {s} is out of range (0 to 86400 seconds)"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

impl Suite {
    /// Reads a suite document (`checks:` list, optional `vars:`, `parallelism:`, `deadline:`,
    /// `defaults:` {attempts, delay, timeout}). Every problem is named with its check.
    pub fn from_value(doc: &Value) -> Result<Suite, String> {
        let obj = doc
            .as_object()
            .ok_or("a health suite is a mapping with a `checks:` list")?;
        let defaults = obj.get("defaults").cloned().unwrap_or(Value::Null);
        let raw = obj
            .get("checks")
            .and_then(Value::as_array)
            .ok_or("a health suite needs a `checks:` list")?;
        let mut checks = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            checks.push(Check::from_value(c, &defaults).map_err(|e| format!("checks[{i}]: {e}"))?);
        }
        let mut seen = HashMap::new();
        for c in &checks {
            if seen.insert(c.name.as_str(), ()).is_some() {
                return Err(format!("two checks are named '{}'", c.name));
            }
        }
        for c in &checks {
            for d in &c.depends_on {
                if !seen.contains_key(d.as_str()) {
                    return Err(format!(
                        "check '{}' depends on '{d}', which is not in the suite",
                        c.name
                    ));
                }
            }
        }
        order_by_dependencies(&checks)?;
        let parallelism = match obj.get("parallelism") {
            None | Some(Value::Null) => DEFAULT_PARALLELISM,
            Some(v) => {
                v.as_u64()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or("parallelism must be a number from 1 to 256")? as usize
            }
        };
        Ok(Suite {
            checks,
            parallelism,
            deadline: secs(
                obj.get("deadline"),
                DEFAULT_DEADLINE_SECS,
                "deadline",
                "suite",
            )?,
            vars: obj
                .get("vars")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Reads a suite from YAML text.
    pub fn from_yaml(text: &str) -> Result<Suite, String> {
        let docs = rampart_playbook::yaml::parse(text, &rampart_playbook::yaml::Limits::default())
            .map_err(|e| e.to_string())?;
        let doc = docs.first().ok_or("the health suite file is empty")?;
        Suite::from_value(&doc.to_json())
    }
}

/// The kinds of check, with the probe that runs each.
pub const KINDS: &[&str] = &[
    "http", "tcp", "postgres", "redis", "systemd", "disk", "memory", "load", "command", "file",
    "grpc",
];

impl Check {
    fn from_value(v: &Value, defaults: &Value) -> Result<Check, String> {
        let obj = v.as_object().ok_or("a check is a mapping")?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a check needs a `name`")?
            .to_string();
        let kinds: Vec<&str> = KINDS
            .iter()
            .copied()
            .filter(|k| obj.contains_key(*k))
            .collect();
        let kind = match kinds.as_slice() {
            [one] => one.to_string(),
            [] => {
                return Err(format!(
                    "check '{name}' has no kind: give one of {}",
                    KINDS.join(", ")
                ));
            }
            more => {
                return Err(format!(
                    "check '{name}' has several kinds: {}",
                    more.join(", ")
                ));
            }
        };
        for key in obj.keys() {
            let known = [
                "name",
                "category",
                "severity",
                "attempts",
                "delay",
                "timeout",
                "depends_on",
                "when",
            ];
            if !known.contains(&key.as_str()) && !KINDS.contains(&key.as_str()) {
                return Err(format!("check '{name}': unknown key `{key}`"));
            }
        }
        let severity = match obj
            .get("severity")
            .and_then(Value::as_str)
            .unwrap_or("critical")
        {
            "critical" => Severity::Critical,
            "warning" => Severity::Warning,
            "optional" => Severity::Optional,
            other => {
                return Err(format!(
                    "check '{name}': severity '{other}' is not critical, warning or optional"
                ));
            }
        };
        let pick = |key: &str| {
            obj.get(key)
                .filter(|v| !v.is_null())
                .or_else(|| defaults.get(key))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let policy = [pick("attempts"), pick("delay"), pick("timeout")];
        // Literal values are checked now; templated ones when the check runs.
        if !policy.iter().any(|v| {
            v.as_str()
                .is_some_and(rampart_playbook::template::is_template)
        }) {
            resolve_policy(&policy, severity, &name)?;
        }
        let depends_on = match obj.get("depends_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("check '{name}': depends_on lists names"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("check '{name}': depends_on lists names")),
        };
        let when = match obj.get("when") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("check '{name}': when {other} is not a condition")),
        };
        Ok(Check {
            category: obj
                .get("category")
                .and_then(Value::as_str)
                .unwrap_or("general")
                .to_string(),
            severity,
            params: obj.get(&kind).cloned().unwrap_or(Value::Null),
            policy,
            depends_on,
            when,
            kind,
            name,
        })
    }
}

/// Attempts, delay and timeout from their (rendered) values, with the defaults by severity.
fn resolve_policy(
    policy: &[Value; 3],
    severity: Severity,
    name: &str,
) -> Result<(u32, Duration, Duration), String> {
    let default_attempts = if severity == Severity::Critical {
        DEFAULT_CRITICAL_ATTEMPTS
    } else {
        DEFAULT_OTHER_ATTEMPTS
    };
    let attempts = match &policy[0] {
        Value::Null => default_attempts,
        v => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
            .ok_or_else(|| format!("check '{name}': attempts {v} is not 1 to {MAX_ATTEMPTS}"))?,
    };
    Ok((
        attempts,
        secs(Some(&policy[1]), DEFAULT_DELAY_SECS, "delay", name)?,
        secs(Some(&policy[2]), DEFAULT_TIMEOUT_SECS, "timeout", name)?,
    ))
}

/// Refuses dependency cycles; returns the checks' indexes in an order where dependencies come
/// first.
fn order_by_dependencies(checks: &[Check]) -> Result<Vec<usize>, String> {
    let index: HashMap<&str, usize> = checks
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut state = vec![0u8; checks.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::new();
    fn visit(
        i: usize,
        checks: &[Check],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), String> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                return Err(format!(
                    "check '{}' depends on itself through depends_on",
                    checks[i].name
                ));
            }
            _ => {}
        }
        state[i] = 1;
        for d in &checks[i].depends_on {
            visit(index[d.as_str()], checks, index, state, order)?;
        }
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..checks.len() {
        visit(i, checks, &index, &mut state, &mut order)?;
    }
    Ok(order)
}

/// Variables for rendering a suite: `overrides` first, then `base` (a task's scope), then the
/// suite's own `vars`.
#[derive(Debug)]
struct Overlay {
    overrides: Map<String, Value>,
    base: Option<MjValue>,
    defaults: Map<String, Value>,
}

impl minijinja::value::Object for Overlay {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &std::sync::Arc<Self>, key: &MjValue) -> Option<MjValue> {
        let name = key.as_str()?;
        if let Some(v) = self.overrides.get(name) {
            return Some(from_json(v));
        }
        if let Some(v) = self
            .base
            .as_ref()
            .and_then(|b| b.get_attr(name).ok())
            .filter(|v| !v.is_undefined())
        {
            return Some(v);
        }
        self.defaults.get(name).map(from_json)
    }
}

/// The scope a suite's checks are rendered in: `overrides` over `base` (a task's variables,
/// when run from a playbook) over the suite's own `vars`, whose templates (`frontend_url:
/// "{{ backend_url }}"`) are rendered in that same scope.
pub fn scope(
    suite: &Suite,
    templar: &Templar,
    base: Option<MjValue>,
    overrides: &Map<String, Value>,
) -> MjValue {
    let mut defaults = suite.vars.clone();
    // A few passes resolve defaults that refer to other defaults; what still fails to render
    // stays as written and fails the checks that use it, with the template error.
    for _ in 0..3 {
        let current = MjValue::from_object(Overlay {
            overrides: overrides.clone(),
            base: base.clone(),
            defaults: defaults.clone(),
        });
        let mut changed = false;
        for (k, v) in defaults.clone() {
            if v.as_str()
                .is_some_and(rampart_playbook::template::is_template)
                && let Ok(rendered) = templar.render_value(&v, &current)
                && rendered != v
            {
                defaults.insert(k, rendered);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    MjValue::from_object(Overlay {
        overrides: overrides.clone(),
        base,
        defaults,
    })
}

/// Runs a suite in `scope` ([`scope`]), at most `suite.parallelism` checks at a time, calling
/// `on_result` (on the calling thread) as each check finishes; returns every result in suite
/// order.
pub fn run(
    suite: &Suite,
    templar: &Templar,
    scope: &MjValue,
    on_result: &mut dyn FnMut(&CheckResult),
) -> (Vec<CheckResult>, Summary) {
    let started = Instant::now();
    let deadline = started + suite.deadline;

    struct Board {
        results: Vec<Option<CheckResult>>,
        running: Vec<bool>,
    }
    let n = suite.checks.len();
    let board = Mutex::new(Board {
        results: vec![None; n],
        running: vec![false; n],
    });
    let changed = Condvar::new();
    let index: HashMap<&str, usize> = suite
        .checks
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();

    let workers = suite.parallelism.min(n).max(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<CheckResult>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let board = &board;
            let changed = &changed;
            let index = &index;
            s.spawn(move || {
                loop {
                    // Take a check whose dependencies are all decided, or stop when none is left.
                    let picked = {
                        let mut b = board.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            let ready = (0..n).find(|&i| {
                                b.results[i].is_none()
                                    && !b.running[i]
                                    && suite.checks[i]
                                        .depends_on
                                        .iter()
                                        .all(|d| b.results[index[d.as_str()]].is_some())
                            });
                            if let Some(i) = ready {
                                b.running[i] = true;
                                let blocked = suite.checks[i].depends_on.iter().find_map(|d| {
                                    let r = b.results[index[d.as_str()]].as_ref()?;
                                    match r.status {
                                        Status::Pass => None,
                                        Status::Skipped => {
                                            Some(format!("depends on '{d}', which was skipped"))
                                        }
                                        other => Some(format!(
                                            "depends on '{d}', which did not pass ({})",
                                            status_word(other)
                                        )),
                                    }
                                });
                                break Some((i, blocked));
                            }
                            // Nothing left to take: every check is decided or being run.
                            if (0..n).all(|i| b.results[i].is_some() || b.running[i]) {
                                break None;
                            }
                            b = changed.wait(b).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    let Some((i, blocked)) = picked else {
                        changed.notify_all();
                        return;
                    };
                    let check = &suite.checks[i];
                    let result = match blocked {
                        Some(why) => skipped(check, format!("skipped: {why}")),
                        None => run_check(check, templar, scope, deadline),
                    };
                    let _ = done_tx.send(result.clone());
                    let mut b = board.lock().unwrap_or_else(|p| p.into_inner());
                    b.running[i] = false;
                    b.results[i] = Some(result);
                    drop(b);
                    changed.notify_all();
                }
            });
        }
        // The verdicts reach the caller as they land, on this thread; the loop ends when every
        // worker has finished and dropped its sender.
        drop(done_tx);
        for result in done_rx.iter().take(n) {
            on_result(&result);
        }
    });
    let results: Vec<CheckResult> = board
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .results
        .into_iter()
        .zip(&suite.checks)
        .map(|(r, c)| r.unwrap_or_else(|| skipped(c, "skipped: not run".into())))
        .collect();
    let summary = summarize(&results, started.elapsed());
    (results, summary)
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Warn => "warn",
        Status::Fail => "fail",
        Status::Skipped => "skipped",
    }
}

fn skipped(check: &Check, message: String) -> CheckResult {
    CheckResult {
        name: check.name.clone(),
        category: check.category.clone(),
        severity: check.severity,
        kind: check.kind.clone(),
        status: Status::Skipped,
        attempts: 0,
        duration_ms: 0,
        value: Value::Null,
        message,
        diagnostics: Value::Null,
    }
}

/// Evaluates `when` (true/false text, or a Jinja expression, `{{ }}` optional).
fn condition(when: &str, templar: &Templar, scope: &MjValue) -> Result<bool, String> {
    let expr = when.trim();
    let expr = expr
        .strip_prefix("{{")
        .and_then(|e| e.strip_suffix("}}"))
        .unwrap_or(expr)
        .trim();
    match expr.to_ascii_lowercase().as_str() {
        "true" | "yes" => return Ok(true),
        "false" | "no" => return Ok(false),
        _ => {}
    }
    templar
        .eval_conditions(&[Value::String(expr.to_string())], scope)
        .map_err(|e| format!("when: {e}"))
}

/// Runs one check: condition, rendering, tries with delays, verdict.
pub fn run_check(
    check: &Check,
    templar: &Templar,
    scope: &MjValue,
    deadline: Instant,
) -> CheckResult {
    let started = Instant::now();
    let mut result = skipped(check, String::new());
    if let Some(when) = &check.when {
        match condition(when, templar, scope) {
            Ok(true) => {}
            Ok(false) => {
                result.message = format!("skipped: not configured (when: {when})");
                return result;
            }
            Err(e) => {
                result.status = failed_status(check.severity);
                result.message = e;
                return result;
            }
        }
    }
    let rendered = templar
        .render_value(&Value::Array(check.policy.to_vec()), scope)
        .map_err(|e| format!("cannot render attempts/delay/timeout: {e}"))
        .and_then(|v| match v {
            Value::Array(items) => <[Value; 3]>::try_from(items)
                .map_err(|_| "attempts/delay/timeout did not render".to_string()),
            _ => Err("attempts/delay/timeout did not render".to_string()),
        })
        .and_then(|policy| resolve_policy(&policy, check.severity, &check.name));
    let (attempts, delay, timeout) = match rendered {
        Ok(p) => p,
        Err(e) => {
            result.status = failed_status(check.severity);
            result.message = e;
            return result;
        }
    };
    let params = match templar.render_value(&check.params, scope) {
        Ok(p) => p,
        Err(e) => {
            result.status = failed_status(check.severity);
            result.message = format!("cannot render the check's parameters: {e}");
            return result;
        }
    };
    let mut last = Probe::default();
    for attempt in 1..=attempts {
        let now = Instant::now();
        if now >= deadline {
            last = Probe::fail(Value::Null, "the suite's deadline passed before this try");
            break;
        }
        let timeout = timeout.min(deadline - now);
        last = probes::probe(&check.kind, &params, timeout);
        result.attempts = attempt;
        if last.passed || attempt == attempts {
            break;
        }
        let pause = delay.min(deadline.saturating_duration_since(Instant::now()));
        std::thread::sleep(pause);
    }
    result.status = if last.passed {
        Status::Pass
    } else {
        failed_status(check.severity)
    };
    result.duration_ms = started.elapsed().as_millis() as u64;
    result.value = last.value;
    result.message = last.message;
    if !last.passed {
        result.diagnostics = last.diagnostics;
    }
    result
}

fn failed_status(severity: Severity) -> Status {
    match severity {
        Severity::Critical => Status::Fail,
        Severity::Warning | Severity::Optional => Status::Warn,
    }
}

fn summarize(results: &[CheckResult], took: Duration) -> Summary {
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.name.clone())
        .collect();
    Summary {
        passed: failed.is_empty(),
        pass: count(Status::Pass),
        warn: count(Status::Warn),
        fail: count(Status::Fail),
        skipped: count(Status::Skipped),
        duration_ms: took.as_millis() as u64,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn suite(checks: Value) -> Result<Suite, String> {
        Suite::from_value(&json!({ "checks": checks }))
    }

    #[test]
    fn suites_are_checked_before_anything_runs() {
        let cases = [
            (json!([{"name": "a"}]), "has no kind"),
            (
                json!([{"name": "a", "tcp": {}, "file": {}}]),
                "several kinds",
            ),
            (
                json!([{"name": "a", "tcp": {}, "colour": 1}]),
                "unknown key `colour`",
            ),
            (
                json!([{"name": "a", "tcp": {}, "severity": "fatal"}]),
                "severity 'fatal'",
            ),
            (
                json!([{"name": "a", "tcp": {}}, {"name": "a", "tcp": {}}]),
                "two checks are named 'a'",
            ),
            (
                json!([{"name": "a", "tcp": {}, "depends_on": "b"}]),
                "depends on 'b', which is not in the suite",
            ),
            (
                json!([{"name": "a", "tcp": {}, "depends_on": "b"}, {"name": "b", "tcp": {}, "depends_on": "a"}]),
                "depends on itself",
            ),
            (
                json!([{"name": "a", "tcp": {}, "attempts": 0}]),
                "attempts 0 is not 1 to 100",
            ),
            (
                json!([{"name": "a", "tcp": {}, "delay": "soon"}]),
                "delay 'soon' is not a number",
            ),
        ];
        for (checks, want) in cases {
            let err = suite(checks.clone()).unwrap_err();
            assert!(err.contains(want), "{checks}: {err}");
        }
    }

    #[test]
    fn defaults_follow_the_runbook_and_templated_policy_waits_for_its_variables() {
        let s = suite(json!([
            {"name": "c", "tcp": {}},
            {"name": "w", "severity": "warning", "tcp": {}},
            {"name": "t", "tcp": {}, "attempts": "{{ n }}"},
        ]))
        .unwrap();
        let p = |i: usize| resolve_policy(&s.checks[i].policy, s.checks[i].severity, "x").unwrap();
        assert_eq!(p(0), (3, Duration::from_secs(5), Duration::from_secs(30)));
        assert_eq!(p(1).0, 1);
        assert!(resolve_policy(&s.checks[2].policy, Severity::Critical, "t").is_err());
    }

    #[test]
    fn verdicts_by_severity_and_dependencies() {
        let s = Suite::from_value(&json!({
            "parallelism": 2,
            "checks": [
                {"name": "ok", "category": "a", "command": {"cmd": "true"}},
                {"name": "bad", "category": "a", "attempts": 1, "command": {"cmd": "false"}},
                {"name": "soft", "category": "b", "severity": "warning", "command": {"cmd": "false"}},
                {"name": "after bad", "category": "a", "depends_on": "bad", "command": {"cmd": "true"}},
                {"name": "off", "category": "b", "when": "enabled | default(false)", "command": {"cmd": "false"}},
            ]
        }))
        .unwrap();
        let templar = Templar::new();
        let scope = scope(&s, &templar, None, &Map::new());
        let mut seen = Vec::new();
        let (results, summary) = run(&s, &templar, &scope, &mut |r| seen.push(r.name.clone()));
        let status: Vec<Status> = results.iter().map(|r| r.status).collect();
        assert_eq!(
            status,
            [
                Status::Pass,
                Status::Fail,
                Status::Warn,
                Status::Skipped,
                Status::Skipped
            ]
        );
        assert_eq!(seen.len(), 5, "every verdict reached the caller");
        assert!(!summary.passed);
        assert_eq!(summary.failed, ["bad"]);
        assert!(results[3].message.contains("depends on 'bad'"));
        assert!(results[4].message.contains("not configured"));
    }
}
