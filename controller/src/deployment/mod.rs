//! One deployment from the queue to its last event: the environment lock, the waves, every
//! host's transaction, the failure threshold, the fleet rescue and the verdict.
//!
//! A runner (`runner.rs`) is the only writer of its deployment. Host transactions run as tasks that send
//! their agents' events and their ends to the runner over a channel; the runner stores each
//! event (then wakes the watchers) and the deployment's record, so a controller that restarts
//! finds everything it needs in the store:
//! - host transaction ids are derived from the deployment id and the host name, so a resumed
//!   runner re-attaches (`Run` answers ALREADY_EXISTS, then `Watch` from the last stored agent
//!   event) and never runs a host's transaction twice;
//! - which waves started and finished, and whether the fleet rescue began, are read back from
//!   the stored events.
//!
//! Rules (also in README.md):
//! - a wave aborts the deployment when its failed share (unreachable hosts included) is
//!   strictly over `max_fail_percentage`, or, without one, when every host of it failed;
//! - the environment must end on one version: a rollout that finishes with failed hosts (under
//!   the threshold) is rescued too;
//! - the fleet rescue rolls every host this deployment changed back to the version its state
//!   capture recorded, with the rollback playbook; a host its own rescue already restored is not
//!   touched again; an unreachable host is awaited (its journal restores it) for `rescue_wait`.
//!
//! Store outages and ownership (also in README.md):
//! - every store call of a runner is retried while the store is unavailable
//!   ([`Controller::db_retrying`]: 100 ms, then twice as long each time up to 5 s) for at most
//!   `[store] outage_seconds`; an event stored by a try whose answer was lost comes back
//!   `AlreadyExists` and counts as stored (same seq, same event), so the log holds every seq
//!   once, in order;
//! - after a failed try, and every 2 s while it holds its environment lock, a runner takes the
//!   lock again before it tries its call (a PostgreSQL restart ends the session that held it);
//!   meanwhile the store gives the lock to no other deployment while its record names this
//!   unfinished one and the owner's heartbeat is fresh ([`crate::store::OWNER_STALE`]). A
//!   runner that finds its lock another's stops at once, writing nothing more;
//! - a controller adopts another's deployments only once its own heartbeats have reached the
//!   store for the staleness bound without a failure ([`Controller::heartbeat`]): after an
//!   outage every heartbeat is stale at once, and the live owner beats again first;
//! - a runner that outlasts the bound gives its deployment up: it leaves this controller's live
//!   deployments and the store records it with no owner ([`Store::disown`], tried in the
//!   background until the store answers), so every controller sharing the store, this one
//!   included, finds it orphaned and one adopts it, its environment lock with it;
//! - a starting controller resumes its own unfinished deployments first (a restart under the
//!   same `instance` name, whose fresh heartbeat keeps the others from adopting them), taking
//!   their environment locks as for orphans, before it serves; one whose lock is not free yet
//!   is tried again at the next adoption passes. Instance names must be unique among the
//!   controllers running at once.
//!
//! Approvals and aborts go through the store ([`Controller::request`]): whichever controller
//! takes the request records it, and the one running the deployment reads its requests back
//! every [`REQUEST_POLL`] and hands them to its runner, so with a shared store any controller
//! answers `Approve` and `Abort`. The controller that took the request also hands it to its
//! own runner at once when it runs the deployment (the same path, with a SQLite store always).
//!
//! When a runner ends, the artifacts nothing references any more are collected
//! ([`crate::artifact_store`]).
//!
//! Files: this one holds the [`Controller`] (spawning and taking over runners) and the ids;
//! `runner.rs` the runner of one deployment; `host_job.rs` one host's job; `state.rs` the
//! deployment's and the hosts' states and their transitions.

mod host_job;
mod runner;
mod state;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rampart_proto::v1 as pb;
use tokio::sync::watch;

use crate::agents::Agents;
use crate::artifact_store::ArtifactStore;
use crate::config::ControllerConfig;
use crate::store::{ControlKind, ControlRequest, LockAttempt, Store, StoreError, StoreResult};

