//! The controller's read and control commands: `rampart status`, `history`, `deployment show`,
//! `approve`, `abort`, `forensics get`, `incidents` and `incidents resolve`.
//!
//! Each prints a text table, or with `--json` the full objects ([`deployment_json`],
//! [`incident_json`]: enums as snake_case names such as `rolled_back`, timestamps as RFC 3339).
//! Exit codes: 0 done, 2 usage error, unknown id or controller unreachable, 3 token refused.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rampart_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{
    CliError, Client, Controller, ControllerArgs, Exit, block_on, duration_text, fail,
    host_result_json, host_state_name, incident_state_name, kind_name, outcome_name,
    parse_json_text, severity_name, size_text, state_name, timestamp, timestamp_json,
    timestamp_text, version_change, write_table,
};

/// `rampart status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Only this environment (default: every environment).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Also ask every host now whether it is whole (the agents' CheckState): each component's
    /// `current` link, public path, recorded state and running version agree, and nothing of
    /// an interrupted transaction is left. Exit 1 when an environment is not.
    #[arg(long)]
    pub verify: bool,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// The environment.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// At most this many deployments, newest first.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: u32,
    /// Print delivery figures instead of the list: deployment frequency, lead time (commit to
    /// production live; `rampart deploy --commit` records the commit's time), change failure
    /// rate, time to restore, SC-001 (success rate >= 95 %) and SC-002 (p95 duration <= 10 min).
    #[arg(long)]
    pub stats: bool,
    /// The window of --stats, back from now: `30d`, `12h`, `90m` (at most 400d).
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = parse_since, requires = "stats")]
    pub since: u64,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart deployment ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeploymentCommand {
    /// Show one deployment: its state, outcome, who asked, and every host's result.
    ///
    /// The host table gives each host's wave, state, from → to version, transaction id, fleet
    /// rescue transaction id, forensics bundle id and message. With --analysis, also every
    /// canary analysis decision: per stage the canary and baseline hosts, and per evaluation
    /// each check's verdict, sample sizes, test, p-value, effect and minimum detectable effect
    /// (with --json, the queries and their raw results too). Exit codes: 0 shown, 2 unknown
    /// deployment or controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart deployment show d-20250131T120000Z-4f2a9c1e\n  \
        rampart deployment show d-20250131T120000Z-4f2a9c1e --analysis\n  \
        rampart deployment show d-20250131T120000Z-4f2a9c1e --json | jq '.hosts[] | select(.state != \"succeeded\")'")]
    Show(ShowArgs),
}

/// `rampart deployment show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The deployment's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Also show its canary analysis: every stage's decisions and what they were computed from.
    #[arg(long)]
    pub analysis: bool,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart approve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    /// The deployment waiting for approval.
    #[arg(value_name = "DEPLOYMENT")]
    pub deployment: String,
    /// A comment recorded with the approval.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart abort`.
