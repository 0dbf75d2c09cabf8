//! The controller's store: deployments, their event logs, the environment locks and queue order,
//! incidents, which controller instance owns what, and the approvals and aborts people asked
//! for (so that any controller sharing the store can take them, and the one running the
//! deployment applies them: [`ControlRequest`]). One trait, two backends:
//! - [`sqlite::SqliteStore`]: an embedded file (the default); one controller per file, enforced
//!   with an exclusive `flock` on `<file>.lock`;
//! - [`postgres::PostgresStore`]: shared by several controllers; an environment's lock is a
//!   PostgreSQL session advisory lock held on a dedicated connection, so it is released by the
//!   server when the controller holding it dies.
//!
//! The PostgreSQL store also holds the artifacts uploaded to any controller sharing it
//! ([`Store::holds_artifacts`]: chunked rows, see [`crate::artifact_store`] for why), so a
//! controller that takes a deployment over delivers what another one received. The SQLite store
//! does not: its one controller keeps artifacts in its `state_dir`, as the trait's defaults say.
//!
//! Who holds what: a deployment is owned by one controller instance (`set_owner`, `disown`);
//! an owner is alive while its heartbeat is younger than [`OWNER_STALE`]. An environment lock
//! whose record names an unfinished deployment of a live owner is that deployment's, even when
//! the session holding it was lost (a PostgreSQL restart): only that deployment takes it again.
//!
//! The outbox (`outbox` table): one row per (notice, sink) that the delivery worker
//! ([`crate::notify`]) sends to GitHub, Slack, PagerDuty or a webhook. Rows are written in the
//! same transaction as what they tell of (the incident opened or resolved, the deployment event),
//! so a controller killed in between delivers them after its restart; a worker claims due rows
//! with a lease ([`Store::claim_notices`]), so with several controllers a row is sent by one.
//!
//! [`conformance`] is the test suite both backends run: what every store must do.
//!
//! The trait is synchronous: the controller calls it from `spawn_blocking` (the PostgreSQL client
//! is the blocking `postgres` crate). Deployments, events and incidents are stored as their
//! protobuf encodings beside the few columns queries need, so the record of a deployment is
//! exactly what `GetDeployment` returns.

use std::io::Read;
use std::time::Duration;

use rampart_proto::v1 as pb;

pub mod conformance;
pub mod postgres;
pub mod sqlite;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed (gRPC UNAVAILABLE).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row with that id exists already (gRPC ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// A stored record could not be decoded.
    #[error("corrupt store record: {0}")]
    Corrupt(String),
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A controller whose heartbeat is younger than this is alive: its unfinished deployments are
/// its own (no other controller adopts them) and it keeps the environment locks its
/// deployments hold, even when it lost the session holding one (see
/// [`Store::try_lock_env`]). Heartbeats are sent every 2 s.
pub const OWNER_STALE: Duration = Duration::from_secs(10);

/// Decodes a stored protobuf record, naming what it is in the error.
fn decode<M: prost::Message + Default>(bytes: &[u8], what: &str) -> StoreResult<M> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// An event's seq as the databases store it (a signed 64-bit integer); `Unavailable`, naming
/// `backend`, when it does not fit.
fn event_seq(ev: &pb::DeploymentEvent, backend: &str) -> StoreResult<i64> {
    i64::try_from(ev.seq).map_err(|_| {
        StoreError::Unavailable(format!(
            "{backend}: event seq {} of {} is out of range",
            ev.seq, ev.deployment_id
        ))
    })
}

/// A stored seq as an event's (a negative one, never written, as 0).
fn stored_seq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The outcome of one attempt at an environment's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// The deployment holds the lock now (or already held it).
    Acquired {
        /// The instance that held it before and died without releasing it; the caller records it.
        reclaimed_from: Option<String>,
    },
    /// Another deployment holds it.
    Held {
        /// The holding deployment.
        deployment_id: String,
        /// The controller instance running it.
        instance: String,
    },
}

/// What a person may ask of a running deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlKind {
    /// `Approve`: start the waves.
    Approve,
    /// `Abort`: stop, rolling back what changed.
    Abort,
    /// `Approve` of a deployment paused after this wave (its canary analysis could not decide):
    /// go on with the next stage. One per wave, so each pause takes its own approval.
    Resume(u32),
}

/// The first stored code of [`ControlKind::Resume`]: `RESUME_CODE + wave`.
const RESUME_CODE: i32 = 1000;

impl ControlKind {
    /// The stored code (1 approve, 2 abort, 1000 + wave resume).
    fn code(self) -> i32 {
        match self {
            ControlKind::Approve => 1,
            ControlKind::Abort => 2,
            ControlKind::Resume(w) => {
                RESUME_CODE.saturating_add(i32::try_from(w).unwrap_or(i32::MAX - RESUME_CODE))
            }
        }
    }