use pb::DeploymentState as DS;
use runner::{RunError, Runner};

/// What a person asked of a running deployment.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// (approver, comment).
    pub approved: Option<(String, String)>,
    /// Approvals to go on after a pause, by the wave it followed: (approver, comment).
    pub resume: std::collections::BTreeMap<u32, (String, String)>,
    /// (who, reason).
    pub abort: Option<(String, String)>,
}

/// How often a running deployment's requests are read back from the store.
pub const REQUEST_POLL: Duration = Duration::from_millis(500);

/// The first pause before a store call that found the store unavailable is tried again; each
/// next pause is twice as long, up to [`STORE_RETRY_MAX`].
const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two tries of a store call.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a runner whose record already says finished keeps trying to store its `finished`
/// event and release its lock: nobody adopts a finished deployment to do it instead.
const FINISHED_OUTAGE: Duration = Duration::from_secs(86_400);

/// How long giving a deployment up is retried while the store does not answer (at
/// [`STORE_RETRY_MAX`] between tries): a day, far past any outage a runner would ride out.
const DISOWN_RETRY: Duration = Duration::from_secs(86_400);

/// A staleness no heartbeat reaches (a century): [`Store::orphaned`] with it lists only the
/// deployments whose owner never sent one, or that have none.
const NO_HEARTBEAT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How many adoption passes (one every 2 s) a starting controller tries to resume its own
/// unfinished deployments whose environment lock it could not take yet (the session of its
/// previous process may take a moment to end).
const OWN_RESUME_PASSES: u32 = 30;

/// At most this many reads of a deployment's requests (about 115 days at [`REQUEST_POLL`]): the
/// reader ends with its runner long before.
const MAX_REQUEST_POLLS: u32 = 20_000_000;

