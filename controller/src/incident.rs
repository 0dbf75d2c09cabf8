//! Incidents: what opens one, why a deployment rolled back, and the post-mortem draft.
//!
//! - [`rollback_reason`]: the one classification of a rollback (health, service, migration,
//!   artifact, analysis, unreachable, manual, other), from the deployment and its first failed
//!   task; the incident records it and the metrics count by it.
//! - [`open`]: the one way an incident is opened: the incident and its outbox rows (one per
//!   sink of the environment that takes `incident` notices) in one store transaction, so a
//!   controller killed right after still delivers them once restarted ([`crate::notify`]).
//! - [`resolve_notices`] / [`event_notices`]: the outbox rows of a resolution and of the
//!   deployment notices (`approval`, `succeeded`).
//! - [`render_postmortem`]: `docs/postmortem-template.md`, embedded, filled in with an
//!   incident's facts and the timeline of its deployment's stored events.
//!
//! Severity: `rollback_failed` is CRITICAL, `rolled_back` ERROR; WARNING is for inconsistencies
//! found by a state sweep. A post-mortem is due 48 hours after the incident opened.

use std::fmt::Write as _;
use std::time::Duration;

use rampart_proto::v1 as pb;

use crate::config::Environment;
use crate::notify::NoticeEvent;
use crate::store::{Notice, Store, StoreResult};

/// How long after an incident opens its post-mortem is due.
pub const POSTMORTEM_DUE: Duration = Duration::from_secs(48 * 3600);

/// The post-mortem template shipped in the repository.
pub const POSTMORTEM_TEMPLATE: &str = include_str!("../../docs/postmortem-template.md");

/// Why a deployment was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RollbackReason {
    /// A health check (or `wait_for`) failed.
    Health,
    /// A service would not start, stop or restart.
    Service,
    /// A database migration failed.
    Migration,
    /// An artifact could not be fetched, verified, extracted or activated.
    Artifact,
    /// An analysis (canary, metrics comparison) judged the release bad.
    Analysis,
    /// Hosts could not be reached.
    Unreachable,
    /// A person asked: an abort, or a rollback deployment.
    Manual,
    /// Anything else.
    Other,
}

impl RollbackReason {
    /// Every reason, in the order of the metrics' label values.
    pub const ALL: [RollbackReason; 8] = [
        RollbackReason::Health,
        RollbackReason::Service,
        RollbackReason::Migration,
        RollbackReason::Artifact,
        RollbackReason::Analysis,
        RollbackReason::Unreachable,
        RollbackReason::Manual,
        RollbackReason::Other,
    ];

    /// The label value: `health`, `service`, ...
    pub fn name(self) -> &'static str {
        match self {
            RollbackReason::Health => "health",
            RollbackReason::Service => "service",
            RollbackReason::Migration => "migration",
            RollbackReason::Artifact => "artifact",
            RollbackReason::Analysis => "analysis",
            RollbackReason::Unreachable => "unreachable",
            RollbackReason::Manual => "manual",
            RollbackReason::Other => "other",
        }
    }
}

/// The first task that failed in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailedTask {
    /// The host it failed on.
    pub host: String,
    /// The task's name.
    pub name: String,
    /// Its module, e.g. `health` or `ansible.builtin.command`.
    pub action: String,
}

impl FailedTask {
    /// `TASK [name] (module) on host`.
    pub fn describe(&self) -> String {
        format!("TASK [{}] ({}) on {}", self.name, self.action, self.host)
    }
}

