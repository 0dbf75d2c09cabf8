//! Is this host whole? The state-consistency check behind `CheckState`, the agent's periodic
//! check and the metrics textfile (SC-003: no partial deployment).
//!
//! Input: the state directory, what the caller knows about each component ([`Expectation`]: its
//! public path and the URL answering the running version; none: every component under `apps/`
//! with only the agent's own records) and the txids this process is running. Output: a
//! [`Report`], its problems in a stable order (component, then code). Read-only: it never
//! repairs, it says what to do.
//!
//! What is checked (each problem's [`Code`]):
//! - per component: `current` exists (`current_missing`) and resolves to a release directory
//!   (`current_dangling`); the public path resolves to the same release (`path_mismatch`);
//!   `state.json`'s `current` (written by the `release` module) names the same version
//!   (`state_mismatch`); the service's version URL answers that version
//!   (`service_version_mismatch`, `service_unreachable`);
//! - per component: no staging dir (`apps/<c>/.staging-<version>-<txid>`, the `release` module's)
//!   of a transaction that is not running (`staging_left`), and no temporary file of
//!   [`rampart_host::durable`] (`.<name>.rampart-tmp-<pid>-<n>`) of a process that is gone
//!   (`temp_left`), in `apps/<c>/` and `apps/<c>/releases/`;
//! - host: no upload of a process that is gone in `artifacts/tmp/` (`temp_left`); no deploy
//!   lock (`locks/<name>.json`) held by a transaction that is not running, and no host-lock
//!   holder record that no process holds any more (`lock_held`); no journal in `journal/`
//!   without its end, other than a running one's (`journal_unfinished`).
//!
//! A transaction runs when this process says so (its live registry) or when the host lock is
//! held (`flock`: only a live process can hold it) by it. Its txid is the report's
//! `in_progress`, and its own staging dir, journal and deploy locks are not problems. The running
//! set is taken before and after the scan, so a transaction that starts during it is not
//! reported as its own debris. While one runs, `current`, the recorded state and the service may
//! legitimately disagree for a moment: callers treat such a report as provisional.
//!
//! The version URL is fetched only from `http://127.0.0.1`, `http://[::1]` or `http://localhost`
//! (any port), with a [`VERSION_TIMEOUT`] deadline, no redirects and at most [`VERSION_BODY_MAX`]
//! bytes of body: the body trimmed is the version, or, when it is a JSON object, its `version`
//! field (or `app.version`, Spring Boot's `/actuator/info`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::journal;
use crate::lock::{self, LOCK_FILE};
use crate::modules::deploy_lock::LockHolder;
use crate::modules::release::check_name;

/// The most components one check takes.
pub const MAX_COMPONENTS: usize = 256;
/// The longest public path or version URL accepted, in bytes.
pub const MAX_FIELD: usize = 2048;
/// How long the version URL may take to answer, in all.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of a version URL's body read.
pub const VERSION_BODY_MAX: usize = 4096;
/// The most directory entries looked at in one directory (a host with more is itself a problem
/// no check should hang on).
const MAX_ENTRIES: usize = 100_000;

/// What the caller knows about one component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expectation {
    /// The component (a directory name under `apps/`).
    pub name: String,
    /// Its public path (a symlink to `current`), when known.
    pub path: Option<PathBuf>,
    /// The local URL answering the running version, when known.
    pub version_url: Option<String>,
}

impl Expectation {
    /// Checks one expectation from the network: a valid component name, an absolute path and a
    /// loopback `http://` URL, each bounded. The message names the field and what to send.
    pub fn new(name: &str, path: &str, version_url: &str) -> Result<Expectation, String> {
        check_name("component", name)?;
        let path = match path {
            "" => None,
            p if p.len() > MAX_FIELD => {
                return Err(format!(
                    "the path of component {name} is longer than {MAX_FIELD} bytes"
                ));
            }
            p if !p.starts_with('/') || p.contains('\0') => {
                return Err(format!(
                    "the path of component {name} must be absolute, not `{}`",
                    short(p)
                ));
            }
            p => Some(PathBuf::from(p)),
        };
        let version_url = match version_url {
            "" => None,
            u if u.len() > MAX_FIELD => {
                return Err(format!(
                    "the version_url of component {name} is longer than {MAX_FIELD} bytes"
                ));
            }
            u => {
                check_local_url(u).map_err(|e| format!("component {name}: {e}"))?;
                Some(u.to_string())
            }
        };
        Ok(Expectation {
            name: name.to_string(),
            path,
            version_url,
        })
    }
}

