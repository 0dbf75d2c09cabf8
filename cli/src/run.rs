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
use rampart_playbook::inventory::InventoryView;
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
    /// Each host of `-i INVENTORY` on its own agent (its `rampart_agent` variable, else
    /// `ansible_host`:`rampart_agent_port`, else NAME:7420), one after another.
    Inventory {
        /// How long to keep trying to re-attach to one agent after its stream breaks.
        reconnect_timeout: Duration,
        /// Mutual TLS with every agent, as for `Agent`.
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
    /// `-i INVENTORY [--limit PATTERN]`: run as a host (or each host) of an inventory.
    pub inventory: Option<InventoryRun>,
}

/// A run against an inventory.
#[derive(Debug, Clone)]
pub struct InventoryRun {
    /// The inventory file (Ansible INI or YAML).
    pub path: PathBuf,
    /// `--limit`: an Ansible host pattern the hosts must also match.
    pub limit: Option<String>,
}

/// One host an inventory run goes to.
#[derive(Debug, Clone)]
struct HostRun {
    /// Its inventory name.
    host: String,
    /// Its agent's address (`rampart_agent`, else `ansible_host`:`rampart_agent_port`).
    agent: String,
    /// What its run sees of the inventory.
    view: InventoryView,
}

/// The largest inventory file read.
const MAX_INVENTORY_FILE: u64 = 16 << 20;

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
    let Some(inv) = &opts.inventory else {
        return run_on(&opts, &opts.target, name, text, None);
    };
    let hosts = plan(&opts, inv, &name, &text)?;
    let one = match &opts.target {
        Target::Inventory {
            reconnect_timeout,
            tls,
        } => return run_each(&opts, (*reconnect_timeout, tls), &hosts, name, text),
        Target::Local { .. } => "--local",
        Target::Agent { .. } => "--agent",
    };
    let [host] = hosts.as_slice() else {
        return Err(CliError::usage(format!(
            "-i {} selects {} hosts ({}), and {one} runs one: pick it with --limit, or drop \
             {one} to run each host on its own agent",
            inv.path.display(),
            hosts.len(),
            host_list(hosts.iter().map(|h| h.host.as_str())),
        )));
    };
    let mut o = opts.clone();
    o.flags.inventory = Some(host.view.clone());
    run_on(&o, &opts.target, name, text, None)
}

/// At most this many names in a message; the rest are counted.
fn host_list<'a>(hosts: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = hosts.collect();
    let shown = all.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    match all.len() {
        n if n > 10 => format!("{shown} and {} more", n - 10),
        _ => shown,
    }
}

