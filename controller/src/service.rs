//! The CI-facing gRPC service (`rampart.v1.Controller`): bearer-token authentication, request
//! checks, and the adapters between the RPCs and [`crate::deployment`].
//!
//! Every request is checked in full before anything is stored: an unknown environment,
//! component or artifact, a bad `serial` or variables that are not a JSON object are refused
//! with INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION and nothing changes.
//!
//! Authorisation, in this order for every RPC: the token's scope for the RPC ([`Rpc::scope`],
//! the one table; PERMISSION_DENIED naming the missing scope), the bounds of the request's
//! fields ([`crate::edge`], before any lookup), then the environments the token may act on
//! (an unknown environment's NOT_FOUND lists only those). A Deploy's `vars_json` may set only
//! the environment's `ci_vars`; with `four_eyes`, the token that asked cannot approve.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rampart_host::cas as artifacts;
use rampart_proto::v1 as pb;
use rampart_proto::v1::controller_server::{Controller as ControllerApi, ControllerServer};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::artifact_store::{self, Refusal, Reservation};
use crate::config::{ControllerConfig, Environment, Scope, component_names};
use crate::deployment::{Controller, new_deployment_id, now_ts};
use crate::edge;
use crate::incident;
use crate::rollout;
use crate::stats;
use crate::store::{ControlKind, ControlRequest, Store, StoreError};

use pb::DeploymentState as DS;

/// Who called: the configured name of the token.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// The interceptor that turns `authorization: Bearer <token>` into a [`Caller`].
pub fn authenticate(
    cfg: Arc<ControllerConfig>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .unwrap_or("")
            .trim();
        if token.is_empty() {
            return Err(Status::unauthenticated(
                "no bearer token: send `authorization: Bearer <token>` (rampart --token-file FILE)",
            ));
        }
        let Some(t) = cfg.token(token) else {
            return Err(Status::unauthenticated(
                "unknown token: the controller has no token with this value",
            ));
        };
        req.extensions_mut().insert(Caller(t.name.clone()));
        Ok(req)
    }
}

/// The RPCs of `rampart.v1.Controller`, for the scope table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `UploadArtifact`.
    UploadArtifact,
    /// `Deploy`.
    Deploy,
    /// `Rollback`.
    Rollback,
    /// `Watch`.
    Watch,
    /// `GetDeployment`.
    GetDeployment,
    /// `ListDeployments`.
    ListDeployments,
    /// `ListEnvironments`.
    ListEnvironments,
    /// `Approve`.
    Approve,
    /// `Abort`.
    Abort,
    /// `ListIncidents`.
    ListIncidents,
    /// `ResolveIncident`.
    ResolveIncident,
    /// `GetForensics`.
    GetForensics,
    /// `CheckEnvironment`.
    CheckEnvironment,
    /// `DeploymentStats`.
    DeploymentStats,
    /// `GetPostmortem`.
    GetPostmortem,
}

impl Rpc {
    /// The scope a token needs to call the RPC: the one table (`admin` covers every scope).
    pub fn scope(self) -> Scope {
        match self {
            Rpc::Watch
            | Rpc::GetDeployment
            | Rpc::ListDeployments
            | Rpc::ListEnvironments
            | Rpc::ListIncidents
            | Rpc::CheckEnvironment
            | Rpc::DeploymentStats
            | Rpc::GetPostmortem => Scope::Read,
            Rpc::UploadArtifact | Rpc::Deploy | Rpc::Rollback | Rpc::Abort => Scope::Deploy,
            Rpc::Approve => Scope::Approve,
            // A person's acts: closing an incident, and bundles that may hold state captures
            // and logs.
            Rpc::ResolveIncident | Rpc::GetForensics => Scope::Admin,
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Service {
    ctl: Arc<Controller>,
}

/// The controller's tonic service behind an authentication interceptor.
pub type AuthenticatedServer<I> =
    tonic::service::interceptor::InterceptedService<ControllerServer<Service>, I>;

/// The shape of the authentication interceptor.
pub trait Interceptor: FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {}
impl<T: FnMut(Request<()>) -> Result<Request<()>, Status> + Clone> Interceptor for T {}

/// At most this many stored events of a deployment are read for its post-mortem's timeline.
const POSTMORTEM_EVENTS: u32 = 20_000;

/// How many active and how many finished deployments `ListEnvironments` reads per environment.
const STATUS_SCAN: u32 = 100;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DeploymentEvent, Status>> + Send>>;
type DataStream = Pin<Box<dyn Stream<Item = Result<pb::DataChunk, Status>> + Send>>;

fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| Status::unauthenticated("no caller: the request was not authenticated"))
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists(m) => Status::already_exists(m),
        StoreError::Unavailable(m) => Status::unavailable(format!("store unavailable: {m}")),
        StoreError::Corrupt(m) => Status::internal(format!("corrupt store record: {m}")),
    }
}

/// A deployment as lists show it: state captures left out.
fn light(mut d: pb::Deployment) -> pb::Deployment {
    for h in &mut d.hosts {
        h.state_capture_json.clear();
    }
    d
}

impl Service {
    /// The service over a controller.
    pub fn new(ctl: Arc<Controller>) -> Service {
        Service { ctl }
    }

