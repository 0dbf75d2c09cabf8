//! `rampart deploy`, `rampart rollback` and `rampart watch`: start (or follow) a deployment on the
//! controller and render its event stream until it finishes; the exit code comes from the
//! deployment's outcome.
//!
//! `deploy` first uploads each `--artifact NAME=PATH` into the controller's content-addressed
//! store (skipped when the controller already holds the digest), then calls `Deploy`. When the
//! event stream breaks, the CLI calls `Watch(deployment_id, next_seq)` again, once a second, for up
//! to `--reconnect-timeout`; events already printed are skipped, so nothing is shown twice. A
//! stream that ends with nothing more to come — `watch --from-seq N` past the end of a finished
//! deployment — is not a break: the deployment's `finished` event is printed and its outcome
//! decides the exit code, as if the stream had ended with it.
//!
//! Three renderings: `--json` prints one JSON object per event per line ([`event_json`]); text
//! when stdout is not a terminal prints one line per meaningful event and a per-host table at
//! the end; on a terminal the same lines come with a live one-line status on stderr.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;
use rampart_proto::v1::deployment_event::Kind;
use rampart_proto::v1::transaction_event::Kind as TxKind;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;

use rampart_rpc::retry::{self, Attempt, GaveUp};

use super::{
    CliError, Client, Controller, ControllerArgs, agent_outcome_name, block_on, duration_text,
    fail, host_result_json, host_state_name, is_transport_error, outcome_name, section_name,
    size_text, task_status_name, timestamp_json, version_change, write_table,
};
use crate::exit::Exit;

/// Upload chunk size, and the buffer used to hash artifacts.
pub const CHUNK: usize = 1 << 20;
/// Upload messages queued between the file reader and the gRPC stream.
const UPLOAD_QUEUE: usize = 4;

/// Environment variables that name the CI run, first set wins.
pub const CI_RUN_ID_VARS: [&str; 3] = ["CI_PIPELINE_ID", "GITHUB_RUN_ID", "BUILD_ID"];
/// Environment variables that name the commit, first set wins.
pub const COMMIT_VARS: [&str; 3] = ["CI_COMMIT_SHA", "GITHUB_SHA", "GIT_COMMIT"];

/// `rampart deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The environment, as named in the controller's configuration, e.g. `production`.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// The release version to deploy, e.g. `2.4.1`.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// A component's artifact: NAME=PATH, e.g. backend=dist/backend-2.4.1.tar.gz; repeatable.
    #[arg(long = "artifact", value_name = "NAME=PATH", required = true)]
    pub artifacts: Vec<String>,
    /// Extra variables: KEY=VALUE, @FILE.json (or .yml), or a JSON object; repeatable, later wins.
    #[arg(short = 'e', long = "extra-vars", value_name = "VARS")]
    pub extra_vars: Vec<String>,
    /// Check mode: every host runs in check mode and nothing is changed.
    #[arg(long)]
    pub check: bool,
    /// Wave sizes for this deployment: a number or a percentage (`25%`); repeat for a list
    /// (the last repeats). Default: the playbook's or environment's.
    #[arg(long, value_name = "S")]
    pub serial: Vec<String>,
    /// This deployment's canary stages instead of the environment's: HOSTS or HOSTS=WINDOW,
    /// cumulative, repeat for each stage, the last `100%` (`--stage 1=5m --stage 25%=5m
    /// --stage 100%`). They may reshape the canary, not skip it: where the environment has an
    /// analysis, every stage but the last needs a window at least as long as its shortest.
    #[arg(
        long = "stage",
        value_name = "HOSTS[=WINDOW]",
        conflicts_with = "serial"
    )]
    pub stages: Vec<String>,
    /// Abort when a wave's failed share (unreachable included) is strictly greater (0-100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_fail_percentage: Option<u32>,
    /// The source commit, recorded in history. [default: $CI_COMMIT_SHA, $GITHUB_SHA or
    /// $GIT_COMMIT]
    ///
    /// Its time is sent for lead-time figures (`rampart history --stats`): a SHA (or tag) is
    /// resolved with `git show -s --format=%cI SHA` in the current directory; an RFC 3339 time or
    /// unix seconds given here is taken as the commit's time.
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    /// When the commit was made, RFC 3339 (`2025-01-31T12:00:00Z`) or unix seconds; overrides
    /// what --commit resolves to.
    #[arg(long, value_name = "TIME")]
    pub commit_time: Option<String>,
    /// Queueing, who asked, re-attaching.
    #[command(flatten)]
    pub follow: FollowArgs,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// What `deploy` and `rollback` share: the queue wait, who asked, the id and re-attaching.
#[derive(Debug, Clone, clap::Args)]
pub struct FollowArgs {
    /// Seconds to wait in the environment's queue for the deployment lock (then exit 5).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub wait_timeout: u64,
    /// The CI run, recorded in history. [default: $CI_PIPELINE_ID, $GITHUB_RUN_ID or $BUILD_ID]
    #[arg(long, value_name = "ID")]
    pub ci_run_id: Option<String>,
    /// The deployment id to use (default: chosen by the controller).
    #[arg(long, value_name = "ID")]
    pub deployment_id: Option<String>,
    /// Seconds to keep re-attaching when the event stream breaks.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub reconnect_timeout: u64,
}

/// `rampart rollback`.
#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    /// The environment to roll back.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// The version to return to (default: the last version the environment ran successfully
    /// before its current one).
    #[arg(long, value_name = "V")]
    pub to: Option<String>,
    /// Why, recorded in history and shown in events.
    #[arg(long, value_name = "TEXT", required = true)]
    pub reason: String,
    /// The database: `none` leaves the schema as it is (the output names the schema version the
    /// target now runs on); `undo` runs the U scripts of the release being left, newest first,
    /// down to the newest migration of the target release (checked before anything stops).
    /// Needs the environment's `database` variable.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = RollbackDatabase::None)]
    pub database: RollbackDatabase,
    /// An emergency: every host at once (no stages or serial), no canary analysis, and only
    /// the health suite's critical checks verify the target (warning and optional ones are
    /// skipped). The lock, the queue and the rollback's own verification still apply.
    #[arg(long)]
    pub emergency: bool,
    /// Queueing, who asked, re-attaching.
    #[command(flatten)]
    pub follow: FollowArgs,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart rollback --database`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RollbackDatabase {
    /// Leave the schema as it is.
    None,
    /// Undo the migrations of the release being left.
    Undo,
}

/// `rampart watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The deployment to follow.
    #[arg(value_name = "DEPLOYMENT")]
    pub deployment: String,
    /// The first event wanted (0 replays the whole deployment).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub from_seq: u64,
    /// Seconds to keep re-attaching when the event stream breaks.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub reconnect_timeout: u64,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

// ---------------------------------------------------------------------------------------------
// Artifacts

/// One `--artifact NAME=PATH`, checked and hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The component, e.g. `backend`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Its sha256, lowercase hex (empty until hashed).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Parses `NAME=PATH` and checks that PATH is a readable regular file (no hashing yet).
pub fn parse_artifact(spec: &str) -> Result<Artifact, CliError> {
    let (name, path) = spec.split_once('=').ok_or_else(|| {
        CliError::usage(format!(
            "--artifact {spec}: expected NAME=PATH, e.g. backend=dist/backend-2.4.1.tar.gz"
        ))
    })?;
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::usage(format!(
            "--artifact {spec}: empty component name before `=`"
        )));
    }
    if path.is_empty() {
        return Err(CliError::usage(format!(
            "--artifact {spec}: empty path after `=`"
        )));
    }
    let path = PathBuf::from(path);
    let meta = std::fs::metadata(&path).map_err(|e| {
        CliError::usage(format!(
            "--artifact {spec}: cannot read {}: {e}",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(CliError::usage(format!(
            "--artifact {spec}: {} is not a regular file",
            path.display()
        )));
    }
    Ok(Artifact {
        name: name.to_string(),
        path,
        sha256: String::new(),
        size: meta.len(),
    })
}

/// Parses every `--artifact`, refusing a component named twice.
pub fn parse_artifacts(specs: &[String]) -> Result<Vec<Artifact>, CliError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let a = parse_artifact(spec)?;
        if !seen.insert(a.name.clone()) {
            return Err(CliError::usage(format!(
                "--artifact: component `{}` given twice",
                a.name
            )));
        }
        out.push(a);
    }
    Ok(out)
}

/// The sha256 (lowercase hex) and size of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((rampart_host::digest::hex(&h.finalize()), size))
}

