//! `rampart run`: one playbook as one transaction, in-process (`--local`) or on an agent over
//! gRPC (`--agent`). Both paths print the same output and exit with the same codes.
//!
//! Over gRPC the CLI follows the transaction's event stream; if the stream breaks (the agent
//! restarted, the network blinked) it calls `Watch` from the last sequence number it printed, for
//! up to `--reconnect-timeout`, so nothing is missed or printed twice.
//!
//! With TLS files (`--tls-cert/--tls-key/--tls-ca`) the CLI connects over mutual TLS: it presents
//! its certificate (the controller's: the agent lets in only a client certificate carrying an
//! identity it trusts) and accepts only an agent whose certificate a trusted CA signed for the
//! name in `--agent`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_agent::error::{LockError, TxError};
use rampart_agent::event::{Entry, Record, RunFlags};
use rampart_agent::journal::Durability;
use rampart_agent::server;
use rampart_agent::transaction::{self, HostConfig, TxRequest, TxSummary};
use rampart_playbook::template::Templar;
use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_rpc::retry::{self, Attempt, GaveUp};
use rampart_rpc::tls::{self, TlsFiles};
use rampart_rpc::{error_chain, is_transport as is_transport_error};
use serde_json::{Map, Value};
use tonic::Code;

use crate::error::CliError;
use crate::exit::Exit;
use crate::output::{Format, Renderer};

/// Where to run.
#[derive(Debug, Clone)]
pub enum Target {
    /// In this process, on this host.
    Local {
        /// State directory.
        state_dir: PathBuf,
        /// Journal durability.
        durability: Durability,
    },
    /// On an agent at this address (`host:port`, `http://host:port`, or `https://host:port` with
    /// `tls`).
    Agent {
        /// Address.
        addr: String,
        /// How long to keep trying to re-attach after the stream breaks.
        reconnect_timeout: Duration,
        /// Mutual TLS: the CLI's certificate and key, and the CAs that sign agents'. `None`:
        /// plaintext (an agent started with `--insecure-dev`).
        tls: Option<TlsFiles>,
    },
}

/// Everything `rampart run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The playbook file.
    pub playbook: PathBuf,
    /// Extra variables.
    pub vars: Map<String, Value>,
    /// Check mode.
    pub check: bool,
    /// Output format.
    pub format: Format,
    /// Where to run.
    pub target: Target,
    /// Host lock wait.
    pub lock_timeout: Duration,
    /// A txid to use.
    pub txid: Option<String>,
    /// With a local run: push its facts to this Pushgateway afterwards.
    pub push: Option<crate::push::Push>,
    /// Tags, handlers, diff, roles path.
    pub flags: RunFlags,
}

fn tx_error(e: TxError) -> CliError {
    match &e {
        TxError::Lock(LockError::Busy { .. }) => CliError {
            exit: Exit::LockTimeout,
            message: e.to_string(),
        },
        TxError::Playbook(p) => CliError::usage(p.to_string()),
        _ => CliError::usage(e.to_string()),
    }
}

/// Runs the playbook; returns the process exit code.
pub fn run(opts: RunOptions) -> Result<Exit, CliError> {
    let text = std::fs::read_to_string(&opts.playbook).map_err(|e| {
        CliError::usage(format!(
            "cannot read playbook {}: {e}",
            opts.playbook.display()
        ))
    })?;
    let name = opts.playbook.display().to_string();
    match &opts.target {
        Target::Local {
            state_dir,
            durability,
        } => run_local(&opts, state_dir, *durability, name, text),
        Target::Agent {
            addr,
            reconnect_timeout,
            tls,
        } => {
            // Bad TLS files are a usage error before anything else happens.
            let tls = tls
                .as_ref()
                .map(tls::client_mutual)
                .transpose()
                .map_err(CliError::usage)?;
            let agent = AgentAddr::new(addr, tls)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::usage(format!("cannot start the async runtime: {e}")))?;
            rt.block_on(run_agent(&opts, &agent, *reconnect_timeout, name, text))
        }
    }
}

