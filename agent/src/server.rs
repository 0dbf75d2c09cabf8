//! The gRPC adapter: `rampart.v1.Agent` and `grpc.health.v1` over tonic.
//!
//! Converts protobuf requests into [`TxRequest`]s at the edge (bad input is `INVALID_ARGUMENT`
//! there), runs transactions on their own threads through [`crate::transaction`], and streams
//! journal entries as `TransactionEvent`s. A transaction never depends on its client: the stream
//! is one of possibly many watchers of the same in-memory entry list, which is backed by the
//! journal; a client that reconnects calls `Watch` from the last `seq` it saw. A transaction
//! whose journal fails (after its bounded wait for space) raises
//! [`AgentService::must_restart`]: `rampart-agent` then stops serving and exits with
//! [`EXIT_CANNOT_JOURNAL`], so that the restart recovers it.
//!
//! Over mutual TLS every call passes [`authorize`] first (one interceptor around every service):
//! the client's certificate must carry an identity the agent trusts (`--controller-identity`),
//! else the call is `PERMISSION_DENIED` and the attempt logged (see [`rampart_rpc::identity`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_server::{Agent, AgentServer};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::consistency::{self, Expectation};
use crate::error::{JournalError, LockError, TxError};
use crate::event::{Entry, Outcome, Recap, Record, Section, TaskStatus};
use crate::modules::forensics;
use crate::transaction::{self, DEFAULT_LOCK_TIMEOUT, HostConfig, Prepared, TxRequest};
use rampart_host::cas as artifacts;
use rampart_playbook::template::Templar;
use rampart_rpc::identity::{self, Trusted};

/// The agent's exit status when a transaction cannot be journaled (the disk stayed full for the
/// whole `--journal-wait-seconds`, or another journal I/O error), or start-up recovery could not
/// finish: the transaction is unfinished, and the restart recovers it.
pub const EXIT_CANNOT_JOURNAL: u8 = 3;

/// Events buffered per watcher before the sender waits for the client.
const STREAM_BUFFER: usize = 256;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TransactionEvent, Status>> + Send>>;

/// A running transaction as watchers see it.
#[derive(Debug)]
struct LiveTx {
    entries: Mutex<Vec<Entry>>,
    done: AtomicBool,
    changed: watch::Sender<usize>,
}

impl LiveTx {
    fn new(initial: Vec<Entry>) -> Arc<Self> {
        let (changed, _) = watch::channel(initial.len());
        Arc::new(LiveTx {
            entries: Mutex::new(initial),
            done: AtomicBool::new(false),
            changed,
        })
    }

    fn push(&self, e: &Entry) {
        let len = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.push(e.clone());
            entries.len()
        };
        self.changed.send_replace(len);
    }

    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        let len = self.entries.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.changed.send_replace(len);
    }

    fn snapshot(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The agent's gRPC service.
#[derive(Debug, Clone)]
pub struct AgentService {
    host: HostConfig,
    templar: Arc<Templar>,
    live: Arc<Mutex<HashMap<String, Arc<LiveTx>>>>,
    /// Raised when a transaction could not be journaled: see [`AgentService::must_restart`].
    must_restart: Arc<watch::Sender<bool>>,
    /// Where `ListForensics` / `GetForensics` look (default: the module's default dest dir).
    pub forensics_dir: Option<PathBuf>,
    /// Poked when a transaction finishes: the monitor ([`AgentService::spawn_monitor`]) checks
    /// the host again.
    finished: Arc<tokio::sync::Notify>,
    /// The `Probe`s running: at most [`crate::probe::MAX_PROBES`].
    probes: Arc<tokio::sync::Semaphore>,
}

/// What the agent's monitor does: check the host every `interval` (and after every finished
/// transaction), and write the metrics textfile when one is configured.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    /// The node_exporter textfile to write (atomically), if any.
    pub textfile: Option<PathBuf>,
    /// How often to check with no transaction finishing; `None`: only after transactions.
    pub interval: Option<Duration>,
}

impl AgentService {
    /// A service over the host's state dir.
    pub fn new(host: HostConfig, templar: Arc<Templar>) -> Self {
        AgentService {
            host,
            templar,
            live: Arc::new(Mutex::new(HashMap::new())),
            must_restart: Arc::new(watch::channel(false).0),
            forensics_dir: None,
            finished: Arc::new(tokio::sync::Notify::new()),
            probes: Arc::new(tokio::sync::Semaphore::new(crate::probe::MAX_PROBES)),
        }
    }

