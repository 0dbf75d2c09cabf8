//! The CI-facing gRPC service (`rampart.v1.Controller`): bearer-token authentication, request
//! checks, and the adapters between the RPCs and [`crate::deployment`].
//!
//! Every request is checked in full before anything is stored: an unknown environment,
//! component or artifact, a bad `serial` or variables that are not a JSON object are refused
//! with INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION and nothing changes.

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

use crate::config::{ControllerConfig, component_names};
use crate::deployment::{Controller, new_deployment_id, now_ts};
use crate::rollout;
use crate::store::StoreError;

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
                "deployment_id {requested:?}: use 1 to 40 of A-Z a-z 0-9 - _"
            )));
        }
        Ok(requested.to_string())
    }

    fn check_vars(vars_json: &str) -> Result<(), Status> {
        if vars_json.trim().is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<Value>(vars_json) {
            Ok(Value::Object(_)) => Ok(()),
            Ok(_) => Err(Status::invalid_argument("vars_json must be a JSON object")),
            Err(e) => Err(Status::invalid_argument(format!(
                "vars_json is not JSON: {e}"
            ))),
        }
    }

    fn check_version(v: &str) -> Result<(), Status> {
        if v.is_empty()
            || v.len() > 128
            || v.starts_with('.')
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
        {
            return Err(Status::invalid_argument(format!(
                "version {v:?} is not valid: use 1 to 128 of A-Z a-z 0-9 . _ - + (not starting with .)"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ControllerApi for Service {
    async fn upload_artifact(
        &self,
        request: Request<tonic::Streaming<pb::ArtifactUpload>>,
    ) -> Result<Response<pb::UploadArtifactResponse>, Status> {
        caller(&request)?;
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument(
                "UploadArtifact received no message",
            ));
        };
        let expected = first.sha256.to_ascii_lowercase();
        artifacts::validate_hex(&expected)
            .map_err(|e| Status::invalid_argument(format!("first message: {e}")))?;
        let dir = self.ctl.cfg.state_dir.clone();
        if let Some(size) = artifacts::has(&dir, &expected) {
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
        let mut upload =
            tokio::task::block_in_place(|| artifacts::Upload::new(&dir)).map_err(io)?;
        tokio::task::block_in_place(|| upload.write(&first.data)).map_err(io)?;
        while let Some(m) = stream.message().await? {
            tokio::task::block_in_place(|| upload.write(&m.data)).map_err(io)?;
        }
        if first.size != 0 && upload.size() != first.size {
            return Err(Status::data_loss(format!(
                "artifact {} ({expected}): received {} bytes, the first message announced {}",
                first.name,
                upload.size(),
                first.size
            )));
        }
        let cached = tokio::task::spawn_blocking(move || upload.finish(&expected))
            .await
            .map_err(|e| Status::internal(format!("upload task failed: {e}")))?
            .map_err(io)?;
        tracing::info!(name = %first.name, sha256 = %cached.sha256, size = cached.size, "artifact stored");
        Ok(Response::new(pb::UploadArtifactResponse {
            sha256: cached.sha256,
            size: cached.size,
            already_present: cached.already_present,
        }))
    }

    type DeployStream = EventStream;

    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let cfg = &self.ctl.cfg;
        let env = cfg.environments.get(&r.environment).ok_or_else(|| {
            Status::not_found(format!(
                "no environment {:?} (configured: {})",
                r.environment,
                cfg.environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        self.allowed(&who, &r.environment)?;
        Self::check_version(&r.version)?;
        Self::check_vars(&r.vars_json)?;
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
            artifacts::validate_hex(sha)
                .map_err(|e| Status::invalid_argument(format!("artifact of {component}: {e}")))?;
            if artifacts::has(&cfg.state_dir, sha).is_none() {
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
        let id = Self::deployment_id(&r.deployment_id)?;
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
            max_fail_percentage: r.max_fail_percentage,
            wait_timeout_ms: wait,
            ..Default::default()
        };
        self.start(d).await
    }

    type RollbackStream = EventStream;

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<Self::RollbackStream>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let env = self
            .ctl
            .cfg
            .environments
            .get(&r.environment)
            .ok_or_else(|| Status::not_found(format!("no environment {:?}", r.environment)))?;
        self.allowed(&who, &r.environment)?;
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
        Self::check_version(&to)?;
        let database = match r.database.as_str() {
            "" | "none" => "none",
            "undo" => "undo",
            other => {
                return Err(Status::invalid_argument(format!(
                    "database must be undo or none, not {:?}",
                    other.chars().take(64).collect::<String>()
                )));
            }
        };
        // The artifacts `to` was last deployed from (still in this controller's store): a host
        // whose release of it was pruned gets it delivered and staged again.
        let artifacts = done
            .iter()
            .find(|d| {
                d.kind() == pb::DeploymentKind::Deploy && d.version == to && !d.artifacts.is_empty()
            })
            .map(|d| d.artifacts.clone())
            .unwrap_or_default();
        let wait = if r.wait_timeout_ms == 0 {
            env.wait_timeout.as_millis() as u64
        } else {
            r.wait_timeout_ms
        };
        let d = pb::Deployment {
            id: Self::deployment_id(&r.deployment_id)?,
            kind: pb::DeploymentKind::Rollback as i32,
            artifacts,
            vars_json: serde_json::json!({ "rollback_database": database }).to_string(),
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
        let who = caller(&request)?;
        let r = request.into_inner();
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        Ok(Response::new(self.watch_stream(d.id, r.from_seq)))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let who = caller(&request)?;
        let mut d = self.get(&request.into_inner().deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        if d.state() == DS::Queued {
            let (e, i) = (d.environment.clone(), d.id.clone());
            d.queue_position = self
                .ctl
                .db(move |s| s.queue_position(&e, &i))
                .await
                .map_err(store_status)?;
        }
        Ok(Response::new(d))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        if !r.environment.is_empty() {
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
                for d in &mut v {
                    if d.state() == DS::Queued {
                        d.queue_position = s.queue_position(&d.environment, &d.id)?;
                    }
                }
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
        let who = caller(&request)?;
        let r = request.into_inner();
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        if !matches!(d.state(), DS::AwaitingApproval | DS::Queued) {
            return Err(Status::failed_precondition(format!(
                "deployment {} is {:?}, not awaiting approval",
                d.id,
                d.state()
            )));
        }
        let live = self.ctl.live(&d.id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "deployment {} is run by another controller; approve it there",
                d.id
            ))
        })?;
        live.control
            .send_modify(|c| c.approved = Some((who.clone(), r.comment.clone())));
        let d = self
            .settle(&d.id, |d| {
                !d.approved_by.is_empty() || d.state() != DS::AwaitingApproval
            })
            .await?;
        Ok(Response::new(pb::ApproveResponse {
            deployment: Some(d),
        }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
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
        let live = self.ctl.live(&d.id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "deployment {} is run by another controller; abort it there",
                d.id
            ))
        })?;
        live.control
            .send_modify(|c| c.abort = Some((who.clone(), r.reason.clone())));
        let d = self
            .settle(&d.id, |d| {
                !d.aborted_by.is_empty() || d.state() == DS::Finished
            })
            .await?;
        Ok(Response::new(pb::AbortResponse {
            deployment: Some(d),
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
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
        let who = caller(&request)?;
        let r = request.into_inner();
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
            inc.state = pb::IncidentState::Resolved as i32;
            inc.resolved_by = who;
            inc.resolution = r.note;
            inc.resolved = Some(now_ts());
        }
        let i2 = inc.clone();
        self.ctl
            .db(move |s| s.save_incident(&i2))
            .await
            .map_err(store_status)?;
        Ok(Response::new(inc))
    }

    type GetForensicsStream = DataStream;

    async fn get_forensics(
        &self,
        request: Request<pb::GetDeploymentForensicsRequest>,
    ) -> Result<Response<Self::GetForensicsStream>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let d = self.get(&r.deployment_id).await?;
        self.allowed(&who, &d.environment)?;
        let h = d.hosts.iter().find(|h| h.host == r.host).ok_or_else(|| {
            Status::not_found(format!("deployment {} has no host {:?}", d.id, r.host))
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
            .client(&addr)
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
}

impl Service {
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
