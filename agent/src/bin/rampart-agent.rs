//! `rampart-agent`: the gRPC service on every host. Finishes interrupted transactions first,
//! then serves.
//!
//! Under systemd (`systemd/rampart-agent.service`, `Type=notify`) it reports `READY=1` only once
//! recovery has finished and the listener is bound, and pings the watchdog when `WatchdogSec=` is
//! set. Without `NOTIFY_SOCKET` (not started by systemd) the notifications are no-ops.
//!
//! A transaction whose journal cannot be written, once its bounded wait for free space
//! (`--journal-wait-seconds`) has passed, ends the process with status 3; so does a start-up
//! recovery that cannot finish. The unit's `Restart=always` then starts it again, into recovery.
//!
//! It serves mutual TLS (`--tls-cert/--tls-key/--tls-ca` or `[tls]` in the config: only clients
//! with a certificate signed by a trusted CA, for client use, carrying a trusted identity
//! (`--controller-identity`) get in), or plaintext with `--insecure-dev`; it refuses to start
//! with neither, and with both.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rampart_agent::config::AgentConfig;
use rampart_agent::journal::Durability;
use rampart_agent::server::{self, AgentService};
use rampart_agent::transaction::{self, HostConfig};
use rampart_playbook::template::Templar;
use rampart_rpc::identity::Trusted;
use rampart_rpc::tls::{self, TlsFiles};

/// Rampart's host agent: runs playbooks as crash-safe transactions for the controller.
///
/// On start it first finishes any transaction a crash interrupted (rescue + always, as the
/// journal demands), then serves gRPC over mutual TLS: clients must present a client certificate
/// signed by a --tls-ca that carries a --controller-identity (others get PERMISSION_DENIED,
/// logged as a warning). Plaintext gRPC needs --insecure-dev (development only); one of the two is
/// required. Exit 2 on a configuration error (bad or missing TLS files included); exit 3 when a
/// transaction cannot be journaled (the disk stayed full for --journal-wait-seconds) or start-up
/// recovery cannot finish: the transaction is left for the restart (systemd's Restart=always)
/// to recover.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
        rampart certs init /etc/rampart/tls --agent web-1\n  \
        rampart-agent --listen 0.0.0.0:7420 --state-dir /var/lib/rampart \\\n      \
        --tls-cert /etc/rampart/tls/agent-web-1.pem --tls-key /etc/rampart/tls/agent-web-1.key \\\n      \
        --tls-ca /etc/rampart/tls/ca.pem\n  \
        rampart-agent --listen 127.0.0.1:7420 --state-dir /tmp/rampart --insecure-dev   # development"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// State directory: journal/, history/, lock.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// TOML configuration file; flags override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Serve plaintext gRPC (development only; exclusive with the --tls-* flags).
    #[arg(long)]
    insecure_dev: bool,
    /// This agent's TLS certificate (PEM); with --tls-key and --tls-ca (overrides [tls] in the
    /// config).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, unencrypted).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// A CA whose client certificates (the controller's) are accepted (PEM); repeatable: pass the
    /// old and the new CA during a rotation.
    #[arg(long, value_name = "FILE")]
    tls_ca: Vec<PathBuf>,
    /// A client identity let in over TLS: a subject alternative name (URI or DNS) the client's
    /// certificate must carry; repeatable [default: spiffe://rampart/controller, the identity
    /// `rampart certs init` gives controller.pem]. Overrides controller_identity in the config.
    #[arg(long, value_name = "ID")]
    controller_identity: Vec<String>,
    /// Directory of forensics bundles served by ListForensics/GetForensics
    /// (default /var/backups/deployment-forensics).
    #[arg(long)]
    forensics_dir: Option<PathBuf>,
    /// How long a journal write that finds the disk full retries (then the agent exits with
    /// status 3, and its restart recovers the transaction) [default: 60; config
    /// journal_wait_seconds].
    #[arg(long, value_name = "SECONDS")]
    journal_wait_seconds: Option<u64>,
    /// Check that the host is whole (current links, recorded state, nothing left of an
    /// interrupted transaction) every N seconds, and after every transaction; 0: only after
    /// transactions [default: 60; config check_interval_seconds].
    #[arg(long, value_name = "SECONDS")]
    check_interval_seconds: Option<u64>,
    /// Write this host's metrics after every check, atomically, in node_exporter's textfile
    /// format (e.g. /var/lib/prometheus/node-exporter/rampart.prom): transactions by outcome,
    /// recoveries, the current release per component, the check's verdict and problems
    /// [config metrics_textfile].
    #[arg(long, value_name = "PATH")]
    metrics_textfile: Option<PathBuf>,
    /// Do not fsync journal records (benchmarks only: a crash may lose the journal's tail).
    #[arg(long, hide = true)]
    no_fsync: bool,
    /// Test hook for crash tests: SIGSTOP this process right after journal record N is written.
    #[arg(long, hide = true, value_name = "N")]
    debug_stop_after_record: Option<u64>,
}