    /// The txids this agent is running now.
    fn live_txids(&self) -> Vec<String> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Checks the host now (on a blocking thread: the check reads files and may ask services).
    pub async fn check_now(
        &self,
        expected: Vec<Expectation>,
    ) -> Result<consistency::Report, Status> {
        let state_dir = self.host.state_dir.clone();
        let live = self.live_txids();
        tokio::task::spawn_blocking(move || consistency::check(&state_dir, &expected, &live))
            .await
            .map_err(|e| Status::internal(format!("the state check panicked: {e}")))
    }

    /// Starts the monitor: a check right away, then every `interval` and after every finished
    /// transaction; each writes the textfile (when configured) and logs a change of verdict.
    /// A textfile that cannot be written is logged and tried again at the next check.
    pub fn spawn_monitor(&self, monitor: Monitor) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut history = crate::metrics::History::default();
            let mut last_codes: Option<Vec<&'static str>> = None;
            loop {
                let report = match service.check_now(Vec::new()).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e.message(), "the state check failed");
                        return;
                    }
                };
                let codes: Vec<&'static str> =
                    report.problems.iter().map(|p| p.code.as_str()).collect();
                if last_codes.as_ref() != Some(&codes) {
                    if report.consistent() {
                        tracing::info!("state check: the host is consistent");
                    } else {
                        for p in &report.problems {
                            tracing::warn!(component = %p.component, code = p.code.as_str(), "state check: {}", p.message);
                        }
                    }
                    last_codes = Some(codes);
                }
                if let Some(path) = monitor.textfile.clone() {
                    let state_dir = service.host.state_dir.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        history.refresh(&state_dir);
                        let text = crate::metrics::render(&history, &report, None);
                        let written = rampart_host::durable::write_atomic(
                            &path,
                            text.as_bytes(),
                            Some(0o644),
                        )
                        .map_err(|e| format!("cannot write {}: {e}", path.display()));
                        (history, written)
                    })
                    .await;
                    match done {
                        Ok((h, written)) => {
                            history = h;
                            if let Err(e) = written {
                                tracing::warn!(
                                    "metrics textfile: {e}; trying again at the next check"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the metrics textfile writer panicked");
                            return;
                        }
                    }
                }
                match monitor.interval {
                    Some(every) => {
                        tokio::select! {
                            () = tokio::time::sleep(every) => {}
                            () = service.finished.notified() => {}
                        }
                    }
                    None => service.finished.notified().await,
                }
            }
        })
    }

    /// Becomes `true` when a transaction could not be journaled (after its wait for space): the
    /// transaction is unfinished, new `Run`s are refused, and the agent's process must stop
    /// serving and exit with [`EXIT_CANNOT_JOURNAL`] so that its restart recovers it.
    pub fn must_restart(&self) -> watch::Receiver<bool> {
        self.must_restart.subscribe()
    }

    /// Serves forensics bundles from `dir` instead of the default directory.
    pub fn with_forensics_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.forensics_dir = Some(dir.into());
        self
    }

    fn forensics_dir(&self) -> PathBuf {
        self.forensics_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(forensics::DEFAULT_DEST_DIR))
    }

    /// The tonic server wrapper. It takes requests up to [`rampart_rpc::MAX_MESSAGE`]: a run
    /// brings up to 48 MiB of files (tonic's default of 4 MiB would refuse them before the
    /// agent's own, clearer limits are checked).
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self)
            .max_decoding_message_size(rampart_rpc::MAX_MESSAGE)
            .max_encoding_message_size(rampart_rpc::MAX_MESSAGE)
    }

    fn live(&self, txid: &str) -> Option<Arc<LiveTx>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(txid)
            .cloned()
    }
}