/// Why deployment `d` rolled back, given the first task that failed (if one did).
///
/// In order: a person asked (an abort, or a rollback deployment) → `manual`; the failed task's
/// module decides (`health`/`wait_for` → health, `service` → service, `migrate` → migration,
/// `release` → artifact); then words of the task's name (analysis/canary → analysis, and the
/// same families as the modules); with no failed task, a host that could not be reached →
/// `unreachable`; else `other`.
pub fn rollback_reason(d: &pb::Deployment, failed: Option<&FailedTask>) -> RollbackReason {
    if !d.aborted_by.is_empty() || d.kind() == pb::DeploymentKind::Rollback {
        return RollbackReason::Manual;
    }
    if let Some(t) = failed {
        let module = t.action.rsplit('.').next().unwrap_or("");
        match module {
            "health" | "wait_for" => return RollbackReason::Health,
            "service" | "systemd" | "systemd_service" => return RollbackReason::Service,
            "migrate" => return RollbackReason::Migration,
            "release" | "get_url" | "unarchive" => return RollbackReason::Artifact,
            _ => {}
        }
        let name = t.name.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| name.contains(w));
        if has(&["analysis", "canary", "slo", "error rate", "metric"]) {
            return RollbackReason::Analysis;
        }
        if has(&["health", "smoke"]) {
            return RollbackReason::Health;
        }
        if has(&["migrat", "schema"]) {
            return RollbackReason::Migration;
        }
        if has(&["artifact", "checksum", "sha256", "download", "extract"]) {
            return RollbackReason::Artifact;
        }
        if has(&["service", "systemd", "restart", "start"]) {
            return RollbackReason::Service;
        }
        return RollbackReason::Other;
    }
    if d.hosts
        .iter()
        .any(|h| h.state() == pb::HostState::Unreachable || h.message.contains("unreachable"))
    {
        return RollbackReason::Unreachable;
    }
    RollbackReason::Other
}

/// The incident of a finished deployment `d` that ended `rolled_back` or `rollback_failed`
/// (`critical`), opened now, with its summary and first failed task.
pub fn for_deployment(
    d: &pb::Deployment,
    critical: bool,
    summary: &str,
    failed: Option<&FailedTask>,
) -> pb::Incident {
    let severity = if critical {
        pb::IncidentSeverity::Critical
    } else {
        pb::IncidentSeverity::Error
    };
    let hosts: Vec<String> = d
        .hosts
        .iter()
        .filter(|h| !matches!(h.state(), pb::HostState::Succeeded | pb::HostState::Pending))
        .map(|h| h.host.clone())
        .collect();
    // Where the hosts ended: their from_version, the one they were rolled back to.
    let mut back: Vec<&str> = d
        .hosts
        .iter()
        .filter(|h| !h.state_capture_json.is_empty() || !h.from_version.is_empty())
        .map(|h| h.from_version.as_str())
        .filter(|v| !v.is_empty())
        .collect();
    back.sort_unstable();
    back.dedup();
    let rollback_version = if critical || back.len() != 1 {
        String::new()
    } else {
        back[0].to_string()
    };
    let forensics = d
        .hosts
        .iter()
        .filter(|h| !h.forensics_id.is_empty())
        .map(|h| format!("{}:{}", h.host, h.forensics_id))
        .collect::<Vec<_>>()
        .join(", ");
    let opened = std::time::SystemTime::now();
    pb::Incident {
        id: format!("inc-{}", d.id.trim_start_matches("d-")),
        environment: d.environment.clone(),
        deployment_id: d.id.clone(),
        severity: severity as i32,
        state: pb::IncidentState::Open as i32,
        summary: summary.to_string(),
        hosts,
        opened: Some(opened.into()),
        postmortem_due: Some((opened + POSTMORTEM_DUE).into()),
        failed_version: d.version.clone(),
        rollback_version,
        reason: rollback_reason(d, failed).name().to_string(),
        failed_task: failed.map(FailedTask::describe).unwrap_or_default(),
        forensics,
        ..Default::default()
    }
}

/// The outbox rows of `event` about `subject` for every sink of `env` that takes it (none when
/// the environment is no longer configured).
pub fn notices(env: Option<&Environment>, event: NoticeEvent, subject: &str) -> Vec<Notice> {
    let Some(env) = env else {
        return Vec::new();
    };
    env.notify
        .iter()
        .filter(|s| s.events.contains(&event))
        .map(|s| Notice::new(&env.name, s.kind.name(), event.name(), subject))
        .collect()
}

/// Opens incident `inc`: stores it with its `incident` notices in one transaction.
/// `AlreadyExists` when it was opened already (nothing is written twice).
pub fn open(store: &dyn Store, env: Option<&Environment>, inc: &pb::Incident) -> StoreResult<()> {
    let n = notices(env, NoticeEvent::Incident, &inc.id);
    store.insert_incident(inc, &n)
}