    /// The tonic server with the authentication interceptor.
    pub fn into_server(self) -> AuthenticatedServer<impl Interceptor> {
        let cfg = self.ctl.cfg.clone();
        let server = ControllerServer::new(self)
            .max_decoding_message_size(rampart_rpc::MAX_MESSAGE)
            .max_encoding_message_size(rampart_rpc::MAX_MESSAGE);
        tonic::service::interceptor::InterceptedService::new(server, authenticate(cfg))
    }

    /// The caller's token name, once its token holds the scope `rpc` needs.
    fn authorize<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<String, Status> {
        let who = caller(req)?;
        let token = self.ctl.cfg.tokens.iter().find(|t| t.name == who);
        let need = rpc.scope();
        match token {
            Some(t) if t.has(need) => Ok(who),
            Some(t) => Err(Status::permission_denied(format!(
                "token {who:?} may not call {rpc:?}: it needs the `{}` scope (it has: {}); add \"{}\" to the token's `scopes` in the controller's configuration, or use a token that has it",
                need.name(),
                t.scopes
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                need.name()
            ))),
            None => Err(Status::unauthenticated(
                "unknown token: the controller has no token with this value",
            )),
        }
    }

    /// The environment `name`, checked, that the token may act on.
    fn environment(&self, who: &str, name: &str) -> Result<&Environment, Status> {
        edge::name("environment", name)?;
        let cfg = &self.ctl.cfg;
        let Some(env) = cfg.environments.get(name) else {
            let visible = self.visible(who);
            return Err(Status::not_found(format!(
                "no environment {} (this token may use: {})",
                edge::echo(name),
                if visible.is_empty() {
                    "none".to_string()
                } else {
                    visible.join(", ")
                }
            )));
        };
        self.allowed(who, name)?;
        Ok(env)
    }

    /// The configured environments the token may act on, by name.
    fn visible(&self, who: &str) -> Vec<String> {
        let cfg = &self.ctl.cfg;
        let token = cfg.tokens.iter().find(|t| t.name == who);
        cfg.environments
            .keys()
            .filter(|e| token.is_some_and(|t| t.sees(e)))
            .cloned()
            .collect()
    }