fn run_local(
    opts: &RunOptions,
    state_dir: &Path,
    durability: Durability,
    name: String,
    text: String,
) -> Result<Exit, CliError> {
    let templar = Arc::new(Templar::with_lookups(Arc::new(
        rampart_agent::lookups::HostLookups,
    )));
    let mut host = HostConfig::new(state_dir);
    host.durability = durability;
    let mut out = Renderer::new(std::io::stdout().lock(), opts.format);
    let mut print = |e: &Entry| {
        // A closed stdout must not stop the transaction.
        let _ = out.entry(e);
    };
    // Finish whatever a crash left behind before starting something new.
    transaction::recover_all(&host, &templar, &mut print).map_err(tx_error)?;
    let req = TxRequest {
        txid: opts.txid.clone(),
        playbook_name: name,
        playbook: text,
        vars: opts.vars.clone(),
        check: opts.check,
        base_dir: opts
            .playbook
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
        flags: opts.flags.clone(),
        files: Vec::new(),
        lock_timeout: opts.lock_timeout,
    };
    let started = Instant::now();
    let tx = transaction::prepare(&host, &templar, req).map_err(tx_error)?;
    for e in &tx.initial {
        print(e);
    }
    let summary: TxSummary =
        transaction::execute(&host, &templar, tx, &mut print).map_err(tx_error)?;
    if let Some(push) = &opts.push {
        push_facts(push, &host, &summary, started.elapsed());
    }
    Ok(Exit::of_transaction(summary.outcome))
}

/// Pushes the run's facts and the host's (the agent's textfile metrics, the state check after
/// the run) to the Pushgateway. A failure is a warning: the run's exit code stays its own.
fn push_facts(push: &crate::push::Push, host: &HostConfig, summary: &TxSummary, took: Duration) {
    use rampart_agent::{consistency, metrics};
    let report = consistency::check(&host.state_dir, &[], &[]);
    let mut history = metrics::History::default();
    history.refresh(&host.state_dir);
    let run = metrics::RunFacts {
        outcome: summary.outcome,
        duration: took,
        recap: summary.recap,
        finished: chrono::Utc::now(),
    };
    let body = metrics::render(&history, &report, Some(&run));
    if let Err(e) = push.send(&host.hostname, &body) {
        eprintln!(
            "rampart: warning: the run's metrics were not pushed ({e}); the run's result and \
             exit code are unchanged"
        );
    }
}

