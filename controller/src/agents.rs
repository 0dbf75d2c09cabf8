//! The controller's side of the agents: one gRPC channel per inventory host and agent address
//! (mutual TLS unless `insecure_dev`), artifact delivery, and one host transaction followed to
//! its end — started, or re-attached with `Watch` from the last event the controller stored.
//!
//! Over TLS the agent's certificate must name the inventory host (a DNS SAN, or an IP SAN for a
//! host named by its address; see [`rampart_rpc::identity`]), whatever address the inventory
//! gives: an address that serves another host's agent is refused, and not retried.
//!
//! A broken stream is retried for the environment's `unreachable_after`; past that the host is
//! `unreachable`. Its agent's journal still finishes the transaction when the agent comes back,
//! and the fleet rescue re-attaches to learn how it ended.
//!
//! A stopped agent (SIGSTOP, a hung host) is not a broken stream: its kernel still accepts
//! connections and buffers requests, and nothing answers. So every call before and while a
//! transaction starts — the connection with its TLS handshake, `Run`'s and `Watch`'s first
//! answer, and (in the host job) the state capture and artifact check — is bounded by
//! `unreachable_after` ([`answered`]); past it the host is `unreachable` on time, not when the
//! freeze ends. A stream already flowing is left to the HTTP/2 keepalive (~10 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_rpc::retry::{self, Attempt, GaveUp};
use rampart_rpc::tls::TlsFiles;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::artifact_store::ArtifactStore;

/// How many artifact uploads to agents run at once. Each holds a read buffer and a few chunks
/// in flight (about 200 KiB); unbounded, 200 hosts took 250 MB of controller memory.
pub const PARALLEL_UPLOADS: usize = 8;
/// Size of one uploaded chunk.
const CHUNK: usize = 64 << 10;

/// Agent channels, by inventory host and address.
#[derive(Debug)]
pub struct Agents {
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<(String, String), Channel>>,
    uploads: tokio::sync::Semaphore,
}

/// A gRPC client of one agent.
pub type Client = AgentClient<Channel>;

impl Agents {
    /// Channels with mutual TLS from `tls`, or plaintext when `None` (`insecure_dev`).
    pub fn new(tls: Option<&TlsFiles>) -> Result<Agents, String> {
        let tls = match tls {
            Some(f) => Some(rampart_rpc::tls::client_mutual(f)?),
            None => None,
        };
        Ok(Agents {
            tls,
            channels: Mutex::new(HashMap::new()),
            uploads: tokio::sync::Semaphore::new(PARALLEL_UPLOADS),
        })
    }

    /// A client of inventory host `host`'s agent at `addr` (`HOST:PORT`), connecting when there
    /// is no channel yet; over TLS the agent's certificate must name `host`.
    pub async fn client(&self, host: &str, addr: &str) -> Result<Client, String> {
        self.connect(host, addr).await.map_err(|e| e.message)
    }