/// Applies the recorded requests to a runner's [`Control`]: the first of each kind, the one
/// the store kept. `true` when something changed (so watchers of `control` wake only then).
pub fn apply_requests(c: &mut Control, requests: &[ControlRequest]) -> bool {
    let mut changed = false;
    for r in requests {
        let slot = match r.kind {
            ControlKind::Approve => &mut c.approved,
            ControlKind::Abort => &mut c.abort,
            ControlKind::Resume(w) => {
                if let std::collections::btree_map::Entry::Vacant(e) = c.resume.entry(w) {
                    e.insert((r.by.clone(), r.text.clone()));
                    changed = true;
                }
                continue;
            }
        };
        if slot.is_none() {
            *slot = Some((r.by.clone(), r.text.clone()));
            changed = true;
        }
    }
    changed
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A deployment being run by this controller: watchers wait on `seq`, people write `control`.
#[derive(Debug)]
pub struct Live {
    /// The last stored event's seq.
    pub seq: watch::Sender<u64>,
    /// Approval and abort requests.
    pub control: watch::Sender<Control>,
}

/// The controller: configuration, store, agent channels and the deployments it runs.
#[derive(Debug)]
pub struct Controller {
    /// Configuration.
    pub cfg: Arc<ControllerConfig>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Agent channels.
    pub agents: Arc<Agents>,
    /// The artifact store: its limits, uploads in progress, collection.
    pub artifacts: Arc<ArtifactStore>,
    /// What this process did and what its environments look like (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// This instance's own unfinished deployments left by its previous process (a restart
    /// under the same instance name) that do not run again yet.
    own: Mutex<OwnResume>,
    /// Since when this controller's heartbeats reach the store (`None`: the last one failed).
    beating_since: Mutex<Option<Instant>>,
}

/// One store call's meeting with an unavailable store: the pauses between its tries (from
/// [`STORE_RETRY_FIRST`], doubling up to [`STORE_RETRY_MAX`]) and the bound past which it gives
/// up (`[store] outage_seconds`).
#[derive(Debug)]
pub(crate) struct Outage {
    bound: Duration,
    /// The first failure.
    since: Option<Instant>,
    pause: Duration,
    last: String,
}

impl Outage {
    pub(crate) fn new(bound: Duration) -> Outage {
        Outage {
            bound,
            since: None,
            pause: STORE_RETRY_FIRST,
            last: String::new(),
        }
    }

    /// A bound on the tries: every one but the last waits at least [`STORE_RETRY_FIRST`].
    pub(crate) fn max_tries(&self) -> u128 {
        self.bound.as_millis() / STORE_RETRY_FIRST.as_millis() + 2
    }

    /// Whether a try failed already.
    pub(crate) fn met(&self) -> bool {
        self.since.is_some()
    }

    /// Records a failed try (`m`, the store's error) and waits before the next one: `false`,
    /// at once, when the bound has passed since the first failure.
    pub(crate) async fn wait(&mut self, m: String) -> bool {
        let since = *self.since.get_or_insert_with(|| {
            tracing::warn!(
                "{m}; retrying for up to {:.0}s ([store] outage_seconds)",
                self.bound.as_secs_f64()
            );
            Instant::now()
        });
        self.last = m;
        let left = self.bound.saturating_sub(since.elapsed());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(self.pause.min(left)).await;
        self.pause = (self.pause * 2).min(STORE_RETRY_MAX);
        true
    }

    /// Settles one try's result: `Some` to hand back (it answered, or failed other than
    /// unavailable, or the bound passed), `None` after the pause before the next try.
    pub(crate) async fn settle<T>(&mut self, tried: StoreResult<T>) -> Option<StoreResult<T>> {
        match tried {
            Ok(v) => {
                self.over();
                Some(Ok(v))
            }
            Err(StoreError::Unavailable(m)) => {
                if self.wait(m).await {
                    None
                } else {
                    Some(Err(self.error()))
                }
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The call succeeded: says so when it had failed before.
    pub(crate) fn over(&self) {
        if let Some(t) = self.since {
            tracing::info!(
                "the store answers again after {:.1}s",
                t.elapsed().as_secs_f64()
            );
        }
    }

    /// The error of a call that gave up: the store's last, and the bound that ran out.
    pub(crate) fn error(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "{} (still failing after {:.0}s, the [store] outage_seconds bound)",
            self.last,
            self.bound.as_secs_f64()
        ))
    }
}

/// What is left of resuming a controller's own deployments after a restart.
#[derive(Debug)]
struct OwnResume {
    /// `None` until the first adoption pass lists them (before the controller serves, so none
    /// is a deployment this process started); then those whose environment lock was not free.
    left: Option<HashSet<String>>,
    /// Adoption passes left to try those again.
    passes: u32,
}

/// A store call failed.
pub type DbError = StoreError;

/// Now as a protobuf timestamp.
pub fn now_ts() -> prost_types::Timestamp {
    SystemTime::now().into()
}

/// A stored timestamp as a system time.
pub fn ts_to_system(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(t.seconds.max(0) as u64)
        + Duration::from_nanos(t.nanos.max(0) as u64)
}

/// A new deployment id: `d-<UTC time>-<random>`.
pub fn new_deployment_id() -> String {
    rampart_rpc::ids::new_deployment_id()
}

/// The transaction id of a host's part in a deployment (`rescue`: its fleet-rescue rollback):
/// derived, so a controller that takes over finds it without having stored it.
pub fn host_txid(deployment: &str, host: &str, rescue: bool) -> String {
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let suffix = if rescue { ".rescue" } else { "" };
    let t = format!("{deployment}.{clean}{suffix}");
    if t.len() <= 64 && clean == host {
        return t;
    }
    let h = crate::config::hash_token(host);
    format!("{deployment}.{}{suffix}", &h[..12])
}

impl Controller {
    /// A controller over a store.
    pub fn new(cfg: Arc<ControllerConfig>, store: Arc<dyn Store>, agents: Agents) -> Arc<Self> {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.prepare(cfg.environments.keys());
        Arc::new(Controller {
            artifacts: Arc::new(
                ArtifactStore::new(&cfg.state_dir, cfg.artifacts.clone())
                    .with_store(store.clone(), &cfg.instance),
            ),
            cfg,
            store,
            agents: Arc::new(agents),
            metrics,
            live: Mutex::new(HashMap::new()),
            own: Mutex::new(OwnResume {
                left: None,
                passes: OWN_RESUME_PASSES,
            }),
            beating_since: Mutex::new(None),
        })
    }

    /// Runs a store call on the blocking pool.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*s))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Runs a store call like [`Controller::db`], trying it again while the store is
    /// unavailable (100 ms later, then twice as long each time up to 5 s), until `bound` has
    /// passed since the first failure (then the last error, saying so). Other errors are
    /// returned at once.
    pub async fn db_retrying<T, F>(&self, f: F, bound: Duration) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&dyn Store) -> StoreResult<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut outage = Outage::new(bound);
        for _ in 0..outage.max_tries() {
            let g = f.clone();
            if let Some(r) = outage.settle(self.db(move |s| g(s)).await).await {
                return r;
            }
        }
        Err(outage.error())
    }

    /// Records this controller's heartbeat in the store. Another controller's deployments are
    /// adopted only once heartbeats have reached the store without a failure for the staleness
    /// bound ([`Controller::adopt_orphans`]): after an outage of the store every heartbeat is
    /// stale at once, and a live controller must get to beat again before its work is taken.
    pub async fn heartbeat(&self) -> StoreResult<()> {
        let me = self.cfg.instance.clone();
        let beat = self.db(move |s| s.heartbeat(&me)).await;
        let mut since = self.beating_since.lock().expect("beating since");
        match beat {
            Ok(()) => {
                since.get_or_insert_with(Instant::now);
            }
            Err(_) => *since = None,
        }
        beat
    }

    /// The live handle of a deployment this controller runs.
    pub fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live.lock().expect("live map").get(id).cloned()
    }

    /// Records a person's request of a deployment in the store, for whichever controller runs
    /// it, and hands the recorded requests to its runner when this controller runs it. `true`
    /// when this controller runs it; `false` when the request was forwarded (another controller,
    /// or the next one to take the deployment over, applies it).
    pub async fn request(&self, id: &str, r: ControlRequest) -> StoreResult<bool> {
        let i = id.to_string();
        let recorded = self
            .db(move |s| {
                s.request_control(&i, &r)?;
                s.control_requests(&i)
            })
            .await?;
        match self.live(id) {
            Some(live) => {
                live.control
                    .send_if_modified(|c| apply_requests(c, &recorded));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Reads a running deployment's requests back from the store every [`REQUEST_POLL`] and
    /// hands new ones to its runner, until the task is aborted (when the runner ends).
    async fn follow_requests(self: Arc<Self>, id: String, live: Arc<Live>) {
        let mut failing = false;
        for _ in 0..MAX_REQUEST_POLLS {
            let i = id.clone();
            match self.db(move |s| s.control_requests(&i)).await {
                Ok(recorded) => {
                    failing = false;
                    live.control
                        .send_if_modified(|c| apply_requests(c, &recorded));
                }
                // Once per outage: the store's own errors say the rest.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(deployment = %id, "cannot read approval and abort requests: {e}");
                }
                Err(_) => {}
            }
            tokio::time::sleep(REQUEST_POLL).await;
        }
    }

    /// Starts running a stored deployment (new, or taken over) in the background.
    pub fn spawn(self: &Arc<Self>, d: pb::Deployment) {
        self.start_runner(d, false, None);
    }

    /// Takes over a stored deployment whose controller died (`reclaimed`: the instance whose
    /// environment lock was taken over, recorded in the events).
    pub fn spawn_resumed(self: &Arc<Self>, d: pb::Deployment, reclaimed: Option<String>) {
        self.start_runner(d, true, reclaimed);
    }

    fn start_runner(self: &Arc<Self>, d: pb::Deployment, resumed: bool, reclaimed: Option<String>) {
        let ctl = self.clone();
        let live = Arc::new(Live {
            seq: watch::channel(d.last_seq).0,
            control: watch::channel(Control::default()).0,
        });
        self.live
            .lock()
            .expect("live map")
            .insert(d.id.clone(), live.clone());
        let requests = AbortOnDrop(tokio::spawn(
            ctl.clone().follow_requests(d.id.clone(), live.clone()),
        ));
        tokio::spawn(async move {
            let _requests = requests;
            let id = d.id.clone();
            let Some(env) = ctl.cfg.environments.get(&d.environment).cloned() else {
                tracing::error!(deployment = %id, env = %d.environment, "environment no longer configured; leaving the deployment as stored");
                ctl.forget(&id, &live);
                return;
            };
            let runner = Runner::new(ctl.clone(), env, d, live.clone(), resumed);
            let ended = match runner.await {
                Ok(mut r) => {
                    r.reclaimed = reclaimed;
                    r.run().await
                }
                Err(e) => Err(e),
            };
            ctl.forget(&id, &live);
            match ended {
                Ok(()) => {}
                // The store did not answer for `outage_seconds` (or its lock went elsewhere):
                // another controller, or this one later, may do better.
                Err(RunError::Store(e @ StoreError::Unavailable(_))) => {
                    tracing::error!(deployment = %id, "deployment given up: {e}; any controller sharing the store adopts it");
                    ctl.clone().disown(id.clone());
                }
                Err(e) => {
                    tracing::error!(deployment = %id, "deployment stopped: {e}; a restarted controller takes it over");
                }
            }
            // What the finished deployment no longer needs may go now.
            if let Err(e) = crate::artifact_store::collect(&ctl).await {
                tracing::warn!(deployment = %id, "artifact collection: {e}");
            }
        });
    }

    /// Removes a runner's live handle, unless another runner of the deployment replaced it.
    fn forget(&self, id: &str, live: &Arc<Live>) {
        let mut map = self.live.lock().expect("live map");
        if map.get(id).is_some_and(|l| Arc::ptr_eq(l, live)) {
            map.remove(id);
        }
    }

    /// Gives a deployment up in the background ([`Store::disown`]), trying until the store
    /// answers (for at most [`DISOWN_RETRY`]): then every controller sharing the store, this
    /// one included, sees it as an orphan and one adopts it.
    fn disown(self: Arc<Self>, id: String) {
        tokio::spawn(async move {
            let me = self.cfg.instance.clone();
            let i = id.clone();
            match self
                .db_retrying(move |s| s.disown(&i, &me), DISOWN_RETRY)
                .await
            {
                Ok(_) => {
                    tracing::warn!(deployment = %id, "deployment given up: it waits for a controller to adopt it")
                }
                Err(e) => {
                    tracing::error!(deployment = %id, "cannot give the deployment up: {e}; it resumes when this controller restarts")
                }
            }
        });
    }

    /// Takes over the deployments that were given up (no owner) and those of controllers that
    /// died (their heartbeat is older than `stale`), the latter once this controller's own
    /// heartbeats have reached the store for `stale` without a failure
    /// ([`Controller::heartbeat`]). First, while any is left, this instance's own unfinished
    /// deployments that no runner of this process runs (a controller restarted under the same
    /// instance name resumes its own). Returns how many.
    pub async fn adopt_orphans(self: &Arc<Self>, stale: Duration) -> StoreResult<usize> {
        let me = self.cfg.instance.clone();
        let (own_pass, known) = {
            let own = self.own.lock().expect("own deployments");
            (own.passes > 0, own.left.clone())
        };
        let others = self
            .beating_since
            .lock()
            .expect("beating since")
            .is_some_and(|t| t.elapsed() >= stale);
        let (mut own, orphans) = self
            .db(move |s| {
                let own = if own_pass { s.owned(&me)? } else { Vec::new() };
                // Until then, only those no live controller can claim: given up (no owner), or
                // whose owner never sent a heartbeat.
                let orphans = s.orphaned(&me, if others { stale } else { NO_HEARTBEAT })?;
                Ok((own, orphans))
            })
            .await?;
        if let Some(known) = &known {
            // Only those left by the previous process, never one this process started since.
            own.retain(|d| known.contains(&d.id));
        }
        let own_count = own.len();
        let mut n = 0;
        let mut own_left = HashSet::new();
        for (i, d) in own.into_iter().chain(orphans).enumerate() {
            if self.live(&d.id).is_some() {
                continue;
            }
            let is_own = i < own_count;
            // Running deployments are taken only with their environment's lock: with a shared
            // store, the lock says whether their controller is really gone.
            let mut reclaimed = None;
            if matches!(d.state(), DS::Running | DS::Rescuing | DS::AwaitingApproval) {
                let (env, id, me) = (
                    d.environment.clone(),
                    d.id.clone(),
                    self.cfg.instance.clone(),
                );
                match self.db(move |s| s.try_lock_env(&env, &id, &me)).await? {
                    LockAttempt::Acquired { reclaimed_from } => reclaimed = reclaimed_from,
                    LockAttempt::Held {
                        deployment_id,
                        instance,
                    } => {
                        tracing::debug!(deployment = %d.id, holder = %deployment_id, %instance, "orphan candidate's environment is still locked");
                        if is_own {
                            own_left.insert(d.id.clone());
                        }
                        continue;
                    }
                }
            }
            if is_own {
                tracing::warn!(deployment = %d.id, state = ?d.state(), "resuming a deployment this instance ran before it restarted");
            } else {
                let (id, me) = (d.id.clone(), self.cfg.instance.clone());
                self.db(move |s| s.set_owner(&id, &me)).await?;
                tracing::warn!(deployment = %d.id, state = ?d.state(), "taking over a deployment whose controller died or gave it up");
            }
            self.spawn_resumed(d, reclaimed);
            n += 1;
        }
        if own_pass {
            let mut own = self.own.lock().expect("own deployments");
            own.passes = if own_left.is_empty() {
                0
            } else {
                own.passes.saturating_sub(1)
            };
            if own.passes == 0 && !own_left.is_empty() {
                tracing::error!(deployments = ?own_left, "own unfinished deployments still find their environment locked; they resume at the next start of this controller");
            }
            own.left = Some(own_left);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_reach_the_runner_once_and_the_first_of_a_kind_wins() {
        let req = |kind, by: &str, text: &str| ControlRequest {
            kind,
            by: by.into(),
            text: text.into(),
        };
        let mut c = Control::default();
        assert!(!apply_requests(&mut c, &[]));
        let approve = req(ControlKind::Approve, "ops", "ok");
        assert!(apply_requests(&mut c, std::slice::from_ref(&approve)));
        assert_eq!(c.approved, Some(("ops".into(), "ok".into())));
        assert_eq!(c.abort, None);
        // Read back again: nothing new, no wake-up.
        assert!(!apply_requests(&mut c, std::slice::from_ref(&approve)));
        let abort = req(ControlKind::Abort, "ci", "stop");
        assert!(apply_requests(&mut c, &[approve, abort]));
        assert_eq!(c.abort, Some(("ci".into(), "stop".into())));
        // What the runner already holds is never replaced.
        assert!(!apply_requests(
            &mut c,
            &[req(ControlKind::Abort, "other", "later")]
        ));
        assert_eq!(c.abort, Some(("ci".into(), "stop".into())));
    }

    #[test]
    fn host_txids_are_valid_and_stable() {
        let d = "d-20261127T141500Z-0123abcd";
        assert_eq!(host_txid(d, "web1", false), format!("{d}.web1"));
        assert_eq!(host_txid(d, "web1", true), format!("{d}.web1.rescue"));
        let odd = host_txid(d, "web 1:22", false);
        assert!(
            odd.len() <= 64 && !odd.contains(' ') && !odd.contains(':'),
            "{odd}"
        );
        assert_eq!(odd, host_txid(d, "web 1:22", false));
        let long = host_txid(d, &"x".repeat(60), true);
        assert!(long.len() <= 64, "{long}");
    }
}