/// An agent's address and how to talk to it.
#[derive(Debug)]
struct AgentAddr {
    /// As the user wrote it (for messages).
    addr: String,
    /// The URI tonic connects to: `https://` with TLS, `http://` without.
    uri: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl AgentAddr {
    fn new(addr: &str, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<Self, CliError> {
        let uri = match (addr.split_once("://"), tls.is_some()) {
            (None, true) => format!("https://{addr}"),
            (None, false) => format!("http://{addr}"),
            (Some(("https", _)), true) | (Some(("http", _)), false) => addr.to_string(),
            (Some(("http", _)), true) => {
                return Err(CliError::usage(format!(
                    "--agent {addr} is plaintext but TLS files were given: use https:// or host:port"
                )));
            }
            (Some(("https", _)), false) => {
                return Err(CliError::usage(format!(
                    "--agent {addr} needs --tls-cert, --tls-key and --tls-ca (e.g. from \
                     `rampart certs init DIR`)"
                )));
            }
            (Some((scheme, _)), _) => {
                return Err(CliError::usage(format!(
                    "bad agent address `{addr}`: scheme {scheme}:// is not http:// or https://"
                )));
            }
        };
        Ok(AgentAddr {
            addr: addr.to_string(),
            uri,
            tls,
        })
    }
}

fn status_error(what: &str, s: &tonic::Status) -> CliError {
    let exit = match s.code() {
        Code::FailedPrecondition => Exit::LockTimeout,
        Code::Unauthenticated | Code::PermissionDenied => Exit::Auth,
        _ => Exit::Usage,
    };
    CliError {
        exit,
        message: format!("{what}: {}", s.message()),
    }
}

async fn connect(agent: &AgentAddr) -> Result<AgentClient<tonic::transport::Channel>, CliError> {
    let addr = &agent.addr;
    let mut ep = tonic::transport::Endpoint::from_shared(agent.uri.clone())
        .map_err(|e| CliError::usage(format!("bad agent address `{addr}`: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = &agent.tls {
        ep = ep.tls_config(tls.clone()).map_err(|e| {
            CliError::usage(format!("TLS for agent at {addr}: {}", error_chain(&e)))
        })?;
    }
    let ch = ep.connect().await.map_err(|e| {
        CliError::usage(format!("cannot reach agent at {addr}: {}", error_chain(&e)))
    })?;
    Ok(AgentClient::new(ch).max_decoding_message_size(rampart_rpc::MAX_MESSAGE))
}

async fn run_agent(
    opts: &RunOptions,
    agent: &AgentAddr,
    reconnect_timeout: Duration,
    name: String,
    text: String,
) -> Result<Exit, CliError> {
    // Refuse a bad playbook here, with the same checks the agent makes, before any network;
    // the files it brings in travel with the request.
    let base = opts
        .playbook
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let book = transaction::load_playbook(&name, &text, &Templar::new(), Some(&base), &opts.flags)
        .map_err(|e| CliError::usage(format!("invalid playbook: {e}")))?;
    let files = rampart_host::bundle::gather(&base, &book.files, &book.role_dirs)
        .map_err(|e| CliError::usage(format!("cannot send the playbook's files: {e}")))?;
    let mut client = connect(agent).await?;
    // The client picks the txid, so it can re-attach even if the agent dies before the first
    // event reaches it.
    let txid = match &opts.txid {
        Some(t) => t.clone(),
        None => transaction::new_txid(),
    };
    if agent.tls.is_some() {
        check_accepted(&mut client, agent, &txid).await?;
    }
    let req = pb::RunRequest {
        playbook: text,
        playbook_name: name,
        vars_json: Value::Object(opts.vars.clone()).to_string(),
        check: opts.check,
        txid: txid.clone(),
        lock_timeout_ms: opts.lock_timeout.as_millis() as u64,
        files: files
            .into_iter()
            .map(|(path, content)| pb::PlaybookFile { path, content })
            .collect(),
        tags: opts.flags.tags.clone(),
        skip_tags: opts.flags.skip_tags.clone(),
        force_handlers: opts.flags.force_handlers,
        diff: opts.flags.diff,
    };
    let mut stream = match client.run(req).await {
        Ok(r) => r.into_inner(),
        // The connection broke before the agent answered: the transaction may have started.
        Err(s) if is_transport_error(&s) => {
            eprintln!(
                "rampart: lost the agent before it answered ({}); re-attaching to {txid}",
                s.message()
            );
            reattach(agent, &txid, 0, reconnect_timeout).await?
        }
        Err(s) => return Err(status_error("the agent refused the run", &s)),
    };
    let mut out = Renderer::new(std::io::stdout().lock(), opts.format);
    let mut next_seq = 0u64;
    loop {
        match stream.message().await {
            Ok(Some(ev)) => {
                if ev.seq < next_seq {
                    continue;
                }
                let entry = server::from_proto(ev)
                    .map_err(|e| CliError::usage(format!("bad event from the agent: {e}")))?;
                next_seq = entry.seq + 1;
                let _ = out.entry(&entry);
                if let Record::End { outcome, .. } = entry.record {
                    return Ok(Exit::of_transaction(outcome));
                }
            }
            Ok(None) => {
                eprintln!(
                    "rampart: the agent's event stream ended at seq {next_seq}; re-attaching to {txid}"
                );
                stream = reattach(agent, &txid, next_seq, reconnect_timeout).await?;
            }
            Err(s) if is_transport_error(&s) => {
                eprintln!(
                    "rampart: lost the agent's event stream at seq {next_seq}; re-attaching to {txid}"
                );
                stream = reattach(agent, &txid, next_seq, reconnect_timeout).await?;
            }
            Err(s) => return Err(status_error("the run failed", &s)),
        }
    }
}

/// The longest wait for the agent's answer to the TLS acceptance check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Over TLS 1.3 the agent checks the client's certificate only after the client's side of the
/// handshake is done, so a refused certificate shows at the first call, as a broken connection:
/// a read-only call before `Run` tells "refused" apart from "a run the agent may have started".
async fn check_accepted(
    client: &mut AgentClient<tonic::transport::Channel>,
    agent: &AgentAddr,
    txid: &str,
) -> Result<(), CliError> {
    let call = client.get_transaction(pb::GetTransactionRequest {
        txid: txid.to_string(),
    });
    let refused = |why: String| CliError {
        exit: Exit::Auth,
        message: format!(
            "the agent at {} closed the TLS connection ({why}): it does not accept this client's \
             certificate (--tls-cert must be a client certificate, such as controller.pem from \
             `rampart certs init`, not an agent's, signed by a CA the agent trusts with its \
             --tls-ca)",
            agent.addr
        ),
    };
    match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        Err(_) => Err(CliError::usage(format!(
            "the agent at {} did not answer within {}s",
            agent.addr,
            CHECK_TIMEOUT.as_secs()
        ))),
        Ok(Err(s)) if is_transport_error(&s) => {
            let why = match std::error::Error::source(&s) {
                Some(source) => error_chain(source),
                None => s.message().to_string(),
            };
            Err(refused(why))
        }
        // The handshake passed but the certificate's identity is not one the agent trusts.
        Ok(Err(s)) if s.code() == Code::PermissionDenied => Err(CliError {
            exit: Exit::Auth,
            message: format!(
                "the agent at {} refused this client: {}",
                agent.addr,
                s.message()
            ),
        }),
        // Any other answer (a transaction, NOT_FOUND, ...) means the agent accepted the client.
        Ok(_) => Ok(()),
    }
}

/// Calls `Watch(txid, from_seq)` until it succeeds or `timeout` passes (1 s between tries).
async fn reattach(
    agent: &AgentAddr,
    txid: &str,
    from_seq: u64,
    timeout: Duration,
) -> Result<tonic::Streaming<pb::TransactionEvent>, CliError> {
    let attempt = || async {
        match connect(agent).await {
            Ok(mut c) => match c
                .watch(pb::WatchRequest {
                    txid: txid.to_string(),
                    from_seq,
                })
                .await
            {
                Ok(r) => Attempt::Done(r.into_inner()),
                Err(s) => Attempt::Again(s.message().to_string()),
            },
            Err(e) => Attempt::Again(e.message),
        }
    };
    let last_err = match retry::until(
        Instant::now() + timeout,
        Duration::from_secs(1),
        true,
        attempt,
    )
    .await
    {
        Ok(stream) => return Ok(stream),
        Err(GaveUp::TimedOut(last) | GaveUp::Stopped(last)) => last,
    };
    Err(CliError::usage(format!(
        "could not re-attach to transaction {txid} within {}s ({last_err}); it continues on the agent: \
         watch it later with the agent's Watch RPC",
        timeout.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_and_tls() {
        let tls = || Some(tonic::transport::ClientTlsConfig::new());
        let uri = |addr: &str, tls| AgentAddr::new(addr, tls).map(|a| a.uri);
        assert_eq!(uri("h:7420", None).unwrap(), "http://h:7420");
        assert_eq!(uri("http://h:7420", None).unwrap(), "http://h:7420");
        assert_eq!(uri("h:7420", tls()).unwrap(), "https://h:7420");
        assert_eq!(uri("https://h:7420", tls()).unwrap(), "https://h:7420");
        let e = uri("https://h:7420", None).unwrap_err();
        assert!(e.message.contains("--tls-cert"), "{}", e.message);
        let e = uri("http://h:7420", tls()).unwrap_err();
        assert!(e.message.contains("https://"), "{}", e.message);
        assert_eq!(uri("grpc://h:7420", None).unwrap_err().exit, Exit::Usage);
    }
}