    async fn connect(&self, host: &str, addr: &str) -> Result<Client, ConnectError> {
        let key = (host.to_string(), addr.to_string());
        if let Some(ch) = self.channels.lock().expect("agent channels").get(&key) {
            return Ok(wrap(ch.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| ConnectError::lasting(format!("bad agent address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            // A host that vanishes without closing its sockets is noticed within ~10 s.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            // The name verified is the inventory's host, not the address's.
            ep = ep
                .tls_config(tls.clone().domain_name(host))
                .map_err(|e| ConnectError::lasting(format!("TLS settings for {addr}: {e}")))?;
        }
        let ch = ep.connect().await.map_err(|e| {
            let chain = error_chain(&e);
            if wrong_host(&chain) {
                ConnectError::lasting(not_this_host(host, addr, &chain))
            } else {
                ConnectError {
                    message: format!("cannot reach the agent at {addr}: {chain}"),
                    lasting: false,
                }
            }
        })?;
        self.channels
            .lock()
            .expect("agent channels")
            .insert(key, ch.clone());
        Ok(wrap(ch))
    }

    /// Forgets the channels to `addr`, so the next call connects afresh.
    pub fn forget(&self, addr: &str) {
        self.channels
            .lock()
            .expect("agent channels")
            .retain(|(_, a), _| a != addr);
    }

    /// A client, retried (1 s apart) until `within` has passed, each try (TLS handshake
    /// included) bounded by what is left of `within`; an agent that is not `host` is not
    /// retried.
    pub async fn client_within(
        &self,
        host: &str,
        addr: &str,
        within: Duration,
    ) -> Result<Client, String> {
        let deadline = Instant::now() + within;
        let attempt = || async {
            // A stopped agent still accepts TCP connections (its listening socket stays), but
            // never completes the TLS handshake: only this bound notices it.
            match tokio::time::timeout_at(deadline.into(), self.connect(host, addr)).await {
                Ok(Ok(c)) => Attempt::Done(c),
                Ok(Err(e)) if e.lasting => Attempt::Stop(e.message),
                Ok(Err(e)) => Attempt::<_, String>::Again(e.message),
                Err(_) => Attempt::Again(format!(
                    "the agent at {addr} accepted a connection but did not complete the handshake within {within:?} (stopped, or overloaded)"
                )),
            }
        };
        match retry::until(deadline, Duration::from_secs(1), true, attempt).await {
            Ok(c) => Ok(c),
            Err(GaveUp::Stopped(last) | GaveUp::TimedOut(last)) => Err(last),
        }
    }
}

/// Why a connection to an agent failed, and whether trying again can help.
#[derive(Debug)]
struct ConnectError {
    message: String,
    lasting: bool,
}

impl ConnectError {
    fn lasting(message: String) -> Self {
        ConnectError {
            message,
            lasting: true,
        }
    }
}

/// What a failed call to `host`'s agent at `addr` tells the operator: the status's message, or,
/// when a reconnection refused the agent's certificate for not naming `host`, what to do.
pub fn call_error(host: &str, addr: &str, s: &tonic::Status) -> String {
    let text = match std::error::Error::source(s) {
        Some(source) => format!("{}: {}", s.message(), error_chain(source)),
        None => s.message().to_string(),
    };
    if wrong_host(&text) {
        not_this_host(host, addr, &text)
    } else {
        s.message().to_string()
    }
}

/// The refusal of an agent whose certificate does not name inventory host `host`.
fn not_this_host(host: &str, addr: &str, detail: &str) -> String {
    format!(
        "the agent at {addr} is not host {host}: its certificate does not name {host} \
         ({detail}); point {host}'s rampart_agent/ansible_host in the inventory at {host}'s \
         agent, or give that agent a certificate for {host} (`rampart certs init DIR --agent \
         {host}`)"
    )
}

/// Whether a connect error is rustls refusing the certificate for the name asked for (rustls's
/// `CertificateError::NotValidForName*` display: "certificate not valid for name ...").
fn wrong_host(chain: &str) -> bool {
    chain.contains("not valid for name")
}

fn wrap(ch: Channel) -> Client {
    AgentClient::new(ch)
        .max_decoding_message_size(rampart_rpc::MAX_MESSAGE)
        .max_encoding_message_size(rampart_rpc::MAX_MESSAGE)
}

pub use rampart_rpc::{error_chain, is_transport};

/// Puts an artifact of the controller's store on the agent (the caller asked `HasArtifact`
/// first, bounded by the host's `unreachable_after`). With PostgreSQL, a controller that did
/// not receive the artifact reads it from the shared store into its cache first, verified
/// ([`ArtifactStore::local_copy`]).
pub async fn put_artifact(
    agents: &Agents,
    client: &mut Client,
    store: &Arc<ArtifactStore>,
    sha256: &str,
) -> Result<(), String> {
    let _permit = agents
        .uploads
        .acquire()
        .await
        .map_err(|e| format!("upload slots closed: {e}"))?;
    let (s, sha) = (store.clone(), sha256.to_owned());
    let path = tokio::task::spawn_blocking(move || s.local_copy(&sha))
        .await
        .map_err(|e| format!("fetching artifact {sha256}: {e}"))??;
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("artifact {sha256} is not in the controller's store: {e}"))?
        .len();
    let (tx, rx) = mpsc::channel::<pb::ArtifactChunk>(2);
    let digest = sha256.to_string();
    let feeder = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&path).await?;
        let mut first = true;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 && !first {
                break;
            }
            let chunk = pb::ArtifactChunk {
                sha256: if first { digest.clone() } else { String::new() },
                size: if first { size } else { 0 },
                data: buf[..n].to_vec(),
            };
            first = false;
            if tx.send(chunk).await.is_err() || n == 0 {
                break;
            }
        }
        std::io::Result::Ok(())
    });
    let r = client
        .put_artifact(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("PutArtifact {sha256}: {}", s.message()))?;
    feeder
        .await
        .map_err(|e| format!("reading artifact {sha256}: {e}"))?
        .map_err(|e| format!("reading artifact {sha256}: {e}"))?;
    let r = r.into_inner();
    if r.sha256 != sha256 {
        return Err(format!(
            "the agent stored {} for artifact {sha256}",
            r.sha256
        ));
    }
    Ok(())
}

