//! The controller's Prometheus metrics: what this process did (counters, histograms) and what
//! its environments look like now (gauges, read from the store and from the last consistency
//! sweep at every scrape), served as Prometheus's text format (0.0.4) on `[metrics] listen`
//! beside `/healthz` ([`serve`]).
//!
//! Names and labels are a contract (alert rules and dashboards in `monitoring/` query them):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rampart_deployments_started_total` | counter | environment, kind (deploy, rollback) |
//! | `rampart_deployments_completed_total` | counter | environment, outcome (succeeded, rolled_back, rollback_failed, failed, aborted) |
//! | `rampart_rollbacks_total` | counter | environment, reason (health, service, migration, artifact, analysis, unreachable, manual, other) |
//! | `rampart_deployment_duration_seconds` | histogram | environment, outcome |
//! | `rampart_rollback_duration_seconds` | histogram | environment |
//! | `rampart_health_check_failures_total` | counter | environment, category, check |
//! | `rampart_deployment_in_progress` | gauge | environment |
//! | `rampart_deployment_queue_length` | gauge | environment |
//! | `rampart_deployment_lock_held_seconds` | gauge | environment |
//! | `rampart_deployment_state_inconsistency_detected` | gauge | environment |
//! | `rampart_environment_version_info` | gauge | environment, version |
//! | `rampart_host_version_info` | gauge | environment, host, component, version |
//! | `rampart_agent_up` | gauge | environment, host |
//! | `rampart_incidents_open` | gauge | environment, severity |
//! | `rampart_incident_postmortem_overdue` | gauge | environment |
//! | `rampart_notifications_failed_total` | counter | environment, sink |
//! | `rampart_notification_outbox_pending` | gauge | environment, sink |
//! | `rampart_build_info` | gauge | version |
//! | `rampart_analysis_runs_total` | counter | environment, verdict (pass, fail, inconclusive, error) |
//! | `rampart_analysis_check_verdict` | gauge (1 for each check's latest verdict, 0 for the others) | environment, check, verdict |
//! | `rampart_canary_hosts_ratio` | gauge (0 when no analysis runs) | environment |
//!
//! Counters count what this process did: a restart resets them (`rate()` and `increase()`
//! handle it), and with several controllers on one PostgreSQL store each counts the deployments
//! it ran, so `sum` across instances is right. The gauges describe the environment as the store
//! and the sweep see it, the same from every instance: aggregate them with `max`.
//!
//! `outcome` folds the outcomes that never touched a host into `aborted` (aborted, lock wait
//! timed out, approval timed out); check-mode runs are not deployments and are not counted.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rampart_proto::v1 as pb;

/// Deployment durations: 5 s to 2 h, with the alert thresholds (600 s, 900 s) as boundaries.
const DURATION_BUCKETS: [f64; 14] = [
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 5400.0,
    7200.0,
];

/// Rollback durations (verdict to every host verified): 1 s to 1 h.
const ROLLBACK_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// At most this many (category, check) series per environment; the rest count as `other`. A
/// playbook names its checks, and a label must not grow without bound.
const MAX_CHECK_SERIES: usize = 256;