/// Maps a transaction error to the gRPC status the contract promises.
pub fn status_of(e: &TxError) -> Status {
    match e {
        TxError::Playbook(_) | TxError::Request(_) => Status::invalid_argument(e.to_string()),
        TxError::Lock(LockError::Busy { .. }) => Status::failed_precondition(e.to_string()),
        TxError::Journal(JournalError::Exists { .. }) => Status::already_exists(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// A `CheckStateRequest`'s components, checked at the edge (count, names, paths, URLs).
pub fn expectations(req: &pb::CheckStateRequest) -> Result<Vec<Expectation>, String> {
    if req.components.len() > consistency::MAX_COMPONENTS {
        return Err(format!(
            "{} components asked; at most {} per CheckState",
            req.components.len(),
            consistency::MAX_COMPONENTS
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(req.components.len());
    for c in &req.components {
        if !seen.insert(c.name.as_str()) {
            return Err(format!("component {} is asked twice", c.name));
        }
        out.push(Expectation::new(&c.name, &c.path, &c.version_url)?);
    }
    Ok(out)
}

/// A report as the contract's response.
pub fn report_to_proto(r: &consistency::Report) -> pb::CheckStateResponse {
    pb::CheckStateResponse {
        consistent: r.consistent(),
        problems: r
            .problems
            .iter()
            .map(|p| pb::StateProblem {
                component: p.component.clone(),
                code: p.code.as_str().to_string(),
                message: p.message.clone(),
            })
            .collect(),
        components: r
            .components
            .iter()
            .map(|c| pb::ComponentState {
                name: c.name.clone(),
                version: c.version.clone().unwrap_or_default(),
                service_version: c.service_version.clone().unwrap_or_default(),
            })
            .collect(),
        in_progress: r.in_progress.clone().unwrap_or_default(),
        checked: Some(prost_types::Timestamp {
            seconds: r.checked.timestamp(),
            nanos: r.checked.timestamp_subsec_nanos() as i32,
        }),
    }
}

/// Registers a prepared transaction as live and runs it on a thread of its own to its end. A
/// transaction that cannot be journaled makes the agent exit (never a stopped transaction
/// under a live agent: the restart, systemd's `Restart=always`, recovers it before serving).
fn start_transaction(
    host: HostConfig,
    templar: Arc<Templar>,
    prepared: Prepared,
    registry: Arc<Mutex<HashMap<String, Arc<LiveTx>>>>,
    must_restart: Arc<watch::Sender<bool>>,
    finished: Arc<tokio::sync::Notify>,
) -> std::io::Result<Arc<LiveTx>> {
    let txid = prepared.txid().to_string();
    let live = LiveTx::new(prepared.initial.clone());
    registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(txid.clone(), live.clone());
    let worker_live = live.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("tx-{txid}"))
        .spawn({
            let registry = registry.clone();
            let txid = txid.clone();
            move || {
                let result =
                    transaction::execute(&host, &templar, prepared, &mut |e| worker_live.push(e));
                match &result {
                    Ok(s) => tracing::info!(txid = %s.txid, outcome = s.outcome.as_str(), "transaction finished"),
                    Err(e) => {
                        tracing::error!(%txid, error = %e, "cannot journal the transaction: exiting so that the agent's restart recovers it");
                        must_restart.send_replace(true);
                    }
                }
                worker_live.finish();
                registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&txid);
                // Unregistered first: the check that follows does not see it running.
                finished.notify_one();
            }
        });
    if let Err(e) = spawned {
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&txid);
        return Err(e);
    }
    Ok(live)
}

fn watch_stream(tx: Arc<LiveTx>, from_seq: u64) -> EventStream {
    let (out, rx) = mpsc::channel(STREAM_BUFFER);
    let mut changed = tx.changed.subscribe();
    tokio::spawn(async move {
        let mut next = from_seq as usize;
        loop {
            let done = tx.done.load(Ordering::SeqCst);
            let batch: Vec<Entry> = {
                let entries = tx.entries.lock().unwrap_or_else(|p| p.into_inner());
                entries
                    .get(next..)
                    .map(<[Entry]>::to_vec)
                    .unwrap_or_default()
            };
            for e in &batch {
                if out.send(Ok(to_proto(e))).await.is_err() {
                    return; // the client went away; the transaction goes on
                }
            }
            next += batch.len();
            if done && batch.is_empty() {
                return;
            }
            if batch.is_empty() && changed.changed().await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

fn replay_stream(entries: Vec<Entry>, from_seq: u64) -> EventStream {
    let items: Vec<Result<pb::TransactionEvent, Status>> = entries
        .iter()
        .filter(|e| e.seq >= from_seq)
        .map(|e| Ok(to_proto(e)))
        .collect();
    Box::pin(tokio_stream::iter(items))
}

#[tonic::async_trait]
impl Agent for AgentService {
    type RunStream = EventStream;
    type WatchStream = EventStream;
    type GetForensicsStream = Pin<Box<dyn Stream<Item = Result<pb::DataChunk, Status>> + Send>>;
    type ProbeStream = ReceiverStream<Result<pb::ProbeBatch, Status>>;

    async fn probe(
        &self,
        request: Request<pb::ProbeRequest>,
    ) -> Result<Response<Self::ProbeStream>, Status> {
        let plan = crate::probe::ProbePlan::try_from(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let permit = self.probes.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this agent already runs {} probes: retry when one ends",
                crate::probe::MAX_PROBES
            ))
        })?;
        let rx = crate::probe::start(plan, Some(permit))
            .map_err(|e| Status::internal(format!("cannot start a probe thread: {e}")))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        if *self.must_restart.borrow() {
            return Err(Status::unavailable(
                "the agent is exiting: a transaction could not be journaled, and its restart \
                 recovers it; retry once the agent serves again",
            ));
        }
        let req = request.into_inner();
        let vars: Map<String, Value> = if req.vars_json.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&req.vars_json) {
                Ok(Value::Object(m)) => m,
                Ok(other) => {
                    return Err(Status::invalid_argument(format!(
                        "vars_json must be a JSON object, got {other}"
                    )));
                }
                Err(e) => {
                    return Err(Status::invalid_argument(format!(
                        "vars_json is not valid JSON: {e}"
                    )));
                }
            }
        };
        let files: Vec<(String, Vec<u8>)> =
            req.files.into_iter().map(|f| (f.path, f.content)).collect();
        rampart_host::bundle::check(&files)
            .map_err(|e| Status::invalid_argument(format!("files: {e}")))?;
        for t in req.tags.iter().chain(&req.skip_tags) {
            if t.is_empty() || t.len() > 128 || t.chars().any(char::is_control) {
                return Err(Status::invalid_argument(
                    "a tag must be 1 to 128 printable characters",
                ));
            }
        }
        let inventory = if req.inventory_json.is_empty() {
            None
        } else {
            if req.inventory_json.len() > crate::event::MAX_INVENTORY_VIEW {
                return Err(Status::invalid_argument(format!(
                    "inventory_json is {} bytes; at most {} are accepted",
                    req.inventory_json.len(),
                    crate::event::MAX_INVENTORY_VIEW
                )));
            }
            let view: crate::event::InventoryView = serde_json::from_str(&req.inventory_json)
                .map_err(|e| Status::invalid_argument(format!("inventory_json: {e}")))?;
            view.validate()
                .map_err(|e| Status::invalid_argument(format!("inventory_json: {e}")))?;
            Some(view)
        };
        let tx_req = TxRequest {
            txid: (!req.txid.is_empty()).then_some(req.txid),
            files,
            flags: crate::event::RunFlags {
                tags: req.tags,
                skip_tags: req.skip_tags,
                force_handlers: req.force_handlers,
                diff: req.diff,
                roles_path: Vec::new(),
                inventory,
            },
            playbook_name: if req.playbook_name.is_empty() {
                "playbook.yml".to_string()
            } else {
                req.playbook_name
            },
            playbook: req.playbook,
            vars,
            check: req.check,
            base_dir: None,
            lock_timeout: if req.lock_timeout_ms == 0 {
                DEFAULT_LOCK_TIMEOUT
            } else {
                Duration::from_millis(req.lock_timeout_ms)
            },
        };
        let host = self.host.clone();
        let templar = self.templar.clone();
        let registry = self.live.clone();
        let must_restart = self.must_restart.clone();
        let finished = self.finished.clone();
        // Prepared and started in one blocking task: a client that goes away while this call
        // waits (its future dropped) cannot leave a journal begun and never run under a live
        // agent; once `prepare` took the lock and began the journal, the transaction runs.
        let live = tokio::task::spawn_blocking(move || {
            let prepared = transaction::prepare(&host, &templar, tx_req)?;
            Ok::<_, TxError>(start_transaction(
                host,
                templar,
                prepared,
                registry,
                must_restart,
                finished,
            ))
        })
        .await
        .map_err(|e| Status::internal(format!("transaction setup panicked: {e}")))?
        .map_err(|e| status_of(&e))?
        .map_err(|e| Status::internal(format!("cannot start the transaction thread: {e}")))?;
        Ok(Response::new(watch_stream(live, 0)))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        if let Some(live) = self.live(&req.txid) {
            return Ok(Response::new(watch_stream(live, req.from_seq)));
        }
        let host = self.host.clone();
        let txid = req.txid.clone();
        let read = tokio::task::spawn_blocking(move || transaction::read_entries(&host, &txid))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| status_of(&e))?;
        match read {
            Some(entries) => Ok(Response::new(replay_stream(entries, req.from_seq))),
            None => Err(Status::not_found(format!(
                "no transaction {} on this host",
                req.txid
            ))),
        }
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let txid = request.into_inner().txid;
        let entries = match self.live(&txid) {
            Some(live) => live.snapshot(),
            None => {
                let host = self.host.clone();
                let t = txid.clone();
                let read =
                    tokio::task::spawn_blocking(move || transaction::read_entries(&host, &t))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(|e| status_of(&e))?;
                match read {
                    Some(entries) => entries,
                    None => {
                        return Err(Status::not_found(format!(
                            "no transaction {txid} on this host"
                        )));
                    }
                }
            }
        };
        Ok(Response::new(describe(&txid, &entries)))
    }

    async fn capture_state(
        &self,
        request: Request<pb::CaptureStateRequest>,
    ) -> Result<Response<pb::CaptureStateResponse>, Status> {
        use crate::modules::capture_state::{CaptureRequest, capture};
        let r = request.into_inner();
        let database = match r.database_json.trim() {
            "" => None,
            text => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Some(m),
                Ok(Value::Null) => None,
                _ => {
                    return Err(Status::invalid_argument(
                        "database_json must be a JSON object (the deploy's `database` variable) or empty",
                    ));
                }
            },
        };
        let state_dir = self.host.state_dir.clone();
        let state = tokio::task::spawn_blocking(move || {
            let request = CaptureRequest {
                components: &r.components,
                services: &r.services,
                database: database.as_ref(),
                base_dir: None,
                txid: "",
            };
            request.check()?;
            Ok::<_, String>(capture(&state_dir, &request))
        })
        .await
        .map_err(|e| Status::internal(format!("state capture failed: {e}")))?
        .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::CaptureStateResponse {
            state_json: state.to_string(),
        }))
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let component = request.into_inner().component;
        let state_dir = self.host.state_dir.clone();
        let list = tokio::task::spawn_blocking(move || {
            let c = (!component.is_empty()).then_some(component.as_str());
            crate::modules::release::list(&state_dir, c)
        })
        .await
        .map_err(|e| Status::internal(format!("listing releases failed: {e}")))?
        .map_err(Status::invalid_argument)?;
        let releases = list
            .into_iter()
            .map(|r| pb::Release {
                component: r.component,
                version: r.version,
                artifact_sha256: r.artifact_sha256.unwrap_or_default(),
                current: r.current,
                failed: r.failed,
                staged: r.staged_at.as_deref().and_then(timestamp),
            })
            .collect();
        Ok(Response::new(pb::ListReleasesResponse { releases }))
    }

    async fn has_artifact(
        &self,
        request: Request<pb::HasArtifactRequest>,
    ) -> Result<Response<pb::HasArtifactResponse>, Status> {
        let digest = request.into_inner().sha256;
        artifacts::validate_hex(&digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let size = artifacts::has(&self.host.state_dir, &digest);
        if size.is_some() {
            // Just used: a prune of the cache spares artifacts newer than its transaction's
            // start, so the `Run` this lookup precedes still finds it. Best effort: a failure
            // only loses that protection.
            if let Err(e) = artifacts::touch(&self.host.state_dir, &digest) {
                tracing::warn!(artifact = %digest, "{e}");
            }
        }
        Ok(Response::new(pb::HasArtifactResponse {
            present: size.is_some(),
            size: size.unwrap_or(0),
        }))
    }

    async fn put_artifact(
        &self,
        request: Request<tonic::Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::PutArtifactResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("PutArtifact received no chunk"));
        };
        let expected = first.sha256.clone();
        artifacts::validate_hex(&expected)
            .map_err(|e| Status::invalid_argument(format!("first chunk: {e}")))?;
        if let Some(size) = artifacts::has(&self.host.state_dir, &expected) {
            // Known digest: the upload is skipped; the client may stop sending.
            return Ok(Response::new(pb::PutArtifactResponse {
                sha256: expected,
                size,
                already_present: true,
            }));
        }
        let artifact_error = |e: artifacts::ArtifactError| match e {
            artifacts::ArtifactError::Io { .. } => Status::internal(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        };
        let declared = first.size;
        let mut upload =
            tokio::task::block_in_place(|| artifacts::Upload::new(&self.host.state_dir))
                .map_err(artifact_error)?;
        tokio::task::block_in_place(|| upload.write(&first.data)).map_err(artifact_error)?;
        // Every chunk is written as it arrives; a broken stream drops the upload, which removes
        // its temporary file.
        while let Some(chunk) = stream.message().await? {
            tokio::task::block_in_place(|| upload.write(&chunk.data)).map_err(artifact_error)?;
        }
        if declared != 0 && upload.size() != declared {
            return Err(Status::invalid_argument(format!(
                "artifact {expected}: received {} bytes, the first chunk declared {declared}",
                upload.size()
            )));
        }
        let cached = tokio::task::spawn_blocking(move || upload.finish(&expected))
            .await
            .map_err(|e| Status::internal(format!("artifact upload task failed: {e}")))?
            .map_err(artifact_error)?;
        Ok(Response::new(pb::PutArtifactResponse {
            sha256: cached.sha256,
            size: cached.size,
            already_present: cached.already_present,
        }))
    }

    async fn list_forensics(
        &self,
        request: Request<pb::ListForensicsRequest>,
    ) -> Result<Response<pb::ListForensicsResponse>, Status> {
        let limit = request.into_inner().limit as usize;
        let dir = self.forensics_dir();
        let list = tokio::task::spawn_blocking(move || forensics::list_bundles(&dir, limit))
            .await
            .map_err(|e| Status::internal(format!("listing forensics bundles failed: {e}")))?
            .map_err(|e| Status::internal(format!("cannot list forensics bundles: {e}")))?;
        let bundles = list
            .into_iter()
            .map(|b| pb::ForensicsBundle {
                recorded: b.recorded.map(|t| prost_types::Timestamp {
                    seconds: t.timestamp(),
                    nanos: t.timestamp_subsec_nanos() as i32,
                }),
                id: b.id,
                txid: b.txid,
                failed_version: b.failed_version,
                restored_version: b.restored_version,
                size: b.size,
            })
            .collect();
        Ok(Response::new(pb::ListForensicsResponse { bundles }))
    }

    async fn check_state(
        &self,
        request: Request<pb::CheckStateRequest>,
    ) -> Result<Response<pb::CheckStateResponse>, Status> {
        let req = request.into_inner();
        let expected = expectations(&req).map_err(Status::invalid_argument)?;
        let report = self.check_now(expected).await?;
        Ok(Response::new(report_to_proto(&report)))
    }

    async fn get_forensics(
        &self,
        request: Request<pb::GetForensicsRequest>,
    ) -> Result<Response<Self::GetForensicsStream>, Status> {
        let id = request.into_inner().id;
        forensics::check_bundle_id(&id).map_err(Status::invalid_argument)?;
        let dir = self.forensics_dir();
        if !std::fs::symlink_metadata(dir.join(&id)).is_ok_and(|m| m.is_dir()) {
            return Err(Status::not_found(format!(
                "no forensics bundle {id} in {}",
                dir.display()
            )));
        }
        let (tx, rx) = mpsc::channel(FORENSICS_CHUNKS_BUFFERED);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(FORENSICS_CHUNK),
            };
            let result = forensics::write_tar_gz(&dir, &id, &mut out).and_then(|()| out.flush());
            if let Err(e) = result {
                // A client that went away is not an error worth reporting to it.
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "cannot archive forensics bundle {id}: {e}"
                ))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Bytes per `DataChunk` of a forensics bundle.