/// At most 80 characters of `s`, for messages.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A version URL must be plain http to this host: the check never reaches another machine.
pub fn check_local_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "version_url `{}` must start with http:// (the service on this host, e.g. \
             http://127.0.0.1:8080/version)",
            short(url)
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().map(|h| format!("[{h}]"))
    } else {
        authority.split(':').next().map(str::to_string)
    };
    match host.as_deref() {
        Some("127.0.0.1" | "localhost" | "[::1]") if !authority.contains('@') => Ok(()),
        _ => Err(format!(
            "version_url `{}` must name 127.0.0.1, [::1] or localhost: the check asks only the \
             service on this host",
            short(url)
        )),
    }
}

/// What was found wrong, as a stable short code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// The component has no `current` link.
    CurrentMissing,
    /// `current` points at no release directory.
    CurrentDangling,
    /// The public path does not resolve to the current release.
    PathMismatch,
    /// `state.json` names another version than `current`.
    StateMismatch,
    /// The running service reports another version.
    ServiceVersionMismatch,
    /// The version URL did not answer (in time, with 2xx, within the size bound).
    ServiceUnreachable,
    /// A staging dir of a transaction that is not running.
    StagingLeft,
    /// A temporary file of a process that is gone.
    TempLeft,
    /// A lock held (or recorded as held) with no transaction running.
    LockHeld,
    /// A journal without its end record, of no running transaction.
    JournalUnfinished,
}

impl Code {
    /// Every code, in order.
    pub const ALL: [Code; 10] = [
        Code::CurrentMissing,
        Code::CurrentDangling,
        Code::PathMismatch,
        Code::StateMismatch,
        Code::ServiceVersionMismatch,
        Code::ServiceUnreachable,
        Code::StagingLeft,
        Code::TempLeft,
        Code::LockHeld,
        Code::JournalUnfinished,
    ];

    /// The code as the contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::CurrentMissing => "current_missing",
            Code::CurrentDangling => "current_dangling",
            Code::PathMismatch => "path_mismatch",
            Code::StateMismatch => "state_mismatch",
            Code::ServiceVersionMismatch => "service_version_mismatch",
            Code::ServiceUnreachable => "service_unreachable",
            Code::StagingLeft => "staging_left",
            Code::TempLeft => "temp_left",
            Code::LockHeld => "lock_held",
            Code::JournalUnfinished => "journal_unfinished",
        }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The component; empty for the host as a whole.
    pub component: String,
    /// What kind of problem.
    pub code: Code,
    /// What was found and what to do.
    pub message: String,
}

/// One component as found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComponentFound {
    /// The component.
    pub name: String,
    /// The version `current` points at.
    pub version: Option<String>,
    /// The version the service reported, when asked and answered.
    pub service_version: Option<String>,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every problem, ordered by component, then code, then message.
    pub problems: Vec<Problem>,
    /// Every component checked, by name.
    pub components: Vec<ComponentFound>,
    /// The running transaction, if one runs.
    pub in_progress: Option<String>,
    /// When the check ran.
    pub checked: chrono::DateTime<chrono::Utc>,
}