    fn allowed(&self, who: &str, env: &str) -> Result<(), Status> {
        let t = self.ctl.cfg.tokens.iter().find(|t| t.name == who);
        match t.and_then(|t| t.environments.as_ref()) {
            Some(envs) if !envs.iter().any(|e| e == env) => {
                Err(Status::permission_denied(format!(
                    "token {who:?} may not act on environment {env:?} (it may act on: {})",
                    envs.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    async fn get(&self, id: &str) -> Result<pb::Deployment, Status> {
        edge::id("deployment_id", id)?;
        let id2 = id.to_string();
        self.ctl
            .db(move |s| s.get_deployment(&id2))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no deployment {id}")))
    }

    /// Stores a new deployment, starts it, and streams its events.
    async fn start(&self, d: pb::Deployment) -> Result<Response<EventStream>, Status> {
        let owner = self.ctl.cfg.instance.clone();
        let d2 = d.clone();
        self.ctl
            .db(move |s| s.insert_deployment(&d2, &owner))
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(_) => Status::already_exists(format!(
                    "deployment id {} is taken; follow it with Watch, or leave the id empty",
                    d.id
                )),
                e => store_status(e),
            })?;
        tracing::info!(deployment = %d.id, env = %d.environment, version = %d.version, by = %d.requested_by, "deployment requested");
        let id = d.id.clone();
        self.ctl.spawn(d);
        Ok(Response::new(self.watch_stream(id, 0)))
    }

    /// Events of a deployment from `from_seq`, stored ones first, then live ones, until its
    /// `DeploymentFinished` (or the client goes away).
    fn watch_stream(&self, id: String, from_seq: u64) -> EventStream {
        let (tx, rx) = mpsc::channel(256);
        let ctl = self.ctl.clone();
        tokio::spawn(async move {
            let mut next = from_seq;
            // Bounded: a pass either sends events, or waits up to 500 ms; a watch of a week-long
            // deployment stays under this count.
            for _ in 0..2_000_000u32 {
                let (i2, n2) = (id.clone(), next);
                let events = match ctl.db(move |s| s.events(&i2, n2, 512)).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                let got = events.len();
                for ev in events {
                    next = ev.seq + 1;
                    let last = matches!(ev.kind, Some(pb::deployment_event::Kind::Finished(_)));
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                    if last {
                        return;
                    }
                }
                if got > 0 {
                    continue;
                }
                // Caught up. This controller runs it: wait for its next event (the last one,
                // `finished`, ends the stream above).
                if let Some(live) = ctl.live(&id) {
                    let mut rx = live.seq.subscribe();
                    if *rx.borrow() < next {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
                    }
                } else {
                    // Finished, run by another controller (shared store), or between runners:
                    // the record says whether more can come.
                    let i2 = id.clone();
                    match ctl.db(move |s| s.get_deployment(&i2)).await {
                        Ok(Some(d)) if d.state() == DS::Finished && d.last_seq < next => return,
                        Ok(None) => {
                            let _ = tx
                                .send(Err(Status::not_found(format!("no deployment {id}"))))
                                .await;
                            return;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// The requested id, checked, or a new one.
    fn deployment_id(requested: &str) -> Result<String, Status> {
        if requested.is_empty() {
            return Ok(new_deployment_id());
        }
        if requested.len() > 40
            || !requested
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(Status::invalid_argument(format!(
                "deployment_id {}: use 1 to 40 of A-Z a-z 0-9 - _",
                edge::echo(requested)
            )));
        }
        Ok(requested.to_string())
    }

    /// A deployment's own `stages`: well formed, not with `serial`, at most 64; with an
    /// environment analysis, every stage but the last has a window at least as long as the
    /// environment's shortest (a deployment may reshape its canary, not skip or shorten it);
    /// without one, no windows.
    fn check_stages(stages: &[String], serial: &[String], env: &Environment) -> Result<(), Status> {
        if stages.is_empty() {
            return Ok(());
        }
        if !serial.is_empty() {
            return Err(Status::invalid_argument(
                "give either serial or stages, not both",
            ));
        }
        if stages.len() > crate::analysis::config::MAX_STAGES {
            return Err(Status::invalid_argument(format!(
                "{} stages: at most {}",
                stages.len(),
                crate::analysis::config::MAX_STAGES
            )));
        }
        let parsed = crate::analysis::config::parse_stage_specs(stages)
            .map_err(|e| Status::invalid_argument(format!("stages: {}", edge::cut(&e, 512))))?;
        let shortest = env.stages.iter().filter_map(|s| s.analysis).min();
        match (&env.analysis, shortest) {
            (None, _) if parsed.iter().any(|s| s.analysis.is_some()) => {
                Err(Status::invalid_argument(format!(
                    "stages: environment {} has no [analysis]: give stages without windows (HOSTS), or configure its analysis",
                    env.name
                )))
            }
            (Some(_), Some(min)) => {
                // Every stage but the last (the only one too) needs its window.
                let n = parsed.len().saturating_sub(1).max(1);
                match parsed[..n]
                    .iter()
                    .position(|s| s.analysis.is_none_or(|w| w < min))
                {
                    Some(i) => Err(Status::invalid_argument(format!(
                        "stages: stage {} ({}) needs an analysis window of at least {}s (environment {}'s shortest): a deployment may reshape its canary, not skip or shorten it",
                        i + 1,
                        edge::echo(&stages[i]),
                        min.as_secs_f64(),
                        env.name
                    ))),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// `vars_json` is empty or a JSON object whose every top-level key is in the
    /// environment's `ci_vars` (a listed key allows its whole value, nested keys included).
    fn check_vars(vars_json: &str, env: &Environment) -> Result<(), Status> {
        if vars_json.trim().is_empty() {
            return Ok(());
        }
        let vars = match serde_json::from_str::<Value>(vars_json) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(Status::invalid_argument("vars_json must be a JSON object")),
            Err(e) => {
                return Err(Status::invalid_argument(format!(
                    "vars_json is not JSON: {e}"
                )));
            }
        };
        let refused: Vec<String> = vars
            .keys()
            .filter(|k| !env.ci_vars.contains(k))
            .take(5)
            .map(|k| edge::echo(k))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "vars_json sets {}, which a deploy may not set in environment {} (it may set: {}); the inventory and the environment's `vars` hold the rest, or list the variable in `ci_vars` of [environments.{}]",
            refused.join(", "),
            env.name,
            env.ci_vars.join(", "),
            env.name
        )))
    }
}

#[tonic::async_trait]
impl ControllerApi for Service {
    async fn upload_artifact(
        &self,
        request: Request<tonic::Streaming<pb::ArtifactUpload>>,
    ) -> Result<Response<pb::UploadArtifactResponse>, Status> {
        self.authorize(&request, Rpc::UploadArtifact)?;
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument(
                "UploadArtifact received no message",
            ));
        };
        // Any case on the wire; stored and compared lowercase.
        let expected = first.sha256.to_ascii_lowercase();
        edge::sha256("sha256", &expected)?;
        edge::text("name", &first.name, edge::MAX_NAME)?;
        let dir = self.ctl.cfg.state_dir.clone();
        if let Some(size) = tokio::task::block_in_place(|| self.ctl.artifacts.claim(&expected)) {
            return Ok(Response::new(pb::UploadArtifactResponse {
                sha256: expected,
                size,
                already_present: true,
            }));
        }
        let io = |e: artifacts::ArtifactError| match e {
            artifacts::ArtifactError::Io { .. } => Status::internal(e.to_string()),
            _ => Status::data_loss(e.to_string()),
        };
        let mut room = self.admit(first.size).await?;
        let mut upload =
            tokio::task::block_in_place(|| artifacts::Upload::new(&dir)).map_err(io)?;
        // Dropping `upload` on a refusal removes what was written.
        let mut next = Some(first.data);
        while let Some(data) = next.take() {
            tokio::task::block_in_place(|| room.grow(upload.size() + data.len() as u64))
                .map_err(refused)?;
            tokio::task::block_in_place(|| upload.write(&data)).map_err(io)?;
            next = stream.message().await?.map(|m| m.data);
        }
        if first.size != 0 && upload.size() != first.size {
            return Err(Status::data_loss(format!(
                "artifact {} ({expected}): received {} bytes, the first message announced {}",
                first.name,
                upload.size(),
                first.size
            )));
        }
        let store = self.ctl.artifacts.clone();
        let (cached, shared_had_it) = tokio::task::spawn_blocking(move || {
            let cached = upload.finish(&expected).map_err(io)?;
            // With PostgreSQL, stored where every controller reads it; the room stays held
            // until it is.
            let had = store.publish(&cached.sha256).map_err(|e| match e {
                StoreError::Corrupt(m) => Status::data_loss(m),
                other => store_status(other),
            })?;
            Ok::<_, Status>((cached, had))
        })
        .await
        .map_err(|e| Status::internal(format!("upload task failed: {e}")))??;
        drop(room);
        tracing::info!(name = %first.name, sha256 = %cached.sha256, size = cached.size, "artifact stored");
        Ok(Response::new(pb::UploadArtifactResponse {
            sha256: cached.sha256,
            size: cached.size,
            already_present: cached.already_present && shared_had_it,
        }))
    }

    type DeployStream = EventStream;

    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        let who = self.authorize(&request, Rpc::Deploy)?;
        let r = request.into_inner();
        let env = self.environment(&who, &r.environment)?;
        let id = Self::deployment_id(&r.deployment_id)?;
        edge::version("version", &r.version)?;
        edge::text("ci_run_id", &r.ci_run_id, edge::MAX_REF)?;
        edge::text("commit", &r.commit, edge::MAX_REF)?;
        if let Some(t) = &r.commit_time {
            edge::commit_time("commit_time", t, now_ts().seconds)?;
        }
        Self::check_vars(&r.vars_json, env)?;
        edge::serial(&r.serial)?;
        Self::check_stages(&r.stages, &r.serial, env)?;
        if !r.serial.is_empty() {
            let v = Value::Array(r.serial.iter().map(|s| Value::String(s.clone())).collect());
            rollout::parse_serial(&v)
                .map_err(|e| Status::invalid_argument(format!("serial: {e}")))?;
        }
        if let Some(m) = r.max_fail_percentage
            && m > 100
        {
            return Err(Status::invalid_argument(format!(
                "max_fail_percentage {m} is over 100"
            )));
        }
        if r.artifacts.is_empty() {
            return Err(Status::invalid_argument(
                "no artifacts: give each component's artifact (rampart deploy --artifact NAME=PATH)",
            ));
        }
        for (component, sha) in &r.artifacts {
            edge::name("artifact component", component)?;
            edge::sha256(&format!("artifact of {component}"), sha)?;
            if tokio::task::block_in_place(|| self.ctl.artifacts.claim(sha)).is_none() {
                return Err(Status::failed_precondition(format!(
                    "artifact {sha} of {component} has not been uploaded: UploadArtifact it first"
                )));
            }
        }
        // Every host must know every component the request names.
        for host in &env.hosts {
            let names = component_names(&env.host_vars[host]);
            if let Some(c) = r.artifacts.keys().find(|c| !names.contains(c)) {
                return Err(Status::invalid_argument(format!(
                    "host {host} of {} has no component {c:?} (its components: {}); check the inventory's `components`",
                    r.environment,
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        let wait = if r.wait_timeout_ms == 0 {
            env.wait_timeout.as_millis() as u64
        } else {
            r.wait_timeout_ms
        };
        let d = pb::Deployment {
            id,
            kind: pb::DeploymentKind::Deploy as i32,
            environment: r.environment,
            version: r.version,
            state: DS::Queued as i32,
            requested_by: who,
            ci_run_id: r.ci_run_id,
            commit: r.commit,
            created: Some(now_ts()),
            artifacts: r.artifacts,
            check: r.check,
            vars_json: r.vars_json,
            serial: r.serial,
            stages: r.stages,
            max_fail_percentage: r.max_fail_percentage,
            wait_timeout_ms: wait,
            commit_time: r.commit_time,
            ..Default::default()
        };
        self.start(d).await
    }

    type RollbackStream = EventStream;

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<Self::RollbackStream>, Status> {
        let who = self.authorize(&request, Rpc::Rollback)?;
        let r = request.into_inner();
        let env = self.environment(&who, &r.environment)?;
        let id = Self::deployment_id(&r.deployment_id)?;
        edge::text("reason", &r.reason, edge::MAX_TEXT)?;
        edge::text("ci_run_id", &r.ci_run_id, edge::MAX_REF)?;
        if !r.to_version.is_empty() {
            edge::version("to_version", &r.to_version)?;
        }
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a rollback needs a reason (rampart rollback --reason TEXT): it goes into history",
            ));
        }
        let e = r.environment.clone();
        let done = self
            .ctl
            .db(move |s| s.list_deployments(Some(&e), &[DS::Finished], 0))
            .await
            .map_err(store_status)?;
        let to = if r.to_version.is_empty() {
            let good: Vec<&pb::Deployment> = done
                .iter()
                .filter(|d| d.outcome() == pb::DeploymentOutcome::Succeeded)
                .collect();
            let current = good.first().map(|d| d.version.clone()).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{} has no successful deployment in history: give the version with --to",
                    r.environment
                ))
            })?;
            good.iter()
                .map(|d| d.version.clone())
                .find(|v| *v != current)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "{} has run only {current} successfully: there is no earlier version to return to; give one with --to",
                        r.environment
                    ))
                })?
        } else {
            r.to_version.clone()
        };
        edge::version("to_version", &to)?;
        let database = match r.database.as_str() {
            "" | "none" => "none",
            "undo" => "undo",
            other => {
                return Err(Status::invalid_argument(format!(
                    "database must be undo or none, not {}",
                    edge::echo(other)
                )));
            }
        };
        // The artifacts `to` was last deployed from (still in this controller's store): a host
        // whose release of it was pruned gets it delivered and staged again.
        // Claimed like a deploy's (the collector spares a claimed artifact), and only when all
        // of them are still stored.
        let artifacts = done
            .iter()
            .find(|d| {
                d.kind() == pb::DeploymentKind::Deploy && d.version == to && !d.artifacts.is_empty()
            })
            .map(|d| d.artifacts.clone())
            .filter(|a| {
                tokio::task::block_in_place(|| {
                    a.values()
                        .all(|sha| self.ctl.artifacts.claim(sha).is_some())
                })
            })
            .unwrap_or_default();
        let wait = if r.wait_timeout_ms == 0 {
            env.wait_timeout.as_millis() as u64
        } else {
            r.wait_timeout_ms
        };
        let d = pb::Deployment {
            id,
            kind: pb::DeploymentKind::Rollback as i32,
            artifacts,
            vars_json: if r.emergency {
                serde_json::json!({ "rollback_database": database, "rampart_emergency": true })
            } else {
                serde_json::json!({ "rollback_database": database })
            }
            .to_string(),
            emergency: r.emergency,
            environment: r.environment,
            version: to,
            state: DS::Queued as i32,
            requested_by: who,
            ci_run_id: r.ci_run_id,
            created: Some(now_ts()),
            reason: r.reason,
            wait_timeout_ms: wait,
            ..Default::default()
        };
        self.start(d).await
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.authorize(&request, Rpc::Watch)?;
        let r = request.into_inner();
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        Ok(Response::new(self.watch_stream(d.id, r.from_seq)))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let who = self.authorize(&request, Rpc::GetDeployment)?;
        let mut d = self.get(&request.into_inner().deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        if d.state() == DS::Queued {
            d = self
                .ctl
                .db(move |s| {
                    fill_queue_positions(s, std::slice::from_mut(&mut d))?;
                    Ok(d)
                })
                .await
                .map_err(store_status)?;
        }
        Ok(Response::new(d))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let who = self.authorize(&request, Rpc::ListDeployments)?;
        let r = request.into_inner();
        if !r.environment.is_empty() {
            edge::name("environment", &r.environment)?;
            self.allowed(&who, &r.environment)?;
        }
        let states: Vec<DS> = r
            .states
            .iter()
            .map(|s| DS::try_from(*s).unwrap_or(DS::Unspecified))
            .collect();
        let env = (!r.environment.is_empty()).then_some(r.environment.clone());
        let limit = if r.limit == 0 { 50 } else { r.limit.min(1000) };
        let list = self
            .ctl
            .db(move |s| {
                let mut v = s.list_deployments(env.as_deref(), &states, limit)?;
                fill_queue_positions(s, &mut v)?;
                Ok(v)
            })
            .await
            .map_err(store_status)?;
        let deployments = list
            .into_iter()
            .filter(|d| self.allowed(&who, &d.environment).is_ok())
            .map(light)
            .collect();
        Ok(Response::new(pb::ListDeploymentsResponse { deployments }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let who = self.authorize(&request, Rpc::Approve)?;
        let r = request.into_inner();
        edge::text("comment", &r.comment, edge::MAX_TEXT)?;
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        self.four_eyes(&who, &d)?;
        if !matches!(d.state(), DS::AwaitingApproval | DS::Queued) {
            return Err(Status::failed_precondition(format!(
                "deployment {} is {:?}, not awaiting approval",
                d.id,
                d.state()
            )));
        }
        // Paused after a wave (its analysis could not decide): this approval goes on from there.
        let paused = d.paused_after_wave;
        let kind = paused.map_or(ControlKind::Approve, ControlKind::Resume);
        let message = self.forward(&d.id, kind, &who, &r.comment).await?;
        let d = self
            .settle(&d.id, |d| match paused {
                Some(w) => d.paused_after_wave != Some(w) || d.state() != DS::AwaitingApproval,
                None => !d.approved_by.is_empty() || d.state() != DS::AwaitingApproval,
            })
            .await?;
        Ok(Response::new(pb::ApproveResponse {
            deployment: Some(d),
            message,
        }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let who = self.authorize(&request, Rpc::Abort)?;
        let r = request.into_inner();
        edge::text("reason", &r.reason, edge::MAX_TEXT)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "an abort needs a reason (rampart abort ID --reason TEXT): it goes into history",
            ));
        }
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        if d.state() == DS::Finished {
            return Err(Status::failed_precondition(format!(
                "deployment {} is already finished ({:?})",
                d.id,
                d.outcome()
            )));
        }
        let message = self
            .forward(&d.id, ControlKind::Abort, &who, &r.reason)
            .await?;
        let d = self
            .settle(&d.id, |d| {
                !d.aborted_by.is_empty() || d.state() == DS::Finished
            })
            .await?;
        Ok(Response::new(pb::AbortResponse {
            deployment: Some(d),
            message,
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let who = self.authorize(&request, Rpc::ListIncidents)?;
        let r = request.into_inner();
        if !r.environment.is_empty() {
            edge::name("environment", &r.environment)?;
            self.allowed(&who, &r.environment)?;
        }
        let states: Vec<pb::IncidentState> = r
            .states
            .iter()
            .map(|s| pb::IncidentState::try_from(*s).unwrap_or(pb::IncidentState::Unspecified))
            .collect();
        let env = (!r.environment.is_empty()).then_some(r.environment.clone());
        let limit = if r.limit == 0 { 50 } else { r.limit.min(1000) };
        let list = self
            .ctl
            .db(move |s| s.list_incidents(env.as_deref(), &states, limit))
            .await
            .map_err(store_status)?;
        let incidents = list
            .into_iter()
            .filter(|i| self.allowed(&who, &i.environment).is_ok())
            .collect();
        Ok(Response::new(pb::ListIncidentsResponse { incidents }))
    }

    async fn resolve_incident(
        &self,
        request: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = self.authorize(&request, Rpc::ResolveIncident)?;
        let r = request.into_inner();
        edge::id("incident_id", &r.incident_id)?;
        edge::text("note", &r.note, edge::MAX_TEXT)?;
        if !r.postmortem_url.is_empty() {
            edge::url("postmortem_url", &r.postmortem_url)?;
        }
        let id = r.incident_id.clone();
        let mut inc = self
            .ctl
            .db(move |s| s.get_incident(&id))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no incident {}", r.incident_id)))?;
        self.allowed(&who, &inc.environment)?;
        if inc.state() == pb::IncidentState::Resolved {
            return Err(Status::failed_precondition(format!(
                "incident {} is already resolved",
                inc.id
            )));
        }
        if r.acknowledge_only {
            inc.state = pb::IncidentState::Acknowledged as i32;
            inc.acknowledged_by = who;
        } else {
            if r.note.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "resolving an incident needs a note saying what was done",
                ));
            }
            let required = self
                .ctl
                .cfg
                .environments
                .get(&inc.environment)
                .is_some_and(|e| e.require_postmortem);
            if required && r.postmortem_url.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "environment {} has require_postmortem = true: resolving incident {} needs a link to its post-mortem; write it (`rampart incidents postmortem {}` renders a draft) and pass --postmortem URL",
                    inc.environment, inc.id, inc.id
                )));
            }
            inc.state = pb::IncidentState::Resolved as i32;
            inc.resolved_by = who;
            inc.resolution = r.note;
            inc.postmortem_url = r.postmortem_url;
            inc.resolved = Some(now_ts());
        }
        // A resolution tells the sinks (with the record, in one transaction); an
        // acknowledgement does not.
        let notices = if inc.state() == pb::IncidentState::Resolved {
            incident::resolve_notices(self.ctl.cfg.environments.get(&inc.environment), &inc)
        } else {
            Vec::new()
        };
        let i2 = inc.clone();
        self.ctl
            .db(move |s| s.save_incident(&i2, &notices))
            .await
            .map_err(store_status)?;
        Ok(Response::new(inc))
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        let who = self.authorize(&request, Rpc::ListEnvironments)?;
        let r = request.into_inner();
        let cfg = &self.ctl.cfg;
        let names: Vec<String> = if r.environment.is_empty() {
            self.visible(&who)
        } else {
            self.environment(&who, &r.environment)?;
            vec![r.environment.clone()]
        };
        let host_counts: Vec<u32> = names
            .iter()
            .map(|n| cfg.environments[n].hosts.len() as u32)
            .collect();
        let environments = self
            .ctl
            .db(move |s| {
                let mut out = Vec::new();
                for (name, host_count) in names.into_iter().zip(host_counts) {
                    let mut active = s.list_deployments(
                        Some(&name),
                        &[DS::Queued, DS::AwaitingApproval, DS::Running, DS::Rescuing],
                        STATUS_SCAN,
                    )?;
                    fill_queue_positions(s, &mut active)?;
                    // The one holding the lock first, then the queue in order.
                    active.sort_by_key(|d| (d.state() == DS::Queued, d.queue_position));
                    let finished = s.list_deployments(Some(&name), &[DS::Finished], STATUS_SCAN)?;
                    let current_version = finished
                        .iter()
                        .find(|d| d.outcome() == pb::DeploymentOutcome::Succeeded)
                        .map(|d| d.version.clone())
                        .unwrap_or_default();
                    out.push(pb::EnvironmentStatus {
                        name,
                        host_count,
                        current_version,
                        active: active.into_iter().map(light).collect(),
                        last_finished: finished.into_iter().next().map(light),
                    });
                }
                Ok(out)
            })
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListEnvironmentsResponse { environments }))
    }

    async fn check_environment(
        &self,
        request: Request<pb::CheckEnvironmentRequest>,
    ) -> Result<Response<pb::CheckEnvironmentResponse>, Status> {
        let who = self.authorize(&request, Rpc::CheckEnvironment)?;
        let r = request.into_inner();
        self.environment(&who, &r.environment)?;
        let found = crate::sweep::check_environment(&self.ctl, &r.environment)
            .await
            .map_err(store_status)?;
        Ok(Response::new(found))
    }

    async fn get_postmortem(
        &self,
        request: Request<pb::GetPostmortemRequest>,
    ) -> Result<Response<pb::Postmortem>, Status> {
        let who = self.authorize(&request, Rpc::GetPostmortem)?;
        let r = request.into_inner();
        edge::id("incident_id", &r.incident_id)?;
        let id = r.incident_id.clone();
        let inc = self
            .ctl
            .db(move |s| s.get_incident(&id))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no incident {}", r.incident_id)))?;
        self.allowed(&who, &inc.environment)?;
        let dep = inc.deployment_id.clone();
        let (d, events) = self
            .ctl
            .db(move |s| {
                let d = s.get_deployment(&dep)?;
                // Bounded: a deployment's events of a large fleet, the timeline keeps few.
                let events = s.events(&dep, 0, POSTMORTEM_EVENTS)?;
                Ok((d, events))
            })
            .await
            .map_err(store_status)?;
        let markdown = incident::render_postmortem(&inc, d.as_ref(), &events);
        Ok(Response::new(pb::Postmortem {
            incident_id: inc.id,
            markdown,
        }))
    }

    type GetForensicsStream = DataStream;

    async fn get_forensics(
        &self,
        request: Request<pb::GetDeploymentForensicsRequest>,
    ) -> Result<Response<Self::GetForensicsStream>, Status> {
        let who = self.authorize(&request, Rpc::GetForensics)?;
        let r = request.into_inner();
        edge::name("host", &r.host)?;
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        let h = d.hosts.iter().find(|h| h.host == r.host).ok_or_else(|| {
            Status::not_found(format!(
                "deployment {} has no host {}",
                d.id,
                edge::echo(&r.host)
            ))
        })?;
        if h.forensics_id.is_empty() {
            return Err(Status::not_found(format!(
                "host {} recorded no forensics bundle in deployment {} (state {:?})",
                h.host,
                d.id,
                h.state()
            )));
        }
        let env = self
            .ctl
            .cfg
            .environments
            .get(&d.environment)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "environment {} is no longer configured",
                    d.environment
                ))
            })?;
        let addr = env.agent_addr(&h.host);
        let mut client = self
            .ctl
            .agents
            .client(&h.host, &addr)
            .await
            .map_err(Status::unavailable)?;
        let stream = client
            .get_forensics(pb::GetForensicsRequest {
                id: h.forensics_id.clone(),
            })
            .await
            .map_err(|s| Status::new(s.code(), format!("agent {addr}: {}", s.message())))?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn deployment_stats(
        &self,
        request: Request<pb::DeploymentStatsRequest>,
    ) -> Result<Response<pb::DeploymentStatsResponse>, Status> {
        let who = self.authorize(&request, Rpc::DeploymentStats)?;
        let r = request.into_inner();
        let window = edge::stats_window("since_seconds", r.since_seconds)?;
        self.environment(&who, &r.environment)?;
        let now = now_ts();
        let end = seconds(&now);
        let start = end - window as f64;
        let env = r.environment.clone();
        let (deployments, incidents) = self
            .ctl
            .db(move |s| {
                let d =
                    s.list_deployments(Some(&env), &[DS::Finished], edge::MAX_STATS_SCAN + 1)?;
                let i = s.list_incidents(Some(&env), &[], edge::MAX_STATS_SCAN + 1)?;
                Ok((d, i))
            })
            .await
            .map_err(store_status)?;
        // Newest first: a bound reached while still inside the window cut it short.
        let cut = |len: usize, oldest: Option<f64>| {
            len > edge::MAX_STATS_SCAN as usize && oldest.is_some_and(|t| t >= start)
        };
        let truncated = cut(
            deployments.len(),
            deployments
                .last()
                .and_then(|d| d.finished.as_ref())
                .map(seconds),
        ) || cut(
            incidents.len(),
            incidents
                .last()
                .and_then(|i| i.opened.as_ref())
                .map(seconds),
        );
        let facts: Vec<stats::DeploymentFact> = deployments
            .iter()
            .take(edge::MAX_STATS_SCAN as usize)
            .filter_map(deployment_fact)
            .collect();
        let incident_facts: Vec<stats::IncidentFact> = incidents
            .iter()
            .take(edge::MAX_STATS_SCAN as usize)
            .filter_map(|i| {
                Some(stats::IncidentFact {
                    opened: seconds(i.opened.as_ref()?),
                    resolved: i.resolved.as_ref().map(seconds),
                })
            })
            .collect();
        let st = stats::compute(&facts, &incident_facts, start, end);
        Ok(Response::new(pb::DeploymentStatsResponse {
            environment: r.environment,
            window_start: Some(prost_types::Timestamp {
                seconds: now.seconds - window as i64,
                nanos: now.nanos,
            }),
            window_end: Some(now),
            finished: st.finished,
            succeeded: st.succeeded,
            rolled_back: st.rolled_back,
            rollback_failed: st.rollback_failed,
            failed: st.failed,
            not_started: st.not_started,
            manual_rollbacks: st.manual_rollbacks,
            deployments_per_day: st.deployments_per_day,
            lead_time_samples: st.lead_time_samples,
            lead_time_median_seconds: st.lead_time_median,
            lead_time_p95_seconds: st.lead_time_p95,
            change_failure_rate: st.change_failure_rate,
            incidents_opened: st.incidents_opened,
            incidents_resolved: st.incidents_resolved,
            time_to_restore_median_seconds: st.time_to_restore_median,
            success_rate: st.success_rate,
            success_rate_target: stats::SUCCESS_TARGET,
            success_rate_met: st.success_rate_met,
            duration_p95_seconds: st.duration_p95,
            duration_p95_target_seconds: stats::DURATION_P95_TARGET,
            duration_p95_met: st.duration_p95_met,
            deployments_scanned: facts.len() as u32,
            incidents_scanned: incident_facts.len() as u32,
            truncated,
        }))
    }
}