const FORENSICS_CHUNK: usize = 64 * 1024;
/// Chunks buffered between the archiving thread and the client.
const FORENSICS_CHUNKS_BUFFERED: usize = 4;

/// Sends what is written to it as 64 KiB `DataChunk`s; fails once the client is gone.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::DataChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(FORENSICS_CHUNK));
        self.tx
            .blocking_send(Ok(pb::DataChunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(FORENSICS_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FORENSICS_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A transaction's state from its entries: it runs until its `end` record is written (an
/// unfinished journal with no live transaction is one the next start-up recovers).
fn describe(txid: &str, entries: &[Entry]) -> pb::Transaction {
    let mut t = pb::Transaction {
        txid: txid.to_string(),
        running: !entries
            .iter()
            .any(|e| matches!(e.record, Record::End { .. })),
        last_seq: entries.last().map_or(0, |e| e.seq),
        ..Default::default()
    };
    let mut recap = Recap::default();
    for e in entries {
        match &e.record {
            Record::Begin { playbook_name, .. } => {
                t.playbook_name.clone_from(playbook_name);
                t.started = timestamp(&e.time);
            }
            Record::TaskEnd { status, result, .. } => recap.count(*status, result),
            Record::Recovery { .. } => t.recovered = true,
            Record::End {
                outcome, recap: r, ..
            } => {
                t.outcome = outcome_to_proto(*outcome) as i32;
                recap = *r;
                t.finished = timestamp(&e.time);
            }
            _ => {}
        }
    }
    t.recap = Some(recap_to_proto(recap));
    t
}

fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

fn section_to_proto(s: Section) -> pb::Section {
    match s {
        Section::Block => pb::Section::Block,
        Section::Rescue => pb::Section::Rescue,
        Section::Always => pb::Section::Always,
    }
}

fn section_from_proto(v: i32) -> Section {
    match pb::Section::try_from(v) {
        Ok(pb::Section::Rescue) => Section::Rescue,
        Ok(pb::Section::Always) => Section::Always,
        _ => Section::Block,
    }
}

/// Writes the two conversions between a domain enum and its protobuf enum (same variant names;
/// the protobuf's `Unspecified` reads as `None`), so the pair cannot drift apart.
macro_rules! proto_enum {
    ($vis:vis fn $to:ident, fn $from:ident: $domain:ident <-> $proto:ident { $($v:ident),+ $(,)? }) => {
        /// The protobuf form.
        $vis fn $to(x: $domain) -> pb::$proto {
            match x {
                $($domain::$v => pb::$proto::$v,)+
            }
        }

        fn $from(v: i32) -> Option<$domain> {
            Some(match pb::$proto::try_from(v).ok()? {
                $(pb::$proto::$v => $domain::$v,)+
                pb::$proto::Unspecified => return None,
            })
        }
    };
}

proto_enum!(fn status_to_proto, fn status_from_proto: TaskStatus <-> TaskStatus {
    Ok, Changed, Failed, Skipped, Ignored,
});
proto_enum!(pub fn outcome_to_proto, fn outcome_from_proto: Outcome <-> Outcome {
    Succeeded, RolledBack, RollbackFailed, Failed, CheckOnly,
});

fn recap_to_proto(r: Recap) -> pb::Recap {
    pb::Recap {
        ok: r.ok,
        changed: r.changed,
        failed: r.failed,
        skipped: r.skipped,
        rescued: r.rescued,
        ignored: r.ignored,
    }
}

fn recap_from_proto(r: Option<pb::Recap>) -> Recap {
    let r = r.unwrap_or_default();
    Recap {
        ok: r.ok,
        changed: r.changed,
        failed: r.failed,
        skipped: r.skipped,
        rescued: r.rescued,
        ignored: r.ignored,
    }
}

/// A journal entry as a protobuf event (uncensored results never leave the host).
pub fn to_proto(e: &Entry) -> pb::TransactionEvent {
    use pb::transaction_event::Kind;
    let kind = match &e.record {
        Record::Begin {
            playbook_name,
            check,
            host,
            pid,
            ..
        } => Kind::Started(pb::TransactionStarted {
            playbook_name: playbook_name.clone(),
            host: host.clone(),
            check: *check,
            pid: *pid,
        }),
        Record::PlayStart { index, name } => Kind::PlayStarted(pb::PlayStarted {
            index: *index as u32,
            name: name.clone(),
        }),
        Record::TaskStart {
            path,
            section,
            name,
            action,
        } => Kind::TaskStarted(pb::TaskStarted {
            path: path.clone(),
            section: section_to_proto(*section) as i32,
            name: name.clone(),
            action: action.clone(),
        }),
        Record::TaskRetry {
            path,
            name,
            retries_left,
            result,
        } => Kind::TaskRetrying(pb::TaskRetrying {
            path: path.clone(),
            name: name.clone(),
            retries_left: *retries_left,
            result_json: result.to_string(),
        }),
        Record::TaskProgress { path, name, data } => Kind::TaskProgress(pb::TaskProgress {
            path: path.clone(),
            name: name.clone(),
            data_json: data.to_string(),
        }),
        Record::TaskEnd {
            path,
            section,
            name,
            action,
            status,
            result,
            duration_ms,
            ..
        } => Kind::TaskFinished(pb::TaskFinished {
            path: path.clone(),
            section: section_to_proto(*section) as i32,
            name: name.clone(),
            action: action.clone(),
            status: status_to_proto(*status) as i32,
            result_json: result.to_string(),
            duration_ms: *duration_ms,
        }),
        Record::Recovery {
            interrupted_path,
            interrupted_section,
            action,
            torn_tail,
            pid,
            ..
        } => Kind::Recovery(pb::RecoveryStarted {
            interrupted_path: interrupted_path.clone().unwrap_or_default(),
            interrupted_section: interrupted_section.map_or(0, |s| section_to_proto(s) as i32),
            action: action.clone(),
            torn_tail: torn_tail.clone().unwrap_or_default(),
            pid: *pid,
        }),
        Record::End {
            outcome,
            recap,
            recovered,
        } => Kind::Finished(pb::TransactionFinished {
            outcome: outcome_to_proto(*outcome) as i32,
            recap: Some(recap_to_proto(*recap)),
            recovered: *recovered,
        }),
    };
    pb::TransactionEvent {
        seq: e.seq,
        txid: e.txid.clone(),
        time: timestamp(&e.time),
        kind: Some(kind),
    }
}

/// A protobuf event back into a journal entry, for clients that render events (the CLI).
/// Fields a client never receives (the playbook text, uncensored results) stay empty.
pub fn from_proto(ev: pb::TransactionEvent) -> Result<Entry, String> {
    use pb::transaction_event::Kind;
    let json = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.to_string()));
    let record = match ev.kind.ok_or("event without a kind")? {
        Kind::Started(s) => Record::Begin {
            playbook_name: s.playbook_name,
            playbook: String::new(),
            vars: Map::new(),
            check: s.check,
            host: s.host,
            pid: s.pid,
            base_dir: None,
            flags: Default::default(),
        },
        Kind::PlayStarted(p) => Record::PlayStart {
            index: p.index as usize,
            name: p.name,
        },
        Kind::TaskStarted(t) => Record::TaskStart {
            path: t.path,
            section: section_from_proto(t.section),
            name: t.name,
            action: t.action,
        },
        Kind::TaskRetrying(t) => Record::TaskRetry {
            path: t.path,
            name: t.name,
            retries_left: t.retries_left,
            result: json(&t.result_json),
        },
        Kind::TaskProgress(t) => Record::TaskProgress {
            path: t.path,
            name: t.name,
            data: json(&t.data_json),
        },
        Kind::TaskFinished(t) => Record::TaskEnd {
            path: t.path,
            section: section_from_proto(t.section),
            name: t.name,
            action: t.action,
            status: status_from_proto(t.status).ok_or("task event without a status")?,
            result: json(&t.result_json),
            duration_ms: t.duration_ms,
            private_result: None,
        },
        Kind::Recovery(r) => Record::Recovery {
            interrupted_path: (!r.interrupted_path.is_empty()).then_some(r.interrupted_path),
            interrupted_section: (r.interrupted_section != 0)
                .then(|| section_from_proto(r.interrupted_section)),
            action: r.action,
            rerun_section: None,
            torn_tail: (!r.torn_tail.is_empty()).then_some(r.torn_tail),
            pid: r.pid,
        },
        Kind::Finished(f) => Record::End {
            outcome: outcome_from_proto(f.outcome).ok_or("finished event without an outcome")?,
            recap: recap_from_proto(f.recap),
            recovered: f.recovered,
        },
    };
    let time = ev
        .time
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    Ok(Entry {
        seq: ev.seq,
        txid: ev.txid,
        time,
        record,
    })
}

/// Serves the agent on `listener` until `shutdown` completes, in plaintext (see [`serve_tls`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: AgentService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_tls(listener, service, shutdown, None).await
}