    /// The kind of a stored code; `Corrupt` naming the deployment for an unknown one.
    fn from_code(code: i32, deployment_id: &str) -> StoreResult<ControlKind> {
        match code {
            1 => Ok(ControlKind::Approve),
            2 => Ok(ControlKind::Abort),
            c if c >= RESUME_CODE => Ok(ControlKind::Resume((c - RESUME_CODE) as u32)),
            other => Err(StoreError::Corrupt(format!(
                "control request of {deployment_id}: unknown kind {other}"
            ))),
        }
    }
}

/// An approval or abort recorded for a deployment, whichever controller took the request; the
/// controller running the deployment reads it back and applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRequest {
    /// Approve or abort.
    pub kind: ControlKind,
    /// The name of the token that asked.
    pub by: String,
    /// The approval's comment or the abort's reason.
    pub text: String,
}

/// The size of one stored chunk of an artifact in a store that holds artifacts (the last chunk
/// of an artifact is shorter): one row each, so memory stays bounded by a chunk or two whatever
/// the artifact's size.
pub const ARTIFACT_CHUNK: usize = 1 << 20;

/// An artifact in a store that holds artifacts (complete, or its upload begun).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    /// Its sha256 (64 lowercase hex digits).
    pub sha256: String,
    /// Its size (announced, while not complete).
    pub size: u64,
    /// How long ago it was last used (its upload began or ended, or a request named it), by
    /// the store's clock.
    pub unused_for: Duration,
    /// Whether its chunks are all stored (committed with them).
    pub complete: bool,
}

/// `Unavailable`: the store holds no artifacts (the defaults of the artifact methods).
fn no_artifacts(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{what}: this store does not hold artifacts (they live in the controller's state_dir)"
    ))
}

/// A notice for one sink: one outbox row. Its id is `<subject>/<event>/<sink>`, so writing it
/// twice (a retried store call) stores it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `<subject>/<event>/<sink>`.
    pub id: String,
    /// The environment it is about.
    pub environment: String,
    /// The sink's kind: `github`, `slack`, `pagerduty` or `webhook`.
    pub sink: String,
    /// What it tells: `incident`, `incident_resolved`, `approval` or `succeeded`.
    pub event: String,
    /// The incident id (incident events) or the deployment id (the others).
    pub subject: String,
}

impl Notice {
    /// The notice of `event` about `subject` for `sink`.
    pub fn new(environment: &str, sink: &str, event: &str, subject: &str) -> Notice {
        Notice {
            id: format!("{subject}/{event}/{sink}"),
            environment: environment.to_string(),
            sink: sink.to_string(),
            event: event.to_string(),
            subject: subject.to_string(),
        }
    }
}

/// Where an outbox row is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeState {
    /// Not delivered yet (due now or later).
    Pending,
    /// The sink accepted it.
    Delivered,
    /// Given up: a permanent refusal, or retried for too long.
    Failed,
}

impl NoticeState {
    fn code(self) -> i32 {
        match self {
            NoticeState::Pending => 0,
            NoticeState::Delivered => 1,
            NoticeState::Failed => 2,
        }
    }

    fn from_code(code: i32, id: &str) -> StoreResult<NoticeState> {
        match code {
            0 => Ok(NoticeState::Pending),
            1 => Ok(NoticeState::Delivered),
            2 => Ok(NoticeState::Failed),
            other => Err(StoreError::Corrupt(format!(
                "outbox row {id}: unknown state {other}"
            ))),
        }
    }
}

/// An outbox row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// What to deliver, to which sink.
    pub notice: Notice,
    /// Where it is.
    pub state: NoticeState,
    /// How many times it was claimed (each claim is one delivery attempt).
    pub attempts: u32,
    /// How long ago it was written, by the store's clock.
    pub age: Duration,
    /// What a delivery in steps recorded so far (e.g. a GitHub issue's number); empty first.
    pub note: String,
    /// The last attempt's error; empty when none failed.
    pub last_error: String,
}

/// How one delivery attempt ended, for [`Store::settle_notice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The sink accepted it.
    Delivered,
    /// Try again once `after` has passed.
    Retry {
        /// The pause before the next attempt.
        after: Duration,
        /// Why this attempt failed.
        error: String,
    },
    /// Give up.
    Failed {
        /// Why.
        error: String,
    },
}