/// How following a transaction ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TxEnd {
    /// The transaction finished with this outcome.
    Finished(pb::Outcome),
    /// The agent could not be reached for `unreachable_after`, or the deadline passed.
    Unreachable(String),
    /// The agent refused the transaction (bad playbook, host lock held, ...).
    Refused(String),
}

/// Where to start following.
#[derive(Debug, Clone)]
pub enum Start {
    /// Start the transaction (or re-attach if the agent has it already).
    Run(pb::RunRequest),
    /// Re-attach from this agent sequence number.
    Watch(u64),
}

/// Runs or re-attaches to transaction `txid` on `host`'s agent at `addr` and follows it to its
/// end, passing every event with `seq >= from` to `events`. Bounded by `deadline` overall and by
/// `unreachable_after` for each loss of the agent.
#[allow(clippy::too_many_arguments)]
pub async fn follow(
    agents: &Agents,
    host: &str,
    addr: &str,
    txid: &str,
    start: Start,
    unreachable_after: Duration,
    deadline: Instant,
    events: &mpsc::Sender<pb::TransactionEvent>,
) -> TxEnd {
    let (mut next_seq, mut run_req) = match start {
        Start::Run(r) => (0, Some(r)),
        Start::Watch(s) => (s, None),
    };
    // Bounded: every pass either streams until the end or spends at least a second reconnecting,
    // and the deadline stops it.
    let max_passes = 10_000;
    for _ in 0..max_passes {
        if Instant::now() >= deadline {
            return TxEnd::Unreachable(format!("transaction {txid} on {addr} missed its deadline"));
        }
        let mut client = match agents.client_within(host, addr, unreachable_after).await {
            Ok(c) => c,
            Err(e) => {
                agents.forget(addr);
                return TxEnd::Unreachable(e);
            }
        };
        let stream = match run_req.take() {
            Some(req) => match answered(unreachable_after, client.run(req.clone())).await {
                // No answer at all: the agent is stopped (SIGSTOP, a hung host) with its sockets
                // open. Whether it took the transaction is unknown; the fleet rescue awaits it.
                None => {
                    agents.forget(addr);
                    return TxEnd::Unreachable(format!(
                        "the agent at {addr} did not answer Run of transaction {txid} within {unreachable_after:?}; if it took the transaction, its journal finishes it when it runs again"
                    ));
                }
                Some(Ok(s)) => Ok(s.into_inner()),
                Some(Err(s)) if s.code() == Code::AlreadyExists => {
                    // Started before (by this deployment): follow it instead of running it twice.
                    watch_within(&mut client, txid, next_seq, unreachable_after).await
                }
                Some(Err(s)) if is_transport(&s) => {
                    // The agent may or may not have journaled it: `Watch` tells.
                    lost(
                        agents,
                        host,
                        addr,
                        txid,
                        next_seq,
                        unreachable_after,
                        Some(req),
                        &mut run_req,
                    )
                    .await
                }
                Some(Err(s)) => return TxEnd::Refused(s.message().to_string()),
            },
            None => watch_within(&mut client, txid, next_seq, unreachable_after).await,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(s) if s.code() == Code::NotFound && run_req.is_some() => continue,
            Err(s) if s.code() == Code::NotFound => {
                return TxEnd::Refused(format!(
                    "the agent at {addr} has no transaction {txid}: {}",
                    s.message()
                ));
            }
            Err(s) => {
                agents.forget(addr);
                match wait_reachable(agents, host, addr, txid, unreachable_after).await {
                    Ok(()) => continue,
                    Err(()) => {
                        return TxEnd::Unreachable(format!(
                            "lost the agent at {addr} during transaction {txid} ({}); its journal finishes the transaction when it runs again",
                            s.message()
                        ));
                    }
                }
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Err(_) => {
                    return TxEnd::Unreachable(format!(
                        "transaction {txid} on {addr} missed its deadline"
                    ));
                }
                Ok(Ok(Some(ev))) => {
                    if ev.seq < next_seq {
                        continue;
                    }
                    next_seq = ev.seq + 1;
                    let end = match &ev.kind {
                        Some(pb::transaction_event::Kind::Finished(f)) => Some(f.outcome()),
                        _ => None,
                    };
                    let _ = events.send(ev).await;
                    if let Some(o) = end {
                        return TxEnd::Finished(o);
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    agents.forget(addr);
                    match wait_reachable(agents, host, addr, txid, unreachable_after).await {
                        Ok(()) => break,
                        Err(()) => {
                            return TxEnd::Unreachable(format!(
                                "lost the agent at {addr} at event {next_seq} of transaction {txid}; its journal finishes the transaction when it runs again"
                            ));
                        }
                    }
                }
            }
        }
    }
    TxEnd::Unreachable(format!("gave up following {txid} on {addr}"))
}

/// `call`'s result, or `None` when the agent has not answered within `within`. A stopped agent
/// (SIGSTOP, a hung host) keeps its sockets open, so a call to it hangs until the HTTP/2
/// keepalive gives up (~10 s) or forever (a handshake): every call before and while a
/// transaction starts goes through this bound.
pub async fn answered<T>(
    within: Duration,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::time::timeout(within, call).await.ok()
}

/// `Watch` of `txid` from `from_seq`; an agent that does not answer within `within` is reported
/// as unavailable.
async fn watch_within(
    client: &mut Client,
    txid: &str,
    from_seq: u64,
    within: Duration,
) -> Result<tonic::Streaming<pb::TransactionEvent>, tonic::Status> {
    let call = client.watch(pb::WatchRequest {
        txid: txid.to_string(),
        from_seq,
    });
    match answered(within, call).await {
        Some(r) => r.map(tonic::Response::into_inner),
        None => Err(tonic::Status::unavailable(format!(
            "no answer to Watch of {txid} within {within:?}"
        ))),
    }
}

/// After `Run` failed in transport: finds out whether the agent journaled it.
#[allow(clippy::too_many_arguments)]
async fn lost(
    agents: &Agents,
    host: &str,
    addr: &str,
    txid: &str,
    from_seq: u64,
    within: Duration,
    req: Option<pb::RunRequest>,
    run_req: &mut Option<pb::RunRequest>,
) -> Result<tonic::Streaming<pb::TransactionEvent>, tonic::Status> {
    agents.forget(addr);
    let deadline = Instant::now() + within;
    let attempt = || async {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(Ok(mut c)) = answered(left, agents.client(host, addr)).await else {
            return Attempt::Again(String::new());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match watch_within(&mut c, txid, from_seq, left).await {
            Ok(s) => Attempt::Done(s),
            // Never journaled: running it now cannot run it twice.
            Err(s) if s.code() == Code::NotFound => Attempt::Stop(s),
            Err(s) => {
                agents.forget(addr);
                Attempt::Again(s.message().to_string())
            }
        }
    };
    match retry::until(deadline, Duration::from_secs(1), true, attempt).await {
        Ok(s) => Ok(s),
        Err(GaveUp::Stopped(s)) => {
            *run_req = req;
            Err(s)
        }
        Err(GaveUp::TimedOut(last)) if last.is_empty() => Err(tonic::Status::unavailable(format!(
            "agent at {addr} unreachable"
        ))),
        Err(GaveUp::TimedOut(last)) => Err(tonic::Status::unavailable(last)),
    }
}

/// Waits until the agent answers `GetTransaction(txid)` again, for at most `within`.
async fn wait_reachable(
    agents: &Agents,
    host: &str,
    addr: &str,
    txid: &str,
    within: Duration,
) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    let attempt = || async {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(Ok(mut c)) = answered(left, agents.client(host, addr)).await {
            let left = deadline.saturating_duration_since(Instant::now());
            let call = c.get_transaction(pb::GetTransactionRequest {
                txid: txid.to_string(),
            });
            if let Some(Ok(_)) = answered(left, call).await {
                return Attempt::Done(());
            }
        }
        agents.forget(addr);
        Attempt::<(), ()>::Again(String::new())
    };
    retry::until(deadline, Duration::from_millis(250), true, attempt)
        .await
        .map_err(|_| ())
}

/// The forensics bundle a transaction recorded on the agent, if any.
pub async fn forensics_of(client: &mut Client, txid: &str) -> Option<String> {
    let list = client
        .list_forensics(pb::ListForensicsRequest { limit: 50 })
        .await
        .ok()?
        .into_inner();
    list.bundles
        .into_iter()
        .find(|b| b.txid == txid)
        .map(|b| b.id)
}