/// A label value is cut to this many bytes (versions, host and check names come from configs
/// and playbooks).
const MAX_LABEL: usize = 128;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Env {
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvKind {
    environment: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvOutcome {
    environment: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvReason {
    environment: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvCheck {
    environment: String,
    category: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvVersion {
    environment: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvHostComponent {
    environment: String,
    host: String,
    component: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvHost {
    environment: String,
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvSeverity {
    environment: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvSink {
    environment: String,
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvVerdict {
    environment: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvCheckVerdict {
    environment: String,
    check: String,
    verdict: String,
}

/// The verdicts of an analysis and of its checks, as label values.
pub const ANALYSIS_VERDICTS: [&str; 4] = ["pass", "fail", "inconclusive", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

type FGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn rollback_histogram() -> Histogram {
    Histogram::new(ROLLBACK_BUCKETS)
}

/// What one environment looks like now: the gauges a scrape sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvGauges {
    /// A deployment holds the lock.
    pub in_progress: bool,
    /// Deployments waiting for the lock.
    pub queued: u32,
    /// How long the holder has held the lock (zero when free).
    pub lock_held: Duration,
    /// Open incidents by severity (`warning`, `error`, `critical`).
    pub incidents_open: BTreeMap<String, u32>,
    /// Open incidents past their post-mortem deadline.
    pub postmortem_overdue: u32,
    /// Notices waiting for delivery, by sink.
    pub outbox_pending: BTreeMap<String, u64>,
}

/// What the last consistency sweep found on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSeen {
    /// The agent answered.
    pub up: bool,
    /// Its components' versions (`current`), by component.
    pub versions: BTreeMap<String, String>,
    /// It reported itself whole.
    pub consistent: bool,
}

/// What the last sweep of one environment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSeen {
    /// By host.
    pub hosts: BTreeMap<String, HostSeen>,
}

impl EnvSeen {
    /// The version every reachable host runs, when they agree (each host's components agree
    /// with each other too); `None` when they disagree or nothing was seen.
    pub fn common_version(&self) -> Option<String> {
        let versions: HashSet<&str> = self
            .hosts
            .values()
            .filter(|h| h.up)
            .flat_map(|h| h.versions.values().map(String::as_str))
            .collect();
        match versions.len() {
            1 => versions.into_iter().next().map(str::to_string),
            _ => None,
        }
    }

    /// Hosts disagree on the version, or one reported itself inconsistent.
    pub fn inconsistent(&self) -> bool {
        let up: Vec<&HostSeen> = self.hosts.values().filter(|h| h.up).collect();
        if up.iter().any(|h| !h.consistent) {
            return true;
        }
        let versions: HashSet<&str> = up
            .iter()
            .flat_map(|h| h.versions.values().map(String::as_str))
            .collect();
        versions.len() > 1
    }
}

/// The controller's metrics. Cheap to share (`Arc`); every method is safe from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Family<EnvKind, Counter>,
    completed: Family<EnvOutcome, Counter>,
    rollbacks: Family<EnvReason, Counter>,
    duration: Family<EnvOutcome, Histogram, fn() -> Histogram>,
    rollback_duration: Family<Env, Histogram, fn() -> Histogram>,
    health_failures: Family<EnvCheck, Counter>,
    checks_seen: Mutex<HashSet<EnvCheck>>,
    in_progress: Family<Env, Gauge>,
    queue: Family<Env, Gauge>,
    lock_held: Family<Env, FGauge>,
    inconsistent: Family<Env, Gauge>,
    env_version: Family<EnvVersion, Gauge>,
    host_version: Family<EnvHostComponent, Gauge>,
    agent_up: Family<EnvHost, Gauge>,
    incidents_open: Family<EnvSeverity, Gauge>,
    overdue: Family<Env, Gauge>,
    notifications_failed: Family<EnvSink, Counter>,
    outbox_pending: Family<EnvSink, Gauge>,
    analysis_runs: Family<EnvVerdict, Counter>,
    analysis_check: Family<EnvCheckVerdict, Gauge>,
    canary_ratio: Family<Env, FGauge>,
    /// The last sweep's findings, by environment.
    seen: Mutex<BTreeMap<String, EnvSeen>>,
    /// The version each environment's last finished deployment left it on (when the sweep has
    /// not seen it yet), by environment.
    last_version: Mutex<BTreeMap<String, String>>,
    /// One scrape at a time: a scrape clears and refills the gauges.
    scrape: tokio::sync::Mutex<()>,
}

fn label(s: &str) -> String {
    crate::edge::cut(s, MAX_LABEL).to_string()
}

fn env(e: &str) -> Env {
    Env {
        environment: label(e),
    }
}

/// The `outcome` label of a finished deployment; `None` for check-mode runs (not counted).
pub fn outcome_label(o: pb::DeploymentOutcome) -> Option<&'static str> {
    use pb::DeploymentOutcome as O;
    Some(match o {
        O::Succeeded => "succeeded",
        O::RolledBack => "rolled_back",
        O::RollbackFailed => "rollback_failed",
        O::Failed => "failed",
        O::Aborted | O::LockTimeout | O::ApprovalTimedOut => "aborted",
        O::CheckOnly | O::Unspecified => return None,
    })
}

/// The `kind` label of a deployment.
pub fn kind_label(k: pb::DeploymentKind) -> &'static str {
    match k {
        pb::DeploymentKind::Rollback => "rollback",
        _ => "deploy",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, with `rampart_build_info` set.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            started: Family::default(),
            completed: Family::default(),
            rollbacks: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            rollback_duration: Family::new_with_constructor(
                rollback_histogram as fn() -> Histogram,
            ),
            health_failures: Family::default(),
            checks_seen: Mutex::new(HashSet::new()),
            in_progress: Family::default(),
            queue: Family::default(),
            lock_held: Family::default(),
            inconsistent: Family::default(),
            env_version: Family::default(),
            host_version: Family::default(),
            agent_up: Family::default(),
            incidents_open: Family::default(),
            overdue: Family::default(),
            notifications_failed: Family::default(),
            outbox_pending: Family::default(),
            analysis_runs: Family::default(),
            analysis_check: Family::default(),
            canary_ratio: Family::default(),
            seen: Mutex::new(BTreeMap::new()),
            last_version: Mutex::new(BTreeMap::new()),
            scrape: tokio::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "rampart_deployments_started",
            "Deployments that took their environment's lock (this controller process)",
            m.started.clone(),
        );
        r.register(
            "rampart_analysis_runs",
            "Canary analyses of a stage that ended, by verdict (pass, fail, inconclusive, error)",
            m.analysis_runs.clone(),
        );
        r.register(
            "rampart_analysis_check_verdict",
            "1 for the latest verdict of each analysis check of the environment's running or last analysis, 0 for the others",
            m.analysis_check.clone(),
        );
        r.register(
            "rampart_canary_hosts_ratio",
            "Share of the environment's hosts on the new release while a canary analysis judges them (0 when none runs)",
            m.canary_ratio.clone(),
        );
        r.register(
            "rampart_deployments_completed",
            "Deployments that ended, by outcome (this controller process)",
            m.completed.clone(),
        );
        r.register(
            "rampart_rollbacks",
            "Deployments rolled back (fleet rescue or operator), by reason",
            m.rollbacks.clone(),
        );
        r.register(
            "rampart_deployment_duration_seconds",
            "Time from taking the lock to the end of a deployment, by outcome",
            m.duration.clone(),
        );
        r.register(
            "rampart_rollback_duration_seconds",
            "Time from the failure verdict to every host verified on the old version",
            m.rollback_duration.clone(),
        );
        r.register(
            "rampart_health_check_failures",
            "Critical or warning health checks that failed on a host",
            m.health_failures.clone(),
        );
        r.register(
            "rampart_deployment_in_progress",
            "1 while a deployment holds the environment's lock",
            m.in_progress.clone(),
        );
        r.register(
            "rampart_deployment_queue_length",
            "Deployments waiting for the environment's lock",
            m.queue.clone(),
        );
        r.register(
            "rampart_deployment_lock_held_seconds",
            "How long the current holder has held the environment's lock (0 when free)",
            m.lock_held.clone(),
        );
        r.register(
            "rampart_deployment_state_inconsistency_detected",
            "1 when the environment's hosts disagree on the version or a host reports an inconsistent state",
            m.inconsistent.clone(),
        );
        r.register(
            "rampart_environment_version_info",
            "The version every host of the environment runs (value 1)",
            m.env_version.clone(),
        );
        r.register(
            "rampart_host_version_info",
            "The version each host runs, by component (value 1)",
            m.host_version.clone(),
        );
        r.register(
            "rampart_agent_up",
            "1 when the controller reached the host's agent in its last check",
            m.agent_up.clone(),
        );
        r.register(
            "rampart_incidents_open",
            "Open incidents, by severity",
            m.incidents_open.clone(),
        );
        r.register(
            "rampart_incident_postmortem_overdue",
            "Open incidents past their 48 h post-mortem deadline",
            m.overdue.clone(),
        );
        r.register(
            "rampart_notifications_failed",
            "Notification deliveries that failed, by sink",
            m.notifications_failed.clone(),
        );
        r.register(
            "rampart_notification_outbox_pending",
            "Notifications waiting in the outbox for delivery, by sink",
            m.outbox_pending.clone(),
        );
        let build: Family<Build, Gauge> = Family::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register(
            "rampart_build_info",
            "The controller's build (value 1)",
            build,
        );
        Metrics { registry, ..m }
    }

    /// Creates every counter series of each environment at 0 (kinds, outcomes, reasons), so
    /// that `increase()` sees the first deployment, rollback or failure: a series that appears
    /// with its first increment has no earlier sample to increase from.
    pub fn prepare<'a>(&self, environments: impl IntoIterator<Item = &'a String>) {
        for e in environments {
            for kind in ["deploy", "rollback"] {
                drop(self.started.get_or_create(&EnvKind {
                    environment: label(e),
                    kind: kind.into(),
                }));
            }
            for outcome in [
                "succeeded",
                "rolled_back",
                "rollback_failed",
                "failed",
                "aborted",
            ] {
                drop(self.completed.get_or_create(&EnvOutcome {
                    environment: label(e),
                    outcome: outcome.into(),
                }));
            }
            for verdict in ANALYSIS_VERDICTS {
                drop(self.analysis_runs.get_or_create(&EnvVerdict {
                    environment: label(e),
                    verdict: verdict.into(),
                }));
            }
            drop(self.canary_ratio.get_or_create(&env(e)));
            for reason in crate::incident::RollbackReason::ALL {
                drop(self.rollbacks.get_or_create(&EnvReason {
                    environment: label(e),
                    reason: reason.name().into(),
                }));
            }
        }
    }

    /// A stage's analysis ended with `verdict` (one of [`ANALYSIS_VERDICTS`]).
    pub fn analysis_finished(&self, environment: &str, verdict: &str) {
        self.analysis_runs
            .get_or_create(&EnvVerdict {
                environment: label(environment),
                verdict: label(verdict),
            })
            .inc();
    }

    /// A check of an analysis gave `verdict`: its gauge is 1 for that verdict, 0 for the others.
    pub fn analysis_check(&self, environment: &str, check: &str, verdict: &str) {
        for v in ANALYSIS_VERDICTS {
            self.analysis_check
                .get_or_create(&EnvCheckVerdict {
                    environment: label(environment),
                    check: label(check),
                    verdict: v.into(),
                })
                .set(i64::from(v == verdict));
        }
    }

    /// The share of the environment's hosts being judged as canary (0 when no analysis runs).
    pub fn canary_ratio(&self, environment: &str, ratio: f64) {
        self.canary_ratio
            .get_or_create(&env(environment))
            .set(ratio);
    }

    /// A deployment took its environment's lock.
    pub fn deployment_started(&self, environment: &str, kind: pb::DeploymentKind) {
        self.started
            .get_or_create(&EnvKind {
                environment: label(environment),
                kind: kind_label(kind).into(),
            })
            .inc();
    }

    /// A deployment ended after `held` with the lock (`None`: it never took it).
    pub fn deployment_completed(
        &self,
        environment: &str,
        outcome: pb::DeploymentOutcome,
        held: Option<Duration>,
    ) {
        let Some(o) = outcome_label(outcome) else {
            return;
        };
        let l = EnvOutcome {
            environment: label(environment),
            outcome: o.into(),
        };
        self.completed.get_or_create(&l).inc();
        if let Some(h) = held {
            self.duration.get_or_create(&l).observe(h.as_secs_f64());
        }
    }

    /// A deployment was rolled back for `reason`; `took` from the failure verdict to every
    /// host verified (unknown when another controller began the rescue and its start is lost).
    pub fn rolled_back(&self, environment: &str, reason: &str, took: Option<Duration>) {
        self.rollbacks
            .get_or_create(&EnvReason {
                environment: label(environment),
                reason: label(reason),
            })
            .inc();
        if let Some(t) = took {
            self.rollback_duration
                .get_or_create(&env(environment))
                .observe(t.as_secs_f64());
        }
    }

    /// A critical or warning health check failed on a host.
    pub fn health_check_failed(&self, environment: &str, category: &str, check: &str) {
        let mut l = EnvCheck {
            environment: label(environment),
            category: label(category),
            check: label(check),
        };
        {
            let mut seen = self.checks_seen.lock().expect("checks seen");
            if !seen.contains(&l) {
                let of_env = seen
                    .iter()
                    .filter(|c| c.environment == l.environment)
                    .count();
                if of_env >= MAX_CHECK_SERIES {
                    l.category = "other".into();
                    l.check = "other".into();
                }
                seen.insert(l.clone());
            }
        }
        self.health_failures.get_or_create(&l).inc();
    }

    /// Counts every failed critical or warning check in a `health` task's result (its
    /// `checks` array; other results have none).
    pub fn health_result(&self, environment: &str, result: &serde_json::Value) {
        let Some(checks) = result.get("checks").and_then(|c| c.as_array()) else {
            return;
        };
        for c in checks.iter().take(1024) {
            let status = c.get("status").and_then(|s| s.as_str()).unwrap_or("");
            if status != "fail" && status != "warn" {
                continue;
            }
            let text = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            self.health_check_failed(environment, &text("category"), &text("name"));
        }
    }

    /// A notification to `sink` failed.
    pub fn notification_failed(&self, environment: &str, sink: &str) {
        self.notifications_failed
            .get_or_create(&EnvSink {
                environment: label(environment),
                sink: label(sink),
            })
            .inc();
    }

    /// The version a finished deployment left its environment on.
    pub fn environment_left_on(&self, environment: &str, version: &str) {
        let mut v = self.last_version.lock().expect("last versions");
        if version.is_empty() {
            v.remove(environment);
        } else {
            v.insert(environment.to_string(), version.to_string());
        }
    }

    /// What the sweep of one environment found.
    pub fn seen(&self, environment: &str, seen: EnvSeen) {
        self.seen
            .lock()
            .expect("sweep findings")
            .insert(environment.to_string(), seen);
    }

    /// The last sweep's findings of an environment.
    pub fn last_seen(&self, environment: &str) -> Option<EnvSeen> {
        self.seen
            .lock()
            .expect("sweep findings")
            .get(environment)
            .cloned()
    }

    /// Sets every gauge from `envs` (every configured environment, including those with
    /// nothing going on) and the sweep's findings, then encodes everything.
    pub async fn render(&self, envs: &BTreeMap<String, EnvGauges>) -> String {
        let _one = self.scrape.lock().await;
        for f in [
            &self.in_progress,
            &self.queue,
            &self.inconsistent,
            &self.overdue,
        ] {
            f.clear();
        }
        self.lock_held.clear();
        self.env_version.clear();
        self.host_version.clear();
        self.agent_up.clear();
        self.incidents_open.clear();
        self.outbox_pending.clear();
        let seen = self.seen.lock().expect("sweep findings").clone();
        let last = self.last_version.lock().expect("last versions").clone();
        for (name, g) in envs {
            let e = env(name);
            self.in_progress.get_or_create(&e).set(g.in_progress.into());
            self.queue.get_or_create(&e).set(g.queued.into());
            self.lock_held
                .get_or_create(&e)
                .set(g.lock_held.as_secs_f64());
            self.overdue
                .get_or_create(&e)
                .set(g.postmortem_overdue.into());
            for severity in ["warning", "error", "critical"] {
                let n = g.incidents_open.get(severity).copied().unwrap_or(0);
                self.incidents_open
                    .get_or_create(&EnvSeverity {
                        environment: e.environment.clone(),
                        severity: severity.into(),
                    })
                    .set(n.into());
            }
            for (sink, n) in &g.outbox_pending {
                self.outbox_pending
                    .get_or_create(&EnvSink {
                        environment: e.environment.clone(),
                        sink: label(sink),
                    })
                    .set(*n as i64);
            }
            let s = seen.get(name);
            self.inconsistent
                .get_or_create(&e)
                .set(s.is_some_and(EnvSeen::inconsistent).into());
            let version = s
                .and_then(EnvSeen::common_version)
                .or_else(|| s.is_none().then(|| last.get(name).cloned()).flatten());
            if let Some(v) = version {
                self.env_version
                    .get_or_create(&EnvVersion {
                        environment: e.environment.clone(),
                        version: label(&v),
                    })
                    .set(1);
            }
            for (host, h) in s.map(|s| &s.hosts).into_iter().flatten() {
                self.agent_up
                    .get_or_create(&EnvHost {
                        environment: e.environment.clone(),
                        host: label(host),
                    })
                    .set(h.up.into());
                for (component, version) in &h.versions {
                    self.host_version
                        .get_or_create(&EnvHostComponent {
                            environment: e.environment.clone(),
                            host: label(host),
                            component: label(component),
                            version: label(version),
                        })
                        .set(1);
                }
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String does not fail; say so rather than serve half a page.
            out.clear();
            let _ = writeln!(out, "# encoding the metrics failed");
        }
        out
    }
}

/// The gauges of every configured environment, from the store: active deployments (the lock's
/// holder and the queue), open incidents and the outbox's pending notices. Three indexed
/// queries, whatever the history's size.
pub fn gather(
    store: &dyn crate::store::Store,
    environments: &[String],
    now: SystemTime,
) -> crate::store::StoreResult<BTreeMap<String, EnvGauges>> {
    use pb::DeploymentState as DS;
    let mut out: BTreeMap<String, EnvGauges> = environments
        .iter()
        .map(|e| (e.clone(), EnvGauges::default()))
        .collect();
    let active = store.list_deployments(
        None,
        &[DS::Queued, DS::AwaitingApproval, DS::Running, DS::Rescuing],
        0,
    )?;
    for d in &active {
        let Some(g) = out.get_mut(&d.environment) else {
            continue;
        };
        if d.state() == DS::Queued {
            g.queued += 1;
        } else {
            g.in_progress = true;
            if let Some(held) = d
                .started
                .as_ref()
                .and_then(|s| now.duration_since(crate::deployment::ts_to_system(s)).ok())
            {
                g.lock_held = g.lock_held.max(held);
            }
        }
    }
    for (e, sink, n) in store.pending_notices()? {
        if let Some(g) = out.get_mut(&e) {
            g.outbox_pending.insert(sink, n);
        }
    }
    let open = store.list_incidents(
        None,
        &[pb::IncidentState::Open, pb::IncidentState::Acknowledged],
        0,
    )?;
    for i in &open {
        let Some(g) = out.get_mut(&i.environment) else {
            continue;
        };
        let severity = match i.severity() {
            pb::IncidentSeverity::Critical => "critical",
            pb::IncidentSeverity::Warning => "warning",
            _ => "error",
        };
        *g.incidents_open.entry(severity.into()).or_default() += 1;
        let due = match (&i.postmortem_due, &i.opened) {
            (Some(due), _) => Some(crate::deployment::ts_to_system(due)),
            (None, Some(opened)) => {
                Some(crate::deployment::ts_to_system(opened) + crate::incident::POSTMORTEM_DUE)
            }
            (None, None) => None,
        };
        if due.is_some_and(|due| now > due) {
            g.postmortem_overdue += 1;
        }
    }
    Ok(out)
}

/// The TLS settings of the metrics listener, from PEM files (checked at start).
pub fn tls_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("[metrics] cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("[metrics] cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[metrics] cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("[metrics] key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("[metrics] TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("[metrics] cert/key: {e}"))?;
    Ok(Arc::new(cfg))
}

/// What the listener answers: `/metrics` (the text format) and `/healthz` (`ok` when the store
/// answers, 503 otherwise). Anything else is 404; a method other than GET or HEAD is 405.
pub trait Source: Send + Sync + 'static {
    /// The page of `/metrics`.
    fn metrics(&self) -> impl std::future::Future<Output = Result<String, String>> + Send;
    /// `Ok` when the controller can serve (its store answers).
    fn healthy(&self) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// How long one connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics` and `/healthz` on `listener` until `stop` resolves.
pub async fn serve<S: Source>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    source: Arc<S>,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics listener: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let source = source.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&*source, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(64 * 1024);
            let served = match acceptor {
                Some(a) => match tokio::time::timeout(REQUEST_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), svc).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "metrics listener: TLS handshake: {e}");
                        return;
                    }
                    Err(_) => return,
                },
                None => builder.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "metrics listener: {e}");
            }
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn reply(status: u16, content_type: &str, body: String) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::new(body.into()))
        .expect("a response from constant parts")
}