/// A protobuf timestamp in seconds since the epoch.
fn seconds(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// The facts the figures need of a finished deployment; `None` without a finish time.
fn deployment_fact(d: &pb::Deployment) -> Option<stats::DeploymentFact> {
    use pb::DeploymentOutcome as O;
    let ending = match d.outcome() {
        O::Succeeded => stats::Ending::Succeeded,
        O::RolledBack => stats::Ending::RolledBack,
        O::RollbackFailed => stats::Ending::RollbackFailed,
        O::Failed => stats::Ending::Failed,
        O::CheckOnly => stats::Ending::CheckOnly,
        O::Aborted | O::LockTimeout | O::ApprovalTimedOut | O::Unspecified => {
            stats::Ending::NotStarted
        }
    };
    Some(stats::DeploymentFact {
        manual_rollback: d.kind() == pb::DeploymentKind::Rollback,
        ending: if d.check && ending != stats::Ending::NotStarted {
            stats::Ending::CheckOnly
        } else {
            ending
        },
        commit_time: d.commit_time.as_ref().map(seconds),
        started: d.started.as_ref().map(seconds),
        finished: seconds(d.finished.as_ref()?),
    })
}

/// Gives each queued deployment of `v` its place in its environment's queue.
fn fill_queue_positions(s: &dyn Store, v: &mut [pb::Deployment]) -> Result<(), StoreError> {
    for d in v.iter_mut().filter(|d| d.state() == DS::Queued) {
        d.queue_position = s.queue_position(&d.environment, &d.id)?;
    }
    Ok(())
}

/// The status of a refused upload: the limits RESOURCE_EXHAUSTED, the free space
/// FAILED_PRECONDITION.
fn refused(r: Refusal) -> Status {
    match r {
        Refusal::TooLarge { .. } | Refusal::OverQuota { .. } => {
            Status::resource_exhausted(r.to_string())
        }
        Refusal::LowSpace { .. } => Status::failed_precondition(r.to_string()),
        Refusal::Statvfs { .. } => Status::internal(r.to_string()),
        Refusal::StoreUnavailable { .. } => Status::unavailable(r.to_string()),
    }
}

impl Service {
    /// Admits an upload announcing `announced` bytes; over the quota, collects what nothing
    /// references and asks once more.
    async fn admit(&self, announced: u64) -> Result<Reservation, Status> {
        let store = &self.ctl.artifacts;
        match tokio::task::block_in_place(|| store.admit(announced)) {
            Err(Refusal::OverQuota { .. }) => {
                if let Err(e) = artifact_store::collect(&self.ctl).await {
                    tracing::warn!("artifact collection before a quota refusal: {e}");
                }
                tokio::task::block_in_place(|| store.admit(announced)).map_err(refused)
            }
            other => other.map_err(refused),
        }
    }

    /// Records an approval or abort for the controller running the deployment; the response's
    /// message: empty when this controller runs it, else that it was forwarded.
    async fn forward(
        &self,
        id: &str,
        kind: ControlKind,
        who: &str,
        text: &str,
    ) -> Result<String, Status> {
        let request = ControlRequest {
            kind,
            by: who.to_string(),
            text: text.to_string(),
        };
        let here = self.ctl.request(id, request).await.map_err(store_status)?;
        Ok(if here {
            String::new()
        } else {
            format!(
                "forwarded: recorded in the store for the controller running {id}, which applies it within a second"
            )
        })
    }

    /// With `four_eyes` (an environment no longer configured counts as having it), the token
    /// that requested a deployment may not approve it.
    fn four_eyes(&self, who: &str, d: &pb::Deployment) -> Result<(), Status> {
        let required = self
            .ctl
            .cfg
            .environments
            .get(&d.environment)
            .is_none_or(|e| e.four_eyes);
        if required && d.requested_by == who {
            return Err(Status::permission_denied(format!(
                "environment {} requires four-eyes approval: token {who:?} requested deployment {} and may not approve it too; approve it with another token that has the `approve` scope",
                d.environment, d.id
            )));
        }
        Ok(())
    }

    /// Re-reads a deployment until `done` holds (its runner applied a request), for up to 3 s.
    async fn settle(
        &self,
        id: &str,
        done: impl Fn(&pb::Deployment) -> bool,
    ) -> Result<pb::Deployment, Status> {
        let mut d = self.get(id).await?;
        for _ in 0..60 {
            if done(&d) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            d = self.get(id).await?;
        }
        Ok(light(d))
    }
}