/// The hosts of an inventory run, in inventory order: those some play's `hosts` pattern
/// selects (a templated pattern counts as `all`; the agent evaluates it) and `--limit` keeps.
/// The playbook is loaded here, so a bad one is refused before anything is read from agents.
fn plan(
    opts: &RunOptions,
    inv: &InventoryRun,
    name: &str,
    text: &str,
) -> Result<Vec<HostRun>, CliError> {
    use rampart_playbook::inventory::{Inventory, select};
    let path = &inv.path;
    let size = std::fs::metadata(path)
        .map_err(|e| CliError::usage(format!("cannot read inventory {}: {e}", path.display())))?
        .len();
    if size > MAX_INVENTORY_FILE {
        return Err(CliError::usage(format!(
            "inventory {} is {size} bytes; at most {MAX_INVENTORY_FILE} are read",
            path.display()
        )));
    }
    let raw = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read inventory {}: {e}", path.display())))?;
    let inventory = Inventory::parse(&raw)
        .map_err(|e| CliError::usage(format!("inventory {}: {e}", path.display())))?;
    let groups = inventory.group_hosts();
    let all: Vec<String> = groups.get("all").cloned().unwrap_or_default();
    if all.is_empty() {
        return Err(CliError::usage(format!(
            "inventory {} names no host",
            path.display()
        )));
    }
    let base = base_dir(&opts.playbook);
    let book = transaction::load_playbook(name, text, &Templar::new(), Some(&base), &opts.flags)
        .map_err(|e| CliError::usage(format!("invalid playbook: {e}")))?;
    let pick = |what: &str, pattern: &str| {
        let sel = select(pattern, &all, &groups)
            .map_err(|e| CliError::usage(format!("{what} {pattern:?}: {e}")))?;
        for term in &sel.unmatched {
            eprintln!(
                "rampart: warning: {what} {pattern:?}: {term:?} matches no host or group of {}",
                path.display()
            );
        }
        Ok::<_, CliError>(sel.hosts)
    };
    let mut wanted = std::collections::BTreeSet::new();
    for play in &book.plays {
        if play.hosts.contains("{{") {
            wanted.extend(all.iter().cloned());
        } else {
            wanted.extend(pick(&format!("play {:?}: hosts", play.name), &play.hosts)?);
        }
    }
    if let Some(limit) = &inv.limit {
        let keep: std::collections::BTreeSet<String> =
            pick("--limit", limit)?.into_iter().collect();
        if keep.is_empty() {
            return Err(CliError::usage(format!(
                "--limit {limit:?} selects no host of {} (its hosts: {})",
                path.display(),
                host_list(all.iter().map(String::as_str))
            )));
        }
        wanted.retain(|h| keep.contains(h));
    }
    if wanted.is_empty() {
        return Err(CliError::usage(format!(
            "no host of {} to run on: the plays' `hosts` patterns{} select none of its hosts ({})",
            path.display(),
            if inv.limit.is_some() {
                " and --limit"
            } else {
                ""
            },
            host_list(all.iter().map(String::as_str))
        )));
    }
    let view = inventory.view();
    Ok(all
        .iter()
        .filter(|h| wanted.contains(*h))
        .map(|h| HostRun {
            host: h.clone(),
            agent: rampart_playbook::inventory::agent_addr(h, &view.hostvars[h]),
            view: InventoryView {
                host: h.clone(),
                ..view.clone()
            },
        })
        .collect())
}

/// Runs each host of an inventory on its own agent, one after another, each as its own
/// transaction; stops after the first that does not succeed (the rest are not started, as
/// Ansible's `serial: 1` with `max_fail_percentage: 0`), then prints what each host did.
fn run_each(
    opts: &RunOptions,
    (reconnect_timeout, tls): (Duration, &Option<TlsFiles>),
    hosts: &[HostRun],
    name: String,
    text: String,
) -> Result<Exit, CliError> {
    // Every host gets the same files: read them once.
    let bundle = agent_bundle(opts, &name, &text)?;
    let mut done: Vec<(&HostRun, Result<Exit, CliError>)> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        if opts.format == Format::Human {
            println!(
                "\nHOST [{}] agent {} ({} of {}) {}",
                h.host,
                h.agent,
                i + 1,
                hosts.len(),
                "*".repeat(40)
            );
        }
        let mut o = opts.clone();
        o.flags.inventory = Some(h.view.clone());
        let target = Target::Agent {
            addr: h.agent.clone(),
            reconnect_timeout,
            tls: tls.clone(),
        };
        let r = run_on(&o, &target, name.clone(), text.clone(), Some(&bundle));
        if let Err(e) = &r {
            eprintln!("rampart: {}: {}", h.host, e.message);
        }
        let stop = !matches!(r, Ok(Exit::Ok));
        done.push((h, r));
        if stop {
            break;
        }
    }
    let exit = done
        .iter()
        .map(|(_, r)| match r {
            Ok(e) => *e,
            Err(e) => e.exit,
        })
        .find(|e| *e != Exit::Ok)
        .unwrap_or(Exit::Ok);
    let not_run = &hosts[done.len()..];
    match opts.format {
        Format::Human => {
            println!("\nHOSTS {}", "*".repeat(60));
            for (h, r) in &done {
                let what = match r {
                    Ok(e) => format!("exit {} ({})", e.code(), exit_word(*e)),
                    Err(e) => format!("exit {} (did not run: {})", e.exit.code(), e.message),
                };
                println!("{:<24} {what}", h.host);
            }
            for h in not_run {
                println!("{:<24} not run (a host before it did not succeed)", h.host);
            }
        }
        Format::Json => {
            let mut rows: Vec<Value> = done
                .iter()
                .map(|(h, r)| match r {
                    Ok(e) => {
                        serde_json::json!({"host": h.host, "agent": h.agent, "exit": e.code()})
                    }
                    Err(e) => serde_json::json!({
                        "host": h.host, "agent": h.agent, "exit": e.exit.code(), "error": e.message
                    }),
                })
                .collect();
            rows.extend(not_run.iter().map(|h| {
                serde_json::json!({"host": h.host, "agent": h.agent, "exit": null, "not_run": true})
            }));
            println!(
                "{}",
                serde_json::json!({"hosts": rows, "exit": exit.code()})
            );
        }
    }
    Ok(exit)
}