#[derive(Debug, Clone, clap::Args)]
pub struct AbortArgs {
    /// The deployment to abort.
    #[arg(value_name = "DEPLOYMENT")]
    pub deployment: String,
    /// Why, recorded in history and shown in events.
    #[arg(long, value_name = "TEXT", required = true)]
    pub reason: String,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart forensics ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ForensicsCommand {
    /// Download the forensics bundle (tar.gz) a host recorded during a deployment.
    ///
    /// The bytes go to FILE.partial first and are renamed to FILE when complete, so FILE is
    /// never a partial bundle. An existing FILE is kept unless --force. Exit codes: 0 written,
    /// 2 no such bundle, FILE exists, or controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart forensics get d-20250131T120000Z-4f2a9c1e web2 -o web2-forensics.tar.gz\n  \
        rampart forensics get d-20250131T120000Z-4f2a9c1e web2 -o web2.tar.gz --force")]
    Get(ForensicsGetArgs),
}

/// `rampart forensics get`.
#[derive(Debug, Clone, clap::Args)]
pub struct ForensicsGetArgs {
    /// The deployment.
    #[arg(value_name = "DEPLOYMENT")]
    pub deployment: String,
    /// The host's inventory name.
    #[arg(value_name = "HOST")]
    pub host: String,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart incidents [resolve]`.
#[derive(Debug, Clone, clap::Args)]
pub struct IncidentsArgs {
    /// Acknowledge or resolve an incident instead of listing them.
    #[command(subcommand)]
    pub command: Option<IncidentsCommand>,
    /// Only this environment's incidents (default: every environment).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart incidents ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IncidentsCommand {
    /// Resolve an incident with a note, or only acknowledge it (--ack).
    ///
    /// The note goes into history with the token's name. Exit codes: 0 done, 2 unknown
    /// incident or controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart incidents resolve inc-20250131T120000Z-4f2a9c1e --ack --note 'looking at web2'\n  \
        rampart incidents resolve inc-20250131T120000Z-4f2a9c1e --note 'web2 restored by hand from 2.3.0'\n  \
        rampart incidents resolve inc-20250131T120000Z-4f2a9c1e --note 'fixed in 2.4.2' --postmortem https://wiki.example/pm/42")]
    Resolve(ResolveArgs),
    /// Render an incident's post-mortem draft (Markdown) from the controller's template.
    ///
    /// The draft is filled in with the incident's facts: the timeline of its deployment's
    /// events, the failed and rolled-back versions, the failed task and reason, where the
    /// forensics are and when the post-mortem is due (48 h after the incident opened). Fill
    /// in the sections marked TODO, publish it, and pass its URL to `incidents resolve
    /// --postmortem`. Exit codes: 0 printed (or written), 2 unknown incident, a file that
    /// cannot be written or the controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart incidents postmortem inc-20250131T120000Z-4f2a9c1e\n  \
        rampart incidents postmortem inc-20250131T120000Z-4f2a9c1e --output pm-42.md\n  \
        rampart incidents postmortem inc-20250131T120000Z-4f2a9c1e --json")]
    Postmortem(PostmortemArgs),
}

/// `rampart incidents postmortem`.
#[derive(Debug, Clone, clap::Args)]
pub struct PostmortemArgs {
    /// The incident's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Write the Markdown to FILE (atomically, replacing it) instead of printing it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `rampart incidents resolve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResolveArgs {
    /// The incident's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// What was done (the resolution note).
    #[arg(long, value_name = "TEXT", required = true)]
    pub note: String,
    /// Only acknowledge the incident; leave it unresolved.
    #[arg(long)]
    pub ack: bool,
    /// The post-mortem's URL (http:// or https://); required to resolve in an environment
    /// with `require_postmortem = true`.
    #[arg(long, value_name = "URL")]
    pub postmortem: Option<String>,
    /// How to reach the controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

// ---------------------------------------------------------------------------------------------
// JSON

/// A deployment as JSON, every field: enums as snake_case names (`rolled_back`), timestamps as
/// RFC 3339 (null when unset).
pub fn deployment_json(d: &pb::Deployment) -> Value {
    let artifacts: BTreeMap<&String, &String> = d.artifacts.iter().collect();
    json!({
        "id": d.id,
        "kind": kind_name(d.kind()),
        "environment": d.environment,
        "version": d.version,
        "state": state_name(d.state()),
        "outcome": outcome_name(d.outcome()),
        "requested_by": d.requested_by,
        "ci_run_id": d.ci_run_id,
        "commit": d.commit,
        "created": timestamp_json(d.created.as_ref()),
        "started": timestamp_json(d.started.as_ref()),
        "finished": timestamp_json(d.finished.as_ref()),
        "hosts": d.hosts.iter().map(host_result_json).collect::<Vec<_>>(),
        "queue_position": d.queue_position,
        "last_seq": d.last_seq,
        "artifacts": artifacts,
        "check": d.check,
        "reason": d.reason,
        "approved_by": d.approved_by,
        "aborted_by": d.aborted_by,
        "summary": d.summary,
        "incident_id": d.incident_id,
        "vars": parse_json_text(&d.vars_json),
        "serial": d.serial,
        "max_fail_percentage": d.max_fail_percentage,
        "wait_timeout_ms": d.wait_timeout_ms,
        "commit_time": timestamp_json(d.commit_time.as_ref()),
    })
}

/// An incident as JSON, every field.
pub fn incident_json(i: &pb::Incident) -> Value {
    json!({
        "id": i.id,
        "environment": i.environment,
        "deployment_id": i.deployment_id,
        "severity": severity_name(i.severity()),
        "state": incident_state_name(i.state()),
        "summary": i.summary,
        "hosts": i.hosts,
        "opened": timestamp_json(i.opened.as_ref()),
        "resolved": timestamp_json(i.resolved.as_ref()),
        "resolution": i.resolution,
        "acknowledged_by": i.acknowledged_by,
        "resolved_by": i.resolved_by,
        "postmortem_due": timestamp_json(i.postmortem_due.as_ref()),
        "postmortem_url": i.postmortem_url,
        "failed_version": i.failed_version,
        "rollback_version": i.rollback_version,
        "reason": i.reason,
        "failed_task": i.failed_task,
        "forensics": i.forensics,
    })
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// Text

/// Per-host states counted: `5 succeeded`, `2 rolled_back, 3 pending`, or `-` with no hosts.
pub fn hosts_summary(hosts: &[pb::HostResult]) -> String {
    use pb::HostState as S;
    const ORDER: [S; 8] = [
        S::Succeeded,
        S::RolledBack,
        S::RollbackFailed,
        S::Failed,
        S::Unreachable,
        S::Running,
        S::Pending,
        S::Unspecified,
    ];
    let parts: Vec<String> = ORDER
        .iter()
        .filter_map(|s| {
            let n = hosts.iter().filter(|h| h.state() == *s).count();
            (n > 0).then(|| format!("{n} {}", host_state_name(*s)))
        })
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// The outcome when finished, else the state (`queued #2` for a queued one).
fn outcome_or_state(d: &pb::Deployment) -> String {
    match d.state() {
        pb::DeploymentState::Finished => outcome_name(d.outcome()),
        pb::DeploymentState::Queued if d.queue_position > 0 => {
            format!("queued #{}", d.queue_position)
        }
        s => state_name(s),
    }
}

/// How long a deployment took (or has been running, marked `…`), from lock to end.
fn duration_of(d: &pb::Deployment, now: chrono::DateTime<chrono::Utc>) -> String {
    let from = timestamp(d.started.as_ref()).or_else(|| timestamp(d.created.as_ref()));
    let to = timestamp(d.finished.as_ref());
    match (from, to) {
        (Some(a), Some(b)) => duration_text((b - a).to_std().unwrap_or_default()),
        (Some(a), None) if d.state() != pb::DeploymentState::Finished && d.started.is_some() => {
            format!("{}…", duration_text((now - a).to_std().unwrap_or_default()))
        }
        _ => "-".to_string(),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

fn short_commit(c: &str) -> String {
    or_dash(&c.chars().take(12).collect::<String>())
}

/// An environment's state as JSON: its name, host count, current version (null when none
/// succeeded), unfinished deployments (`active`, the lock holder first, then the queue) and
/// last finished deployment (null when none), deployments as [`deployment_json`].
pub fn environment_json(e: &pb::EnvironmentStatus) -> Value {
    json!({
        "environment": e.name,
        "hosts": e.host_count,
        "current_version": (!e.current_version.is_empty()).then_some(&e.current_version),
        "active": e.active.iter().map(deployment_json).collect::<Vec<_>>(),
        "last_finished": e.last_finished.as_ref().map(deployment_json),
    })
}

/// The `status` table: every environment with its current version, one row per unfinished
/// deployment (the lock holder first, then the queue by position) and one for its last
/// finished one; `no deployments` for an environment that never had one.
pub fn render_status<W: Write>(
    out: &mut W,
    environments: &[pb::EnvironmentStatus],
) -> std::io::Result<()> {
    if environments.is_empty() {
        return writeln!(out, "no environments this token may see");
    }
    let mut rows = vec![
        [
            "ENV", "CURRENT", "STATE", "ID", "KIND", "VERSION", "SINCE", "BY", "HOSTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in environments {
        let current = or_dash(&e.current_version);
        let deps: Vec<&pb::Deployment> = e.active.iter().chain(&e.last_finished).collect();
        if deps.is_empty() {
            rows.push(vec![
                e.name.clone(),
                current,
                "no deployments".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("{} hosts", e.host_count),
            ]);
            continue;
        }
        for d in deps {
            let (label, since) = match d.state() {
                pb::DeploymentState::Finished => (
                    format!("last: {}", outcome_name(d.outcome())),
                    d.finished.as_ref(),
                ),
                pb::DeploymentState::Queued => (outcome_or_state(d), d.created.as_ref()),
                s => (state_name(s), d.started.as_ref().or(d.created.as_ref())),
            };
            rows.push(vec![
                e.name.clone(),
                current.clone(),
                label,
                d.id.clone(),
                kind_name(d.kind()),
                d.version.clone(),
                timestamp_text(since),
                or_dash(&d.requested_by),
                hosts_summary(&d.hosts),
            ]);
        }
    }
    write_table(out, &rows)
}

/// The `history` table, newest first.
pub fn render_history<W: Write>(
    out: &mut W,
    deployments: &[pb::Deployment],
    now: chrono::DateTime<chrono::Utc>,
) -> std::io::Result<()> {
    if deployments.is_empty() {
        return writeln!(out, "no deployments");
    }
    let mut rows = vec![
        [
            "ID", "KIND", "VERSION", "OUTCOME", "BY", "CI RUN", "COMMIT", "CREATED", "DURATION",
            "HOSTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in deployments {
        rows.push(vec![
            d.id.clone(),
            kind_name(d.kind()),
            d.version.clone(),
            outcome_or_state(d),
            or_dash(&d.requested_by),
            or_dash(&d.ci_run_id),
            short_commit(&d.commit),
            timestamp_text(d.created.as_ref()),
            duration_of(d, now),
            hosts_summary(&d.hosts),
        ]);
    }
    write_table(out, &rows)
}

/// `deployment show`: the fields, then the host table.
pub fn render_deployment<W: Write>(
    out: &mut W,
    d: &pb::Deployment,
    now: chrono::DateTime<chrono::Utc>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "deployment {}: {} {} to {}",
        d.id,
        kind_name(d.kind()),
        d.version,
        d.environment
    )?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut field = |k: &str, v: String| {
        if !v.is_empty() {
            rows.push(vec![format!("  {k}:"), v]);
        }
    };
    field("state", outcome_or_state(d));
    field("summary", d.summary.clone());
    field("requested by", d.requested_by.clone());
    field("ci run", d.ci_run_id.clone());
    field("commit", d.commit.clone());
    if d.commit_time.is_some() {
        field("commit time", timestamp_text(d.commit_time.as_ref()));
    }
    field("created", timestamp_text(d.created.as_ref()));
    if d.started.is_some() {
        field("started", timestamp_text(d.started.as_ref()));
    }
    if d.finished.is_some() {
        field("finished", timestamp_text(d.finished.as_ref()));
    }
    field("duration", duration_of(d, now));
    if d.check {
        field("check mode", "yes".into());
    }
    let artifacts: BTreeMap<&String, &String> = d.artifacts.iter().collect();
    for (name, sha) in artifacts {
        field("artifact", format!("{name} sha256 {sha}"));
    }
    if !d.serial.is_empty() {
        field("serial", d.serial.join(" "));
    }
    if let Some(m) = d.max_fail_percentage {
        field("max fail", format!("{m}%"));
    }
    if d.wait_timeout_ms > 0 {
        field(
            "wait timeout",
            duration_text(Duration::from_millis(d.wait_timeout_ms)),
        );
    }
    // Names only: values may be secrets.
    if let Value::Object(vars) = parse_json_text(&d.vars_json) {
        field("vars", vars.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    field("reason", d.reason.clone());
    field("approved by", d.approved_by.clone());
    field("aborted by", d.aborted_by.clone());
    field("incident", d.incident_id.clone());
    field("last seq", d.last_seq.to_string());
    write_table(out, &rows)?;
    if d.hosts.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let mut rows = vec![
        [
            "HOST",
            "WAVE",
            "STATE",
            "FROM → TO",
            "TXID",
            "RESCUE TXID",
            "FORENSICS",
            "MESSAGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for h in &d.hosts {
        rows.push(vec![
            h.host.clone(),
            (h.wave + 1).to_string(),
            super::host_state_label(h.state(), d.state() == pb::DeploymentState::Finished),
            version_change(&h.from_version, &h.to_version),
            or_dash(&h.txid),
            or_dash(&h.rescue_txid),
            or_dash(&h.forensics_id),
            h.message.clone(),
        ]);
    }
    write_table(out, &rows)
}

/// The `incidents` table.
pub fn render_incidents<W: Write>(out: &mut W, incidents: &[pb::Incident]) -> std::io::Result<()> {
    if incidents.is_empty() {
        return writeln!(out, "no incidents");
    }
    let mut rows = vec![
        [
            "ID",
            "SEVERITY",
            "STATE",
            "ENV",
            "DEPLOYMENT",
            "OPENED",
            "HOSTS",
            "SUMMARY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in incidents {
        rows.push(vec![
            i.id.clone(),
            severity_name(i.severity()),
            incident_state_name(i.state()),
            i.environment.clone(),
            i.deployment_id.clone(),
            timestamp_text(i.opened.as_ref()),
            or_dash(&i.hosts.join(",")),
            i.summary.clone(),
        ]);
    }
    write_table(out, &rows)
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Resolves the controller, connects, and runs `body` on a current-thread runtime.
fn with_client<F, Fut>(args: &ControllerArgs, body: F) -> Exit
where
    F: FnOnce(Controller, Client) -> Fut,
    Fut: Future<Output = Result<Exit, CliError>>,
{
    let ctl = match Controller::from_args(args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    block_on(async move {
        let client = ctl.connect().await?;
        body(ctl, client).await
    })
}

/// `rampart status`: every environment the token may see (or one), with its current version,
/// unfinished deployments and last finished one.
pub fn status(args: StatusArgs) -> Exit {
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let resp = c
            .list_environments(pb::ListEnvironmentsRequest {
                environment: args.env.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| ctl.error("list environments", &s))?
            .into_inner();
        let mut checks = Vec::new();
        if args.verify {
            for e in &resp.environments {
                let r = c
                    .check_environment(pb::CheckEnvironmentRequest {
                        environment: e.name.clone(),
                    })
                    .await
                    .map_err(|s| ctl.error(&format!("check environment {}", e.name), &s))?
                    .into_inner();
                checks.push(r);
            }
        }
        if json {
            let mut envs: Vec<Value> = resp.environments.iter().map(environment_json).collect();
            for (v, chk) in envs.iter_mut().zip(&checks) {
                v["verify"] = check_json(chk);
            }
            print_json(&Value::Array(envs));
        } else {
            let out = &mut std::io::stdout().lock();
            let _ = render_status(out, &resp.environments);
            for chk in &checks {
                let _ = render_check(out, chk);
            }
        }
        Ok(if checks.iter().all(|c| c.consistent) {
            Exit::Ok
        } else {
            Exit::Failed
        })
    })
}

/// A consistency check as JSON: {consistent, version, deployment_in_progress, incident_id,
/// hosts: [{host, reachable, consistent, error, in_progress, components: {name: version},
/// problems: [{component, code, message}]}]}.
pub fn check_json(c: &pb::CheckEnvironmentResponse) -> Value {
    json!({
        "consistent": c.consistent,
        "version": c.version,
        "deployment_in_progress": c.deployment_in_progress,
        "incident_id": c.incident_id,
        "hosts": c.hosts.iter().map(|h| json!({
            "host": h.host,
            "reachable": h.reachable,
            "consistent": h.consistent,
            "error": h.error,
            "in_progress": h.in_progress,
            "components": h.components.iter()
                .map(|x| (x.name.clone(), Value::String(x.version.clone())))
                .collect::<serde_json::Map<_, _>>(),
            "problems": h.problems.iter().map(|p| json!({
                "component": p.component, "code": p.code, "message": p.message,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A consistency check as a table: one row per host, then one line per problem.
pub fn render_check<W: Write>(
    out: &mut W,
    c: &pb::CheckEnvironmentResponse,
) -> std::io::Result<()> {
    writeln!(out)?;
    let verdict = if c.consistent {
        format!("whole, every host on {}", or_dash(&c.version))
    } else {
        "NOT WHOLE".to_string()
    };
    writeln!(out, "{}: {verdict}", c.environment)?;
    if !c.deployment_in_progress.is_empty() {
        writeln!(
            out,
            "  deployment {} holds the lock: hosts of different waves may differ",
            c.deployment_in_progress
        )?;
    }
    let mut rows = vec![
        ["HOST", "AGENT", "STATE", "VERSIONS"]
            .map(String::from)
            .to_vec(),
    ];
    for h in &c.hosts {
        let versions: Vec<String> = h
            .components
            .iter()
            .map(|x| format!("{}={}", x.name, or_dash(&x.version)))
            .collect();
        rows.push(vec![
            h.host.clone(),
            if h.reachable { "up" } else { "DOWN" }.into(),
            if !h.reachable {
                "-".into()
            } else if !h.in_progress.is_empty() {
                format!("running {}", h.in_progress)
            } else if h.consistent {
                "whole".into()
            } else {
                format!("{} problem(s)", h.problems.len())
            },
            if versions.is_empty() {
                "-".into()
            } else {
                versions.join(" ")
            },
        ]);
    }
    write_table(out, &rows)?;
    for h in &c.hosts {
        if !h.reachable {
            writeln!(out, "  {}: {}", h.host, h.error)?;
        }
        for p in &h.problems {
            let comp = if p.component.is_empty() {
                String::new()
            } else {
                format!(" {}", p.component)
            };
            writeln!(out, "  {}{comp} [{}]: {}", h.host, p.code, p.message)?;
        }
    }
    if !c.incident_id.is_empty() {
        writeln!(out, "  incident {} is open for it", c.incident_id)?;
    }
    Ok(())
}

/// `--since`: `<N>d`, `<N>h` or `<N>m` as seconds, 1 minute to 400 days.
pub fn parse_since(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let per = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        _ => {
            return Err(format!(
                "{text:?}: give a number and a unit, d, h or m (e.g. 30d, 12h, 90m)"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?}: {num:?} is not a whole number (e.g. 30d, 12h, 90m)"))?;
    let secs = n.saturating_mul(per);
    if secs == 0 || secs > 400 * 86_400 {
        return Err(format!("{text:?}: from 1m to 400d"));
    }
    Ok(secs)
}

/// A window in seconds as people write it: `30d`, `12h`, `90m`, `45s`.
fn window_text(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3_600) {
        format!("{}h", secs / 3_600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn seconds_text(s: Option<f64>) -> String {
    s.map_or_else(
        || "-".to_string(),
        |s| duration_text(Duration::from_secs_f64(s.max(0.0))),
    )
}

fn percent_text(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "no data",
    }
}

/// The `history --stats` figures as JSON: every field, unset figures as null.
pub fn stats_json(r: &pb::DeploymentStatsResponse) -> Value {
    json!({
        "environment": r.environment,
        "window_start": timestamp_json(r.window_start.as_ref()),
        "window_end": timestamp_json(r.window_end.as_ref()),
        "deployments": {
            "finished": r.finished,
            "succeeded": r.succeeded,
            "rolled_back": r.rolled_back,
            "rollback_failed": r.rollback_failed,
            "failed": r.failed,
            "not_started": r.not_started,
            "manual_rollbacks": r.manual_rollbacks,
        },
        "deployment_frequency_per_day": r.deployments_per_day,
        "lead_time": {
            "samples": r.lead_time_samples,
            "median_seconds": r.lead_time_median_seconds,
            "p95_seconds": r.lead_time_p95_seconds,
        },
        "change_failure_rate": r.change_failure_rate,
        "time_to_restore": {
            "incidents_opened": r.incidents_opened,
            "incidents_resolved": r.incidents_resolved,
            "median_seconds": r.time_to_restore_median_seconds,
        },
        "sc001": {
            "success_rate": r.success_rate,
            "target": r.success_rate_target,
            "met": r.success_rate_met,
        },
        "sc002": {
            "p95_duration_seconds": r.duration_p95_seconds,
            "target_seconds": r.duration_p95_target_seconds,
            "met": r.duration_p95_met,
        },
        "deployments_scanned": r.deployments_scanned,
        "incidents_scanned": r.incidents_scanned,
        "truncated": r.truncated,
    })
}

/// The `history --stats` table.
pub fn render_stats<W: Write>(
    out: &mut W,
    r: &pb::DeploymentStatsResponse,
    since: u64,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{}, last {} ({} to {})",
        r.environment,
        window_text(since),
        timestamp_text(r.window_start.as_ref()),
        timestamp_text(r.window_end.as_ref())
    )?;
    let row = |k: &str, v: String| vec![format!("  {k}"), v];
    let rows = vec![
        row(
            "deployments",
            format!(
                "{} ({} succeeded, {} rolled back, {} rollback failed, {} failed); {} never started, {} manual rollbacks",
                r.finished,
                r.succeeded,
                r.rolled_back,
                r.rollback_failed,
                r.failed,
                r.not_started,
                r.manual_rollbacks
            ),
        ),
        row(
            "deployment frequency",
            format!("{:.2} per day", r.deployments_per_day),
        ),
        row(
            "lead time",
            if r.lead_time_samples == 0 {
                "- (no succeeded deployment with a commit time; deploy with --commit)".into()
            } else {
                format!(
                    "median {}, p95 {} ({} deployments)",
                    seconds_text(r.lead_time_median_seconds),
                    seconds_text(r.lead_time_p95_seconds),
                    r.lead_time_samples
                )
            },
        ),
        row("change failure rate", percent_text(r.change_failure_rate)),
        row(
            "time to restore",
            format!(
                "median {} ({} of {} incidents resolved)",
                seconds_text(r.time_to_restore_median_seconds),
                r.incidents_resolved,
                r.incidents_opened
            ),
        ),
        row(
            "SC-001 success rate",
            format!(
                "{} (target >= {:.0}%): {}",
                percent_text(r.success_rate),
                r.success_rate_target * 100.0,
                verdict(r.success_rate_met)
            ),
        ),
        row(
            "SC-002 p95 duration",
            format!(
                "{} (target <= {}): {}",
                seconds_text(r.duration_p95_seconds),
                seconds_text(Some(r.duration_p95_target_seconds)),
                verdict(r.duration_p95_met)
            ),
        ),
    ];
    write_table(out, &rows)?;
    if r.truncated {
        writeln!(
            out,
            "note: only the newest {} deployments and {} incidents were read; the figures cover part of the window",
            r.deployments_scanned, r.incidents_scanned
        )?;
    }
    Ok(())
}

/// `rampart history --stats`: the environment's delivery figures over `--since`.
fn history_stats(args: HistoryArgs) -> Exit {
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let resp = c
            .deployment_stats(pb::DeploymentStatsRequest {
                environment: args.env.clone(),
                since_seconds: args.since,
            })
            .await
            .map_err(|s| ctl.error(&format!("deployment stats of {}", args.env), &s))?
            .into_inner();
        if json {
            print_json(&stats_json(&resp));
        } else {
            let _ = render_stats(&mut std::io::stdout().lock(), &resp, args.since);
        }
        Ok(Exit::Ok)
    })
}

/// `rampart history`: an environment's deployments, newest first (with `--stats`, its
/// delivery figures).
pub fn history(args: HistoryArgs) -> Exit {
    if args.stats {
        return history_stats(args);
    }
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let resp = c
            .list_deployments(pb::ListDeploymentsRequest {
                environment: args.env.clone(),
                states: Vec::new(),
                limit: args.limit,
            })
            .await
            .map_err(|s| ctl.error(&format!("list deployments of {}", args.env), &s))?
            .into_inner();
        if json {
            print_json(&Value::Array(
                resp.deployments.iter().map(deployment_json).collect(),
            ));
        } else {
            let _ = render_history(
                &mut std::io::stdout().lock(),
                &resp.deployments,
                chrono::Utc::now(),
            );
        }
        Ok(Exit::Ok)
    })
}

/// `rampart deployment ...`.
pub fn deployment(cmd: DeploymentCommand) -> Exit {
    match cmd {
        DeploymentCommand::Show(args) => deployment_show(args),
    }
}

/// `rampart deployment show`: one deployment with its per-host results.
pub fn deployment_show(args: ShowArgs) -> Exit {
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let d = c
            .get_deployment(pb::GetDeploymentRequest {
                deployment_id: args.id.clone(),
            })
            .await
            .map_err(|s| ctl.error(&format!("show deployment {}", args.id), &s))?
            .into_inner();
        let analysis = if args.analysis {
            analysis_events(&ctl, &mut c, &d).await?
        } else {
            Vec::new()
        };
        if json {
            let mut v = deployment_json(&d);
            if args.analysis {
                v["analysis"] =
                    Value::Array(analysis.iter().map(super::deploy::event_json).collect());
            }
            print_json(&v);
        } else {
            let out = &mut std::io::stdout().lock();
            let _ = render_deployment(out, &d, chrono::Utc::now());
            if args.analysis {
                let _ = render_analysis(out, &analysis);
            }
        }
        Ok(Exit::Ok)
    })
}

/// The deployment's analysis events, up to its last event when it was read (a running
/// deployment's stream is not followed further).
async fn analysis_events(
    ctl: &super::Controller,
    c: &mut super::Client,
    d: &pb::Deployment,
) -> Result<Vec<pb::DeploymentEvent>, crate::error::CliError> {
    use pb::deployment_event::Kind;
    let mut stream = c
        .watch(pb::WatchDeploymentRequest {
            deployment_id: d.id.clone(),
            from_seq: 0,
        })
        .await
        .map_err(|s| ctl.error(&format!("read the events of {}", d.id), &s))?
        .into_inner();
    let mut out = Vec::new();
    // Bounded: one pass over the events stored when the deployment was read.
    for _ in 0..=d.last_seq {
        let ev = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(ev))) => ev,
            Ok(Err(s)) => return Err(ctl.error(&format!("read the events of {}", d.id), &s)),
            Ok(Ok(None)) | Err(_) => break,
        };
        let seq = ev.seq;
        if matches!(
            ev.kind,
            Some(Kind::AnalysisStarted(_) | Kind::AnalysisEvaluated(_) | Kind::AnalysisFinished(_))
        ) {
            out.push(ev);
        }
        if seq >= d.last_seq {
            break;
        }
    }
    Ok(out)
}

/// The analysis events as text: per stage its hosts, per evaluation each check's verdict and
/// numbers, and the verdict.
pub fn render_analysis<W: Write>(
    out: &mut W,
    events: &[pb::DeploymentEvent],
) -> std::io::Result<()> {
    use pb::deployment_event::Kind;
    writeln!(out)?;
    if events.is_empty() {
        return writeln!(
            out,
            "analysis: none (no stage of this deployment was analysed)"
        );
    }
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    for ev in events {
        match &ev.kind {
            Some(Kind::AnalysisStarted(a)) => writeln!(
                out,
                "analysis after wave {}: canary {} | baseline {} | window {}s (max {}s), every {}s",
                a.after_wave + 1,
                a.canary_hosts.join(" "),
                if a.historical_baseline {
                    "their own window before the upgrade (weaker evidence)".to_string()
                } else {
                    a.baseline_hosts.join(" ")
                },
                a.window_ms / 1000,
                a.max_window_ms / 1000,
                a.interval_ms as f64 / 1000.0
            )?,
            Some(Kind::AnalysisEvaluated(a)) => {
                let when = if a.fast_path {
                    "  fast path".to_string()
                } else {
                    format!(
                        "  #{} at {:.0}s",
                        a.evaluation,
                        a.elapsed_ms as f64 / 1000.0
                    )
                };
                for c in &a.checks {
                    let d: Value = serde_json::from_str(&c.detail_json).unwrap_or(Value::Null);
                    let mut nums = Vec::new();
                    if let Some(n) = d.pointer("/canary/n").and_then(Value::as_u64) {
                        nums.push(format!("n={n}"));
                    }
                    if let Some(n) = d.pointer("/baseline/n").and_then(Value::as_u64) {
                        nums.push(format!("baseline n={n}"));
                    }
                    if let Some(p) = num(&d, "p_value") {
                        nums.push(format!("p={p:.2e}"));
                    }
                    if let Some(e) = d.pointer("/effect/difference").and_then(Value::as_f64) {
                        nums.push(format!("effect={e:.4}"));
                    }
                    if let Some(m) = num(&d, "minimum_detectable_effect") {
                        nums.push(format!("mde={m:.4}"));
                    }
                    writeln!(
                        out,
                        "{when} {}: {}{} — {}{}",
                        c.check,
                        c.verdict,
                        if c.strong { " (strong)" } else { "" },
                        c.reason,
                        if nums.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", nums.join(" "))
                        }
                    )?;
                }
            }
            Some(Kind::AnalysisFinished(a)) => writeln!(
                out,
                "  => {}{} after {} evaluations, {:.0}s: {}",
                a.verdict.to_uppercase(),
                if a.check.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", a.check)
                },
                a.evaluations,
                a.duration_ms as f64 / 1000.0,
                a.reason
            )?,
            _ => {}
        }
    }
    Ok(())
}

/// `rampart approve`: approves a deployment waiting for approval; prints its new state.
pub fn approve(args: ApproveArgs) -> Exit {
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let resp = c
            .approve(pb::ApproveRequest {
                deployment_id: args.deployment.clone(),
                comment: args.comment.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| ctl.error(&format!("approve {}", args.deployment), &s))?
            .into_inner();
        let d = resp.deployment.unwrap_or_default();
        if json {
            print_json(&deployment_json(&d));
        } else {
            println!(
                "approved {}: {} (follow it with `rampart watch {}`)",
                args.deployment,
                outcome_or_state(&d),
                args.deployment
            );
            print_note(&resp.message);
        }
        Ok(Exit::Ok)
    })
}

/// The controller's note on an approval or abort (e.g. that it was forwarded), when it gave one.
fn print_note(message: &str) {
    if !message.is_empty() {
        println!("{message}");
    }
}

/// `rampart abort`: aborts a deployment; prints its new state.
pub fn abort(args: AbortArgs) -> Exit {
    if args.reason.trim().is_empty() {
        return fail(CliError::usage("--reason must say why"));
    }
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let resp = c
            .abort(pb::AbortRequest {
                deployment_id: args.deployment.clone(),
                reason: args.reason.clone(),
            })
            .await
            .map_err(|s| ctl.error(&format!("abort {}", args.deployment), &s))?
            .into_inner();
        let d = resp.deployment.unwrap_or_default();
        if !json {
            print_note(&resp.message);
        }
        if json {
            print_json(&deployment_json(&d));
        } else if d.state() == pb::DeploymentState::Finished {
            println!("aborted {}: {}", args.deployment, outcome_or_state(&d));
        } else {
            println!(
                "aborting {}: {}; the hosts it changed are rolled back: follow it with \
                 `rampart watch {}`",
                args.deployment,
                outcome_or_state(&d),
                args.deployment
            );
        }
        Ok(Exit::Ok)
    })
}

/// `rampart forensics ...`.
pub fn forensics(cmd: ForensicsCommand) -> Exit {
    match cmd {
        ForensicsCommand::Get(args) => forensics_get(args),
    }
}

/// `FILE.partial` next to `FILE`.
fn partial_path(output: &std::path::Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// `rampart forensics get`: streams a host's forensics bundle into FILE.partial, then renames
/// it to FILE.
pub fn forensics_get(args: ForensicsGetArgs) -> Exit {
    if args.output.exists() && !args.force {
        return fail(CliError::usage(format!(
            "{} exists; pass --force to replace it",
            args.output.display()
        )));
    }
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let what = format!("get the forensics of {} in {}", args.host, args.deployment);
        let mut stream = c
            .get_forensics(pb::GetDeploymentForensicsRequest {
                deployment_id: args.deployment.clone(),
                host: args.host.clone(),
            })
            .await
            .map_err(|s| ctl.error(&what, &s))?
            .into_inner();
        let partial = partial_path(&args.output);
        let result = async {
            let mut f = tokio::fs::File::create(&partial).await.map_err(|e| {
                CliError::usage(format!("cannot create {}: {e}", partial.display()))
            })?;
            let write_err =
                |e: std::io::Error| CliError::usage(format!("writing {}: {e}", partial.display()));
            let mut size = 0u64;
            while let Some(chunk) = stream.message().await.map_err(|s| ctl.error(&what, &s))? {
                f.write_all(&chunk.data).await.map_err(write_err)?;
                size += chunk.data.len() as u64;
            }
            f.flush().await.map_err(write_err)?;
            f.sync_all().await.map_err(write_err)?;
            drop(f);
            tokio::fs::rename(&partial, &args.output)
                .await
                .map_err(|e| {
                    CliError::usage(format!(
                        "cannot rename {} to {}: {e}",
                        partial.display(),
                        args.output.display()
                    ))
                })?;
            Ok::<u64, CliError>(size)
        }
        .await;
        let size = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        if json {
            print_json(&json!({"path": args.output.display().to_string(), "size": size}));
        } else {
            println!(
                "wrote {} ({size} bytes) to {}",
                size_text(size),
                args.output.display()
            );
        }
        Ok(Exit::Ok)
    })
}

/// `rampart incidents [resolve]`.
pub fn incidents(args: IncidentsArgs) -> Exit {
    match args.command {
        Some(IncidentsCommand::Resolve(r)) => incident_resolve(r),
        Some(IncidentsCommand::Postmortem(p)) => incident_postmortem(p),
        None => {
            let json = args.controller.json;
            with_client(&args.controller, |ctl, mut c| async move {
                let resp = c
                    .list_incidents(pb::ListIncidentsRequest {
                        environment: args.env.clone().unwrap_or_default(),
                        states: Vec::new(),
                        limit: 0,
                    })
                    .await
                    .map_err(|s| ctl.error("list incidents", &s))?
                    .into_inner();
                if json {
                    print_json(&Value::Array(
                        resp.incidents.iter().map(incident_json).collect(),
                    ));
                } else {
                    let _ = render_incidents(&mut std::io::stdout().lock(), &resp.incidents);
                }
                Ok(Exit::Ok)
            })
        }
    }
}

/// `rampart incidents postmortem`: prints (or writes) an incident's post-mortem draft.
pub fn incident_postmortem(args: PostmortemArgs) -> Exit {
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let pm = c
            .get_postmortem(pb::GetPostmortemRequest {
                incident_id: args.id.clone(),
            })
            .await
            .map_err(|s| {
                ctl.error(
                    &format!("render the post-mortem of incident {}", args.id),
                    &s,
                )
            })?
            .into_inner();
        if let Some(out) = &args.output {
            rampart_host::durable::write_atomic(out, pm.markdown.as_bytes(), Some(0o644))
                .map_err(|e| CliError::usage(format!("cannot write {}: {e}", out.display())))?;
            if json {
                print_json(
                    &json!({"incident_id": pm.incident_id, "output": out.display().to_string()}),
                );
            } else {
                println!(
                    "post-mortem draft of {} written to {}",
                    pm.incident_id,
                    out.display()
                );
            }
        } else if json {
            print_json(&json!({"incident_id": pm.incident_id, "markdown": pm.markdown}));
        } else {
            print!("{}", pm.markdown);
        }
        Ok(Exit::Ok)
    })
}

/// `rampart incidents resolve`: acknowledges or resolves an incident.
pub fn incident_resolve(args: ResolveArgs) -> Exit {
    if args.note.trim().is_empty() {
        return fail(CliError::usage("--note must say what was done"));
    }
    let json = args.controller.json;
    with_client(&args.controller, |ctl, mut c| async move {
        let i = c
            .resolve_incident(pb::ResolveIncidentRequest {
                incident_id: args.id.clone(),
                note: args.note.clone(),
                acknowledge_only: args.ack,
                postmortem_url: args.postmortem.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| ctl.error(&format!("resolve incident {}", args.id), &s))?
            .into_inner();
        if json {
            print_json(&incident_json(&i));
        } else {
            let by = if i.state() == pb::IncidentState::Resolved {
                &i.resolved_by
            } else {
                &i.acknowledged_by
            };
            println!(
                "incident {}: {}{}",
                i.id,
                incident_state_name(i.state()),
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" by {by}")
                }
            );
        }
        Ok(Exit::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    fn host(name: &str, state: pb::HostState) -> pb::HostResult {
        pb::HostResult {
            host: name.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn dep(id: &str, env: &str, state: pb::DeploymentState) -> pb::Deployment {
        pb::Deployment {
            id: id.into(),
            environment: env.into(),
            kind: pb::DeploymentKind::Deploy as i32,
            version: "2.4.1".into(),
            state: state as i32,
            created: ts(1_700_000_000),
            ..Default::default()
        }
    }

    #[test]
    fn deployment_json_has_every_field() {
        let mut d = dep("d-1", "production", pb::DeploymentState::Finished);
        d.outcome = pb::DeploymentOutcome::RolledBack as i32;
        d.started = ts(1_700_000_010);
        d.finished = ts(1_700_000_100);
        d.artifacts.insert("backend".into(), "ab".repeat(32));
        d.hosts = vec![pb::HostResult {
            host: "web1".into(),
            state: pb::HostState::RolledBack as i32,
            outcome: pb::Outcome::RolledBack as i32,
            state_capture_json: r#"{"versions":{"backend":"2.3.0"}}"#.into(),
            ..Default::default()
        }];
        let v = deployment_json(&d);
        assert_eq!(v["kind"], "deploy");
        assert_eq!(v["state"], "finished");
        assert_eq!(v["outcome"], "rolled_back");
        assert_eq!(v["created"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["artifacts"]["backend"], "ab".repeat(32));
        assert_eq!(v["hosts"][0]["state"], "rolled_back");
        assert_eq!(v["hosts"][0]["outcome"], "rolled_back");
        assert_eq!(
            v["hosts"][0]["state_capture"]["versions"]["backend"],
            "2.3.0"
        );
        assert_eq!(v["hosts"][0]["started"], Value::Null);
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 27, "one key per Deployment field");
        assert_eq!(v["commit_time"], Value::Null);
        assert_eq!(v["vars"], Value::Null);
        assert_eq!(v["max_fail_percentage"], Value::Null);
    }

    #[test]
    fn hosts_summaries() {
        assert_eq!(
            hosts_summary(&[
                host("a", pb::HostState::Pending),
                host("b", pb::HostState::RolledBack),
                host("c", pb::HostState::RolledBack),
                host("d", pb::HostState::Pending),
                host("e", pb::HostState::Pending),
            ]),
            "2 rolled_back, 3 pending"
        );
        assert_eq!(hosts_summary(&[]), "-");
    }

    #[test]
    fn status_shows_every_environment_its_version_active_then_last_finished() {
        let mut q1 = dep("d-4", "production", pb::DeploymentState::Queued);
        q1.queue_position = 1;
        let running = dep("d-3", "production", pb::DeploymentState::Running);
        let mut last = dep("d-2", "production", pb::DeploymentState::Finished);
        last.outcome = pb::DeploymentOutcome::RolledBack as i32;
        let envs = vec![
            pb::EnvironmentStatus {
                name: "production".into(),
                host_count: 5,
                current_version: "2.4.0".into(),
                active: vec![running, q1],
                last_finished: Some(last),
            },
            pb::EnvironmentStatus {
                name: "staging".into(),
                host_count: 2,
                ..Default::default()
            },
        ];
        let mut out = Vec::new();
        render_status(&mut out, &envs).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].starts_with("production  2.4.0    running"),
            "{text}"
        );
        assert!(lines[2].contains("queued #1"), "{text}");
        assert!(lines[3].contains("last: rolled_back"), "{text}");
        assert!(
            lines[4].starts_with("staging     -        no deployments"),
            "{text}"
        );
        let v = environment_json(&envs[0]);
        assert_eq!(v["current_version"], "2.4.0");
        assert_eq!(v["active"][1]["queue_position"], 1);
        assert_eq!(v["last_finished"]["outcome"], "rolled_back");
        let v = environment_json(&envs[1]);
        assert_eq!(v["current_version"], Value::Null);
        assert_eq!(v["last_finished"], Value::Null);
    }

    #[test]
    fn history_and_show_render() {
        let mut d = dep("d-2", "production", pb::DeploymentState::Finished);
        d.outcome = pb::DeploymentOutcome::RolledBack as i32;
        d.started = ts(1_700_000_000);
        d.finished = ts(1_700_000_185);
        d.commit = "0123456789abcdef".into();
        d.vars_json = r#"{"db_password":"hunter2","feature":"x"}"#.into();
        d.serial = vec!["1".into(), "50%".into()];
        d.hosts = vec![pb::HostResult {
            host: "web1".into(),
            state: pb::HostState::RolledBack as i32,
            from_version: "2.3.0".into(),
            to_version: "2.3.0".into(),
            txid: "t-1".into(),
            rescue_txid: "t-2".into(),
            forensics_id: "2.4.1-20231114".into(),
            message: "health check failed".into(),
            ..Default::default()
        }];
        let now = chrono::Utc::now();
        let mut out = Vec::new();
        render_history(&mut out, std::slice::from_ref(&d), now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("rolled_back"), "{row}");
        assert!(row.contains("0123456789ab "), "{row}");
        assert!(row.contains("3m05s"), "{row}");
        assert!(row.contains("1 rolled_back"), "{row}");
        let mut out = Vec::new();
        render_deployment(&mut out, &d, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("deployment d-2: deploy 2.4.1 to production\n"),
            "{text}"
        );
        assert!(text.contains("t-2"), "{text}");
        assert!(text.contains("2.4.1-20231114"), "{text}");
        assert!(text.contains("health check failed"), "{text}");
        assert!(text.contains("db_password, feature"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("1 50%"), "{text}");
    }

    #[test]
    fn incidents_json_and_table() {
        let i = pb::Incident {
            id: "i-1".into(),
            environment: "production".into(),
            deployment_id: "d-2".into(),
            severity: pb::IncidentSeverity::Critical as i32,
            state: pb::IncidentState::Open as i32,
            summary: "rollback failed on web2".into(),
            hosts: vec!["web2".into()],
            opened: ts(1_700_000_000),
            ..Default::default()
        };
        let v = incident_json(&i);
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["state"], "open");
        assert_eq!(v["resolved"], Value::Null);
        let mut out = Vec::new();
        render_incidents(&mut out, &[i]).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("critical  open"));
    }

    #[test]
    fn forensics_get_writes_through_a_partial_file() {
        use crate::commands::mock;
        let (url, _) = mock::start();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("web1.tar.gz");
        let mut args = ForensicsGetArgs {
            deployment: "d-1".into(),
            host: "web1".into(),
            output: out.clone(),
            force: false,
            controller: mock::args(&url, dir.path(), mock::TOKEN),
        };
        assert_eq!(forensics_get(args.clone()).code(), 0);
        assert_eq!(std::fs::read(&out).unwrap(), b"abcdef");
        assert!(!partial_path(&out).exists());
        // An existing file is kept without --force.
        std::fs::write(&out, b"keep").unwrap();
        assert_eq!(forensics_get(args.clone()).code(), 2);
        assert_eq!(std::fs::read(&out).unwrap(), b"keep");
        args.force = true;
        assert_eq!(forensics_get(args.clone()).code(), 0);
        assert_eq!(std::fs::read(&out).unwrap(), b"abcdef");
        // No bundle: exit 2 and no file at all.
        let other = dir.path().join("web9.tar.gz");
        args.host = "web9".into();
        args.output = other.clone();
        assert_eq!(forensics_get(args.clone()).code(), 2);
        assert!(!other.exists() && !partial_path(&other).exists());
        // A refused token: exit 3.
        args.controller = mock::args(&url, dir.path(), "wrong");
        assert_eq!(
            status(StatusArgs {
                env: None,
                verify: false,
                controller: args.controller.clone()
            })
            .code(),
            3
        );
        args.controller = mock::args(&url, dir.path(), mock::TOKEN);
        assert_eq!(
            status(StatusArgs {
                env: None,
                verify: false,
                controller: args.controller.clone()
            })
            .code(),
            0
        );
        // --verify: a host that is not whole makes it exit 1.
        assert_eq!(
            status(StatusArgs {
                env: None,
                verify: true,
                controller: args.controller
            })
            .code(),
            1
        );
    }

    #[test]
    fn partial_file_sits_next_to_the_output() {
        assert_eq!(
            partial_path(std::path::Path::new("/tmp/web2.tar.gz")),
            PathBuf::from("/tmp/web2.tar.gz.partial")
        );
    }

    #[test]
    fn since_takes_days_hours_and_minutes() {
        assert_eq!(parse_since("30d"), Ok(30 * 86_400));
        assert_eq!(parse_since("12h"), Ok(12 * 3_600));
        assert_eq!(parse_since("90m"), Ok(5_400));
        for bad in [
            "",
            "30",
            "d",
            "30w",
            "-1d",
            "0m",
            "401d",
            "1.5h",
            "99999999999999999999d",
        ] {
            let e = parse_since(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert_eq!(window_text(30 * 86_400), "30d");
        assert_eq!(window_text(5_400), "90m");
    }

    fn stats() -> pb::DeploymentStatsResponse {
        pb::DeploymentStatsResponse {
            environment: "production".into(),
            window_start: ts(1_700_000_000),
            window_end: ts(1_700_000_000 + 30 * 86_400),
            finished: 20,
            succeeded: 18,
            rolled_back: 1,
            rollback_failed: 1,
            deployments_per_day: 20.0 / 30.0,
            lead_time_samples: 18,
            lead_time_median_seconds: Some(3_600.0),
            lead_time_p95_seconds: Some(7_200.0),
            change_failure_rate: Some(0.1),
            incidents_opened: 2,
            incidents_resolved: 1,
            time_to_restore_median_seconds: Some(1_800.0),
            success_rate: Some(0.9),
            success_rate_target: 0.95,
            success_rate_met: Some(false),
            duration_p95_seconds: Some(300.0),
            duration_p95_target_seconds: 600.0,
            duration_p95_met: Some(true),
            deployments_scanned: 21,
            incidents_scanned: 2,
            ..Default::default()
        }
    }

    #[test]
    fn stats_table_says_pass_and_fail() {
        let mut out = Vec::new();
        render_stats(&mut out, &stats(), 30 * 86_400).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("production, last 30d (2023-11-14 22:13:20Z to "),
            "{text}"
        );
        assert!(text.contains("0.67 per day"), "{text}");
        assert!(
            text.contains("median 1h00m, p95 2h00m (18 deployments)"),
            "{text}"
        );
        let line = |k: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(k))
                .unwrap_or("")
        };
        assert!(line("change failure rate").ends_with(" 10.0%"), "{text}");
        assert!(
            text.contains("median 30m00s (1 of 2 incidents resolved)"),
            "{text}"
        );
        assert!(text.contains("90.0% (target >= 95%): FAIL"), "{text}");
        assert!(text.contains("5m00s (target <= 10m00s): PASS"), "{text}");
        assert!(!text.contains("note:"), "{text}");
        let mut empty = pb::DeploymentStatsResponse {
            environment: "dev".into(),
            success_rate_target: 0.95,
            duration_p95_target_seconds: 600.0,
            truncated: true,
            ..Default::default()
        };
        empty.deployments_scanned = 100_000;
        let mut out = Vec::new();
        render_stats(&mut out, &empty, 3_600).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(" - (no succeeded deployment with a commit time"),
            "{text}"
        );
        assert!(text.contains(" - (target >= 95%): no data"), "{text}");
        assert!(
            text.contains("note: only the newest 100000 deployments"),
            "{text}"
        );
    }

    #[test]
    fn stats_json_has_every_figure() {
        let v = stats_json(&stats());
        assert_eq!(v["deployment_frequency_per_day"], 20.0 / 30.0);
        assert_eq!(v["deployments"]["rollback_failed"], 1);
        assert_eq!(v["lead_time"]["p95_seconds"], 7_200.0);
        assert_eq!(v["change_failure_rate"], 0.1);
        assert_eq!(v["time_to_restore"]["median_seconds"], 1_800.0);
        assert_eq!(
            v["sc001"],
            json!({"success_rate": 0.9, "target": 0.95, "met": false})
        );
        assert_eq!(v["sc002"]["met"], true);
        assert_eq!(v["window_start"], "2023-11-14T22:13:20.000Z");
        let none = stats_json(&pb::DeploymentStatsResponse::default());
        assert!(none["sc001"]["met"].is_null() && none["lead_time"]["median_seconds"].is_null());
    }
}