/// The notices a resolution of `inc` writes with it.
pub fn resolve_notices(env: Option<&Environment>, inc: &pb::Incident) -> Vec<Notice> {
    notices(env, NoticeEvent::IncidentResolved, &inc.id)
}

/// The notices a deployment event writes with it: `approval` for `AwaitingApproval`,
/// `succeeded` for a `Finished` that succeeded; none for the others.
pub fn event_notices(env: Option<&Environment>, ev: &pb::DeploymentEvent) -> Vec<Notice> {
    use pb::deployment_event::Kind;
    match &ev.kind {
        Some(Kind::AwaitingApproval(_)) => notices(env, NoticeEvent::Approval, &ev.deployment_id),
        Some(Kind::Finished(f)) if f.outcome() == pb::DeploymentOutcome::Succeeded => {
            notices(env, NoticeEvent::Succeeded, &ev.deployment_id)
        }
        _ => Vec::new(),
    }
}

/// A timestamp as RFC 3339 UTC (`2024-05-01T12:00:00Z`); `-` when unset.
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    chrono::DateTime::<chrono::Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

/// One line of the timeline for a stored event, or `None` for events a timeline leaves out
/// (every relayed agent event but a failed task).
fn timeline_line(ev: &pb::DeploymentEvent) -> Option<String> {
    use pb::deployment_event::Kind;
    let what = match ev.kind.as_ref()? {
        Kind::Queued(q) => format!("queued (position {})", q.position),
        Kind::LockAcquired(_) => "took the environment lock".into(),
        Kind::Planned(p) => format!("rollout planned: {} wave(s)", p.waves.len()),
        Kind::AwaitingApproval(a) if a.reason.is_empty() => "awaiting approval".into(),
        Kind::AwaitingApproval(a) => a.reason.clone(),
        Kind::AnalysisStarted(a) => format!(
            "canary analysis after wave {}: {} against {}",
            a.after_wave,
            a.canary_hosts.join(", "),
            if a.historical_baseline {
                "their own window before the upgrade".to_string()
            } else {
                a.baseline_hosts.join(", ")
            }
        ),
        Kind::AnalysisEvaluated(a) if a.fast_path => a
            .checks
            .iter()
            .map(|c| c.reason.clone())
            .collect::<Vec<_>>()
            .join("; "),
        Kind::AnalysisEvaluated(_) => return None,
        Kind::AnalysisFinished(a) => format!(
            "canary analysis after wave {}: {}{}: {}",
            a.after_wave,
            a.verdict,
            if a.check.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.check)
            },
            a.reason
        ),
        Kind::Approved(a) => format!("approved by {}", a.approved_by),
        Kind::WaveStarted(w) => format!("wave {} started: {}", w.index, w.hosts.join(", ")),
        Kind::HostEvent(h) => {
            let Some(pb::transaction_event::Kind::TaskFinished(t)) =
                h.event.as_ref().and_then(|e| e.kind.as_ref())
            else {
                return None;
            };
            if t.status() != pb::TaskStatus::Failed {
                return None;
            }
            format!("{}: TASK [{}] ({}) failed", h.host, t.name, t.action)
        }
        Kind::HostFinished(h) => {
            let rescue = if h.fleet_rescue {
                " (fleet rescue)"
            } else {
                ""
            };
            let msg = if h.message.is_empty() {
                String::new()
            } else {
                format!(": {}", h.message)
            };
            format!("{}{rescue} ended {:?}{msg}", h.host, h.state())
        }
        Kind::WaveFinished(w) => format!(
            "wave {} finished: {} succeeded, {} failed, {} unreachable{}",
            w.index,
            w.succeeded,
            w.failed,
            w.unreachable,
            if w.aborts { " — aborts" } else { "" }
        ),
        Kind::BakeStarted(b) => format!("bake {} ms after wave {}", b.duration_ms, b.after_wave),
        Kind::AbortRequested(a) => format!("abort requested by {}: {}", a.aborted_by, a.reason),
        Kind::FleetRescueStarted(f) => format!(
            "fleet rescue started ({}): {}",
            f.reason,
            f.hosts.join(", ")
        ),
        Kind::Resumed(r) => format!("resumed by controller {}", r.controller),
        Kind::Finished(f) => format!("finished {:?}: {}", f.outcome(), f.summary),
    };
    Some(format!(
        "| {} | {} |",
        rfc3339(ev.time.as_ref()),
        what.replace('|', "\\|")
    ))
}