impl Report {
    /// True when no problem was found.
    pub fn consistent(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems of `code` were found.
    pub fn count(&self, code: Code) -> usize {
        self.problems.iter().filter(|p| p.code == code).count()
    }
}

/// A finding, with the transaction it belongs to when it names one (so that a running
/// transaction's own staging dir, journal or lock is dropped at the end).
struct Finding {
    problem: Problem,
    owner: Owner,
}

/// Whose a finding is.
enum Owner {
    /// Nobody's: always a problem.
    Nobody,
    /// This transaction's.
    Txid(String),
    /// A staging dir's `<version>-<txid>`: versions and txids may both hold `-`, so the
    /// owner is any running txid the name ends with.
    StagingOf(String),
}

impl Owner {
    fn runs(&self, running: &BTreeSet<String>) -> bool {
        match self {
            Owner::Nobody => false,
            Owner::Txid(t) => running.contains(t),
            Owner::StagingOf(rest) => running.iter().any(|t| {
                rest.strip_suffix(t.as_str())
                    .is_some_and(|v| v.ends_with('-'))
            }),
        }
    }
}

fn finding(component: &str, code: Code, message: String) -> Finding {
    Finding {
        problem: Problem {
            component: component.to_string(),
            code,
            message,
        },
        owner: Owner::Nobody,
    }
}

/// Runs the check. `live` are the txids this process is running now (the agent's registry).
pub fn check(state_dir: &Path, expected: &[Expectation], live: &[String]) -> Report {
    let checked = chrono::Utc::now();
    let mut running: BTreeSet<String> = live.iter().cloned().collect();
    let lock_probe = probe_host_lock(state_dir);
    if let HostLock::Held(Some(t)) = &lock_probe {
        running.insert(t.clone());
    }
    let mut findings = Vec::new();
    let components: Vec<Expectation> = if expected.is_empty() {
        list_components(state_dir)
            .into_iter()
            .map(|name| Expectation {
                name,
                ..Expectation::default()
            })
            .collect()
    } else {
        expected.to_vec()
    };
    let mut found = Vec::new();
    for exp in &components {
        found.push(check_component(
            state_dir,
            exp,
            !expected.is_empty(),
            &mut findings,
        ));
    }
    check_uploads(state_dir, &mut findings);
    check_deploy_locks(state_dir, &mut findings);
    check_journals(state_dir, &mut findings);
    if let HostLock::Stale(h) = &lock_probe {
        findings.push(finding(
            "",
            Code::LockHeld,
            format!(
                "the host lock records transaction {} (pid {}, since {}) but no process holds it: \
                 that process died; starting the agent (or any `rampart run --local`) recovers \
                 its transaction and clears the record",
                h.txid, h.pid, h.since
            ),
        ));
    }
    // A transaction that began during the scan: what it made is its own, not debris.
    if let HostLock::Held(Some(t)) = probe_host_lock(state_dir) {
        running.insert(t);
    }
    let mut problems: Vec<Problem> = findings
        .into_iter()
        .filter(|f| !f.owner.runs(&running))
        .map(|f| f.problem)
        .collect();
    problems.sort_by(|a, b| {
        (&a.component, a.code, &a.message).cmp(&(&b.component, b.code, &b.message))
    });
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Report {
        problems,
        components: found,
        in_progress: running.into_iter().next(),
        checked,
    }
}

/// The names of the directories under `apps/` that are valid component names, sorted.
fn list_components(state_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = read_names(&state_dir.join("apps"))
        .into_iter()
        .filter(|n| check_name("component", n).is_ok())
        .filter(|n| state_dir.join("apps").join(n).is_dir())
        .collect();
    out.sort();
    out
}

/// The entry names of `dir` (bounded); none when it cannot be read.
fn read_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .take(MAX_ENTRIES)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn check_component(
    state_dir: &Path,
    exp: &Expectation,
    asked: bool,
    findings: &mut Vec<Finding>,
) -> ComponentFound {
    let name = exp.name.as_str();
    let app = state_dir.join("apps").join(name);
    let current = app.join("current");
    let mut out = ComponentFound {
        name: name.to_string(),
        ..ComponentFound::default()
    };
    let recorded = recorded_current(&app);
    let target = fs::read_link(&current).ok();
    match &target {
        None => {
            let recorded_some = matches!(&recorded, Ok(Some(_)));
            // A component with nothing active and nothing recorded (a failed first deploy, or
            // only failed releases) is not a problem unless the caller expects it to run.
            if asked || recorded_some {
                findings.push(finding(
                    name,
                    Code::CurrentMissing,
                    format!(
                        "{} does not exist{}: deploy the component again, or restore its \
                         previous release",
                        current.display(),
                        match &recorded {
                            Ok(Some(v)) => format!(" though state.json records {v}"),
                            _ => String::new(),
                        }
                    ),
                ));
            }
        }
        Some(t) => {
            let resolved = if t.is_absolute() {
                t.clone()
            } else {
                app.join(t)
            };
            let version = t.file_name().map(|n| n.to_string_lossy().into_owned());
            if !resolved.is_dir() {
                findings.push(finding(
                    name,
                    Code::CurrentDangling,
                    format!(
                        "{} points at {}, which is not a release directory: restore a release \
                         that is still in releases/",
                        current.display(),
                        t.display()
                    ),
                ));
            }
            out.version = version;
        }
    }
    match (&recorded, &out.version) {
        (Err(e), _) => findings.push(finding(
            name,
            Code::StateMismatch,
            format!("{e}: the release module rewrites it at the next activation or restore"),
        )),
        (Ok(rec), Some(v)) if rec.as_deref() != Some(v.as_str()) => findings.push(finding(
            name,
            Code::StateMismatch,
            format!(
                "current is {v} but {} records {}: a switch was interrupted; restore the \
                 intended release so both agree",
                app.join("state.json").display(),
                rec.as_deref().unwrap_or("no current release")
            ),
        )),
        _ => {}
    }
    if let Some(public) = &exp.path {
        check_public_path(name, public, &current, findings);
    }
    if let (Some(url), Some(v)) = (&exp.version_url, &out.version) {
        match fetch_version(url) {
            Ok(served) => {
                if &served != v {
                    findings.push(finding(
                        name,
                        Code::ServiceVersionMismatch,
                        format!(
                            "{url} reports {} but current is {v}: the service was not \
                             restarted after the switch, or another process answers there; \
                             restart it",
                            short(&served)
                        ),
                    ));
                }
                out.service_version = Some(served);
            }
            Err(e) => findings.push(finding(
                name,
                Code::ServiceUnreachable,
                format!("{e}: start the service, or check its version_url"),
            )),
        }
    }
    check_leftovers(name, &app, findings);
    check_leftovers(name, &app.join("releases"), findings);
    out
}

/// `state.json`'s `current`: `Ok(None)` when there is no file or no current release.
fn recorded_current(app: &Path) -> Result<Option<String>, String> {
    let path = app.join("state.json");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    Ok(v.get("current").and_then(Value::as_str).map(str::to_string))
}

fn check_public_path(name: &str, public: &Path, current: &Path, findings: &mut Vec<Finding>) {
    let want = fs::canonicalize(current).ok();
    match fs::canonicalize(public) {
        Ok(got) if Some(&got) == want.as_ref() => {}
        Ok(got) => findings.push(finding(
            name,
            Code::PathMismatch,
            format!(
                "{} resolves to {}, not to the current release: point it at {} again \
                 (activate the release)",
                public.display(),
                got.display(),
                current.display()
            ),
        )),
        Err(e) => findings.push(finding(
            name,
            Code::PathMismatch,
            format!(
                "{} does not resolve ({e}): point it at {} again (activate the release)",
                public.display(),
                current.display()
            ),
        )),
    }
}

/// Staging dirs and temporary files left in `dir`.
fn check_leftovers(name: &str, dir: &Path, findings: &mut Vec<Finding>) {
    let mut names = read_names(dir);
    names.sort();
    for n in names {
        if let Some(rest) = n.strip_prefix(".staging-") {
            let mut f = finding(
                name,
                Code::StagingLeft,
                format!(
                    "{} was left by an interrupted transaction: remove it (a `release` with \
                     `state: pruned` does)",
                    dir.join(&n).display()
                ),
            );
            f.owner = Owner::StagingOf(rest.to_string());
            findings.push(f);
        } else if let Some(pid) = temp_pid(&n)
            && gone(pid)
        {
            findings.push(finding(
                name,
                Code::TempLeft,
                format!(
                    "{} is the temporary file of process {pid}, which is gone: remove it",
                    dir.join(&n).display()
                ),
            ));
        }
    }
}

/// The pid in a temporary name `.<name>.rampart-tmp-<pid>-<n>` of [`rampart_host::durable`].
fn temp_pid(name: &str) -> Option<i32> {
    let (_, tail) = name.rsplit_once(".rampart-tmp-")?;
    tail.split('-').next()?.parse().ok()
}

/// Whether no process `pid` exists.
fn gone(pid: i32) -> bool {
    pid > 0
        && matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// Uploads of processes that are gone in `artifacts/tmp/` (`upload-<pid>-<n>`).
fn check_uploads(state_dir: &Path, findings: &mut Vec<Finding>) {
    let dir = state_dir
        .join(rampart_host::cas::ARTIFACTS_DIR)
        .join(rampart_host::cas::TMP_DIR);
    let mut names = read_names(&dir);
    names.sort();
    for n in names {
        let pid = n
            .strip_prefix("upload-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            .or_else(|| temp_pid(&n));
        if let Some(pid) = pid
            && gone(pid)
        {
            findings.push(finding(
                "",
                Code::TempLeft,
                format!(
                    "{} is the partial upload of process {pid}, which is gone: remove it (the \
                     agent's start-up does)",
                    dir.join(&n).display()
                ),
            ));
        }
    }
}

/// Deploy locks (`locks/<name>.json`): each belongs to its holder's transaction.
fn check_deploy_locks(state_dir: &Path, findings: &mut Vec<Finding>) {
    let dir = state_dir.join("locks");
    let mut names = read_names(&dir);
    names.sort();
    for n in names.iter().filter(|n| n.ends_with(".json")) {
        let path = dir.join(n);
        let holder: Option<LockHolder> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (owner, who) = match &holder {
            Some(h) => (
                Owner::Txid(h.txid.clone()),
                format!("transaction {} (pid {}, since {})", h.txid, h.pid, h.since),
            ),
            None => (Owner::Nobody, "an unreadable holder record".to_string()),
        };
        let mut f = finding(
            "",
            Code::LockHeld,
            format!(
                "deploy lock {} is held by {who}, which is not running: release it (a \
                 `deploy_lock` with `state: released` in that transaction's always) or remove \
                 the file once nothing deploys",
                path.display()
            ),
        );
        f.owner = owner;
        findings.push(f);
    }
}

/// Journals in flight: each belongs to its transaction.
fn check_journals(state_dir: &Path, findings: &mut Vec<Finding>) {
    for txid in journal::unfinished(state_dir).unwrap_or_default() {
        let mut f = finding(
            "",
            Code::JournalUnfinished,
            format!(
                "{} has no end record and no transaction runs it: restart the agent (its \
                 start-up recovery finishes the transaction)",
                journal::journal_path(state_dir, &txid).display()
            ),
        );
        f.owner = Owner::Txid(txid);
        findings.push(f);
    }
}

/// The host lock as found.
enum HostLock {
    /// Nobody holds it and no record says otherwise.
    Free,
    /// A live process holds the flock; the holder record's txid, when written yet.
    Held(Option<String>),
    /// Nobody holds the flock but the holder record names a transaction: its process died.
    Stale(lock::Holder),
}

/// Probes the host lock without taking it for more than an instant: a shared, non-blocking
/// `flock` on a descriptor of our own succeeds only when no one holds it exclusively.
fn probe_host_lock(state_dir: &Path) -> HostLock {
    use nix::fcntl::{Flock, FlockArg};
    let path = state_dir.join(LOCK_FILE);
    let Ok(file) = fs::File::open(&path) else {
        return HostLock::Free;
    };
    let holder = lock::read_holder(&path);
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(flock) => {
            drop(flock);
            // Read again now that the flock is known free: a holder that just released it has
            // cleared its record.
            match lock::read_holder(&path) {
                Some(h) => HostLock::Stale(h),
                None => HostLock::Free,
            }
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => HostLock::Held(holder.map(|h| h.txid)),
        Err(_) => HostLock::Free,
    }
}

/// Asks the service for its version: a bounded GET of a loopback URL.
pub fn fetch_version(url: &str) -> Result<String, String> {
    check_local_url(url)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(VERSION_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("{url} did not answer: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(VERSION_BODY_MAX as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the answer of {url}: {e}"))?;
    if body.len() > VERSION_BODY_MAX {
        return Err(format!(
            "{url} answered more than {VERSION_BODY_MAX} bytes: it is not a version endpoint"
        ));
    }
    version_of(&body).ok_or_else(|| format!("{url} answered no version"))
}

/// The version in a version endpoint's body: a JSON object's `version` (or `app.version`),
/// else the text trimmed (one line, printable).
pub fn version_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        let found = v
            .get("version")
            .or_else(|| v.get("app").and_then(|a| a.get("version")))?;
        return match found {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    let ok = !text.is_empty() && !text.contains('\n') && !text.chars().any(char::is_control);
    ok.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::symlink;

    /// A host with component `app` whose `current` is `v1` (released, recorded).
    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Host {
            let h = Host {
                dir: tempfile::tempdir().unwrap(),
            };
            fs::create_dir_all(h.app().join("releases/v1")).unwrap();
            fs::create_dir_all(h.app().join("releases/v0")).unwrap();
            symlink("releases/v1", h.app().join("current")).unwrap();
            h.record(Some("v1"));
            h
        }
        fn state(&self) -> &Path {
            self.dir.path()
        }
        fn app(&self) -> PathBuf {
            self.state().join("apps/app")
        }
        fn record(&self, current: Option<&str>) {
            let v = serde_json::json!({"current": current, "previous": null, "known_good": []});
            fs::write(self.app().join("state.json"), v.to_string()).unwrap();
        }
        fn check(&self, exp: &[Expectation], live: &[&str]) -> Report {
            let live: Vec<String> = live.iter().map(|s| s.to_string()).collect();
            check(self.state(), exp, &live)
        }
        fn codes(&self, exp: &[Expectation], live: &[&str]) -> Vec<(String, &'static str)> {
            self.check(exp, live)
                .problems
                .iter()
                .map(|p| (p.component.clone(), p.code.as_str()))
                .collect()
        }
    }

    fn app(path: Option<&Path>, url: Option<String>) -> Expectation {
        Expectation {
            name: "app".into(),
            path: path.map(Path::to_path_buf),
            version_url: url,
        }
    }

    /// A pid that is certainly gone: a child that was reaped.
    fn dead_pid() -> i32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        pid
    }

    #[test]
    fn a_whole_host_is_consistent() {
        let h = Host::new();
        let r = h.check(&[], &[]);
        assert!(r.consistent(), "{:?}", r.problems);
        assert_eq!(
            r.components,
            [ComponentFound {
                name: "app".into(),
                version: Some("v1".into()),
                service_version: None
            }]
        );
        assert_eq!(r.in_progress, None);
    }

    #[test]
    fn current_missing_and_dangling() {
        let h = Host::new();
        fs::remove_file(h.app().join("current")).unwrap();
        assert_eq!(h.codes(&[], &[]), [("app".into(), "current_missing")]);
        // Nothing recorded and nothing active: only a problem when the caller expects it.
        h.record(None);
        assert!(h.codes(&[], &[]).is_empty());
        assert_eq!(
            h.codes(&[app(None, None)], &[]),
            [("app".into(), "current_missing")]
        );
        let e = Expectation {
            name: "other".into(),
            ..Expectation::default()
        };
        assert_eq!(h.codes(&[e], &[]), [("other".into(), "current_missing")]);
        symlink("releases/v9", h.app().join("current")).unwrap();
        h.record(Some("v9"));
        assert_eq!(h.codes(&[], &[]), [("app".into(), "current_dangling")]);
    }

    #[test]
    fn state_mismatch() {
        let h = Host::new();
        h.record(Some("v0"));
        let r = h.check(&[], &[]);
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].code, Code::StateMismatch);
        assert!(r.problems[0].message.contains("v0"), "{:?}", r.problems);
        fs::write(h.app().join("state.json"), "{not json").unwrap();
        assert_eq!(h.codes(&[], &[]), [("app".into(), "state_mismatch")]);
        fs::remove_file(h.app().join("state.json")).unwrap();
        assert_eq!(h.codes(&[], &[]), [("app".into(), "state_mismatch")]);
    }

    #[test]
    fn path_mismatch() {
        let h = Host::new();
        let public = h.state().join("opt-app");
        symlink(h.app().join("current"), &public).unwrap();
        assert!(h.codes(&[app(Some(&public), None)], &[]).is_empty());
        fs::remove_file(&public).unwrap();
        symlink(h.app().join("releases/v0"), &public).unwrap();
        assert_eq!(
            h.codes(&[app(Some(&public), None)], &[]),
            [("app".into(), "path_mismatch")]
        );
        fs::remove_file(&public).unwrap();
        assert_eq!(
            h.codes(&[app(Some(&public), None)], &[]),
            [("app".into(), "path_mismatch")]
        );
    }

    /// A one-shot-per-connection HTTP server on 127.0.0.1 answering `status` and `body` to
    /// every request, for at most `n` requests.
    fn serve(status: &'static str, body: String, n: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().take(n) {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}/version")
    }

    #[test]
    fn service_version_mismatch_and_unreachable() {
        let h = Host::new();
        let ok = serve("200 OK", "v1\n".into(), 1);
        let r = h.check(&[app(None, Some(ok))], &[]);
        assert!(r.consistent(), "{:?}", r.problems);
        assert_eq!(r.components[0].service_version.as_deref(), Some("v1"));
        let json = serve("200 OK", r#"{"app":{"version":"v0"}}"#.into(), 1);
        let r = h.check(&[app(None, Some(json))], &[]);
        assert_eq!(r.problems[0].code, Code::ServiceVersionMismatch);
        assert_eq!(r.components[0].service_version.as_deref(), Some("v0"));
        let down = serve("503 Service Unavailable", "starting".into(), 1);
        assert_eq!(
            h.codes(&[app(None, Some(down))], &[]),
            [("app".into(), "service_unreachable")]
        );
        let huge = serve("200 OK", "v".repeat(VERSION_BODY_MAX + 1), 1);
        assert_eq!(
            h.codes(&[app(None, Some(huge))], &[]),
            [("app".into(), "service_unreachable")]
        );
        // Nobody listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = format!("http://127.0.0.1:{port}/version");
        assert_eq!(
            h.codes(&[app(None, Some(closed))], &[]),
            [("app".into(), "service_unreachable")]
        );
    }

    #[test]
    fn a_silent_service_is_unreachable_within_the_timeout() {
        let h = Host::new();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/version", l.local_addr().unwrap());
        let started = std::time::Instant::now();
        assert_eq!(
            h.codes(&[app(None, Some(url))], &[]),
            [("app".into(), "service_unreachable")]
        );
        assert!(started.elapsed() < VERSION_TIMEOUT * 3);
        drop(l);
    }

    #[test]
    fn staging_and_temp_left_unless_their_owner_runs() {
        let h = Host::new();
        fs::create_dir(h.app().join(".staging-v2-tx-old")).unwrap();
        assert_eq!(h.codes(&[], &[]), [("app".into(), "staging_left")]);
        // The running transaction's own staging dir is not a problem.
        let r = h.check(&[], &["tx-old"]);
        assert!(r.consistent(), "{:?}", r.problems);
        assert_eq!(r.in_progress.as_deref(), Some("tx-old"));
        fs::remove_dir(h.app().join(".staging-v2-tx-old")).unwrap();
        let dead = dead_pid();
        fs::write(
            h.app().join(format!(".state.json.rampart-tmp-{dead}-0")),
            b"{}",
        )
        .unwrap();
        // A live process's temp file (ours) is in use.
        let me = std::process::id();
        fs::write(
            h.app()
                .join(format!("releases/.current.rampart-tmp-{me}-1")),
            b"",
        )
        .unwrap();
        assert_eq!(h.codes(&[], &[]), [("app".into(), "temp_left")]);
        let tmp = h.state().join("artifacts/tmp");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join(format!("upload-{dead}-3")), b"part").unwrap();
        fs::write(tmp.join(format!("upload-{me}-4")), b"part").unwrap();
        assert_eq!(
            h.codes(&[], &[]),
            [("".into(), "temp_left"), ("app".into(), "temp_left")]
        );
    }

    #[test]
    fn journal_unfinished_unless_it_runs() {
        let h = Host::new();
        fs::create_dir_all(h.state().join("journal")).unwrap();
        fs::write(h.state().join("journal/tx-9.jsonl"), b"").unwrap();
        assert_eq!(h.codes(&[], &[]), [("".into(), "journal_unfinished")]);
        assert!(h.codes(&[], &["tx-9"]).is_empty());
    }

    #[test]
    fn deploy_lock_and_stale_host_lock_are_held() {
        let h = Host::new();
        fs::create_dir_all(h.state().join("locks")).unwrap();
        let holder = LockHolder {
            txid: "tx-7".into(),
            pid: std::process::id(),
            pid_start: None,
            since: "2024-01-01T00:00:00Z".into(),
        };
        fs::write(
            h.state().join("locks/deploy.json"),
            serde_json::to_vec(&holder).unwrap(),
        )
        .unwrap();
        assert_eq!(h.codes(&[], &[]), [("".into(), "lock_held")]);
        assert!(h.codes(&[], &["tx-7"]).is_empty());
        fs::remove_file(h.state().join("locks/deploy.json")).unwrap();
        // A holder record nobody holds: its process died.
        fs::write(
            h.state().join(LOCK_FILE),
            br#"{"txid":"tx-dead","pid":1,"since":"2024-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let r = h.check(&[], &[]);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].code, Code::LockHeld);
        assert!(r.problems[0].message.contains("tx-dead"));
        // An empty record (released normally) is nothing.
        fs::write(h.state().join(LOCK_FILE), b"").unwrap();
        assert!(h.check(&[], &[]).consistent());
    }

    #[test]
    fn a_held_host_lock_is_the_transaction_in_progress() {
        let h = Host::new();
        let held =
            crate::lock::HostLock::acquire(h.state(), "tx-live", Duration::from_secs(1)).unwrap();
        fs::create_dir(h.app().join(".staging-v2-tx-live")).unwrap();
        fs::create_dir_all(h.state().join("journal")).unwrap();
        fs::write(h.state().join("journal/tx-live.jsonl"), b"").unwrap();
        // Not in this caller's registry: the lock alone says it runs.
        let r = h.check(&[], &[]);
        assert!(r.consistent(), "{:?}", r.problems);
        assert_eq!(r.in_progress.as_deref(), Some("tx-live"));
        // Another transaction's leftovers are still reported while one runs.
        fs::create_dir(h.app().join(".staging-v3-tx-other")).unwrap();
        assert_eq!(h.codes(&[], &[]), [("app".into(), "staging_left")]);
        drop(held);
        // The probe left the lock usable.
        crate::lock::HostLock::acquire(h.state(), "tx-next", Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn problems_are_ordered_by_component_then_code() {
        let h = Host::new();
        fs::create_dir_all(h.state().join("apps/zeta/releases/v1")).unwrap();
        symlink("releases/v2", h.state().join("apps/zeta/current")).unwrap();
        fs::create_dir(h.app().join(".staging-v3-tx-a")).unwrap();
        h.record(Some("v0"));
        fs::create_dir_all(h.state().join("journal")).unwrap();
        fs::write(h.state().join("journal/tx-b.jsonl"), b"").unwrap();
        let got = h.codes(&[], &[]);
        assert_eq!(
            got,
            [
                ("".into(), "journal_unfinished"),
                ("app".into(), "state_mismatch"),
                ("app".into(), "staging_left"),
                ("zeta".into(), "current_dangling"),
                ("zeta".into(), "state_mismatch"),
            ]
        );
    }

    #[test]
    fn expectations_are_checked_at_the_edge() {
        assert!(Expectation::new("app", "/opt/app", "http://127.0.0.1:8080/v").is_ok());
        assert!(Expectation::new("app", "", "http://localhost/v").is_ok());
        assert!(Expectation::new("app", "", "http://[::1]:80/").is_ok());
        for (name, path, url, needle) in [
            ("../x", "", "", "component"),
            ("app", "relative/p", "", "absolute"),
            ("app", "", "https://127.0.0.1/v", "http://"),
            ("app", "", "http://example.com/v", "127.0.0.1"),
            ("app", "", "http://127.0.0.1.evil/v", "127.0.0.1"),
            ("app", "", "http://u@127.0.0.1/v", "127.0.0.1"),
            ("app", "", "http://localhost@evil/v", "127.0.0.1"),
        ] {
            let e = Expectation::new(name, path, url).unwrap_err();
            assert!(e.contains(needle), "{name} {path} {url}: {e}");
        }
        let long = format!("/{}", "a".repeat(MAX_FIELD));
        assert!(Expectation::new("app", &long, "").is_err());
    }

    #[test]
    fn version_bodies() {
        assert_eq!(version_of(b" 2.0.1\n").as_deref(), Some("2.0.1"));
        assert_eq!(
            version_of(br#"{"version":"2.0.1"}"#).as_deref(),
            Some("2.0.1")
        );
        assert_eq!(
            version_of(br#"{"app":{"version":"1.0.0"}}"#).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(version_of(br#"{"status":"UP"}"#), None);
        assert_eq!(version_of(b""), None);
        assert_eq!(version_of(b"two\nlines"), None);
        assert_eq!(version_of(&[0xff, 0xfe]), None);
    }
}