fn main() -> ExitCode {
    rampart_rpc::logging::init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rampart-agent: {e:#}");
            match e.downcast_ref::<MustRestart>() {
                Some(_) => ExitCode::from(server::EXIT_CANNOT_JOURNAL),
                None => ExitCode::from(2),
            }
        }
    }
}

/// How long in-flight calls may take to end once a transaction could not be journaled.
const DRAIN_BEFORE_RESTART: Duration = Duration::from_secs(5);

/// A transaction is unfinished and only a restart finishes it: start-up recovery could not, or
/// a transaction could not be journaled while serving. Exit 3.
#[derive(Debug)]
struct MustRestart(String);

impl std::fmt::Display for MustRestart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; exiting with status 3 so that a restart recovers it",
            self.0
        )
    }
}

impl std::error::Error for MustRestart {}

/// Waits until `flag` is raised; never returns when its sender is gone unraised.
async fn raised(mut flag: tokio::sync::watch::Receiver<bool>) {
    if flag.wait_for(|raised| *raised).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => AgentConfig::load(p).map_err(anyhow::Error::msg)?,
        None => AgentConfig::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    cfg.insecure_dev |= args.insecure_dev;
    if let Some(d) = args.forensics_dir {
        cfg.forensics_dir = Some(d);
    }
    if let Some(s) = args.journal_wait_seconds {
        cfg.journal_wait_seconds = s;
    }
    if args.no_fsync {
        cfg.journal_fsync = false;
    }
    if let Some(s) = args.check_interval_seconds {
        cfg.check_interval_seconds = s;
    }
    if let Some(p) = args.metrics_textfile {
        cfg.metrics_textfile = Some(p);
    }
    if let Some(p) = &cfg.metrics_textfile {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        if p.file_name().is_none() || dir.is_some_and(|d| !d.is_dir()) {
            anyhow::bail!(
                "--metrics-textfile {}: its directory does not exist; create it (node_exporter's \
                 --collector.textfile.directory) or pass another path",
                p.display()
            );
        }
    }
    if let Some(files) = TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_ca)
        .map_err(anyhow::Error::msg)?
    {
        cfg.tls = Some(files);
    }
    if !args.controller_identity.is_empty() {
        cfg.controller_identity = args.controller_identity;
    }
    let trusted = Trusted::new(cfg.controller_identity.clone()).map_err(anyhow::Error::msg)?;
    // Loaded before recovery: bad TLS files stop the agent before it touches anything.
    let tls = match (&cfg.tls, cfg.insecure_dev) {
        (Some(_), true) => anyhow::bail!(
            "both mutual TLS (--tls-cert/--tls-key/--tls-ca or [tls] in the config) and \
             --insecure-dev (or insecure_dev = true) are set: pass one, not both"
        ),
        (Some(files), false) => {
            let config = tls::server_mutual(files).map_err(anyhow::Error::msg)?;
            tracing::info!(
                cert = %files.cert.display(),
                ca = ?files.ca,
                controller_identity = ?trusted.identities(),
                "serving mutual TLS: clients need a certificate signed by a trusted CA that \
                 carries a trusted identity"
            );
            Some(server::TlsServing { config, trusted })
        }
        (None, true) => {
            tracing::warn!(
                "serving plaintext gRPC (--insecure-dev): anyone who can reach {} can run playbooks as this user",
                cfg.listen
            );
            None
        }
        (None, false) => anyhow::bail!(
            "refusing to serve without TLS: pass --tls-cert FILE --tls-key FILE --tls-ca FILE \
             (e.g. from `rampart certs init DIR`) for mutual TLS, or --insecure-dev (or \
             insecure_dev = true) to serve plaintext on a trusted network"
        ),
    };
    let mut host = HostConfig::new(&cfg.state_dir);
    if !cfg.journal_fsync {
        host.durability = Durability::None;
        tracing::warn!("journal fsync is off: a crash may lose the journal's tail");
    }
    host.stop_after_record = args.debug_stop_after_record;
    host.journal_space_wait = Duration::from_secs(cfg.journal_wait_seconds);
    let templar = Arc::new(Templar::with_lookups(Arc::new(
        rampart_agent::lookups::HostLookups,
    )));
    notify(&[sd_notify::NotifyState::Status(
        "finishing interrupted transactions",
    )]);
    // Recovery comes before serving: the host never stays half-deployed.
    let recovered = transaction::recover_all(&host, &templar, &mut |_| {})
        .map_err(|e| MustRestart(format!("cannot finish the interrupted transactions: {e}")))?;
    if !recovered.is_empty() {
        tracing::warn!(count = recovered.len(), "finished interrupted transactions");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    let serving = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, state_dir = %host.state_dir.display(), "serving");
        println!("listening on {addr}");
        // Recovery is done and the socket accepts connections: `systemctl start` may return.
        let status = format!("serving on {addr}");
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        if let Some(interval) = sd_notify::watchdog_enabled() {
            tracing::info!(?interval, "systemd watchdog enabled");
            tokio::spawn(watchdog(interval / 2));
        }
        let mut service = AgentService::new(host, templar);
        if let Some(d) = cfg.forensics_dir {
            service = service.with_forensics_dir(d);
        }
        let _monitor = service.spawn_monitor(server::Monitor {
            textfile: cfg.metrics_textfile.clone(),
            interval: (cfg.check_interval_seconds > 0)
                .then(|| Duration::from_secs(cfg.check_interval_seconds)),
        });
        let must_restart = service.must_restart();
        let restart = raised(must_restart.clone());
        let shutdown = async move {
            tokio::select! {
                r = rampart_rpc::shutdown_signal() => if let Err(e) = r {
                    tracing::error!(error = %e, "cannot wait for SIGTERM; stopping");
                },
                () = restart => {}
            }
        };
        let serving = server::serve_tls(listener, service, shutdown, tls);
        let drained = async {
            raised(must_restart.clone()).await;
            tokio::time::sleep(DRAIN_BEFORE_RESTART).await;
        };
        tokio::select! {
            biased;
            r = serving => r?,
            () = drained => tracing::warn!(
                "in-flight calls did not end within {DRAIN_BEFORE_RESTART:?}: exiting without them"
            ),
        }
        anyhow::Ok(*must_restart.borrow())
    });
    // The transaction threads and blocking calls are not waited for: a restart is what
    // finishes an unfinished transaction.
    rt.shutdown_timeout(Duration::from_secs(1));
    if serving? {
        return Err(MustRestart("a transaction could not be journaled".into()).into());
    }
    Ok(())
}

/// Sends `state` to systemd's notification socket; a no-op outside systemd (no `NOTIFY_SOCKET`).
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// Pings systemd's watchdog every `every` (half of `WatchdogSec=`) while the runtime is alive.
async fn watchdog(every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        notify(&[sd_notify::NotifyState::Watchdog]);
    }
}