/// How the agent serves mutual TLS: the rustls configuration
/// ([`rampart_rpc::tls::server_mutual`]: the handshake admits only client certificates a trusted
/// CA signed for client use) and the client identities let in past it.
#[derive(Debug, Clone)]
pub struct TlsServing {
    /// Certificate, key and client CAs.
    pub config: tonic::transport::ServerTlsConfig,
    /// The client identities (`--controller-identity`) every call must present.
    pub trusted: Trusted,
}

/// Serves the agent on `listener` until `shutdown` completes: over TLS when `tls` is given (a
/// client whose handshake fails never reaches a service, and every call of every service,
/// health included, passes [`authorize`] first), else plaintext.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    service: AgentService,
    shutdown: impl std::future::Future<Output = ()> + Send,
    tls: Option<TlsServing>,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder();
    let mut trusted = None;
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config)?;
        trusted = Some(Arc::new(tls.trusted));
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<AgentService>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // One layer around the whole router: no RPC, present or future, can skip the check.
    let check = move |req: Request<()>| match &trusted {
        Some(t) => authorize(t, req),
        None => Ok(req),
    };
    builder
        .layer(tonic::service::InterceptorLayer::new(check))
        .add_service(health_service)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// Lets a call in when the client's TLS certificate carries a trusted identity; else
/// `PERMISSION_DENIED` naming the identities it presented (bounded), logged at warn with the
/// client's address. The handshake already checked the CA and the clientAuth usage.
pub fn authorize(trusted: &Trusted, req: Request<()>) -> Result<Request<()>, Status> {
    let presented = match req.peer_certs() {
        Some(chain) => match chain.first() {
            Some(leaf) => identity::sans(leaf),
            None => Err("no client certificate".to_string()),
        },
        None => Err("no client certificate".to_string()),
    };
    let shown = match &presented {
        Ok(sans) if trusted.admits(sans) => return Ok(req),
        Ok(sans) => identity::describe(sans),
        Err(e) => e.clone(),
    };
    let peer = req
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string());
    tracing::warn!(%peer, identity = %shown, "refused a client: no trusted identity");
    Err(Status::permission_denied(format!(
        "this agent does not let in the client identity {shown}: it accepts only certificates \
         carrying one of its --controller-identity values (`rampart certs init` gives \
         controller.pem {}; agent certificates are not clients)",
        identity::CONTROLLER_IDENTITY
    )))
}