/// The first characters of a digest, for people.
fn short(sha: &str) -> String {
    let p: String = sha.chars().take(12).collect();
    format!("{p}…")
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the file.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = f.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

/// Feeds a file's bytes into the upload stream in 1 MiB messages; stops quietly when the stream
/// is gone (the controller answered early).
async fn feed(
    path: PathBuf,
    tx: tokio::sync::mpsc::Sender<pb::ArtifactUpload>,
) -> std::io::Result<()> {
    let mut f = tokio::fs::File::open(&path).await?;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = read_full(&mut f, &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        let msg = pb::ArtifactUpload {
            data: buf,
            ..Default::default()
        };
        if tx.send(msg).await.is_err() {
            // The controller answered (e.g. already present) and the stream is gone.
            return Ok(());
        }
    }
}

/// Uploads one artifact: the header first (name, sha256, size, no data), then the data in 1 MiB
/// chunks fed by a task through a bounded channel. The controller answers right after the header
/// when it already holds the digest; the feeding task then stops on the closed channel.
async fn upload(
    ctl: &Controller,
    client: &mut Client,
    a: &Artifact,
) -> Result<pb::UploadArtifactResponse, CliError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ArtifactUpload>(UPLOAD_QUEUE);
    let file_name = a
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.name.clone());
    let header = pb::ArtifactUpload {
        name: file_name,
        sha256: a.sha256.clone(),
        size: a.size,
        data: Vec::new(),
    };
    // The queue is empty, so this cannot wait.
    tx.send(header)
        .await
        .map_err(|_| CliError::usage("upload queue closed before the first message"))?;
    let feeder = tokio::spawn(feed(a.path.clone(), tx));
    let what = format!("upload {} ({})", a.name, a.path.display());
    match client.upload_artifact(ReceiverStream::new(rx)).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => {
            // A local read failure explains a short upload better than the controller's status.
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), feeder).await {
                return Err(CliError::usage(format!(
                    "{what}: cannot read {}: {e}",
                    a.path.display()
                )));
            }
            let mut err = ctl.error(&what, &s);
            if s.code() == tonic::Code::DataLoss {
                err.message
                    .push_str(" (did the file change while it was uploaded?)");
            }
            Err(err)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

fn agent_event_json(ev: &pb::TransactionEvent) -> Value {
    let mut m = Map::new();
    let (ty, fields) = match &ev.kind {
        Some(TxKind::Started(s)) => (
            "started",
            json!({"playbook_name": s.playbook_name, "host": s.host, "check": s.check}),
        ),
        Some(TxKind::PlayStarted(p)) => ("play_started", json!({"index": p.index, "name": p.name})),
        Some(TxKind::TaskStarted(t)) => (
            "task_started",
            json!({"path": t.path, "name": t.name, "action": t.action,
                   "section": section_name(t.section())}),
        ),
        Some(TxKind::TaskFinished(t)) => {
            let mut f = json!({"path": t.path, "name": t.name, "action": t.action,
                   "section": section_name(t.section()),
                   "status": task_status_name(t.status()), "duration_ms": t.duration_ms});
            if let Some(msg) = result_msg(&t.result_json) {
                f["msg"] = Value::String(msg);
            }
            ("task_finished", f)
        }
        Some(TxKind::TaskRetrying(t)) => (
            "task_retrying",
            json!({"path": t.path, "name": t.name, "retries_left": t.retries_left}),
        ),
        Some(TxKind::TaskProgress(t)) => (
            "task_progress",
            json!({"path": t.path, "name": t.name, "data": parse_json(&t.data_json)}),
        ),
        Some(TxKind::Recovery(r)) => (
            "recovery",
            json!({"interrupted_path": r.interrupted_path,
                   "interrupted_section": section_name(r.interrupted_section()),
                   "action": r.action}),
        ),
        Some(TxKind::Finished(f)) => {
            let recap = f.recap.unwrap_or_default();
            (
                "finished",
                json!({"outcome": agent_outcome_name(f.outcome()), "recovered": f.recovered,
                       "recap": {"ok": recap.ok, "changed": recap.changed, "failed": recap.failed,
                                 "skipped": recap.skipped, "rescued": recap.rescued,
                                 "ignored": recap.ignored}}),
            )
        }
        None => ("unknown", json!({})),
    };
    m.insert("type".into(), ty.into());
    m.insert("txid".into(), ev.txid.clone().into());
    m.insert("seq".into(), ev.seq.into());
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

/// Parses a JSON text from the wire; text that is not JSON is kept as a string.
fn parse_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// A module result's message in one line (for a failed loop, the failed item's reason).
fn result_msg(result_json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(result_json).ok()?;
    let msg = rampart_playbook::result::failure_message(&v)?;
    let line = msg.lines().next().unwrap_or_default().trim().to_string();
    if line.is_empty() {
        return None;
    }
    Some(if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line
    })
}

/// One check's result of an `analysis_evaluated` event: its fields, with `detail` parsed from
/// `detail_json` (kept as text when it is not JSON).
pub fn analysis_check_json(c: &pb::AnalysisCheckResult) -> Value {
    let detail = serde_json::from_str::<Value>(&c.detail_json)
        .unwrap_or_else(|_| Value::String(c.detail_json.clone()));
    json!({"check": c.check, "verdict": c.verdict, "strong": c.strong, "reason": c.reason,
           "detail": detail})
}

/// A deployment event as one JSON object: `seq`, `deployment_id`, `time` (RFC 3339), `type` (the
/// event's kind in snake_case, e.g. `wave_started`) and the kind's fields; a `host_event` carries
/// `host`, `fleet_rescue` and a compact form of the agent's event under `event`.
pub fn event_json(ev: &pb::DeploymentEvent) -> Value {
    let (ty, fields) = match &ev.kind {
        Some(Kind::Queued(q)) => (
            "queued",
            json!({"position": q.position, "holder_deployment_id": q.holder_deployment_id}),
        ),
        Some(Kind::LockAcquired(l)) => (
            "lock_acquired",
            json!({"waited_ms": l.waited_ms, "controller": l.controller,
                   "reclaimed_from": l.reclaimed_from}),
        ),
        Some(Kind::Planned(p)) => (
            "planned",
            json!({"waves": p.waves.iter().map(|w| w.hosts.clone()).collect::<Vec<_>>(),
                   "max_fail_percentage": p.max_fail_percentage, "bake_ms": p.bake_ms,
                   "analysis_ms": p.analysis_ms}),
        ),
        Some(Kind::AwaitingApproval(a)) => (
            "awaiting_approval",
            json!({"host_count": a.host_count, "reason": a.reason, "after_wave": a.after_wave}),
        ),
        Some(Kind::AnalysisStarted(a)) => (
            "analysis_started",
            json!({"after_wave": a.after_wave, "canary_hosts": a.canary_hosts,
                   "baseline_hosts": a.baseline_hosts, "window_ms": a.window_ms,
                   "max_window_ms": a.max_window_ms, "warmup_ms": a.warmup_ms,
                   "interval_ms": a.interval_ms, "checks": a.checks,
                   "historical_baseline": a.historical_baseline, "source": a.source}),
        ),
        Some(Kind::AnalysisEvaluated(a)) => (
            "analysis_evaluated",
            json!({"after_wave": a.after_wave, "evaluation": a.evaluation,
                   "elapsed_ms": a.elapsed_ms, "fast_path": a.fast_path,
                   "checks": a.checks.iter().map(analysis_check_json).collect::<Vec<_>>()}),
        ),
        Some(Kind::AnalysisFinished(a)) => (
            "analysis_finished",
            json!({"after_wave": a.after_wave, "verdict": a.verdict, "check": a.check,
                   "reason": a.reason, "evaluations": a.evaluations,
                   "duration_ms": a.duration_ms}),
        ),
        Some(Kind::Approved(a)) => (
            "approved",
            json!({"approved_by": a.approved_by, "comment": a.comment}),
        ),
        Some(Kind::WaveStarted(w)) => (
            "wave_started",
            json!({"index": w.index, "wave_count": w.wave_count, "hosts": w.hosts}),
        ),
        Some(Kind::HostEvent(h)) => (
            "host_event",
            json!({"host": h.host, "fleet_rescue": h.fleet_rescue,
                   "event": h.event.as_ref().map(agent_event_json)}),
        ),
        Some(Kind::HostFinished(h)) => (
            "host_finished",
            json!({"host": h.host, "state": host_state_name(h.state()),
                   "outcome": agent_outcome_name(h.outcome()), "message": h.message,
                   "txid": h.txid, "fleet_rescue": h.fleet_rescue,
                   "forensics_id": h.forensics_id}),
        ),
        Some(Kind::WaveFinished(w)) => (
            "wave_finished",
            json!({"index": w.index, "succeeded": w.succeeded, "failed": w.failed,
                   "unreachable": w.unreachable, "failed_percentage": w.failed_percentage,
                   "aborts": w.aborts}),
        ),
        Some(Kind::BakeStarted(b)) => (
            "bake_started",
            json!({"after_wave": b.after_wave, "duration_ms": b.duration_ms}),
        ),
        Some(Kind::AbortRequested(a)) => (
            "abort_requested",
            json!({"aborted_by": a.aborted_by, "reason": a.reason}),
        ),
        Some(Kind::FleetRescueStarted(f)) => (
            "fleet_rescue_started",
            json!({"hosts": f.hosts, "reason": f.reason}),
        ),
        Some(Kind::Resumed(r)) => (
            "resumed",
            json!({"controller": r.controller, "hosts": r.hosts}),
        ),
        Some(Kind::Finished(f)) => (
            "finished",
            json!({"outcome": outcome_name(f.outcome()), "environment": f.environment,
                   "environment_version": f.environment_version,
                   "hosts": f.hosts.iter().map(host_result_json).collect::<Vec<_>>(),
                   "summary": f.summary, "incident_id": f.incident_id}),
        ),
        None => ("unknown", json!({})),
    };
    let mut m = Map::new();
    m.insert("seq".into(), ev.seq.into());
    m.insert("deployment_id".into(), ev.deployment_id.clone().into());
    m.insert("time".into(), timestamp_json(ev.time.as_ref()));
    m.insert("type".into(), ty.into());
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One JSON object per event per line.
    Json,
    /// One text line per meaningful event (stdout is not a terminal).
    Text,
    /// Text lines plus a live one-line status on the error writer (a terminal).
    Live,
}