/// At most this many timeline rows (the first ones and the last, with a line saying how many
/// were left out).
const TIMELINE_ROWS: usize = 200;

/// The post-mortem draft of `inc`: the template with its `{{placeholders}}` filled in from the
/// incident, its deployment (`None` when no longer stored) and that deployment's stored events.
pub fn render_postmortem(
    inc: &pb::Incident,
    d: Option<&pb::Deployment>,
    events: &[pb::DeploymentEvent],
) -> String {
    let lines: Vec<String> = events.iter().filter_map(timeline_line).collect();
    let mut timeline = String::from("| time (UTC) | what happened |\n|---|---|\n");
    let _ = writeln!(
        timeline,
        "| {} | incident {} opened |",
        rfc3339(inc.opened.as_ref()),
        inc.id
    );
    if lines.len() > TIMELINE_ROWS {
        let half = TIMELINE_ROWS / 2;
        for l in &lines[..half] {
            let _ = writeln!(timeline, "{l}");
        }
        let _ = writeln!(
            timeline,
            "| … | {} more events left out |",
            lines.len() - TIMELINE_ROWS
        );
        for l in &lines[lines.len() - half..] {
            let _ = writeln!(timeline, "{l}");
        }
    } else {
        for l in &lines {
            let _ = writeln!(timeline, "{l}");
        }
    }
    if inc.resolved.is_some() {
        let _ = writeln!(
            timeline,
            "| {} | resolved by {}: {} |",
            rfc3339(inc.resolved.as_ref()),
            inc.resolved_by,
            inc.resolution.replace('|', "\\|")
        );
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let severity = match inc.severity() {
        pb::IncidentSeverity::Critical => "critical",
        pb::IncidentSeverity::Error => "error",
        pb::IncidentSeverity::Warning => "warning",
        _ => "unspecified",
    };
    let values: [(&str, String); 17] = [
        ("incident_id", inc.id.clone()),
        ("environment", inc.environment.clone()),
        ("deployment_id", inc.deployment_id.clone()),
        ("severity", severity.into()),
        ("state", format!("{:?}", inc.state()).to_lowercase()),
        ("summary", dash(&inc.summary)),
        ("opened", rfc3339(inc.opened.as_ref())),
        ("postmortem_due", rfc3339(inc.postmortem_due.as_ref())),
        ("failed_version", dash(&inc.failed_version)),
        ("rollback_version", dash(&inc.rollback_version)),
        ("reason", dash(&inc.reason)),
        ("failed_task", dash(&inc.failed_task)),
        ("forensics", dash(&inc.forensics)),
        ("hosts", dash(&inc.hosts.join(", "))),
        (
            "requested_by",
            dash(d.map_or("", |d| d.requested_by.as_str())),
        ),
        ("commit", dash(d.map_or("", |d| d.commit.as_str()))),
        ("timeline", timeline),
    ];
    let mut out = POSTMORTEM_TEMPLATE.to_string();
    for (k, v) in &values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(kind: pb::DeploymentKind) -> pb::Deployment {
        pb::Deployment {
            id: "d-1".into(),
            kind: kind as i32,
            environment: "prod".into(),
            version: "2.0.0".into(),
            hosts: vec![
                pb::HostResult {
                    host: "web1".into(),
                    state: pb::HostState::RolledBack as i32,
                    from_version: "1.0.0".into(),
                    forensics_id: "2.0.0-20240501".into(),
                    ..Default::default()
                },
                pb::HostResult {
                    host: "web2".into(),
                    state: pb::HostState::Succeeded as i32,
                    from_version: "1.0.0".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn task(name: &str, action: &str) -> FailedTask {
        FailedTask {
            host: "web1".into(),
            name: name.into(),
            action: action.into(),
        }
    }

    #[test]
    fn rollback_reason_follows_module_then_name_then_hosts() {
        use RollbackReason as R;
        let d = deployment(pb::DeploymentKind::Deploy);
        let r = |name: &str, action: &str| rollback_reason(&d, Some(&task(name, action)));
        assert_eq!(r("check", "health"), R::Health);
        assert_eq!(r("port", "ansible.builtin.wait_for"), R::Health);
        assert_eq!(r("start app", "service"), R::Service);
        assert_eq!(r("db", "migrate"), R::Migration);
        assert_eq!(r("unpack", "release"), R::Artifact);
        assert_eq!(r("canary analysis", "command"), R::Analysis);
        assert_eq!(r("smoke test", "command"), R::Health);
        assert_eq!(r("verify checksum", "command"), R::Artifact);
        assert_eq!(r("do something", "command"), R::Other);
        assert_eq!(rollback_reason(&d, None), R::Other);
        let mut u = d.clone();
        u.hosts[0].state = pb::HostState::Unreachable as i32;
        assert_eq!(rollback_reason(&u, None), R::Unreachable);
        let mut aborted = d.clone();
        aborted.aborted_by = "ops".into();
        assert_eq!(
            rollback_reason(&aborted, Some(&task("x", "health"))),
            R::Manual
        );
        let rb = deployment(pb::DeploymentKind::Rollback);
        assert_eq!(rollback_reason(&rb, None), R::Manual);
    }

    #[test]
    fn an_incident_carries_versions_reason_forensics_and_its_due_date() {
        let d = deployment(pb::DeploymentKind::Deploy);
        let t = task("health check", "health");
        let i = for_deployment(&d, false, "rolled back", Some(&t));
        assert_eq!(i.id, "inc-1");
        assert_eq!(i.severity(), pb::IncidentSeverity::Error);
        assert_eq!(i.failed_version, "2.0.0");
        assert_eq!(i.rollback_version, "1.0.0");
        assert_eq!(i.reason, "health");
        assert_eq!(i.failed_task, "TASK [health check] (health) on web1");
        assert_eq!(i.forensics, "web1:2.0.0-20240501");
        assert_eq!(i.hosts, vec!["web1".to_string()]);
        let due = i.postmortem_due.unwrap().seconds - i.opened.unwrap().seconds;
        assert_eq!(due, 48 * 3600);
        let c = for_deployment(&d, true, "CRITICAL", None);
        assert_eq!(c.severity(), pb::IncidentSeverity::Critical);
        assert_eq!(
            c.rollback_version, "",
            "hosts do not agree after a failed rollback"
        );
    }

    #[test]
    fn the_postmortem_names_the_facts_and_the_timeline() {
        let d = deployment(pb::DeploymentKind::Deploy);
        let i = for_deployment(&d, false, "rolled back", Some(&task("hc", "health")));
        let ev = |seq, kind| pb::DeploymentEvent {
            seq,
            deployment_id: "d-1".into(),
            time: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            kind: Some(kind),
        };
        use pb::deployment_event::Kind;
        let events = vec![
            ev(0, Kind::LockAcquired(pb::LockAcquired::default())),
            ev(
                1,
                Kind::FleetRescueStarted(pb::FleetRescueStarted {
                    hosts: vec!["web1".into()],
                    reason: "wave 0 failed".into(),
                }),
            ),
        ];
        let md = render_postmortem(&i, Some(&d), &events);
        for want in [
            "inc-1",
            "2.0.0",
            "1.0.0",
            "TASK [hc] (health) on web1",
            "web1:2.0.0-20240501",
            "| 2024-05-01T12:00:00Z | took the environment lock |",
            "fleet rescue started (wave 0 failed): web1",
            "## Root cause",
            "## Action items",
            "## Lessons learned",
        ] {
            assert!(md.contains(want), "{want:?} missing from\n{md}");
        }
        assert!(!md.contains("{{"), "a placeholder is left:\n{md}");
    }
}
