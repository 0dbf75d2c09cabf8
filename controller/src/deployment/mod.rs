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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rampart_proto::v1 as pb;
use tokio::sync::watch;

use crate::agents::Agents;
use crate::artifact_store::ArtifactStore;
use crate::config::ControllerConfig;
use crate::store::{ControlKind, ControlRequest, LockAttempt, Store, StoreError, StoreResult};

use pb::DeploymentState as DS;
use runner::Runner;

/// What a person asked of a running deployment.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// (approver, comment).
    pub approved: Option<(String, String)>,
    /// (who, reason).
    pub abort: Option<(String, String)>,
}

/// How often a running deployment's requests are read back from the store.
pub const REQUEST_POLL: Duration = Duration::from_millis(500);

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
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// A store call failed.
pub type DbError = StoreError;

/// Now as a protobuf timestamp.
pub fn now_ts() -> prost_types::Timestamp {
    SystemTime::now().into()
}

fn ts_to_system(t: &prost_types::Timestamp) -> SystemTime {
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
        Arc::new(Controller {
            artifacts: Arc::new(
                ArtifactStore::new(&cfg.state_dir, cfg.artifacts.clone())
                    .with_store(store.clone(), &cfg.instance),
            ),
            cfg,
            store,
            agents: Arc::new(agents),
            live: Mutex::new(HashMap::new()),
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
                ctl.live.lock().expect("live map").remove(&id);
                return;
            };
            let runner = Runner::new(ctl.clone(), env, d, live, resumed);
            match runner.await {
                Ok(mut r) => {
                    r.reclaimed = reclaimed;
                    if let Err(e) = r.run().await {
                        tracing::error!(deployment = %id, "deployment stopped: {e}; a restarted controller takes it over");
                    }
                }
                Err(e) => tracing::error!(deployment = %id, "cannot resume: {e}"),
            }
            ctl.live.lock().expect("live map").remove(&id);
            // What the finished deployment no longer needs may go now.
            if let Err(e) = crate::artifact_store::collect(&ctl).await {
                tracing::warn!(deployment = %id, "artifact collection: {e}");
            }
        });
    }

    /// Takes over the deployments of controllers that died (their heartbeat is older than
    /// `stale`); returns how many.
    pub async fn adopt_orphans(self: &Arc<Self>, stale: Duration) -> StoreResult<usize> {
        let me = self.cfg.instance.clone();
        let orphans = self.db(move |s| s.orphaned(&me, stale)).await?;
        let mut n = 0;
        for d in orphans {
            if self.live(&d.id).is_some() {
                continue;
            }
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
                        continue;
                    }
                }
            }
            let (id, me) = (d.id.clone(), self.cfg.instance.clone());
            self.db(move |s| s.set_owner(&id, &me)).await?;
            tracing::warn!(deployment = %d.id, state = ?d.state(), "taking over a deployment whose controller died");
            self.spawn_resumed(d, reclaimed);
            n += 1;
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