impl Mode {
    /// The mode for this process: JSON when asked, live on a terminal, else text.
    pub fn detect(json: bool) -> Self {
        if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Text
        }
    }
}

/// Renders a deployment's events as they arrive: lines on `out`, notes (and the live status) on
/// `err`.
#[derive(Debug)]
pub struct Renderer<W: Write, E: Write> {
    out: W,
    err: E,
    mode: Mode,
    /// Status line width limit.
    width: usize,
    wave_count: u32,
    wave: Option<u32>,
    total_hosts: usize,
    done: BTreeSet<String>,
    phase: String,
    activity: String,
    status_shown: bool,
}

impl<W: Write, E: Write> Renderer<W, E> {
    /// A renderer writing event lines to `out` and notes and the live status to `err`.
    pub fn new(out: W, err: E, mode: Mode) -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|w| *w >= 20)
            .unwrap_or(100);
        Renderer {
            out,
            err,
            mode,
            width,
            wave_count: 0,
            wave: None,
            total_hosts: 0,
            done: BTreeSet::new(),
            phase: String::new(),
            activity: String::new(),
            status_shown: false,
        }
    }

    /// The writers back (for tests).
    pub fn into_inner(self) -> (W, E) {
        (self.out, self.err)
    }

    /// Renders one event.
    pub fn event(&mut self, ev: &pb::DeploymentEvent) -> std::io::Result<()> {
        if self.mode == Mode::Json {
            writeln!(self.out, "{}", event_json(ev))?;
            return self.out.flush();
        }
        let lines = self.lines(ev);
        let finished = matches!(ev.kind, Some(Kind::Finished(_)));
        if !lines.is_empty() {
            self.clear_status()?;
            for l in &lines {
                writeln!(self.out, "{l}")?;
            }
            self.out.flush()?;
        }
        if let Some(Kind::Finished(f)) = &ev.kind {
            self.clear_status()?;
            self.host_table(&f.hosts)?;
            self.out.flush()?;
        }
        if self.mode == Mode::Live && !finished {
            self.draw_status()?;
        }
        Ok(())
    }

    /// A message for people on `err` (re-attaching, warnings), never mixed with the status line.
    pub fn note(&mut self, msg: &str) {
        let _ = self.clear_status();
        let _ = writeln!(self.err, "rampart: {msg}");
        let _ = self.err.flush();
    }

    /// A line about the command's own progress (e.g. an upload): on `out` with the events, or on
    /// `err` with JSON output so that `out` holds only events.
    pub fn info(&mut self, line: &str) {
        let _ = self.clear_status();
        let _ = if self.mode == Mode::Json {
            writeln!(self.err, "{line}").and_then(|()| self.err.flush())
        } else {
            writeln!(self.out, "{line}").and_then(|()| self.out.flush())
        };
    }

    /// Removes the live status line, if shown.
    pub fn close(&mut self) {
        let _ = self.clear_status();
    }

    fn clear_status(&mut self) -> std::io::Result<()> {
        if self.status_shown {
            write!(self.err, "\r\x1b[2K")?;
            self.err.flush()?;
            self.status_shown = false;
        }
        Ok(())
    }

    /// The live status: `wave 2/3 · 3/5 hosts done · web4: TASK [..]`.
    pub fn status_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = self.wave {
            if self.wave_count > 0 {
                parts.push(format!("wave {}/{}", w + 1, self.wave_count));
            } else {
                parts.push(format!("wave {}", w + 1));
            }
        }
        if self.total_hosts > 0 {
            parts.push(format!(
                "{}/{} hosts done",
                self.done.len(),
                self.total_hosts
            ));
        }
        if !self.phase.is_empty() {
            parts.push(self.phase.clone());
        }
        if !self.activity.is_empty() {
            parts.push(self.activity.clone());
        }
        parts.join(" · ")
    }

    fn draw_status(&mut self) -> std::io::Result<()> {
        let line = self.status_line();
        if line.is_empty() {
            return Ok(());
        }
        let max = self.width.saturating_sub(1);
        let line = if line.chars().count() > max {
            let mut s: String = line.chars().take(max.saturating_sub(1)).collect();
            s.push('…');
            s
        } else {
            line
        };
        write!(self.err, "\r\x1b[2K{line}")?;
        self.err.flush()?;
        self.status_shown = true;
        Ok(())
    }

    fn wave_label(&self, index: u32) -> String {
        if self.wave_count > 0 {
            format!("wave {}/{}", index + 1, self.wave_count)
        } else {
            format!("wave {}", index + 1)
        }
    }

    /// The text lines of one event; updates the status.
    fn lines(&mut self, ev: &pb::DeploymentEvent) -> Vec<String> {
        let mut out = Vec::new();
        match &ev.kind {
            Some(Kind::Queued(q)) => {
                let mut l = format!("queued: position {}", q.position);
                if !q.holder_deployment_id.is_empty() {
                    l.push_str(&format!(" behind {}", q.holder_deployment_id));
                }
                self.phase.clone_from(&l);
                out.push(l);
            }
            Some(Kind::LockAcquired(l)) => {
                let mut s = format!(
                    "lock acquired after {}",
                    duration_text(Duration::from_millis(l.waited_ms))
                );
                if !l.reclaimed_from.is_empty() {
                    s.push_str(&format!(
                        " (reclaimed from controller {}, which died)",
                        l.reclaimed_from
                    ));
                }
                self.phase.clear();
                out.push(s);
            }
            Some(Kind::Planned(p)) => {
                self.wave_count = u32::try_from(p.waves.len()).unwrap_or(u32::MAX);
                self.total_hosts = p.waves.iter().map(|w| w.hosts.len()).sum();
                let waves: Vec<String> = p
                    .waves
                    .iter()
                    .map(|w| format!("[{}]", w.hosts.join(" ")))
                    .collect();
                let mut s = format!(
                    "plan: {} wave{}: {}",
                    p.waves.len(),
                    if p.waves.len() == 1 { "" } else { "s" },
                    waves.join(" ")
                );
                if let Some(m) = p.max_fail_percentage {
                    s.push_str(&format!(", max_fail_percentage {m}%"));
                }
                if p.bake_ms > 0 {
                    s.push_str(&format!(
                        ", bake {}",
                        duration_text(Duration::from_millis(p.bake_ms))
                    ));
                }
                out.push(s);
            }
            Some(Kind::AwaitingApproval(a)) => {
                self.phase = "awaiting approval".into();
                if a.reason.is_empty() {
                    out.push(format!(
                        "awaiting approval ({} hosts): rampart approve {}",
                        a.host_count, ev.deployment_id
                    ));
                } else {
                    out.push(format!(
                        "PAUSED: {}: rampart approve {id} (go on) or rampart abort {id} --reason TEXT (roll back)",
                        a.reason,
                        id = ev.deployment_id
                    ));
                }
            }
            Some(Kind::AnalysisStarted(a)) => {
                let s = format!(
                    "analysis of {}: {} canary ({}) against {}, window {}{} (checks: {})",
                    self.wave_label(a.after_wave),
                    a.canary_hosts.len(),
                    a.canary_hosts.join(" "),
                    if a.historical_baseline {
                        "their own window before the upgrade (weaker evidence)".to_string()
                    } else {
                        format!("{} baseline", a.baseline_hosts.len())
                    },
                    duration_text(Duration::from_millis(a.window_ms)),
                    if a.warmup_ms > 0 {
                        format!(
                            " after a {} warm-up",
                            duration_text(Duration::from_millis(a.warmup_ms))
                        )
                    } else {
                        String::new()
                    },
                    a.checks.join(", ")
                );
                self.phase = format!("analysis of {}", self.wave_label(a.after_wave));
                out.push(s);
            }
            Some(Kind::AnalysisEvaluated(a)) => {
                let parts: Vec<String> = a
                    .checks
                    .iter()
                    .map(|c| format!("{} {}", c.check, c.verdict))
                    .collect();
                self.activity = parts.join(", ");
                if a.fast_path {
                    for c in &a.checks {
                        out.push(format!("analysis FAST PATH: {}", c.reason));
                    }
                }
            }
            Some(Kind::AnalysisFinished(a)) => {
                self.activity.clear();
                out.push(match a.verdict.as_str() {
                    "pass" => format!(
                        "analysis of {}: pass after {} evaluations",
                        self.wave_label(a.after_wave),
                        a.evaluations
                    ),
                    v => format!(
                        "analysis of {}: {} ({}): {}",
                        self.wave_label(a.after_wave),
                        v.to_uppercase(),
                        a.check,
                        a.reason
                    ),
                });
            }
            Some(Kind::Approved(a)) => {
                self.phase.clear();
                let mut s = format!("approved by {}", a.approved_by);
                if !a.comment.is_empty() {
                    s.push_str(&format!(": {}", a.comment));
                }
                out.push(s);
            }
            Some(Kind::WaveStarted(w)) => {
                if w.wave_count > 0 {
                    self.wave_count = w.wave_count;
                }
                self.wave = Some(w.index);
                self.phase.clear();
                self.activity.clear();
                out.push(format!(
                    "{}: {}",
                    self.wave_label(w.index),
                    w.hosts.join(" ")
                ));
            }
            Some(Kind::HostEvent(h)) => {
                if let Some(l) = self.host_event(h) {
                    out.push(l);
                }
            }
            Some(Kind::HostFinished(h)) => {
                if !h.fleet_rescue {
                    self.done.insert(h.host.clone());
                }
                let mut s = if h.fleet_rescue {
                    format!("{}: fleet rescue {}", h.host, host_state_name(h.state()))
                } else {
                    format!("{}: {}", h.host, host_state_name(h.state()))
                };
                if !h.txid.is_empty() {
                    s.push_str(&format!(" (txid {})", h.txid));
                }
                if !h.message.is_empty() {
                    s.push_str(&format!(": {}", h.message));
                }
                if !h.forensics_id.is_empty() {
                    s.push_str(&format!(" [forensics {}]", h.forensics_id));
                }
                out.push(s);
            }
            Some(Kind::WaveFinished(w)) => {
                let mut s = format!(
                    "{} done: {} succeeded, {} failed, {} unreachable",
                    self.wave_label(w.index),
                    w.succeeded,
                    w.failed,
                    w.unreachable
                );
                if w.aborts {
                    s.push_str(&format!(
                        " ({:.0}% failed, over the threshold: aborting)",
                        w.failed_percentage
                    ));
                }
                self.activity.clear();
                out.push(s);
            }
            Some(Kind::BakeStarted(b)) => {
                let s = format!(
                    "baking {} after {}",
                    duration_text(Duration::from_millis(b.duration_ms)),
                    self.wave_label(b.after_wave)
                );
                self.phase.clone_from(&s);
                out.push(s);
            }
            Some(Kind::AbortRequested(a)) => {
                out.push(format!("abort requested by {}: {}", a.aborted_by, a.reason));
            }
            Some(Kind::FleetRescueStarted(f)) => {
                self.phase = format!("FLEET RESCUE ({} hosts)", f.hosts.len());
                self.activity.clear();
                out.push(if f.hosts.is_empty() {
                    format!(
                        "FLEET RESCUE: {}; no host needs the fleet's rollback (every host it changed rolled itself back)",
                        f.reason
                    )
                } else {
                    format!(
                        "FLEET RESCUE: rolling back {}: {}",
                        f.hosts.join(" "),
                        f.reason
                    )
                });
            }
            Some(Kind::Resumed(r)) => {
                let mut s = format!("resumed by controller {}", r.controller);
                if !r.hosts.is_empty() {
                    s.push_str(&format!(" (re-attached to {})", r.hosts.join(" ")));
                }
                out.push(s);
            }
            Some(Kind::Finished(f)) => {
                self.phase.clear();
                self.activity.clear();
                let mut s = format!("finished: {}", outcome_name(f.outcome()));
                if !f.summary.is_empty() {
                    s.push_str(&format!(" — {}", f.summary));
                }
                out.push(s);
                if !f.environment_version.is_empty() {
                    out.push(format!(
                        "{} runs {}",
                        if f.environment.is_empty() {
                            "the environment"
                        } else {
                            &f.environment
                        },
                        f.environment_version
                    ));
                }
                if !f.incident_id.is_empty() {
                    out.push(format!("incident opened: {}", f.incident_id));
                }
            }
            None => {}
        }
        out
    }

    /// The line of a host's agent event, if it deserves one (task results, retries, recovery);
    /// every event updates the live status.
    fn host_event(&mut self, h: &pb::HostEvent) -> Option<String> {
        let ev = h.event.as_ref()?;
        let who = if h.fleet_rescue {
            format!("{} (fleet rescue)", h.host)
        } else {
            h.host.clone()
        };
        match &ev.kind {
            Some(TxKind::TaskStarted(t)) => {
                self.activity = format!("{who}: TASK [{}]", t.name);
                None
            }
            Some(TxKind::TaskProgress(t)) => {
                let data = parse_json(&t.data_json);
                let check = data.get("check");
                self.activity = match check {
                    Some(c) => format!(
                        "{who}: TASK [{}] {} {}",
                        t.name,
                        c["name"].as_str().unwrap_or_default(),
                        c["status"].as_str().unwrap_or_default()
                    ),
                    None => format!("{who}: TASK [{}]", t.name),
                };
                None
            }
            Some(TxKind::TaskFinished(t)) => {
                let status = t.status();
                let mut s = format!("{who}: TASK [{}] {}", t.name, task_status_name(status));
                // A `debug` task is there to say something (e.g. the schema a rollback left).
                if (matches!(status, pb::TaskStatus::Failed | pb::TaskStatus::Ignored)
                    || (t.action == "debug" && status == pb::TaskStatus::Ok))
                    && let Some(msg) = result_msg(&t.result_json)
                {
                    s.push_str(&format!(": {msg}"));
                }
                Some(s)
            }
            Some(TxKind::TaskRetrying(t)) => Some(format!(
                "{who}: TASK [{}] retrying ({} retries left)",
                t.name, t.retries_left
            )),
            Some(TxKind::Recovery(r)) => Some(format!(
                "{who}: the agent restarted and recovers the transaction ({})",
                r.action
            )),
            _ => None,
        }
    }

    fn host_table(&mut self, hosts: &[pb::HostResult]) -> std::io::Result<()> {
        if hosts.is_empty() {
            return Ok(());
        }
        let mut rows = vec![vec![
            "HOST".to_string(),
            "STATE".to_string(),
            "FROM → TO".to_string(),
            "MESSAGE".to_string(),
        ]];
        for h in hosts {
            rows.push(vec![
                h.host.clone(),
                // The table is printed once the deployment is over.
                super::host_state_label(h.state(), true),
                version_change(&h.from_version, &h.to_version),
                h.message.clone(),
            ]);
        }
        write_table(&mut self.out, &rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Following a stream

/// Follows a deployment's events to its end and returns the exit code of its outcome. `id` is
/// known up front for `watch` and `--deployment-id`; otherwise it comes from the first event.
async fn follow<W: Write, E: Write>(
    ctl: &Controller,
    mut stream: tonic::Streaming<pb::DeploymentEvent>,
    mut id: Option<String>,
    mut next_seq: u64,
    r: &mut Renderer<W, E>,
    reconnect_timeout: Duration,
) -> Result<Exit, CliError> {
    // When the stream first broke since the last event; re-attaching stops at this plus the
    // reconnect timeout.
    let mut broken_since: Option<Instant> = None;
    loop {
        let why = match stream.message().await {
            Ok(Some(ev)) => {
                broken_since = None;
                if id.is_none() && !ev.deployment_id.is_empty() {
                    id = Some(ev.deployment_id.clone());
                }
                if ev.seq < next_seq {
                    continue;
                }
                next_seq = ev.seq + 1;
                // A closed stdout must not stop following (the exit code still matters).
                let _ = r.event(&ev);
                if let Some(Kind::Finished(f)) = &ev.kind {
                    r.close();
                    return Ok(Exit::of_deployment(f.outcome()));
                }
                continue;
            }
            Ok(None) => {
                // Nothing more comes when the deployment finished before `next_seq` (a watch
                // from past its end): its outcome is the answer, not a reason to re-attach.
                if let Some(dep) = &id
                    && let Some(fin) = finished_before(ctl, dep, next_seq).await
                {
                    r.note(&format!(
                        "deployment {dep} finished at seq {} (before seq {next_seq}); its outcome follows",
                        fin.seq
                    ));
                    let _ = r.event(&fin);
                    r.close();
                    let outcome = match &fin.kind {
                        Some(Kind::Finished(f)) => f.outcome(),
                        _ => pb::DeploymentOutcome::Unspecified,
                    };
                    return Ok(Exit::of_deployment(outcome));
                }
                "the event stream ended before the deployment finished".to_string()
            }
            Err(s) if is_transport_error(&s) => {
                format!("lost the event stream ({})", s.message())
            }
            Err(s) => {
                r.close();
                return Err(ctl.error("follow the deployment", &s));
            }
        };
        let Some(dep) = id.clone() else {
            r.close();
            return Err(CliError::usage(format!(
                "{why} before its first event, so its id is unknown; it may have been queued: \
                 check `rampart status`, or pass --deployment-id next time"
            )));
        };
        let first = broken_since.is_none();
        let since = *broken_since.get_or_insert_with(Instant::now);
        r.note(&format!(
            "{why} at seq {next_seq}; re-attaching to {dep} (up to {}s)",
            reconnect_timeout.as_secs()
        ));
        stream = match reattach(ctl, &dep, next_seq, since + reconnect_timeout, first).await {
            Ok(s) => s,
            Err(e) => {
                r.close();
                return Err(e);
            }
        };
    }
}

/// The `finished` event of deployment `id` when it finished before `next_seq`, so a stream from
/// `next_seq` on has nothing to send; `None` while it runs, when it has more events from
/// `next_seq`, or when the controller cannot say (the caller then re-attaches as before).
async fn finished_before(ctl: &Controller, id: &str, next_seq: u64) -> Option<pb::DeploymentEvent> {
    let mut c = ctl.connect().await.ok()?;
    let d = c
        .get_deployment(pb::GetDeploymentRequest {
            deployment_id: id.to_string(),
        })
        .await
        .ok()?
        .into_inner();
    if d.state() != pb::DeploymentState::Finished || d.last_seq >= next_seq {
        return None;
    }
    // The last event of a finished deployment is its `finished`.
    let mut last = c
        .watch(pb::WatchDeploymentRequest {
            deployment_id: id.to_string(),
            from_seq: d.last_seq,
        })
        .await
        .ok()?
        .into_inner();
    let ev = last.message().await.ok()??;
    matches!(ev.kind, Some(Kind::Finished(_))).then_some(ev)
}

/// Calls `Watch(id, from_seq)` until it answers or `deadline` passes, 1 s between tries (the
/// first try of a break is immediate). A refusal other than a broken connection ends it.
async fn reattach(
    ctl: &Controller,
    id: &str,
    from_seq: u64,
    deadline: Instant,
    first: bool,
) -> Result<tonic::Streaming<pb::DeploymentEvent>, CliError> {
    let attempt = || async {
        match ctl.connect().await {
            Ok(mut c) => match c
                .watch(pb::WatchDeploymentRequest {
                    deployment_id: id.to_string(),
                    from_seq,
                })
                .await
            {
                Ok(resp) => Attempt::Done(resp.into_inner()),
                Err(s) if is_transport_error(&s) => Attempt::Again(s.message().to_string()),
                Err(s) => Attempt::Stop(ctl.error(&format!("re-attach to deployment {id}"), &s)),
            },
            Err(e) => Attempt::Again(e.message),
        }
    };
    let last = match retry::until(deadline, Duration::from_secs(1), first, attempt).await {
        Ok(stream) => return Ok(stream),
        Err(GaveUp::Stopped(e)) => return Err(e),
        Err(GaveUp::TimedOut(last)) if last.is_empty() => "timed out".to_string(),
        Err(GaveUp::TimedOut(last)) => last,
    };
    Err(CliError::usage(format!(
        "could not re-attach to deployment {id} ({last}); it continues on the controller: \
         follow it with `rampart watch {id} --from-seq {from_seq}`"
    )))
}

/// Starts a stream with `start`; a broken connection before the first event re-attaches when
/// the id is known.
async fn start_and_follow<W: Write, E: Write>(
    ctl: &Controller,
    started: Result<tonic::Response<tonic::Streaming<pb::DeploymentEvent>>, tonic::Status>,
    what: &str,
    id: Option<String>,
    from_seq: u64,
    r: &mut Renderer<W, E>,
    reconnect_timeout: Duration,
) -> Result<Exit, CliError> {
    let stream = match started {
        Ok(resp) => resp.into_inner(),
        Err(s) if is_transport_error(&s) => match &id {
            Some(dep) => {
                r.note(&format!(
                    "lost the controller before it answered ({}); re-attaching to {dep}",
                    s.message()
                ));
                reattach(ctl, dep, from_seq, Instant::now() + reconnect_timeout, true).await?
            }
            None => return Err(ctl.error(what, &s)),
        },
        Err(s) => return Err(ctl.error(what, &s)),
    };
    follow(ctl, stream, id, from_seq, r, reconnect_timeout).await
}

/// The first set variable among `names`.
fn first_env(names: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    names.iter().find_map(|n| env(n))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A non-empty option's value.
fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn stdio_renderer(json: bool) -> Renderer<std::io::Stdout, std::io::Stderr> {
    Renderer::new(std::io::stdout(), std::io::stderr(), Mode::detect(json))
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Everything `deploy` checked before the network.
#[derive(Debug)]
struct DeployPlan {
    ctl: Controller,
    artifacts: Vec<Artifact>,
    request: pb::DeployRequest,
}

fn prepare_deploy(
    args: &DeployArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DeployPlan, CliError> {
    let mut artifacts = parse_artifacts(&args.artifacts)?;
    let vars = crate::vars::parse_extra_vars(&args.extra_vars).map_err(CliError::usage)?;
    if !args.serial.is_empty() {
        let list = Value::Array(args.serial.iter().cloned().map(Value::String).collect());
        rampart_playbook::serial::parse_serial(&list)
            .map_err(|e| CliError::usage(format!("--serial: {e}")))?;
    }
    let ctl = Controller::from_args_with(&args.controller, env)?;
    for a in &mut artifacts {
        let (sha, size) = sha256_file(&a.path).map_err(|e| {
            CliError::usage(format!(
                "--artifact {}={}: cannot read it: {e}",
                a.name,
                a.path.display()
            ))
        })?;
        a.sha256 = sha;
        a.size = size;
    }
    let commit = non_empty(args.commit.clone())
        .or_else(|| first_env(&COMMIT_VARS, env))
        .unwrap_or_default();
    let request = pb::DeployRequest {
        environment: args.env.clone(),
        version: args.version.clone(),
        artifacts: Default::default(),
        vars_json: if vars.is_empty() {
            String::new()
        } else {
            Value::Object(vars).to_string()
        },
        ci_run_id: non_empty(args.follow.ci_run_id.clone())
            .or_else(|| first_env(&CI_RUN_ID_VARS, env))
            .unwrap_or_default(),
        commit_time: resolve_commit_time(args.commit_time.as_deref(), &commit, &git_commit_time)?,
        commit,
        wait_timeout_ms: args.follow.wait_timeout.saturating_mul(1000),
        check: args.check,
        serial: args.serial.clone(),
        stages: args.stages.clone(),
        max_fail_percentage: args.max_fail_percentage,
        // Chosen here, so a stream lost before its first event can still be re-attached.
        deployment_id: args
            .follow
            .deployment_id
            .clone()
            .unwrap_or_else(rampart_rpc::ids::new_deployment_id),
    };
    Ok(DeployPlan {
        ctl,
        artifacts,
        request,
    })
}

/// A time as `--commit-time` (or `--commit`) may give it: RFC 3339, or unix seconds from 2001
/// (ten or more digits, so a short all-digit SHA is not taken for a time).
fn parse_commit_time(text: &str) -> Option<prost_types::Timestamp> {
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(prost_types::Timestamp {
            seconds: d.timestamp(),
            nanos: d.timestamp_subsec_nanos() as i32,
        });
    }
    if t.len() >= 10 && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Some(prost_types::Timestamp {
            seconds: t.parse().ok()?,
            nanos: 0,
        });
    }
    None
}

/// The commit time to send: `--commit-time` when given (a usage error when it is not a time);
/// else `commit` itself when it is a time; else what `git` resolves `commit` (a SHA or tag) to.
/// A commit git cannot resolve leaves the time unknown, with a warning: the deploy goes on.
fn resolve_commit_time(
    explicit: Option<&str>,
    commit: &str,
    git: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Option<prost_types::Timestamp>, CliError> {
    if let Some(text) = explicit {
        return parse_commit_time(text).map(Some).ok_or_else(|| {
            CliError::usage(format!(
                "--commit-time {text:?}: give RFC 3339 (2025-01-31T12:00:00Z) or unix seconds"
            ))
        });
    }
    if commit.is_empty() {
        return Ok(None);
    }
    if let Some(t) = parse_commit_time(commit) {
        return Ok(Some(t));
    }
    let plain = commit.len() <= 255
        && !commit.starts_with('-')
        && commit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    let resolved = if plain {
        git(commit).and_then(|out| {
            parse_commit_time(out.trim())
                .ok_or_else(|| format!("git answered {:?}, not a time", out.trim()))
        })
    } else {
        Err("not a commit name".to_string())
    };
    match resolved {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            eprintln!(
                "rampart: warning: the time of commit {commit:?} is unknown ({e}); lead time is not measured for this deployment (give --commit-time)"
            );
            Ok(None)
        }
    }
}

/// `git show -s --format=%cI COMMIT^{commit}` in the current directory, bounded by 10 s.
fn git_commit_time(commit: &str) -> Result<String, String> {
    git_commit_time_in(Path::new("."), commit)
}

/// As [`git_commit_time`], in the repository at `dir`.
fn git_commit_time_in(dir: &Path, commit: &str) -> Result<String, String> {
    let argv = [
        "git".to_string(),
        "-C".into(),
        dir.to_string_lossy().into_owned(),
        "show".into(),
        "-s".into(),
        "--format=%cI".into(),
        format!("{commit}^{{commit}}"),
    ];
    let ran =
        rampart_host::process::run_bounded(&argv, &[], Instant::now() + Duration::from_secs(10));
    if ran.success() {
        Ok(ran.stdout)
    } else {
        Err(format!("git show: {}", ran.describe()))
    }
}

/// `rampart deploy`: uploads the artifacts, starts the deployment and follows it; returns the
/// exit code.
pub fn deploy(args: DeployArgs) -> Exit {
    let plan = match prepare_deploy(&args, &env_var) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut r = stdio_renderer(args.controller.json);
    block_on(run_deploy(
        plan,
        &mut r,
        Duration::from_secs(args.follow.reconnect_timeout),
    ))
}

async fn run_deploy<W: Write, E: Write>(
    plan: DeployPlan,
    r: &mut Renderer<W, E>,
    reconnect_timeout: Duration,
) -> Result<Exit, CliError> {
    let DeployPlan {
        ctl,
        artifacts,
        mut request,
    } = plan;
    let mut client = ctl.connect().await?;
    for a in &artifacts {
        let resp = upload(&ctl, &mut client, a).await?;
        if !resp.sha256.is_empty() && resp.sha256 != a.sha256 {
            return Err(CliError::usage(format!(
                "upload {}: the controller stored sha256 {} but the file's is {}",
                a.name, resp.sha256, a.sha256
            )));
        }
        let line = if resp.already_present {
            format!(
                "{} already on the controller (sha256 {})",
                a.name,
                short(&a.sha256)
            )
        } else {
            format!(
                "uploaded {} ({}, sha256 {})",
                a.name,
                size_text(a.size),
                short(&a.sha256)
            )
        };
        r.info(&line);
        request.artifacts.insert(a.name.clone(), a.sha256.clone());
    }
    let what = format!("deploy {} to {}", request.version, request.environment);
    let id = non_empty(Some(request.deployment_id.clone()));
    let started = client.deploy(request).await;
    start_and_follow(&ctl, started, &what, id, 0, r, reconnect_timeout).await
}

/// `rampart rollback`: starts a rollback of an environment and follows it; returns the exit
/// code.
pub fn rollback(args: RollbackArgs) -> Exit {
    if args.reason.trim().is_empty() {
        return fail(CliError::usage("--reason must say why"));
    }
    let ctl = match Controller::from_args(&args.controller) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let request = pb::RollbackRequest {
        environment: args.env.clone(),
        to_version: args.to.clone().unwrap_or_default(),
        reason: args.reason.clone(),
        database: match args.database {
            RollbackDatabase::None => "none".into(),
            RollbackDatabase::Undo => "undo".into(),
        },
        emergency: args.emergency,
        ci_run_id: non_empty(args.follow.ci_run_id.clone())
            .or_else(|| first_env(&CI_RUN_ID_VARS, &env_var))
            .unwrap_or_default(),
        wait_timeout_ms: args.follow.wait_timeout.saturating_mul(1000),
        // Chosen here, so a stream lost before its first event can still be re-attached.
        deployment_id: args
            .follow
            .deployment_id
            .clone()
            .unwrap_or_else(rampart_rpc::ids::new_deployment_id),
    };
    block_on(async move {
        let mut client = ctl.connect().await?;
        let what = format!("roll back {}", request.environment);
        let id = non_empty(Some(request.deployment_id.clone()));
        let started = client.rollback(request).await;
        let mut r = stdio_renderer(args.controller.json);
        start_and_follow(
            &ctl,
            started,
            &what,
            id,
            0,
            &mut r,
            Duration::from_secs(args.follow.reconnect_timeout),
        )
        .await
    })
}

/// `rampart watch`: follows a deployment (replaying what already happened) to its end; returns
/// the exit code of its outcome.
pub fn watch(args: WatchArgs) -> Exit {
    let ctl = match Controller::from_args(&args.controller) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    block_on(async move {
        let mut client = ctl.connect().await?;
        let started = client
            .watch(pb::WatchDeploymentRequest {
                deployment_id: args.deployment.clone(),
                from_seq: args.from_seq,
            })
            .await;
        let mut r = stdio_renderer(args.controller.json);
        start_and_follow(
            &ctl,
            started,
            &format!("watch deployment {}", args.deployment),
            Some(args.deployment.clone()),
            args.from_seq,
            &mut r,
            Duration::from_secs(args.reconnect_timeout),
        )
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: Kind) -> pb::DeploymentEvent {
        pb::DeploymentEvent {
            seq,
            deployment_id: "d-1".into(),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            kind: Some(kind),
        }
    }

    fn task_finished(host: &str, name: &str, status: pb::TaskStatus, result: &str) -> Kind {
        Kind::HostEvent(pb::HostEvent {
            host: host.into(),
            fleet_rescue: false,
            event: Some(pb::TransactionEvent {
                seq: 7,
                txid: "t-1".into(),
                time: None,
                kind: Some(TxKind::TaskFinished(pb::TaskFinished {
                    path: "0.1".into(),
                    section: pb::Section::Block as i32,
                    name: name.into(),
                    action: "copy".into(),
                    status: status as i32,
                    result_json: result.into(),
                    duration_ms: 12,
                })),
            }),
        })
    }

    fn host_result(
        host: &str,
        state: pb::HostState,
        from: &str,
        to: &str,
        msg: &str,
    ) -> pb::HostResult {
        pb::HostResult {
            host: host.into(),
            state: state as i32,
            from_version: from.into(),
            to_version: to.into(),
            message: msg.into(),
            ..Default::default()
        }
    }

    #[test]
    fn artifact_specs_are_checked_before_the_network() {
        let e = parse_artifact("backend").unwrap_err();
        assert_eq!(e.exit.code(), 2);
        assert!(e.message.contains("expected NAME=PATH"), "{}", e.message);
        assert!(
            parse_artifact("=x.tgz")
                .unwrap_err()
                .message
                .contains("empty component")
        );
        assert!(
            parse_artifact("backend=")
                .unwrap_err()
                .message
                .contains("empty path")
        );
        let e = parse_artifact("backend=/nonexistent/backend.tgz").unwrap_err();
        assert_eq!(e.exit.code(), 2);
        assert!(
            e.message.contains("cannot read /nonexistent/backend.tgz"),
            "{}",
            e.message
        );
        let dir = tempfile::tempdir().unwrap();
        let e = parse_artifact(&format!("backend={}", dir.path().display())).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        let f = dir.path().join("backend-2.4.1.tar.gz");
        std::fs::write(&f, b"hello").unwrap();
        let a = parse_artifact(&format!("backend={}", f.display())).unwrap();
        assert_eq!(a.name, "backend");
        assert_eq!(a.path, f);
        assert_eq!(a.size, 5);
        let spec = format!("backend={}", f.display());
        let e = parse_artifacts(&[spec.clone(), spec]).unwrap_err();
        assert!(e.message.contains("given twice"), "{}", e.message);
        let (sha, size) = sha256_file(&f).unwrap();
        assert_eq!(size, 5);
        assert_eq!(
            sha,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn deploy_request_defaults_from_ci_variables() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.tgz");
        std::fs::write(&f, b"x").unwrap();
        let args = DeployArgs {
            env: "production".into(),
            version: "2.4.1".into(),
            artifacts: vec![format!("backend={}", f.display())],
            extra_vars: vec!["a=1".into()],
            check: false,
            serial: vec!["1".into(), "50%".into()],
            stages: Vec::new(),
            max_fail_percentage: Some(30),
            commit: None,
            commit_time: None,
            follow: FollowArgs {
                wait_timeout: 600,
                ci_run_id: None,
                deployment_id: None,
                reconnect_timeout: 60,
            },
            controller: ControllerArgs {
                controller: Some("http://127.0.0.1:1".into()),
                ..ControllerArgs::default()
            },
        };
        let env = |k: &str| match k {
            "RAMPART_TOKEN" => Some("t".to_string()),
            "GITHUB_RUN_ID" => Some("42".to_string()),
            "BUILD_ID" => Some("7".to_string()),
            "GIT_COMMIT" => Some("abc".to_string()),
            _ => None,
        };
        let plan = prepare_deploy(&args, &env).unwrap();
        assert_eq!(plan.request.ci_run_id, "42");
        assert_eq!(plan.request.commit, "abc");
        assert_eq!(plan.request.wait_timeout_ms, 600_000);
        assert_eq!(plan.request.vars_json, r#"{"a":"1"}"#);
        assert_eq!(plan.artifacts[0].sha256.len(), 64);
        let mut bad = args.clone();
        bad.serial = vec!["lots".into()];
        assert_eq!(prepare_deploy(&bad, &env).unwrap_err().exit.code(), 2);
        let mut bad = args.clone();
        bad.artifacts = vec!["backend".into()];
        assert!(
            prepare_deploy(&bad, &env)
                .unwrap_err()
                .message
                .contains("NAME=PATH")
        );
        let mut bad = args;
        bad.extra_vars = vec!["novalue".into()];
        assert_eq!(prepare_deploy(&bad, &env).unwrap_err().exit.code(), 2);
    }

    #[test]
    fn event_json_covers_variants() {
        let v = event_json(&ev(
            3,
            Kind::WaveStarted(pb::WaveStarted {
                index: 0,
                wave_count: 3,
                hosts: vec!["web1".into()],
            }),
        ));
        assert_eq!(
            v,
            json!({"seq": 3, "deployment_id": "d-1", "time": "2023-11-14T22:13:20.000Z",
                   "type": "wave_started", "index": 0, "wave_count": 3, "hosts": ["web1"]})
        );
        let v = event_json(&ev(
            1,
            Kind::Queued(pb::DeploymentQueued {
                position: 2,
                holder_deployment_id: "d-0".into(),
            }),
        ));
        assert_eq!(v["type"], "queued");
        assert_eq!(v["position"], 2);
        assert_eq!(v["holder_deployment_id"], "d-0");
        let v = event_json(&ev(
            4,
            Kind::Planned(pb::RolloutPlanned {
                analysis_ms: Vec::new(),
                waves: vec![
                    pb::WavePlan {
                        hosts: vec!["web1".into()],
                    },
                    pb::WavePlan {
                        hosts: vec!["web2".into(), "web3".into()],
                    },
                ],
                max_fail_percentage: None,
                bake_ms: 0,
            }),
        ));
        assert_eq!(v["waves"], json!([["web1"], ["web2", "web3"]]));
        assert_eq!(v["max_fail_percentage"], Value::Null);
        let v = event_json(&ev(
            5,
            task_finished(
                "web1",
                "stage app",
                pb::TaskStatus::Failed,
                r#"{"msg":"boom\nmore"}"#,
            ),
        ));
        assert_eq!(v["type"], "host_event");
        assert_eq!(v["host"], "web1");
        assert_eq!(v["fleet_rescue"], false);
        assert_eq!(
            v["event"],
            json!({"type": "task_finished", "txid": "t-1", "seq": 7, "path": "0.1",
                   "name": "stage app", "action": "copy", "section": "block",
                   "status": "failed", "duration_ms": 12, "msg": "boom"})
        );
        let v = event_json(&ev(
            6,
            Kind::HostEvent(pb::HostEvent {
                host: "web2".into(),
                fleet_rescue: true,
                event: Some(pb::TransactionEvent {
                    kind: Some(TxKind::Finished(pb::TransactionFinished {
                        outcome: pb::Outcome::RolledBack as i32,
                        recap: None,
                        recovered: false,
                    })),
                    ..Default::default()
                }),
            }),
        ));
        assert_eq!(v["event"]["type"], "finished");
        assert_eq!(v["event"]["outcome"], "rolled_back");
        assert_eq!(v["fleet_rescue"], true);
        let v = event_json(&ev(
            9,
            Kind::HostFinished(pb::HostFinished {
                host: "web1".into(),
                state: pb::HostState::Succeeded as i32,
                outcome: pb::Outcome::Succeeded as i32,
                txid: "t-1".into(),
                ..Default::default()
            }),
        ));
        assert_eq!(v["type"], "host_finished");
        assert_eq!(v["state"], "succeeded");
        assert_eq!(v["outcome"], "succeeded");
        let v = event_json(&ev(
            10,
            Kind::Finished(pb::DeploymentFinished {
                outcome: pb::DeploymentOutcome::RolledBack as i32,
                environment: "production".into(),
                environment_version: "2.3.0".into(),
                hosts: vec![host_result(
                    "web1",
                    pb::HostState::RolledBack,
                    "2.3.0",
                    "2.3.0",
                    "",
                )],
                summary: "wave 1 failed".into(),
                incident_id: String::new(),
            }),
        ));
        assert_eq!(v["type"], "finished");
        assert_eq!(v["outcome"], "rolled_back");
        assert_eq!(v["hosts"][0]["host"], "web1");
        assert_eq!(v["hosts"][0]["state"], "rolled_back");
        let v = event_json(&pb::DeploymentEvent::default());
        assert_eq!(v["type"], "unknown");
        assert_eq!(v["time"], Value::Null);
    }

    fn sample_events() -> Vec<pb::DeploymentEvent> {
        vec![
            ev(
                0,
                Kind::Queued(pb::DeploymentQueued {
                    position: 2,
                    holder_deployment_id: "d-0".into(),
                }),
            ),
            ev(
                1,
                Kind::LockAcquired(pb::LockAcquired {
                    waited_ms: 1200,
                    controller: "c1".into(),
                    reclaimed_from: String::new(),
                }),
            ),
            ev(
                2,
                Kind::Planned(pb::RolloutPlanned {
                    analysis_ms: Vec::new(),
                    waves: vec![
                        pb::WavePlan {
                            hosts: vec!["web1".into()],
                        },
                        pb::WavePlan {
                            hosts: vec!["web2".into(), "web3".into()],
                        },
                    ],
                    max_fail_percentage: Some(30),
                    bake_ms: 0,
                }),
            ),
            ev(
                3,
                Kind::WaveStarted(pb::WaveStarted {
                    index: 0,
                    wave_count: 2,
                    hosts: vec!["web1".into()],
                }),
            ),
            ev(
                4,
                Kind::HostEvent(pb::HostEvent {
                    host: "web1".into(),
                    fleet_rescue: false,
                    event: Some(pb::TransactionEvent {
                        kind: Some(TxKind::TaskStarted(pb::TaskStarted {
                            name: "stage app 2.0.0".into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }),
                }),
            ),
            ev(
                5,
                task_finished("web1", "stage app 2.0.0", pb::TaskStatus::Changed, "{}"),
            ),
            ev(
                6,
                Kind::HostFinished(pb::HostFinished {
                    host: "web1".into(),
                    state: pb::HostState::Succeeded as i32,
                    outcome: pb::Outcome::Succeeded as i32,
                    txid: "t-1".into(),
                    ..Default::default()
                }),
            ),
            ev(
                7,
                Kind::WaveFinished(pb::WaveFinished {
                    index: 0,
                    succeeded: 1,
                    ..Default::default()
                }),
            ),
            ev(
                8,
                Kind::WaveStarted(pb::WaveStarted {
                    index: 1,
                    wave_count: 2,
                    hosts: vec!["web2".into(), "web3".into()],
                }),
            ),
            ev(
                9,
                task_finished(
                    "web2",
                    "health",
                    pb::TaskStatus::Failed,
                    r#"{"msg":"http check failed"}"#,
                ),
            ),
            ev(
                10,
                Kind::WaveFinished(pb::WaveFinished {
                    index: 1,
                    succeeded: 1,
                    failed: 1,
                    unreachable: 0,
                    failed_percentage: 50.0,
                    aborts: true,
                }),
            ),
            ev(
                11,
                Kind::FleetRescueStarted(pb::FleetRescueStarted {
                    hosts: vec!["web1".into(), "web2".into()],
                    reason: "wave 2: 1 of 2 hosts failed (50% > 30%)".into(),
                }),
            ),
            ev(
                12,
                Kind::Finished(pb::DeploymentFinished {
                    outcome: pb::DeploymentOutcome::RolledBack as i32,
                    environment: "production".into(),
                    environment_version: "1.9.0".into(),
                    hosts: vec![
                        host_result("web1", pb::HostState::RolledBack, "1.9.0", "1.9.0", ""),
                        host_result(
                            "web2",
                            pb::HostState::RolledBack,
                            "1.9.0",
                            "1.9.0",
                            "http check failed",
                        ),
                        host_result("web3", pb::HostState::Pending, "1.9.0", "", ""),
                    ],
                    summary: "wave 2 failed".into(),
                    incident_id: String::new(),
                }),
            ),
        ]
    }

    #[test]
    fn text_rendering_of_a_deployment() {
        let mut r = Renderer::new(Vec::new(), Vec::new(), Mode::Text);
        for e in sample_events() {
            r.event(&e).unwrap();
        }
        let (out, err) = r.into_inner();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
queued: position 2 behind d-0
lock acquired after 1.2s
plan: 2 waves: [web1] [web2 web3], max_fail_percentage 30%
wave 1/2: web1
web1: TASK [stage app 2.0.0] changed
web1: succeeded (txid t-1)
wave 1/2 done: 1 succeeded, 0 failed, 0 unreachable
wave 2/2: web2 web3
web2: TASK [health] failed: http check failed
wave 2/2 done: 1 succeeded, 1 failed, 0 unreachable (50% failed, over the threshold: aborting)
FLEET RESCUE: rolling back web1 web2: wave 2: 1 of 2 hosts failed (50% > 30%)
finished: rolled_back — wave 2 failed
production runs 1.9.0
HOST  STATE        FROM → TO  MESSAGE
web1  rolled_back  1.9.0
web2  rolled_back  1.9.0      http check failed
web3  untouched    1.9.0 → -
";
        assert_eq!(text, expected);
        // Plain text never draws a status line.
        assert!(err.is_empty());
    }

    #[test]
    fn live_rendering_redraws_a_status_line() {
        let mut r = Renderer::new(Vec::new(), Vec::new(), Mode::Live);
        let events = sample_events();
        for e in &events[..5] {
            r.event(e).unwrap();
        }
        assert_eq!(
            r.status_line(),
            "wave 1/2 · 0/3 hosts done · web1: TASK [stage app 2.0.0]"
        );
        for e in &events[5..] {
            r.event(e).unwrap();
        }
        let (out, err) = r.into_inner();
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("\r\x1b[2Kwave 1/2 · 0/3 hosts done · web1: TASK [stage app 2.0.0]"));
        assert!(err.contains("1/3 hosts done"));
        // The status line is cleared at the end.
        assert!(err.ends_with("\r\x1b[2K"), "{err:?}");
        // Same lines on stdout as in plain text.
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("finished: rolled_back")
        );
    }

    #[test]
    fn json_rendering_is_one_object_per_line() {
        let mut r = Renderer::new(Vec::new(), Vec::new(), Mode::Json);
        let events = sample_events();
        for e in &events {
            r.event(e).unwrap();
        }
        let (out, _) = r.into_inner();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), events.len());
        assert_eq!(lines[0]["type"], "queued");
        assert_eq!(lines.last().unwrap()["type"], "finished");
    }

    #[test]
    fn deploy_over_the_wire_uploads_once_reattaches_and_exits_with_the_outcome() {
        use crate::commands::mock;
        let (url, seen) = mock::start();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("backend-1.0.tar.gz");
        // Over 4 MiB, so the upload queue fills while the controller already answered.
        let data: Vec<u8> = (0..5 * CHUNK + 17).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&f, &data).unwrap();
        let mut args = DeployArgs {
            env: "production".into(),
            version: "1.1".into(),
            artifacts: vec![format!("backend={}", f.display())],
            extra_vars: Vec::new(),
            check: false,
            serial: Vec::new(),
            stages: Vec::new(),
            max_fail_percentage: None,
            commit: None,
            commit_time: None,
            follow: FollowArgs {
                wait_timeout: 600,
                ci_run_id: Some("ci-7".into()),
                // The fake controller names its deployment d-1.
                deployment_id: Some("d-1".into()),
                reconnect_timeout: 5,
            },
            controller: mock::args(&url, dir.path(), mock::TOKEN),
        };
        let no_env = |_: &str| None;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = |args: &DeployArgs| {
            let plan = prepare_deploy(args, &no_env).unwrap();
            let mut r = Renderer::new(Vec::new(), Vec::new(), Mode::Text);
            let res = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    run_deploy(plan, &mut r, Duration::from_secs(5)),
                )
                .await
                .expect("deploy hung")
            });
            let (out, err) = r.into_inner();
            (
                res,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        for round in 0..2 {
            let (res, out, err) = run(&args);
            assert_eq!(res.unwrap().code(), 1, "rolled back exits 1\n{out}\n{err}");
            if round == 0 {
                assert!(
                    out.starts_with("uploaded backend (5.0 MiB, sha256 "),
                    "{out}"
                );
            } else {
                assert!(
                    out.starts_with("backend already on the controller (sha256 "),
                    "{out}"
                );
            }
            // Every event once, although the stream broke and Watch replayed one event early.
            for line in [
                "queued: position 1 behind d-0",
                "lock acquired after 300ms",
                "plan: 1 wave: [web1]",
                "wave 1/1: web1",
                "web1: rolled_back (txid t-1): health check failed",
                "finished: rolled_back — web1 failed",
            ] {
                assert_eq!(out.matches(line).count(), 1, "{line}\n{out}");
            }
            assert!(err.contains("re-attaching to d-1"), "{err}");
        }
        {
            let seen = seen.lock().unwrap();
            let sha = rampart_host::digest::hex(&Sha256::digest(&data));
            assert_eq!(seen.store[&sha], data);
            assert_eq!(seen.uploads.len(), 2);
            assert_eq!(
                seen.uploads[0],
                (
                    "backend-1.0.tar.gz".to_string(),
                    sha.clone(),
                    data.len() as u64,
                    false
                )
            );
            assert!(seen.uploads[1].3, "second upload found the digest present");
            assert_eq!(seen.deploys[0].artifacts["backend"], sha);
            assert_eq!(seen.deploys[0].ci_run_id, "ci-7");
            assert_eq!(seen.deploys[0].environment, "production");
            assert_eq!(seen.watches[0].deployment_id, "d-1");
            assert_eq!(seen.watches[0].from_seq, 3);
        }
        // A refused token exits 3.
        args.controller = mock::args(&url, dir.path(), "wrong");
        let (res, _, _) = run(&args);
        let e = res.unwrap_err();
        assert_eq!(e.exit.code(), 3, "{}", e.message);
        assert!(e.message.contains("refused the token"), "{}", e.message);
    }

    #[test]
    fn watch_over_the_wire() {
        use crate::commands::mock;
        let (url, _) = mock::start();
        let dir = tempfile::tempdir().unwrap();
        let mut args = WatchArgs {
            deployment: "d-1".into(),
            from_seq: 0,
            reconnect_timeout: 5,
            controller: mock::args(&url, dir.path(), mock::TOKEN),
        };
        assert_eq!(watch(args.clone()).code(), 1);
        args.deployment = "d-404".into();
        assert_eq!(watch(args).code(), 2);
        // Nothing listens there: cannot reach the controller.
        let closed = WatchArgs {
            deployment: "d-1".into(),
            from_seq: 0,
            reconnect_timeout: 1,
            controller: mock::args("http://127.0.0.1:1", dir.path(), mock::TOKEN),
        };
        assert_eq!(watch(closed).code(), 2);
    }

    #[test]
    fn version_changes() {
        assert_eq!(version_change("1.0", "2.0"), "1.0 → 2.0");
        assert_eq!(version_change("", "2.0"), "- → 2.0");
        assert_eq!(version_change("2.0", "2.0"), "2.0");
    }

    #[test]
    fn commit_time_from_the_flag_the_commit_or_git() {
        let no_git = |c: &str| -> Result<String, String> { panic!("git asked for {c}") };
        let t = |s: i64| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(
            resolve_commit_time(Some("2025-01-31T12:00:00Z"), "abc123", &no_git).unwrap(),
            t(1_738_324_800)
        );
        assert_eq!(
            resolve_commit_time(Some("1738324800"), "", &no_git).unwrap(),
            t(1_738_324_800)
        );
        let e = resolve_commit_time(Some("yesterday"), "", &no_git).unwrap_err();
        assert!(
            e.message.contains("--commit-time \"yesterday\""),
            "{}",
            e.message
        );
        assert_eq!(resolve_commit_time(None, "", &no_git).unwrap(), None);
        assert_eq!(
            resolve_commit_time(None, "2025-01-31T13:00:00+01:00", &no_git).unwrap(),
            t(1_738_324_800)
        );
        let git = |c: &str| -> Result<String, String> {
            match c {
                "4f2a9c1e" => Ok("2025-01-31T12:00:00+00:00\n".into()),
                "1234567" => Err("unknown revision".into()),
                _ => Ok("garbage".into()),
            }
        };
        assert_eq!(
            resolve_commit_time(None, "4f2a9c1e", &git).unwrap(),
            t(1_738_324_800)
        );
        // Unknown to git, or an odd answer: unknown, and the deploy goes on.
        assert_eq!(resolve_commit_time(None, "1234567", &git).unwrap(), None);
        assert_eq!(resolve_commit_time(None, "v1.2", &git).unwrap(), None);
        // Never handed to git as an option.
        assert_eq!(
            resolve_commit_time(None, "--output=/tmp/x", &no_git).unwrap(),
            None
        );
    }

    #[test]
    fn git_resolves_a_real_commit_time() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .env("GIT_COMMITTER_DATE", "2025-01-31T12:00:00Z")
                .env("GIT_AUTHOR_DATE", "2025-01-31T12:00:00Z")
                .output()
                .expect("git (Debian package git)");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        git(&["init", "-q"]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ]);
        let sha = git(&["rev-parse", "HEAD"]);
        let text = git_commit_time_in(dir.path(), &sha).unwrap();
        assert_eq!(
            parse_commit_time(&text).map(|t| t.seconds),
            Some(1_738_324_800)
        );
        let e = git_commit_time_in(dir.path(), "0123abcd").unwrap_err();
        assert!(e.starts_with("git show: exited with 128"), "{e}");
    }
}