/// A host's view of the inventory as the agent takes it, refused here when too large.
fn inventory_json(view: &InventoryView) -> Result<String, CliError> {
    let json = serde_json::to_string(view)
        .map_err(|e| CliError::usage(format!("cannot encode the inventory: {e}")))?;
    if json.len() > rampart_agent::event::MAX_INVENTORY_VIEW {
        return Err(CliError::usage(format!(
            "the inventory's hosts and variables take {} bytes as JSON; an agent takes at most {}",
            json.len(),
            rampart_agent::event::MAX_INVENTORY_VIEW
        )));
    }
    Ok(json)
}

/// A word for a host's exit in the summary.
fn exit_word(e: Exit) -> &'static str {
    match e {
        Exit::Ok => "succeeded",
        Exit::Failed => "failed, rolled back",
        Exit::RollbackFailed => "ROLLBACK FAILED",
        Exit::LockTimeout => "host lock not acquired",
        Exit::FailedNoRescue => "failed, no rescue",
        Exit::Usage => "refused",
        Exit::Auth => "refused this client",
    }
}

/// The playbook's directory (relative files are found from it).
fn base_dir(playbook: &Path) -> PathBuf {
    playbook
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The files a playbook brings in, as `Run` sends them. The playbook is validated here with
/// the checks the agent makes, so a bad one is refused before any network.
fn agent_bundle(opts: &RunOptions, name: &str, text: &str) -> Result<Bundle, CliError> {
    let base = base_dir(&opts.playbook);
    let book = transaction::load_playbook(name, text, &Templar::new(), Some(&base), &opts.flags)
        .map_err(|e| CliError::usage(format!("invalid playbook: {e}")))?;
    rampart_host::bundle::gather(&base, &book.files, &book.role_dirs)
        .map_err(|e| CliError::usage(format!("cannot send the playbook's files: {e}")))
}

/// A playbook's files by path relative to its directory.
type Bundle = Vec<(String, Vec<u8>)>;

/// Runs on one target; `bundle`: the playbook's files when already gathered (agents only).
fn run_on(
    opts: &RunOptions,
    target: &Target,
    name: String,
    text: String,
    bundle: Option<&Bundle>,
) -> Result<Exit, CliError> {
    match target {
        Target::Inventory { .. } => Err(CliError::usage(
            "each host of an inventory runs on its own agent: give -i INVENTORY",
        )),
        Target::Local {
            state_dir,
            durability,
        } => run_local(opts, state_dir, *durability, name, text),
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
            let files = match bundle {
                Some(b) => b.clone(),
                None => agent_bundle(opts, &name, &text)?,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::usage(format!("cannot start the async runtime: {e}")))?;
            rt.block_on(run_agent(
                opts,
                &agent,
                *reconnect_timeout,
                name,
                text,
                files,
            ))
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
    files: Bundle,
) -> Result<Exit, CliError> {
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
        inventory_json: match &opts.flags.inventory {
            Some(view) => inventory_json(view)?,
            None => String::new(),
        },
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