async fn answer<S: Source>(
    source: &S,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(405, TEXT, "only GET and HEAD are served here\n".into());
    }
    match req.uri().path() {
        "/metrics" => match source.metrics().await {
            Ok(page) => reply(
                200,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                page,
            ),
            Err(e) => reply(503, TEXT, format!("cannot read the metrics: {e}\n")),
        },
        "/healthz" => match source.healthy().await {
            Ok(()) => reply(200, TEXT, "ok\n".into()),
            Err(e) => reply(503, TEXT, format!("unhealthy: {e}\n")),
        },
        _ => reply(
            404,
            TEXT,
            "not found: this listener serves /metrics and /healthz\n".into(),
        ),
    }
}

impl Source for crate::deployment::Controller {
    /// With the store unavailable the page still has the counters, and no gauge: a gauge would
    /// be stale, and its absence is what `SafeguardMetricsMissing` looks for.
    async fn metrics(&self) -> Result<String, String> {
        let envs: Vec<String> = self.cfg.environments.keys().cloned().collect();
        let gauges = match self.db(move |s| gather(s, &envs, SystemTime::now())).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("metrics: the store did not answer; serving the counters only: {e}");
                BTreeMap::new()
            }
        };
        Ok(self.metrics.render(&gauges).await)
    }

    async fn healthy(&self) -> Result<(), String> {
        self.db(|s| s.last_seq("").map(|_| ()))
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(up: bool, consistent: bool, v: &str) -> HostSeen {
        HostSeen {
            up,
            consistent,
            versions: [("backend".to_string(), v.to_string())].into(),
        }
    }

    #[test]
    fn hosts_that_disagree_are_inconsistent_and_have_no_common_version() {
        let mut s = EnvSeen::default();
        s.hosts.insert("a".into(), host(true, true, "1.0"));
        s.hosts.insert("b".into(), host(true, true, "1.0"));
        assert_eq!(s.common_version().as_deref(), Some("1.0"));
        assert!(!s.inconsistent());
        s.hosts.insert("c".into(), host(true, true, "2.0"));
        assert_eq!(s.common_version(), None);
        assert!(s.inconsistent());
        // An unreachable host says nothing about versions.
        s.hosts.insert("c".into(), host(false, false, "2.0"));
        assert!(!s.inconsistent());
        s.hosts.insert("b".into(), host(true, false, "1.0"));
        assert!(s.inconsistent(), "a host that reports itself broken");
    }

    #[tokio::test]
    async fn the_page_has_every_family_with_its_labels_and_gauges_follow_the_snapshot() {
        let m = Metrics::new();
        m.deployment_started("prod", pb::DeploymentKind::Deploy);
        m.deployment_completed(
            "prod",
            pb::DeploymentOutcome::RolledBack,
            Some(Duration::from_secs(700)),
        );
        m.deployment_completed("prod", pb::DeploymentOutcome::CheckOnly, None);
        m.rolled_back("prod", "health", Some(Duration::from_secs(3)));
        m.health_result(
            "prod",
            &serde_json::json!({"checks": [
                {"name": "http", "category": "application", "status": "fail"},
                {"name": "disk", "category": "system", "status": "pass"},
            ]}),
        );
        let mut envs = BTreeMap::new();
        envs.insert(
            "prod".to_string(),
            EnvGauges {
                in_progress: true,
                queued: 3,
                lock_held: Duration::from_secs(90),
                ..Default::default()
            },
        );
        let page = m.render(&envs).await;
        for line in [
            "rampart_deployments_started_total{environment=\"prod\",kind=\"deploy\"} 1",
            "rampart_deployments_completed_total{environment=\"prod\",outcome=\"rolled_back\"} 1",
            "rampart_rollbacks_total{environment=\"prod\",reason=\"health\"} 1",
            "rampart_deployment_duration_seconds_bucket{environment=\"prod\",outcome=\"rolled_back\",le=\"600\"} 0",
            "rampart_deployment_duration_seconds_bucket{environment=\"prod\",outcome=\"rolled_back\",le=\"900\"} 1",
            "rampart_health_check_failures_total{environment=\"prod\",category=\"application\",check=\"http\"} 1",
            "rampart_deployment_queue_length{environment=\"prod\"} 3",
            "rampart_deployment_in_progress{environment=\"prod\"} 1",
            "rampart_deployment_lock_held_seconds{environment=\"prod\"} 90.0",
            "rampart_incidents_open{environment=\"prod\",severity=\"critical\"} 0",
        ] {
            assert!(page.contains(line), "missing {line:?} in:\n{page}");
        }
        assert!(
            !page.contains("check_only"),
            "check mode is not a deployment"
        );
        assert!(!page.contains("category=\"system\""), "a passing check");
        // The next snapshot replaces the gauges: a freed lock reads 0, not the last holder.
        envs.insert("prod".to_string(), EnvGauges::default());
        let page = m.render(&envs).await;
        assert!(page.contains("rampart_deployment_in_progress{environment=\"prod\"} 0"));
        assert!(page.contains("rampart_deployment_lock_held_seconds{environment=\"prod\"} 0.0"));
    }

    #[test]
    fn check_series_are_bounded_per_environment() {
        let m = Metrics::new();
        for i in 0..MAX_CHECK_SERIES + 10 {
            m.health_check_failed("prod", "app", &format!("check-{i}"));
        }
        let n = m.checks_seen.lock().unwrap().len();
        assert_eq!(
            n,
            MAX_CHECK_SERIES + 1,
            "the rest fold into one `other` series"
        );
    }
}
