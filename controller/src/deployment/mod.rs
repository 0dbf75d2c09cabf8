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
use crate::config::ControllerConfig;
use crate::store::{LockAttempt, Store, StoreError, StoreResult};

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
        tokio::spawn(async move {
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
