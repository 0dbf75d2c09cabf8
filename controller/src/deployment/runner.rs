//! The runner of one deployment: the queue, the environment lock, the approval, the waves, the
//! failure threshold, the fleet rescue, the verdict, and the only writer of the deployment's
//! record and events.
//!
//! Inputs: the stored deployment (new or taken over), its environment and the people's
//! [`Control`] requests; host jobs' [`Msg`]s. Outputs: the stored events and record, the
//! watchers' wake-ups, the environment lock and incidents.

use std::collections::{BTreeSet, HashMap};

use rampart_canary::judge::Verdict as CheckVerdict;
use rampart_canary::window::{StageRun, StageState, StageVerdict, WindowPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rampart_proto::v1 as pb;
use rampart_proto::v1::deployment_event::Kind;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::host_job::{
    Job, Msg, RESCUE_ATTEMPTS, captured_versions, first_version, next_rescue_attempt, run_job,
};
use super::state::{
    HostEvent, HostState, IllegalTransition, Outcome, Phase, PhaseEvent, UnknownState,
};
use super::{Control, Controller, Live, Outage, host_txid, now_ts, ts_to_system};
use crate::analysis::eval::{self, CheckResult, FAST_PATH, StageHosts};
use crate::analysis::source::{self, Source};
use crate::config::{Environment, component_names};
use crate::rollout::{self, Verdict};
use crate::store::{LockAttempt, Store, StoreError, StoreResult};

use pb::{DeploymentOutcome as DO, DeploymentState as DS, HostState as HS};

/// Why a runner stops before its deployment finished: a store error (the store did not answer
/// for `[store] outage_seconds`) gives the deployment up for any controller to adopt; the
/// others leave it for a restarted controller.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state machine refused a transition: a bug of the runner, reported as internal.
    #[error("internal error: {0}")]
    Transition(#[from] IllegalTransition),
    /// The stored record holds a state the machines do not know.
    #[error("internal error: {0}")]
    State(#[from] UnknownState),
}

/// Result of the runner's steps.
type RunResult<T> = Result<T, RunError>;

/// How often a runner holding its environment lock makes sure it still does, when it calls the
/// store anyway (a PostgreSQL restart ends the session holding it; nothing says so until asked).
const LOCK_CHECK: Duration = Duration::from_secs(2);

/// The largest `detail_json` of one check's result in an `AnalysisEvaluated` event; past it the
/// queries' raw results are dropped from it (their text stays bounded by the source).
const MAX_DETAIL_JSON: usize = 64 * 1024;

/// How far back the fast path looks at a canary host's errors.
const FAST_PATH_LOOKBACK: Duration = Duration::from_secs(30);

/// The runner of one deployment.
pub(super) struct Runner {
    ctl: Arc<Controller>,
    env: Environment,
    /// The deployment's state; `d.state` and `d.outcome` are its projection, written only by
    /// [`Runner::advance`].
    phase: Phase,
    d: pb::Deployment,
    seq: u64,
    live: Arc<Live>,
    control: watch::Receiver<Control>,
    dirty: bool,
    last_save: Instant,
    resumed: bool,
    planned: bool,
    lock_recorded: bool,
    wave_started: BTreeSet<u32>,
    wave_finished: BTreeSet<u32>,
    /// When each wave started (its `WaveStarted` event).
    wave_times: HashMap<u32, SystemTime>,
    /// Each wave's analysis that ended: (verdict, deciding check, reason).
    analysis_done: HashMap<u32, (String, String, String)>,
    /// Waves after which the deployment paused and was approved to go on.
    resumed_after: BTreeSet<u32>,
    rescue_started: bool,
    /// When the fleet rescue began (the failure verdict): `rampart_rollback_duration_seconds`.
    rescue_since: Option<SystemTime>,
    abort_recorded: bool,
    approved_recorded: bool,
    /// When the deployment started waiting for approval (its `AwaitingApproval` event), so a
    /// controller that takes it over counts the approval timeout from then.
    approval_since: Option<SystemTime>,
    /// Next agent seq per host transaction, from the stored events.
    host_seq: HashMap<String, u64>,
    /// First failure seen per host (task name and message).
    failure: HashMap<usize, String>,
    /// The first task that failed in the deployment, for its incident.
    failed_task: Option<crate::incident::FailedTask>,
    /// The dead instance whose lock this runner took over, when it did.
    pub(super) reclaimed: Option<String>,
    /// Whether the runner holds its environment's lock (from taking it to releasing it).
    holds_lock: bool,
    /// When the runner last made sure it still holds the lock.
    lock_checked: Instant,
    /// The record says finished: nobody adopts a finished deployment, so what is left to write
    /// (its `finished` event, the lock's release) is retried for [`super::FINISHED_OUTAGE`].
    finished_saved: bool,
}

impl Runner {
    pub(super) async fn new(
        ctl: Arc<Controller>,
        env: Environment,
        d: pb::Deployment,
        live: Arc<Live>,
        resumed: bool,
    ) -> RunResult<Runner> {
        let control = live.control.subscribe();
        let mut r = Runner {
            ctl: ctl.clone(),
            phase: Phase::from_record(&d)?,
            env,
            seq: 0,
            live,
            control,
            dirty: false,
            last_save: Instant::now(),
            resumed,
            planned: false,
            lock_recorded: false,
            wave_started: BTreeSet::new(),
            wave_finished: BTreeSet::new(),
            wave_times: HashMap::new(),
            analysis_done: HashMap::new(),
            resumed_after: BTreeSet::new(),
            rescue_started: false,
            rescue_since: None,
            abort_recorded: false,
            approved_recorded: false,
            approval_since: None,
            host_seq: HashMap::new(),
            failure: HashMap::new(),
            failed_task: None,
            reclaimed: None,
            holds_lock: false,
            finished_saved: false,
            lock_checked: Instant::now(),
            d,
        };
        if resumed {
            let id = r.d.id.clone();
            let events = ctl
                .db_retrying(move |s| s.events(&id, 0, 0), ctl.cfg.store_outage)
                .await?;
            // A pause after a wave whose analysis could not decide, not yet approved.
            let mut paused: Option<u32> = None;
            for ev in &events {
                r.seq = ev.seq + 1;
                match &ev.kind {
                    Some(Kind::Planned(_)) => r.planned = true,
                    Some(Kind::WaveStarted(w)) => {
                        r.wave_started.insert(w.index);
                        if let Some(t) = &ev.time {
                            r.wave_times.insert(w.index, ts_to_system(t));
                        }
                    }
                    Some(Kind::AnalysisFinished(a)) => {
                        if matches!(a.verdict.as_str(), "inconclusive" | "error") {
                            paused = Some(a.after_wave);
                        }
                        r.analysis_done.insert(
                            a.after_wave,
                            (a.verdict.clone(), a.check.clone(), a.reason.clone()),
                        );
                    }
                    Some(Kind::Approved(_)) if paused.is_some() => {
                        r.resumed_after.extend(paused.take());
                    }
                    Some(Kind::WaveFinished(w)) => {
                        r.wave_finished.insert(w.index);
                    }
                    Some(Kind::FleetRescueStarted(_)) => {
                        r.rescue_started = true;
                        r.rescue_since = ev.time.as_ref().map(ts_to_system);
                    }
                    Some(Kind::AbortRequested(_)) => r.abort_recorded = true,
                    Some(Kind::Approved(_)) => r.approved_recorded = true,
                    Some(Kind::AwaitingApproval(_)) => {
                        r.approval_since = ev.time.as_ref().map(ts_to_system);
                    }
                    Some(Kind::HostEvent(h)) => {
                        if let Some(e) = &h.event {
                            let next = r.host_seq.entry(e.txid.clone()).or_insert(0);
                            *next = (*next).max(e.seq + 1);
                        }
                    }
                    _ => {}
                }
            }
            if !r.d.aborted_by.is_empty() {
                r.live.control.send_modify(|c| {
                    c.abort = Some((r.d.aborted_by.clone(), r.d.reason.clone()));
                });
            }
            if !r.d.approved_by.is_empty() {
                r.live.control.send_modify(|c| {
                    c.approved = Some((r.d.approved_by.clone(), String::new()));
                });
            }
            for &w in &r.resumed_after {
                r.live.control.send_modify(|c| {
                    c.resume
                        .entry(w)
                        .or_insert_with(|| (r.d.approved_by.clone(), String::new()));
                });
            }
        }
        Ok(r)
    }

    // ---- the store ----

    /// Every store call of the runner goes through here: tried again while the store is
    /// unavailable ([`Outage`]), for at most `[store] outage_seconds` (then `Unavailable`: the
    /// runner gives the deployment up). While it holds the environment lock, the runner first
    /// makes sure it still does, after a failed try and every [`LOCK_CHECK`]: a PostgreSQL
    /// restart ends the session that held it, and nothing may be written for a deployment
    /// whose lock is another's.
    async fn db<T: Send + 'static>(
        &mut self,
        f: impl Fn(&dyn Store) -> StoreResult<T> + Send + Sync + 'static,
    ) -> StoreResult<T> {
        let f = Arc::new(f);
        let bound = if self.finished_saved {
            super::FINISHED_OUTAGE
        } else {
            self.ctl.cfg.store_outage
        };
        let mut outage = Outage::new(bound);
        for _ in 0..outage.max_tries() {
            if self.holds_lock && (outage.met() || self.lock_checked.elapsed() >= LOCK_CHECK) {
                match self.check_lock().await {
                    Ok(None) => {}
                    // Given up at once: the lock is another's.
                    Ok(Some(lost)) => return Err(StoreError::Unavailable(lost)),
                    Err(e) => {
                        if let Some(r) = outage.settle(Err(e)).await {
                            return r;
                        }
                        continue;
                    }
                }
            }
            let g = f.clone();
            if let Some(r) = outage.settle(self.ctl.db(move |s| g(s)).await).await {
                return r;
            }
        }
        Err(outage.error())
    }

    /// One try at taking the environment lock again for this deployment (a no-op while its
    /// session lives): `None` when it is still this runner's; what happened when another holds
    /// it (a controller that found this one's heartbeat stale adopted the deployment, or
    /// another deployment has the environment).
    async fn check_lock(&mut self) -> StoreResult<Option<String>> {
        let (env, id, me) = (
            self.d.environment.clone(),
            self.d.id.clone(),
            self.ctl.cfg.instance.clone(),
        );
        match self.ctl.db(move |s| s.try_lock_env(&env, &id, &me)).await? {
            LockAttempt::Acquired { reclaimed_from } => {
                if let Some(from) = reclaimed_from {
                    tracing::warn!(deployment = %self.d.id, from = %from, "took the environment lock back");
                }
                self.lock_checked = Instant::now();
                Ok(None)
            }
            // This deployment's and this instance's, but not free: another controller asking for
            // it holds it for a moment, or the server has not ended the lost session yet.
            LockAttempt::Held {
                deployment_id,
                instance,
            } if deployment_id == self.d.id && instance == self.ctl.cfg.instance => {
                Err(StoreError::Unavailable(format!(
                    "the lock of environment {} is not free yet for {deployment_id}",
                    self.d.environment
                )))
            }
            LockAttempt::Held {
                deployment_id,
                instance,
            } => Ok(Some(format!(
                "the lock of environment {} went to deployment {deployment_id} of {instance} while the store was out of reach",
                self.d.environment
            ))),
        }
    }

    // ---- events and the record ----

    async fn emit(&mut self, kind: Kind) -> StoreResult<()> {
        self.emit_many(vec![kind]).await
    }

    async fn emit_many(&mut self, kinds: Vec<Kind>) -> StoreResult<()> {
        if kinds.is_empty() {
            return Ok(());
        }
        let mut evs = Vec::with_capacity(kinds.len());
        for k in kinds {
            evs.push(pb::DeploymentEvent {
                seq: self.seq,
                deployment_id: self.d.id.clone(),
                time: Some(now_ts()),
                kind: Some(k),
            });
            self.seq += 1;
        }
        let last = self.seq - 1;
        // Tried again after an outage: an event stored by a try whose answer was lost comes
        // back `AlreadyExists`, so none is lost and none stored twice.
        let ctl = self.ctl.clone();
        let env = self.d.environment.clone();
        self.db(move |s| {
            for e in &evs {
                // Approval and success notices are written with their event.
                let notices = crate::incident::event_notices(ctl.cfg.environments.get(&env), e);
                match s.append_event_notifying(e, &notices) {
                    // Stored before a crash: the same seq carries the same event.
                    Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await?;
        self.d.last_seq = last;
        self.dirty = true;
        self.live.seq.send_replace(last);
        Ok(())
    }

    async fn save(&mut self) -> StoreResult<()> {
        let d = self.d.clone();
        self.db(move |s| s.save_deployment(&d)).await?;
        self.dirty = false;
        self.last_save = Instant::now();
        Ok(())
    }

    async fn save_soon(&mut self) -> StoreResult<()> {
        if self.dirty && self.last_save.elapsed() >= Duration::from_millis(250) {
            self.save().await?;
        }
        Ok(())
    }

    fn aborted(&self) -> Option<(String, String)> {
        self.control.borrow().abort.clone()
    }

    async fn record_abort(&mut self) -> StoreResult<()> {
        if self.abort_recorded {
            return Ok(());
        }
        if let Some((by, reason)) = self.aborted() {
            self.abort_recorded = true;
            self.d.aborted_by = by.clone();
            self.d.reason = reason.clone();
            self.emit(Kind::AbortRequested(pb::AbortRequested {
                aborted_by: by,
                reason,
            }))
            .await?;
            self.save().await?;
        }
        Ok(())
    }

    // ---- states ----

    /// Moves the deployment through its machine and writes the projection into the record. A
    /// refused transition is logged and stops the runner like a failed store call.
    fn advance(&mut self, event: PhaseEvent) -> RunResult<()> {
        let next = self.phase.next(event).inspect_err(|e| {
            tracing::error!(deployment = %self.d.id, "{e}");
        })?;
        self.phase = next;
        self.d.state = next.state() as i32;
        if let Some(o) = next.outcome() {
            self.d.outcome = o as i32;
        }
        Ok(())
    }

    /// Moves a host through its machine and writes its new state into the record; refusals are
    /// handled as in [`Runner::advance`].
    fn host_event(&mut self, idx: usize, event: HostEvent) -> RunResult<()> {
        let h = &mut self.d.hosts[idx];
        let next = HostState::try_from(h.state())
            .map_err(RunError::from)
            .and_then(|from| from.next(event).map_err(RunError::from))
            .inspect_err(|e| {
                tracing::error!(deployment = %self.d.id, host = %h.host, "{e}");
            })?;
        h.state = HS::from(next) as i32;
        Ok(())
    }

    // ---- the life of a deployment ----

    #[tracing::instrument(skip_all, fields(deployment = %self.d.id))]
    pub(super) async fn run(&mut self) -> RunResult<()> {
        if matches!(self.phase, Phase::Finished(_)) {
            return Ok(());
        }
        let reclaimed = if self.phase == Phase::Queued {
            match self.queue().await? {
                Ok(r) => r,
                Err((outcome, summary)) => return self.finish(outcome, summary).await,
            }
        } else {
            // Taken over: the lock is ours again (adopt_orphans or a restart of a SQLite
            // controller, whose previous instance is dead).
            let (env, id, me) = (
                self.d.environment.clone(),
                self.d.id.clone(),
                self.ctl.cfg.instance.clone(),
            );
            match self.db(move |s| s.try_lock_env(&env, &id, &me)).await? {
                LockAttempt::Acquired { reclaimed_from } => {
                    self.holds_lock = true;
                    self.lock_checked = Instant::now();
                    reclaimed_from.or(self.reclaimed.take())
                }
                LockAttempt::Held {
                    deployment_id,
                    instance,
                } => {
                    tracing::error!(deployment = %self.d.id, holder = %deployment_id, %instance, "the environment lock is held by another deployment; not resuming");
                    return Ok(());
                }
            }
        };
        if !self.lock_recorded && (self.d.started.is_none() || reclaimed.is_some()) {
            let waited = self
                .d
                .created
                .as_ref()
                .and_then(|c| SystemTime::now().duration_since(ts_to_system(c)).ok())
                .unwrap_or_default();
            if self.d.started.is_none() {
                self.d.started = Some(now_ts());
                self.ctl
                    .metrics
                    .deployment_started(&self.d.environment, self.d.kind());
            }
            self.lock_recorded = true;
            self.emit(Kind::LockAcquired(pb::LockAcquired {
                waited_ms: waited.as_millis() as u64,
                controller: self.ctl.cfg.instance.clone(),
                reclaimed_from: reclaimed.unwrap_or_default(),
            }))
            .await?;
        }
        if self.resumed {
            let hosts: Vec<String> = self
                .d
                .hosts
                .iter()
                .filter(|h| h.state() == HS::Running)
                .map(|h| h.host.clone())
                .collect();
            self.emit(Kind::Resumed(pb::DeploymentResumed {
                controller: self.ctl.cfg.instance.clone(),
                hosts,
            }))
            .await?;
        }
        let waves = self.plan().await?;
        if self.phase != Phase::Rescuing {
            if let Err((outcome, summary)) = self.approval().await? {
                return self.finish(outcome, summary).await;
            }
            self.advance(PhaseEvent::StartWaves)?;
            self.save().await?;
            let reason = self.waves(&waves).await?;
            let failed_hosts: Vec<&pb::HostResult> = self
                .d
                .hosts
                .iter()
                .filter(|h| !matches!(h.state(), HS::Succeeded | HS::Pending))
                .collect();
            let reason = match reason {
                Some(r) => Some(r),
                None if !failed_hosts.is_empty() => Some(format!(
                    "{} host(s) failed within the failure threshold ({}); the environment must end on one version",
                    failed_hosts.len(),
                    failed_hosts
                        .iter()
                        .map(|h| h.host.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                None => None,
            };
            match reason {
                None => {
                    let outcome = if self.d.check {
                        Outcome::CheckOnly
                    } else {
                        Outcome::Succeeded
                    };
                    let summary = format!("{} host(s) on {}", self.d.hosts.len(), self.d.version);
                    return self.finish(outcome, summary).await;
                }
                Some(reason) if self.d.check => {
                    return self.finish(Outcome::Failed, reason).await;
                }
                Some(reason) => {
                    self.advance(PhaseEvent::StartRescue)?;
                    self.d.summary = reason;
                    self.save().await?;
                }
            }
        }
        self.rescue().await
    }

    /// Waits for the lock in FIFO order. `Err` = finished without running.
    #[allow(clippy::type_complexity)]
    async fn queue(&mut self) -> StoreResult<Result<Option<String>, (Outcome, String)>> {
        let created = self
            .d
            .created
            .as_ref()
            .map(ts_to_system)
            .unwrap_or_else(SystemTime::now);
        let wait = Duration::from_millis(self.d.wait_timeout_ms);
        let deadline = Instant::now()
            + (created + wait)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
        let mut last_pos = 0u32;
        let mut holder = String::new();
        let max_polls = wait.as_millis() as u64 / 100 + 2;
        for _ in 0..max_polls {
            if let Some((by, reason)) = self.aborted() {
                self.record_abort().await?;
                return Ok(Err((
                    Outcome::Aborted,
                    format!("aborted while queued by {by}: {reason}"),
                )));
            }
            let (env, id, me) = (
                self.d.environment.clone(),
                self.d.id.clone(),
                self.ctl.cfg.instance.clone(),
            );
            let (e2, i2) = (env.clone(), id.clone());
            let pos = self.db(move |s| s.queue_position(&e2, &i2)).await?;
            // The deployment in front: one that holds the environment, or held it and lost its
            // controller (a shared store): its takeover comes first, the queue waits for it.
            let (e3, i3) = (env.clone(), id.clone());
            let active = self
                .db(move |s| {
                    let list = s.list_deployments(
                        Some(&e3),
                        &[DS::Running, DS::AwaitingApproval, DS::Rescuing],
                        0,
                    )?;
                    Ok(list.into_iter().find(|d| d.id != i3).map(|d| d.id))
                })
                .await?;
            match active {
                Some(a) => holder = a,
                None if pos <= 1 => match self.db(move |s| s.try_lock_env(&env, &id, &me)).await? {
                    LockAttempt::Acquired { reclaimed_from } => {
                        self.holds_lock = true;
                        self.lock_checked = Instant::now();
                        return Ok(Ok(reclaimed_from));
                    }
                    LockAttempt::Held { deployment_id, .. } => holder = deployment_id,
                },
                None => {}
            }
            if pos != last_pos {
                last_pos = pos;
                self.emit(Kind::Queued(pb::DeploymentQueued {
                    position: pos.max(1),
                    holder_deployment_id: holder.clone(),
                }))
                .await?;
            }
            if Instant::now() >= deadline {
                break;
            }
            let nap = Duration::from_millis(100).min(deadline - Instant::now());
            let _ = tokio::time::timeout(nap, self.control.changed()).await;
        }
        Ok(Err((
            Outcome::LockTimeout,
            format!(
                "waited {:.0}s for the environment lock{}; nothing was touched",
                wait.as_secs_f64(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" held by {holder}")
                }
            ),
        )))
    }

    /// Cuts the hosts into waves (once) and returns each wave's host indexes.
    async fn plan(&mut self) -> StoreResult<Vec<Vec<usize>>> {
        let serial = if self.d.emergency {
            // An emergency rollback: every host at once.
            Vec::new()
        } else if !self.d.stages.is_empty() {
            crate::analysis::config::stage_waves(self.env.hosts.len(), &self.stages())
                .into_iter()
                .map(|(n, _)| rollout::Serial::Count(n as i64))
                .collect()
        } else if self.d.serial.is_empty() {
            self.env.serial.clone()
        } else {
            let v = Value::Array(self.d.serial.iter().map(|s| json!(s)).collect());
            rollout::parse_serial(&v).unwrap_or_else(|_| self.env.serial.clone())
        };
        let max_fail = self.max_fail();
        let sizes = rollout::waves(self.env.hosts.len(), &serial);
        let mut waves = Vec::new();
        let mut i = 0;
        for (w, n) in sizes.iter().enumerate() {
            waves.push((i..i + n).collect::<Vec<_>>());
            for idx in i..i + n {
                if self.d.hosts.len() <= idx {
                    self.d.hosts.push(pb::HostResult {
                        host: self.env.hosts[idx].clone(),
                        state: HS::from(HostState::Pending) as i32,
                        wave: w as u32,
                        ..Default::default()
                    });
                }
            }
            i += n;
        }
        if !self.planned {
            self.planned = true;
            let plan = pb::RolloutPlanned {
                waves: waves
                    .iter()
                    .map(|w| pb::WavePlan {
                        hosts: w.iter().map(|&i| self.env.hosts[i].clone()).collect(),
                    })
                    .collect(),
                max_fail_percentage: max_fail.map(|m| m.round() as u32),
                bake_ms: self.env.bake.as_millis() as u64,
                analysis_ms: (0..waves.len())
                    .map(|w| self.stage_window(w).map_or(0, |d| d.as_millis() as u64))
                    .collect(),
            };
            self.emit(Kind::Planned(plan)).await?;
            self.save().await?;
        }
        Ok(waves)
    }

    fn max_fail(&self) -> Option<f64> {
        self.d
            .max_fail_percentage
            .map(f64::from)
            .or(self.env.max_fail_percentage)
    }

    /// Waits for `Approve` when the environment asks for it, at most its `approval_timeout`
    /// from when the wait began. `Err` = finished.
    async fn approval(&mut self) -> RunResult<Result<(), (Outcome, String)>> {
        if !self.env.require_approval || self.d.check {
            return Ok(Ok(()));
        }
        if self.d.approved_by.is_empty() && self.phase != Phase::AwaitingApproval {
            self.advance(PhaseEvent::AwaitApproval)?;
            self.approval_since = Some(SystemTime::now());
            self.emit(Kind::AwaitingApproval(pb::AwaitingApproval {
                host_count: self.d.hosts.len() as u32,
                ..Default::default()
            }))
            .await?;
            self.save().await?;
        }
        match self.await_person(|c| c.approved.clone()).await? {
            Answer::Aborted(by, reason) => Ok(Err((
                Outcome::Aborted,
                format!("aborted before its first wave by {by}: {reason}"),
            ))),
            Answer::Approved(by, comment) => {
                if !self.approved_recorded {
                    self.approved_recorded = true;
                    self.d.approved_by = by.clone();
                    self.emit(Kind::Approved(pb::Approved {
                        approved_by: by,
                        comment,
                    }))
                    .await?;
                    self.save().await?;
                }
                Ok(Ok(()))
            }
            Answer::TimedOut(wait) => Ok(Err((
                Outcome::ApprovalTimedOut,
                format!(
                    "not approved within {:.0}s (approval_timeout_seconds of environment {}); nothing was touched",
                    wait.as_secs_f64(),
                    self.env.name
                ),
            ))),
        }
    }

    /// Waits for a person: the approval `pick` reads from the requests, or an abort (recorded),
    /// at most the environment's `approval_timeout` counted from `approval_since`.
    async fn await_person(
        &mut self,
        pick: impl Fn(&Control) -> Option<(String, String)>,
    ) -> RunResult<Answer> {
        let wait = self.env.approval_timeout;
        let since = *self.approval_since.get_or_insert_with(SystemTime::now);
        let deadline = Instant::now()
            + (since + wait)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
        // Bounded: a pass waits up to 100 ms, or less when a request arrives (a handful).
        for _ in 0..(wait.as_millis() as u64 / 100 + 100) {
            if let Some((by, reason)) = self.aborted() {
                self.record_abort().await?;
                return Ok(Answer::Aborted(by, reason));
            }
            let approved = pick(&self.control.borrow());
            if let Some((by, comment)) = approved {
                return Ok(Answer::Approved(by, comment));
            }
            if Instant::now() >= deadline {
                break;
            }
            let nap = Duration::from_millis(100).min(deadline - Instant::now());
            let _ = tokio::time::timeout(nap, self.control.changed()).await;
        }
        Ok(Answer::TimedOut(wait))
    }

    /// Runs the waves; returns why the deployment aborts, if it does.
    async fn waves(&mut self, waves: &[Vec<usize>]) -> RunResult<Option<String>> {
        let count = waves.len() as u32;
        for (w, hosts) in waves.iter().enumerate() {
            let w32 = w as u32;
            if let Some((by, reason)) = self.aborted() {
                self.record_abort().await?;
                return Ok(Some(format!("aborted by {by}: {reason}")));
            }
            let pending: Vec<usize> = hosts
                .iter()
                .copied()
                .filter(|&i| matches!(self.d.hosts[i].state(), HS::Pending | HS::Running))
                .collect();
            if pending.is_empty() && self.wave_finished.contains(&w32) {
                // Finished before a takeover: its verdict is recomputed below only if needed,
                // and its analysis runs (again, or replays its recorded end).
                if let Some(r) = self.verdict(hosts) {
                    return Ok(Some(format!("wave {}: {r}", w + 1)));
                }
                if let Some(window) = self.stage_window(w)
                    && let Some(r) = self.analysis(w32, waves, window).await?
                {
                    return Ok(Some(r));
                }
                continue;
            }
            if !self.wave_started.contains(&w32) {
                self.wave_started.insert(w32);
                self.wave_times.insert(w32, SystemTime::now());
                self.emit(Kind::WaveStarted(pb::WaveStarted {
                    index: w32,
                    wave_count: count,
                    hosts: hosts
                        .iter()
                        .map(|&i| self.d.hosts[i].host.clone())
                        .collect(),
                }))
                .await?;
            }
            let jobs: Vec<Job> = pending.iter().map(|&i| self.deploy_job(i)).collect();
            self.drive(jobs).await?;
            let (ok, failed, unreachable) = self.counts(hosts);
            let reason = self.verdict(hosts);
            if !self.wave_finished.contains(&w32) {
                self.wave_finished.insert(w32);
                let size = hosts.len().max(1) as f64;
                self.emit(Kind::WaveFinished(pb::WaveFinished {
                    index: w32,
                    succeeded: ok as u32,
                    failed: failed as u32,
                    unreachable: unreachable as u32,
                    failed_percentage: (failed + unreachable) as f64 * 100.0 / size,
                    aborts: reason.is_some(),
                }))
                .await?;
                self.save().await?;
            }
            if let Some(r) = reason {
                return Ok(Some(format!("wave {}: {r}", w + 1)));
            }
            if let Some(window) = self.stage_window(w) {
                if let Some(r) = self.analysis(w32, waves, window).await? {
                    return Ok(Some(r));
                }
            } else if w + 1 < waves.len() && !self.env.bake.is_zero() {
                self.emit(Kind::BakeStarted(pb::BakeStarted {
                    after_wave: w32,
                    duration_ms: self.env.bake.as_millis() as u64,
                }))
                .await?;
                let until = Instant::now() + self.env.bake;
                for _ in 0..(self.env.bake.as_millis() / 100 + 2) {
                    if self.aborted().is_some() || Instant::now() >= until {
                        break;
                    }
                    let nap = Duration::from_millis(100).min(until - Instant::now());
                    let _ = tokio::time::timeout(nap, self.control.changed()).await;
                }
            }
        }
        if let Some((by, reason)) = self.aborted() {
            self.record_abort().await?;
            return Ok(Some(format!("aborted by {by}: {reason}")));
        }
        Ok(None)
    }

    // ---- canary analysis ----

    /// Wave `w`'s analysis window: its stage's (`stages`), when the environment has an
    /// analysis. With the deployment's own `serial`, wave `w` takes stage `w`'s window (the
    /// last stage's past the end).
    fn stage_window(&self, w: usize) -> Option<Duration> {
        self.env.analysis.as_ref()?;
        let stages = self.stages();
        if stages.is_empty() || self.d.check || self.d.emergency {
            return None;
        }
        let stage = if self.d.serial.is_empty() {
            crate::analysis::config::stage_waves(self.env.hosts.len(), &stages)
                .get(w)?
                .1
        } else {
            w.min(stages.len() - 1)
        };
        stages.get(stage)?.analysis
    }

    /// The deployment's own stages (`DeployRequest.stages`, checked when it was asked), else the
    /// environment's.
    fn stages(&self) -> Vec<crate::analysis::Stage> {
        if self.d.stages.is_empty() {
            return self.env.stages.clone();
        }
        crate::analysis::config::parse_stage_specs(&self.d.stages)
            .unwrap_or_else(|_| self.env.stages.clone())
    }

    /// Judges wave `w` for `window` (after the warm-up; extended up to the maximum while
    /// inconclusive), with the fast path polling throughout. `Some(reason)`: the deployment
    /// aborts (a failed check, an abort, a pause that was refused or timed out).
    async fn analysis(
        &mut self,
        w: u32,
        waves: &[Vec<usize>],
        window: Duration,
    ) -> RunResult<Option<String>> {
        let Some(cfg) = self.env.analysis.clone() else {
            return Ok(None);
        };
        if let Some((verdict, check, reason)) = self.analysis_done.get(&w).cloned() {
            // Ended before a takeover: act on the recorded verdict.
            return match verdict.as_str() {
                "pass" => Ok(None),
                "fail" => {
                    self.note_analysis_failure(w, &check);
                    Ok(Some(analysis_failed(w, &check, &reason)))
                }
                "aborted" => Ok(Some(reason)),
                _ => self.pause(w, reason).await,
            };
        }
        let ok = |i: &usize| self.d.hosts[*i].state() == HS::Succeeded;
        let name = |i: &usize| self.d.hosts[*i].host.clone();
        let wi = w as usize;
        let hosts = StageHosts {
            canary: waves[..=wi]
                .iter()
                .flatten()
                .filter(|i| ok(i))
                .map(name)
                .collect(),
            baseline: waves[wi + 1..]
                .iter()
                .flatten()
                .filter(|i| self.d.hosts[**i].state() == HS::Pending)
                .map(name)
                .collect(),
            wave: waves[wi].iter().filter(|i| ok(i)).map(name).collect(),
            wave_started: self
                .wave_times
                .get(&w)
                .copied()
                .unwrap_or_else(SystemTime::now),
            window_opened: SystemTime::now() + cfg.warmup,
        };
        if hosts.wave.is_empty() {
            return Ok(None);
        }
        let max_window = cfg.max_window(window);
        // α split over this stage's looks too (the window keeps the family-wise level).
        let cfg = Arc::new(cfg.for_stage(max_window));
        let step = cfg.source.step();
        self.emit(Kind::AnalysisStarted(pb::AnalysisStarted {
            after_wave: w,
            canary_hosts: hosts.canary.clone(),
            baseline_hosts: hosts.baseline.clone(),
            window_ms: window.as_millis() as u64,
            max_window_ms: max_window.as_millis() as u64,
            warmup_ms: cfg.warmup.as_millis() as u64,
            interval_ms: cfg.interval.as_millis() as u64,
            checks: cfg.checks.iter().map(|c| c.name.clone()).collect(),
            historical_baseline: hosts.historical(),
            source: cfg.source.name().into(),
        }))
        .await?;
        self.save().await?;
        let total = self.d.hosts.len().max(1) as f64;
        self.ctl
            .metrics
            .canary_ratio(&self.d.environment, hosts.canary.len() as f64 / total);
        // Dropped when this stage's analysis ends: the probes' streams end with it.
        let stage = source::StageContext {
            agents: &self.ctl.agents,
            env: &self.env,
            hosts: hosts
                .canary
                .iter()
                .chain(&hosts.baseline)
                .cloned()
                .collect(),
            duration: cfg.warmup + max_window + cfg.interval * 2 + Duration::from_secs(10),
        };
        let source = source::build(&cfg.source, stage).await;
        let checks = cfg
            .checks
            .iter()
            .map(|c| (c.name.clone(), c.limits.clone()))
            .collect();
        let run = StageRun::new(WindowPolicy { window, max_window }, checks);
        let start = Instant::now();
        let open = start + cfg.warmup;
        let (verdict, reason, evaluations) = match (source, run) {
            (Err(e), _) | (_, Err(e)) => (
                StageVerdict::Error {
                    check: "source".into(),
                },
                format!("the analysis could not start: {e}"),
                0,
            ),
            (Ok(source), Ok(mut run)) => {
                match self
                    .analysis_loop(
                        w, &cfg, &source, &hosts, &mut run, start, open, step, max_window,
                    )
                    .await?
                {
                    LoopEnd::Verdict(v, reason, n) => (v, reason, n),
                    LoopEnd::Aborted(by, why) => {
                        self.record_abort().await?;
                        let reason = format!("aborted by {by}: {why}");
                        self.finish_analysis(w, "aborted", "", &reason, 0, open)
                            .await?;
                        return Ok(Some(reason));
                    }
                }
            }
        };
        let check = verdict.check().unwrap_or("").to_string();
        self.finish_analysis(w, verdict.name(), &check, &reason, evaluations, open)
            .await?;
        match verdict {
            StageVerdict::Pass => Ok(None),
            StageVerdict::Fail { check } => {
                self.note_analysis_failure(w, &check);
                Ok(Some(analysis_failed(w, &check, &reason)))
            }
            StageVerdict::Inconclusive { .. } | StageVerdict::Error { .. } => {
                self.pause(w, reason).await
            }
        }
    }

    /// The evaluations of one stage, until the window decides, the fast path fails, or an
    /// abort. Bounded by the maximum window (and 100 ms naps between the wake-ups).
    #[allow(clippy::too_many_arguments)]
    async fn analysis_loop(
        &mut self,
        w: u32,
        cfg: &Arc<crate::analysis::AnalysisConfig>,
        source: &Arc<dyn Source>,
        hosts: &StageHosts,
        run: &mut StageRun,
        start: Instant,
        open: Instant,
        step: Duration,
        max_window: Duration,
    ) -> RunResult<LoopEnd> {
        let mut next_eval = open + cfg.interval;
        let mut next_fast = start + cfg.fast_path_interval;
        let total = cfg.warmup + max_window + cfg.interval * 2;
        let mut evaluation = 0u32;
        for _ in 0..(total.as_millis() as u64 / 100 * 2 + 10_000) {
            if let Some((by, why)) = self.aborted() {
                return Ok(LoopEnd::Aborted(by, why));
            }
            let now = Instant::now();
            if now >= next_fast {
                next_fast = now + cfg.fast_path_interval;
                let (c, src, h) = (cfg.clone(), source.clone(), hosts.clone());
                let fast = tokio::task::spawn_blocking(move || {
                    eval::fast_path(&c, src.as_ref(), &h, FAST_PATH_LOOKBACK, SystemTime::now())
                })
                .await
                .ok()
                .flatten();
                if let Some(f) = fast {
                    let reason = f.reason.clone();
                    self.ctl
                        .metrics
                        .analysis_check(&self.d.environment, FAST_PATH, "fail");
                    self.emit(Kind::AnalysisEvaluated(pb::AnalysisEvaluated {
                        after_wave: w,
                        evaluation: 0,
                        elapsed_ms: now.saturating_duration_since(open).as_millis() as u64,
                        checks: vec![check_result_pb(&f)],
                        fast_path: true,
                    }))
                    .await?;
                    let v = run.fail_now(FAST_PATH);
                    return Ok(LoopEnd::Verdict(v, reason, evaluation));
                }
            }
            if now >= next_eval {
                next_eval = now + cfg.interval;
                evaluation += 1;
                let elapsed = now.saturating_duration_since(open);
                let (c, src, h) = (cfg.clone(), source.clone(), hosts.clone());
                let results = tokio::task::spawn_blocking(move || {
                    eval::evaluate(&c, src.as_ref(), &h, step, SystemTime::now())
                })
                .await
                .unwrap_or_default();
                for r in &results {
                    self.ctl.metrics.analysis_check(
                        &self.d.environment,
                        &r.check,
                        verdict_name(r.verdict),
                    );
                }
                self.emit(Kind::AnalysisEvaluated(pb::AnalysisEvaluated {
                    after_wave: w,
                    evaluation,
                    elapsed_ms: elapsed.as_millis() as u64,
                    checks: results.iter().map(check_result_pb).collect(),
                    fast_path: false,
                }))
                .await?;
                let verdicts: Vec<(CheckVerdict, bool)> =
                    results.iter().map(|r| (r.verdict, r.strong)).collect();
                let state = run.record(elapsed, &verdicts);
                if let StageState::Done(v) = state {
                    let reason = stage_reason(&v, &results);
                    return Ok(LoopEnd::Verdict(v, reason, evaluation));
                }
            }
            let wake = next_eval.min(next_fast);
            let nap = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, self.control.changed()).await;
        }
        let check = run.names().next().unwrap_or("").to_string();
        Ok(LoopEnd::Verdict(
            StageVerdict::Inconclusive { check },
            "the analysis ran out of time without a verdict".into(),
            evaluation,
        ))
    }

    async fn finish_analysis(
        &mut self,
        w: u32,
        verdict: &str,
        check: &str,
        reason: &str,
        evaluations: u32,
        open: Instant,
    ) -> RunResult<()> {
        self.analysis_done.insert(
            w,
            (verdict.to_string(), check.to_string(), reason.to_string()),
        );
        self.emit(Kind::AnalysisFinished(pb::AnalysisFinished {
            after_wave: w,
            verdict: verdict.to_string(),
            check: check.to_string(),
            reason: reason.to_string(),
            evaluations,
            duration_ms: Instant::now().saturating_duration_since(open).as_millis() as u64,
        }))
        .await?;
        self.save().await?;
        if verdict != "aborted" {
            self.ctl
                .metrics
                .analysis_finished(&self.d.environment, verdict);
        }
        self.ctl.metrics.canary_ratio(&self.d.environment, 0.0);
        Ok(())
    }

    /// Records the analysis failure as the deployment's failed task (its incident and
    /// `rampart_rollbacks_total{reason="analysis"}` name it), unless a host's task failed first.
    fn note_analysis_failure(&mut self, w: u32, check: &str) {
        if self.failed_task.is_none() {
            self.failed_task = Some(crate::incident::FailedTask {
                host: format!("wave {}", w + 1),
                name: format!("canary analysis: {check}"),
                action: "analysis".into(),
            });
        }
    }

    /// Pauses after wave `w` for a person: `Approve` goes on (`None`), `Abort` or the
    /// environment's approval timeout rolls back (`Some(reason)`).
    async fn pause(&mut self, w: u32, why: String) -> RunResult<Option<String>> {
        if self.resumed_after.contains(&w) {
            return Ok(None);
        }
        if self.phase != Phase::AwaitingApproval {
            self.advance(PhaseEvent::AwaitApproval)?;
            self.approval_since = Some(SystemTime::now());
            self.d.paused_after_wave = Some(w);
            self.emit(Kind::AwaitingApproval(pb::AwaitingApproval {
                host_count: self.d.hosts.len() as u32,
                reason: format!(
                    "paused after wave {}: {why}; approve to go on, abort to roll back",
                    w + 1
                ),
                after_wave: Some(w),
            }))
            .await?;
            self.save().await?;
        }
        match self.await_person(|c| c.resume.get(&w).cloned()).await? {
            Answer::Aborted(by, reason) => Ok(Some(format!(
                "aborted while paused after wave {} by {by}: {reason}",
                w + 1
            ))),
            Answer::Approved(by, comment) => {
                self.resumed_after.insert(w);
                self.d.paused_after_wave = None;
                self.emit(Kind::Approved(pb::Approved {
                    approved_by: by,
                    comment,
                }))
                .await?;
                self.advance(PhaseEvent::StartWaves)?;
                self.save().await?;
                Ok(None)
            }
            Answer::TimedOut(wait) => Ok(Some(format!(
                "paused after wave {} ({why}) and not approved within {:.0}s (approval_timeout_seconds of environment {}): rolling back",
                w + 1,
                wait.as_secs_f64(),
                self.env.name
            ))),
        }
    }

    fn counts(&self, hosts: &[usize]) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for &i in hosts {
            match self.d.hosts[i].state() {
                HS::Succeeded => c.0 += 1,
                HS::Unreachable => c.2 += 1,
                HS::Pending | HS::Running | HS::Unspecified => {}
                _ => c.1 += 1,
            }
        }
        c
    }

    fn verdict(&self, hosts: &[usize]) -> Option<String> {
        let (_, failed, unreachable) = self.counts(hosts);
        match rollout::wave_verdict(hosts.len(), failed, unreachable, self.max_fail()) {
            Verdict::Continue => None,
            Verdict::Abort(r) => Some(r),
        }
    }

    fn base_vars(&self, idx: usize) -> Map<String, Value> {
        let host = &self.d.hosts[idx].host;
        let mut vars = self.env.host_vars.get(host).cloned().unwrap_or_default();
        if let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(&self.d.vars_json) {
            vars.extend(extra);
        }
        vars
    }

    fn deploy_job(&self, idx: usize) -> Job {
        let h = &self.d.hosts[idx];
        let mut vars = self.base_vars(idx);
        let components = component_names(&vars);
        let rollback_kind = self.d.kind() == pb::DeploymentKind::Rollback;
        let playbook = if rollback_kind {
            vars.insert("rollback_version".into(), json!(self.d.version));
            // The artifacts the target version was deployed from (delivered below): a host
            // whose release of it was pruned stages it again instead of refusing.
            vars.insert("rollback_artifacts".into(), json!(self.d.artifacts));
            vars.insert(
                "rollback_reason".into(),
                json!(format!(
                    "rollback {} requested by {}: {}",
                    self.d.id, self.d.requested_by, self.d.reason
                )),
            );
            self.env.rollback_playbook.clone()
        } else {
            vars.insert("target_version".into(), json!(self.d.version));
            if let Some(Value::Array(cs)) = vars.get_mut("components") {
                for c in cs {
                    let name = c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if let (Some(sha), Some(obj)) = (self.d.artifacts.get(&name), c.as_object_mut())
                    {
                        obj.insert("artifact".into(), json!(format!("sha256:{sha}")));
                        obj.insert("sha256".into(), json!(sha));
                    }
                }
            }
            self.env.playbook.clone()
        };
        let txid = host_txid(&self.d.id, &h.host, false);
        Job {
            idx,
            host: h.host.clone(),
            addr: self.env.agent_addr(&h.host),
            playbook,
            vars: Value::Object(vars),
            inventory_json: self.env.inventory_json(&h.host),
            from_seq: self.host_seq.get(&txid).copied().unwrap_or(0),
            txid,
            check: self.d.check,
            capture: if h.state_capture_json.is_empty() {
                if components.is_empty() {
                    vec![String::new()]
                } else {
                    components
                }
            } else {
                Vec::new()
            },
            artifacts: self.d.artifacts.values().cloned().collect(),
            rescue: false,
            version: self.d.version.clone(),
            from_version: h.from_version.clone(),
            await_txid: None,
            unreachable_after: self.env.unreachable_after,
            rescue_wait: self.env.rescue_wait,
            deadline: self.env.host_deadline,
            maybe_started: !h.txid.is_empty(),
            attempt: 0,
            previous: None,
        }
    }

    fn rescue_job(&self, idx: usize, reason: &str) -> Job {
        let h = &self.d.hosts[idx];
        let mut vars = self.base_vars(idx);
        vars.insert("rollback_version".into(), json!(h.from_version));
        // Each component back to its own captured version, not the first one's.
        vars.insert(
            "rollback_versions".into(),
            captured_versions(&h.state_capture_json),
        );
        // Back to what ran: the database is never undone by a fleet rescue.
        // NOT DONE: a rescued rollback that ran `--database undo` on a host leaves the schema
        // undone there; only that host's own rescue migrates it up again.
        vars.insert("rollback_database".into(), json!("none"));
        if self.d.kind() == pb::DeploymentKind::Deploy {
            // The version this deployment brought is a failed one on every rescued host.
            vars.insert("left_version".into(), json!(self.d.version));
        }
        vars.insert(
            "rollback_reason".into(),
            json!(format!("fleet rescue of {}: {reason}", self.d.id)),
        );
        let (txid, attempt, previous) = next_rescue_attempt(
            &self.d.id,
            &h.host,
            h.state() == HS::Running,
            &h.rescue_txid,
            &self.host_seq,
        );
        let deploy_txid = host_txid(&self.d.id, &h.host, false);
        Job {
            idx,
            host: h.host.clone(),
            addr: self.env.agent_addr(&h.host),
            playbook: self.env.rollback_playbook.clone(),
            vars: Value::Object(vars),
            inventory_json: self.env.inventory_json(&h.host),
            from_seq: self.host_seq.get(&txid).copied().unwrap_or(0),
            txid,
            check: false,
            capture: Vec::new(),
            artifacts: Vec::new(),
            rescue: true,
            version: h.from_version.clone(),
            from_version: h.from_version.clone(),
            await_txid: (h.state() == HS::Unreachable && h.rescue_txid.is_empty()).then(|| {
                let from = self.host_seq.get(&deploy_txid).copied().unwrap_or(0);
                (deploy_txid, from)
            }),
            unreachable_after: self.env.unreachable_after,
            rescue_wait: self.env.rescue_wait,
            deadline: self.env.host_deadline,
            maybe_started: !h.rescue_txid.is_empty(),
            attempt,
            previous,
        }
    }

    /// Runs jobs concurrently and applies what they report, until all are done.
    async fn drive(&mut self, jobs: Vec<Job>) -> RunResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        let mut left = jobs.len();
        for job in jobs {
            let (ctl, tx) = (self.ctl.clone(), tx.clone());
            // In the runner's span, so that the job's logs name the deployment.
            tokio::spawn(run_job(ctl, job, tx).in_current_span());
        }
        drop(tx);
        let mut batch = Vec::new();
        while left > 0 {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = self.control.changed() => {
                    self.record_abort().await?;
                    continue;
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut kinds = Vec::new();
            let mut must_save = false;
            for m in batch.drain(..) {
                match m {
                    Msg::Captured { idx, json } => {
                        let h = &mut self.d.hosts[idx];
                        h.from_version = first_version(&json);
                        h.state_capture_json = json;
                        self.dirty = true;
                    }
                    Msg::Started { idx, txid, rescue } => {
                        let event = if rescue {
                            HostEvent::RescueStarted
                        } else {
                            HostEvent::Started
                        };
                        self.host_event(idx, event)?;
                        let h = &mut self.d.hosts[idx];
                        if rescue {
                            h.rescue_txid = txid;
                        } else {
                            h.txid = txid;
                        }
                        if h.started.is_none() {
                            h.started = Some(now_ts());
                        }
                        must_save = true;
                    }
                    Msg::Event { idx, rescue, ev } => {
                        self.note_failure(idx, &ev);
                        self.note_health(&ev);
                        let next = self.host_seq.entry(ev.txid.clone()).or_insert(0);
                        *next = (*next).max(ev.seq + 1);
                        kinds.push(Kind::HostEvent(pb::HostEvent {
                            host: self.d.hosts[idx].host.clone(),
                            fleet_rescue: rescue,
                            event: Some(ev),
                        }));
                    }
                    Msg::Done { idx, rescue, done } => {
                        left -= 1;
                        let msg = if done.message.is_empty() {
                            self.failure.get(&idx).cloned().unwrap_or_default()
                        } else {
                            done.message.clone()
                        };
                        let event = if rescue {
                            HostEvent::RescueEnded(done.state)
                        } else {
                            HostEvent::Ended(done.state)
                        };
                        self.host_event(idx, event)?;
                        let h = &mut self.d.hosts[idx];
                        h.outcome = done.outcome as i32;
                        h.message = if done.state == HostState::Succeeded
                            || (rescue && done.state == HostState::RolledBack)
                        {
                            if rescue && !done.message.is_empty() {
                                done.message.clone()
                            } else if rescue {
                                "rolled back by the fleet rescue".into()
                            } else {
                                String::new()
                            }
                        } else {
                            msg
                        };
                        if !done.forensics_id.is_empty() {
                            h.forensics_id = done.forensics_id.clone();
                        }
                        if !done.to_version.is_empty() || done.state != HostState::Unreachable {
                            h.to_version = done.to_version.clone();
                        }
                        if done.untouched && !rescue {
                            h.txid.clear();
                        }
                        h.finished = Some(now_ts());
                        kinds.push(Kind::HostFinished(pb::HostFinished {
                            host: h.host.clone(),
                            state: h.state,
                            outcome: h.outcome,
                            message: h.message.clone(),
                            txid: if rescue {
                                h.rescue_txid.clone()
                            } else {
                                h.txid.clone()
                            },
                            fleet_rescue: rescue,
                            forensics_id: h.forensics_id.clone(),
                        }));
                        must_save = true;
                    }
                }
            }
            self.emit_many(kinds).await?;
            if must_save {
                self.save().await?;
            } else {
                self.save_soon().await?;
            }
        }
        Ok(())
    }

    /// Counts the failed checks of a finished `health` task (`rampart_health_check_failures_total`).
    fn note_health(&self, ev: &pb::TransactionEvent) {
        if let Some(pb::transaction_event::Kind::TaskFinished(t)) = &ev.kind
            && t.result_json.contains("\"checks\"")
            && let Ok(v) = serde_json::from_str::<Value>(&t.result_json)
        {
            self.ctl.metrics.health_result(&self.d.environment, &v);
        }
    }

    fn note_failure(&mut self, idx: usize, ev: &pb::TransactionEvent) {
        if self.failure.contains_key(&idx) {
            return;
        }
        if let Some(pb::transaction_event::Kind::TaskFinished(t)) = &ev.kind
            && t.status() == pb::TaskStatus::Failed
        {
            let msg = serde_json::from_str::<Value>(&t.result_json)
                .ok()
                .and_then(|v| rampart_playbook::result::failure_message(&v))
                .unwrap_or_default();
            if self.failed_task.is_none() {
                self.failed_task = Some(crate::incident::FailedTask {
                    host: self.d.hosts[idx].host.clone(),
                    name: t.name.clone(),
                    action: t.action.clone(),
                });
            }
            let mut line = format!("TASK [{}] failed: {msg}", t.name);
            if line.len() > 400 {
                line = format!("{}…", crate::edge::cut(&line, 400));
            }
            self.failure.insert(idx, line);
        }
    }

    /// The fleet rescue: every host this deployment changed goes back to its captured version.
    async fn rescue(&mut self) -> RunResult<()> {
        let reason = self.d.summary.clone();
        let targets: Vec<usize> = (0..self.d.hosts.len())
            .filter(|&i| {
                let h = &self.d.hosts[i];
                if !h.rescue_txid.is_empty() {
                    // Its rescue rollback started before a takeover: finish following it.
                    return h.state() == HS::Running;
                }
                !h.txid.is_empty()
                    && matches!(
                        h.state(),
                        HS::Succeeded
                            | HS::Failed
                            | HS::RollbackFailed
                            | HS::Unreachable
                            | HS::Running
                    )
            })
            .collect();
        if !self.rescue_started {
            self.rescue_started = true;
            self.rescue_since = Some(SystemTime::now());
            let hosts = targets
                .iter()
                .map(|&i| self.d.hosts[i].host.clone())
                .collect();
            self.emit(Kind::FleetRescueStarted(pb::FleetRescueStarted {
                hosts,
                reason: reason.clone(),
            }))
            .await?;
            self.save().await?;
        }
        let mut jobs = Vec::new();
        for &i in &targets {
            let h = &self.d.hosts[i];
            if h.from_version.is_empty() && h.state() != HS::Unreachable {
                self.host_event(i, HostEvent::NothingToRollBackTo)?;
                self.d.hosts[i].message = "no version ran before this deployment (its state capture has none): nothing to roll back to".into();
                continue;
            }
            jobs.push(self.rescue_job(i, &reason));
        }
        let ran: BTreeSet<usize> = jobs.iter().map(|j| j.idx).collect();
        let awaited: BTreeSet<usize> = jobs
            .iter()
            .filter(|j| j.await_txid.is_some())
            .map(|j| j.idx)
            .collect();
        self.drive(jobs).await?;
        // A rollback that failed, was cut short (its agent killed or stopped) or ended on
        // another version is retried, bounded: each retry re-checks the host first. Not a host
        // awaited for the whole `rescue_wait` that never answered (no rollback started there).
        for _ in 1..RESCUE_ATTEMPTS {
            let again: Vec<Job> = (0..self.d.hosts.len())
                .filter(|&i| {
                    let h = &self.d.hosts[i];
                    let started = !h.rescue_txid.is_empty();
                    h.state() == HS::RollbackFailed
                        && !h.from_version.is_empty()
                        && (started || (ran.contains(&i) && !awaited.contains(&i)))
                })
                .map(|i| self.rescue_job(i, &reason))
                .filter(|j| j.attempt <= RESCUE_ATTEMPTS)
                .collect();
            if again.is_empty() {
                break;
            }
            for j in &again {
                tracing::warn!(deployment = %self.d.id, host = %j.host, attempt = j.attempt, txid = %j.txid, "retrying the fleet-rescue rollback");
            }
            self.drive(again).await?;
        }
        let bad: Vec<String> = self
            .d
            .hosts
            .iter()
            .filter(|h| {
                match h.state() {
                    HS::RollbackFailed | HS::Running => true,
                    // Never reached by this deployment: it still runs what it ran.
                    HS::Unreachable | HS::Failed => !h.txid.is_empty(),
                    _ => false,
                }
            })
            .map(|h| {
                format!(
                    "{} ({})",
                    h.host,
                    if h.message.is_empty() {
                        "unknown"
                    } else {
                        &h.message
                    }
                )
            })
            .collect();
        if bad.is_empty() && self.d.kind() == pb::DeploymentKind::Rollback {
            // Every host is back where it was, which is not where this rollback was asked to
            // take it: a failure, never a success-looking `ROLLED_BACK`.
            let summary = format!(
                "{reason}; the rollback to {} did not reach it: every changed host is back on the version it ran before, verified",
                self.d.version
            );
            self.finish(Outcome::Failed, summary).await
        } else if bad.is_empty() {
            let summary = format!("{reason}; every changed host rolled back and verified");
            self.finish(Outcome::RolledBack, summary).await
        } else {
            let summary = format!(
                "CRITICAL: rollback failed on {}: {}",
                bad.len(),
                bad.join("; ")
            );
            self.finish(Outcome::RollbackFailed, summary).await
        }
    }

    async fn finish(&mut self, outcome: Outcome, summary: String) -> RunResult<()> {
        self.advance(PhaseEvent::Finish(outcome))?;
        let outcome = DO::from(outcome);
        self.d.summary = summary.clone();
        self.d.finished = Some(now_ts());
        let env_version = match outcome {
            DO::Succeeded => self.d.version.clone(),
            _ => {
                let vs: BTreeSet<&str> = self
                    .d
                    .hosts
                    .iter()
                    .filter(|h| !h.state_capture_json.is_empty())
                    .map(|h| {
                        if h.to_version.is_empty() {
                            h.from_version.as_str()
                        } else {
                            h.to_version.as_str()
                        }
                    })
                    .collect();
                if outcome == DO::RollbackFailed || vs.len() != 1 {
                    String::new()
                } else {
                    vs.into_iter().next().unwrap_or("").to_string()
                }
            }
        };
        if matches!(outcome, DO::RolledBack | DO::RollbackFailed) {
            let inc = crate::incident::for_deployment(
                &self.d,
                outcome == DO::RollbackFailed,
                &summary,
                self.failed_task.as_ref(),
            );
            let i2 = inc.clone();
            let ctl = self.ctl.clone();
            // The incident and its outbox rows in one transaction: a controller killed after
            // this delivers them once restarted.
            let opened = self
                .db(move |s| {
                    crate::incident::open(s, ctl.cfg.environments.get(&i2.environment), &i2)
                })
                .await;
            match opened {
                Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.d.incident_id = inc.id;
        }
        // The record names the seq its last event will have, so a watcher that sees it finished
        // still waits for that event.
        self.d.last_seq = self.seq;
        self.save().await?;
        // From here on no controller would adopt the deployment to write what is left, and the
        // lock's record names a finished deployment (another may take it): no lock check, and
        // a longer bound.
        self.finished_saved = true;
        self.holds_lock = false;
        self.emit(Kind::Finished(pb::DeploymentFinished {
            outcome: outcome as i32,
            environment: self.d.environment.clone(),
            environment_version: env_version.clone(),
            hosts: self.d.hosts.clone(),
            summary,
            incident_id: self.d.incident_id.clone(),
        }))
        .await?;
        self.save().await?;
        let (env, id) = (self.d.environment.clone(), self.d.id.clone());
        self.db(move |s| s.unlock_env(&env, &id)).await?;
        self.count_finished(outcome, &env_version);
        tracing::info!(deployment = %self.d.id, outcome = ?outcome, "deployment finished");
        Ok(())
    }

    /// The metrics of a deployment that ended (once: its runner ends here).
    fn count_finished(&self, outcome: DO, env_version: &str) {
        let m = &self.ctl.metrics;
        let env = &self.d.environment;
        if self.d.check {
            return;
        }
        let held = match (&self.d.started, &self.d.finished) {
            (Some(s), Some(f)) => ts_to_system(f).duration_since(ts_to_system(s)).ok(),
            _ => None,
        };
        m.deployment_completed(env, outcome, held);
        if outcome == DO::RolledBack {
            let took = self
                .rescue_since
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            m.rolled_back(env, &self.rollback_reason(), took);
        }
        if outcome == DO::Succeeded && self.d.kind() == pb::DeploymentKind::Rollback {
            // An operator's rollback: the release it replaced is rolled back.
            m.rolled_back(env, crate::incident::RollbackReason::Manual.name(), held);
        }
        if matches!(outcome, DO::Succeeded | DO::RolledBack) {
            m.environment_left_on(env, env_version);
        }
    }

    /// Why the fleet was rolled back, as `rampart_rollbacks_total`'s `reason`.
    fn rollback_reason(&self) -> String {
        crate::incident::rollback_reason(&self.d, self.failed_task.as_ref())
            .name()
            .to_string()
    }
}

/// What a person did while the deployment waited for them.
enum Answer {
    /// Aborted (who, why).
    Aborted(String, String),
    /// Approved (who, comment).
    Approved(String, String),
    /// Nothing within the approval timeout (its length).
    TimedOut(Duration),
}

/// How a stage's evaluations ended.
enum LoopEnd {
    /// With this verdict, reason and number of evaluations.
    Verdict(StageVerdict, String, u32),
    /// Someone aborted (who, why).
    Aborted(String, String),
}

fn verdict_name(v: CheckVerdict) -> &'static str {
    match v {
        CheckVerdict::Pass => "pass",
        CheckVerdict::Fail => "fail",
        CheckVerdict::Inconclusive => "inconclusive",
        CheckVerdict::Error => "error",
    }
}

fn check_result_pb(r: &CheckResult) -> pb::AnalysisCheckResult {
    let mut detail = r.detail.to_string();
    if detail.len() > MAX_DETAIL_JSON {
        let mut d = r.detail.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("queries");
            o.insert("queries_dropped".into(), Value::Bool(true));
        }
        detail = d.to_string();
        if detail.len() > MAX_DETAIL_JSON {
            detail = json!({ "dropped": "over 64 KiB" }).to_string();
        }
    }
    pb::AnalysisCheckResult {
        check: r.check.clone(),
        verdict: verdict_name(r.verdict).into(),
        strong: r.strong,
        reason: crate::edge::cut(&r.reason, 4096).to_string(),
        detail_json: detail,
    }
}

/// The stage verdict's reason: the deciding check's last reason.
fn stage_reason(v: &StageVerdict, last: &[CheckResult]) -> String {
    match v.check() {
        None => {
            let parts: Vec<String> = last
                .iter()
                .map(|r| format!("{}: {}", r.check, r.reason))
                .collect();
            format!("every check passed ({})", parts.join("; "))
        }
        Some(check) => last
            .iter()
            .find(|r| r.check == check)
            .map_or_else(|| format!("check {check}"), |r| r.reason.clone()),
    }
}

fn analysis_failed(w: u32, check: &str, reason: &str) -> String {
    format!("wave {}: canary analysis failed: {check}: {reason}", w + 1)
}