/// Everything the controller keeps. Implementations are safe to share between threads.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A short description for logs, e.g. `sqlite:/var/lib/rampart-controller/controller.db`
    /// (never a password).
    fn describe(&self) -> String;

    /// Records that `instance` is alive now (insert or update its heartbeat).
    fn heartbeat(&self, instance: &str) -> StoreResult<()>;

    /// Stores a new deployment owned by `owner`. Its queue order is the insertion order.
    /// `AlreadyExists` when the id is taken.
    fn insert_deployment(&self, d: &pb::Deployment, owner: &str) -> StoreResult<()>;
    /// Replaces a stored deployment's record (same id); its state column follows `d.state`.
    fn save_deployment(&self, d: &pb::Deployment) -> StoreResult<()>;
    /// One deployment.
    fn get_deployment(&self, id: &str) -> StoreResult<Option<pb::Deployment>>;
    /// Deployments, newest first (by insertion order), filtered by environment (`None`: all) and
    /// by state (empty: all), at most `limit` (0: no limit).
    fn list_deployments(
        &self,
        environment: Option<&str>,
        states: &[pb::DeploymentState],
        limit: u32,
    ) -> StoreResult<Vec<pb::Deployment>>;
    /// Position of a deployment among the environment's `QUEUED` deployments in insertion order,
    /// 1 for the oldest; 0 when it is not queued.
    fn queue_position(&self, environment: &str, id: &str) -> StoreResult<u32>;
    /// Makes `instance` the owner of a deployment (when a controller adopts it).
    fn set_owner(&self, id: &str, instance: &str) -> StoreResult<()>;
    /// Gives a deployment up (its runner could not reach the store for too long): when
    /// `instance` owns it, it is left with no owner, so [`Store::orphaned`] returns it to every
    /// controller at once; an environment lock this store holds for it is let go of, its row
    /// kept (so whoever adopts the deployment takes the lock over). A no-op for a deployment
    /// `instance` does not own.
    fn disown(&self, id: &str, instance: &str) -> StoreResult<()>;
    /// Deployments not finished whose owner is not `instance` and whose owner's heartbeat is
    /// older than `stale` (or who never sent one, or that have no owner): the work of
    /// controllers that died or gave it up, oldest first.
    fn orphaned(&self, instance: &str, stale: Duration) -> StoreResult<Vec<pb::Deployment>>;
    /// Deployments not finished that `instance` owns, oldest first: what a controller restarted
    /// under the same instance name resumes.
    fn owned(&self, instance: &str) -> StoreResult<Vec<pb::Deployment>>;

    /// Appends one event; `AlreadyExists` when (deployment, seq) is stored already.
    fn append_event(&self, ev: &pb::DeploymentEvent) -> StoreResult<()> {
        self.append_event_notifying(ev, &[])
    }
    /// Appends one event and outbox rows in one transaction; `AlreadyExists` (and nothing
    /// stored) when (deployment, seq) is stored already.
    fn append_event_notifying(
        &self,
        ev: &pb::DeploymentEvent,
        notices: &[Notice],
    ) -> StoreResult<()>;
    /// A deployment's events with `seq >= from_seq`, in order, at most `limit` (0: all).
    fn events(&self, id: &str, from_seq: u64, limit: u32) -> StoreResult<Vec<pb::DeploymentEvent>>;
    /// The highest stored seq of a deployment, `None` when it has no event.
    fn last_seq(&self, id: &str) -> StoreResult<Option<u64>>;

    /// Tries once to take the environment's lock for `deployment_id`, run by `instance`.
    /// Taking it again for the deployment that holds it returns `Acquired` (also when the
    /// session that held it was lost: this is how a runner re-takes its lock after an outage).
    /// A lock whose holder died is taken over and the dead instance returned in
    /// `reclaimed_from`. While the lock's record names another deployment that is not finished
    /// and whose owner's heartbeat is younger than [`OWNER_STALE`], the answer is `Held`,
    /// whatever became of the session holding it.
    fn try_lock_env(
        &self,
        environment: &str,
        deployment_id: &str,
        instance: &str,
    ) -> StoreResult<LockAttempt>;
    /// Releases the environment's lock if `deployment_id` holds it (a no-op otherwise).
    fn unlock_env(&self, environment: &str, deployment_id: &str) -> StoreResult<()>;

    /// Records a person's request of a deployment for whichever controller runs it. The first
    /// request of each kind wins (a deployment is approved, or aborted, once): `true` when this
    /// one was recorded, `false` when one of its kind was already (and nothing changed).
    fn request_control(&self, deployment_id: &str, r: &ControlRequest) -> StoreResult<bool>;
    /// A deployment's recorded requests, oldest first (at most one per kind).
    fn control_requests(&self, deployment_id: &str) -> StoreResult<Vec<ControlRequest>>;

    /// Stores a new incident and its outbox rows in one transaction; `AlreadyExists` (and
    /// nothing stored) when the id is taken.
    fn insert_incident(&self, i: &pb::Incident, notices: &[Notice]) -> StoreResult<()>;
    /// Replaces a stored incident's record and adds outbox rows, in one transaction (a row
    /// whose id is stored already is left as it is).
    fn save_incident(&self, i: &pb::Incident, notices: &[Notice]) -> StoreResult<()>;
    /// One incident.
    fn get_incident(&self, id: &str) -> StoreResult<Option<pb::Incident>>;
    /// Incidents, newest first, filtered like `list_deployments`.
    fn list_incidents(
        &self,
        environment: Option<&str>,
        states: &[pb::IncidentState],
        limit: u32,
    ) -> StoreResult<Vec<pb::Incident>>;

    /// Claims up to `limit` pending outbox rows that are due and not leased to another
    /// instance, oldest first, for `instance` until `lease` has passed (a row whose lease ran
    /// out is claimable again, so a dead controller's rows are sent by another; so is a row
    /// leased to an instance whose heartbeat is older than [`OWNER_STALE`], or that never sent
    /// one: a controller restarted under a new name resumes its predecessor's rows at once;
    /// rows leased to `instance` itself are claimable, so the caller claims only when none of
    /// its rows is in flight): each claim counts one attempt. With several controllers, a row is claimed by
    /// one at a time. `sink` (a kind: `github`, `slack`, ...) claims only that sink's rows;
    /// empty claims every sink's.
    fn claim_notices(
        &self,
        instance: &str,
        lease: Duration,
        limit: u32,
        sink: &str,
    ) -> StoreResult<Vec<OutboxRow>>;
    /// Records how an attempt on a row `instance` claimed ended and lets the lease go; `false`
    /// (nothing changed) when the row is not leased to `instance` any more.
    fn settle_notice(&self, id: &str, instance: &str, result: &Delivery) -> StoreResult<bool>;
    /// Records a step of a delivery in steps on a row `instance` has claimed (kept across
    /// attempts); `false` when the row is not leased to `instance`.
    fn note_notice(&self, id: &str, instance: &str, note: &str) -> StoreResult<bool>;
    /// The outbox rows about `subject`, oldest first.
    fn notices(&self, subject: &str) -> StoreResult<Vec<OutboxRow>>;
    /// How many rows are pending, by (environment, sink), sorted.
    fn pending_notices(&self) -> StoreResult<Vec<(String, String, u64)>>;

    /// Whether the store holds the artifacts of every controller sharing it. `false` by
    /// default (SQLite): the controller keeps them in its `state_dir`, and the artifact methods
    /// below answer `Unavailable`.
    fn holds_artifacts(&self) -> bool {
        false
    }

    /// Stores artifact `sha256` of `size` bytes read from `data`, for `uploader` (an instance
    /// name), in chunks of [`ARTIFACT_CHUNK`] written in one transaction that marks it complete
    /// at its commit; the bytes are hashed as they are read, and a digest or size other than
    /// the one given is refused (`Corrupt`) with nothing stored. `Ok(false)` when it was stored
    /// (complete) already: nothing was written and it is marked used now.
    fn put_artifact(
        &self,
        sha256: &str,
        size: u64,
        uploader: &str,
        data: &mut dyn Read,
    ) -> StoreResult<bool> {
        let _ = (size, uploader, data);
        Err(no_artifacts(&format!("storing artifact {sha256}")))
    }

    /// The size of complete artifact `sha256`, marking it used now (a collection keeps it for
    /// its grace period); `None` when not stored, or not complete.
    fn claim_artifact(&self, sha256: &str) -> StoreResult<Option<u64>> {
        Err(no_artifacts(&format!("looking up artifact {sha256}")))
    }

    /// Streams complete artifact `sha256` to `sink` one chunk at a time, in order, hashing it:
    /// its size, `None` when not stored (or not complete). `Corrupt` when a chunk is missing or
    /// of the wrong size, or the bytes do not hash to `sha256` (a torn or tampered row): the
    /// caller must then discard what `sink` received. A `sink` error stops the read
    /// (`Unavailable`, naming it).
    fn read_artifact(
        &self,
        sha256: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> StoreResult<Option<u64>> {
        let _ = sink;
        Err(no_artifacts(&format!("reading artifact {sha256}")))
    }

    /// Every stored artifact, complete or not, by digest.
    fn list_artifacts(&self) -> StoreResult<Vec<ArtifactRow>> {
        Err(no_artifacts("listing artifacts"))
    }

    /// Removes those of `doomed` still unused for at least `grace` (a request may have named
    /// one since it was listed) and not being uploaded (an upload holds its row): the
    /// (sha256, size) of what was removed, by digest.
    fn remove_artifacts(
        &self,
        doomed: &[String],
        grace: Duration,
    ) -> StoreResult<Vec<(String, u64)>> {
        let _ = (doomed, grace);
        Err(no_artifacts("removing artifacts"))
    }
}
