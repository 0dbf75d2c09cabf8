//! `rampart-controller`: the server CI calls. It owns the environments, runs deployments in
//! waves through the agents, and keeps their history in its store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rampart_controller::agents::Agents;
use rampart_controller::artifact_store::ArtifactStore;
use rampart_controller::config::{self, ControllerConfig, StoreConfig};
use rampart_controller::deployment::Controller;
use rampart_controller::service::Service;
use rampart_controller::store::Store;
use rampart_controller::store::postgres::PostgresStore;
use rampart_controller::store::sqlite::SqliteStore;

/// Rampart's controller: the gRPC API CI deploys through.
///
/// Reads its configuration (environments with their inventories, playbooks and rollout
/// policy; bearer tokens; TLS files), finishes or rescues any deployment a previous run left
/// unfinished, then serves. Exit codes: 0 stopped on SIGTERM/SIGINT, 2 bad configuration or a
/// store that cannot be opened.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
        rampart-controller --config /etc/rampart/controller.toml\n  \
        rampart-controller hash-token < /run/secrets/ci-token   # the sha256 for [[tokens]]\n  \
        rampart-controller --config /etc/rampart/controller.toml gc   # collect unreferenced artifacts\n  \
        rampart-controller --config dev.toml --insecure-dev     # plaintext, development only\n\n\
        The configuration's format is documented in README.md (\"The controller\")."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The TOML configuration file.
    #[arg(long, short = 'c', default_value = "/etc/rampart/controller.toml")]
    config: PathBuf,
    /// Address to listen on, overriding the config (port 0 picks a free one; printed).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Plaintext gRPC to CI and to the agents (development only; warns on every start).
    #[arg(long)]
    insecure_dev: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Reads a token on stdin and prints the sha256 to put in `[[tokens]] sha256 = "…"`.
    HashToken,
    /// Checks the configuration (inventories, playbooks, TLS files) and exits.
    Check,
    /// Removes the artifacts no deployment references (see `[artifacts]` in the
    /// configuration), prints what it freed, and exits. The controller also does this at
    /// start-up and after every deployment; with a SQLite store, stop it first (the store is
    /// its alone).
    Gc,
}

fn main() -> ExitCode {
    rampart_rpc::logging::init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart-controller: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Cmd::HashToken) = args.command {
        let mut token = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)?;
        if token.trim().is_empty() {
            anyhow::bail!("no token on stdin");
        }
        println!("{}", config::hash_token(&token));
        return Ok(());
    }
    let mut cfg = ControllerConfig::load(&args.config).map_err(anyhow::Error::msg)?;
    if args.insecure_dev && !cfg.insecure_dev {
        anyhow::bail!(
            "--insecure-dev needs `insecure_dev = true` in {} too: plaintext must be asked for on both ends",
            args.config.display()
        );
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    // Load every TLS file now, so a bad path fails at start, not at the first deploy.
    let server_tls = match &cfg.tls {
        Some((cert, key)) if !cfg.insecure_dev => {
            Some(rampart_rpc::tls::server_only(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let metrics_tls = match cfg.metrics.as_ref().and_then(|m| m.tls.as_ref()) {
        Some((cert, key)) => {
            Some(rampart_controller::metrics::tls_config(cert, key).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let agents = Agents::new(if cfg.insecure_dev {
        None
    } else {
        cfg.agent_tls.as_ref()
    })
    .map_err(anyhow::Error::msg)?;
    if let Some(Cmd::Check) = args.command {
        println!(
            "configuration OK: {} environment(s), {} token(s)",
            cfg.environments.len(),
            cfg.tokens.len()
        );
        return Ok(());
    }
    if cfg.insecure_dev {
        tracing::warn!(
            "insecure_dev: plaintext gRPC to CI and to the agents; bearer tokens cross the network in clear"
        );
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create state_dir {}: {e}", cfg.state_dir.display()))?;
    let (store, shared): (Arc<dyn Store>, bool) = match &cfg.store {
        StoreConfig::Sqlite(p) => (Arc::new(SqliteStore::open(p)?), false),
        StoreConfig::Postgres(u) => (Arc::new(PostgresStore::open(u)?), true),
    };
    tracing::info!(store = %store.describe(), instance = %cfg.instance, "store open");
    if let Some(Cmd::Gc) = args.command {
        let report = ArtifactStore::new(&cfg.state_dir, cfg.artifacts.clone())
            .with_store(store.clone(), &cfg.instance)
            .collect_with(&*store, &cfg)?;
        for (sha, size) in &report.removed {
            println!("removed {sha} ({size} bytes)");
        }
        println!(
            "freed {} artifact(s), {} bytes; kept {}; removed {} stale upload(s)",
            report.removed.len(),
            report.freed_bytes(),
            report.kept,
            report.stale_uploads
        );
        return Ok(());
    }
    let cfg = Arc::new(cfg);
    // The store outlives the runtime: a PostgreSQL store's sessions each own a runtime of their
    // own, which must not be dropped from inside this one ("Cannot start a runtime from within
    // a runtime"). This handle is the last one, dropped after the runtime shut down.
    let keep = store.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        // Store calls run here; a few threads are plenty, and each one more costs a malloc
        // arena (memory that grows with every deployment).
        .max_blocking_threads(8)
        .build()?;
    let served = rt.block_on(async move {
        let ctl = Controller::new(cfg.clone(), store, agents);
        ctl.heartbeat().await?;
        // A SQLite store is this process's alone (its lock file says so): whatever a previous
        // run left unfinished is ours at once. A shared store waits until the owner's heartbeat
        // is stale, and until this controller's own have reached it as long (so this first
        // pass resumes only this instance's own deployments).
        let stale = if shared {
            rampart_controller::store::OWNER_STALE
        } else {
            Duration::ZERO
        };
        let n = ctl.adopt_orphans(stale).await?;
        if n > 0 {
            tracing::warn!(count = n, "resumed or took over unfinished deployments");
        }
        // After the takeovers: their deployments' artifacts count as referenced.
        if let Err(e) = rampart_controller::artifact_store::collect(&ctl).await {
            tracing::warn!("artifact collection at start-up: {e}");
        }
        // Notifications leave through the outbox, on threads of their own: a sink that is down
        // never holds the runtime's threads (nor a deployment).
        let _notify = rampart_controller::notify::worker::Worker::start(
            cfg.clone(),
            ctl.store.clone(),
            ctl.metrics.clone(),
        )?;
        let bg = ctl.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if let Err(e) = bg.heartbeat().await {
                    tracing::error!("heartbeat: {e}");
                }
                // With SQLite too: a deployment its runner gave up (the store did not answer
                // for `[store] outage_seconds`) is this controller's to adopt again.
                if let Err(e) = bg.adopt_orphans(stale).await {
                    tracing::error!("looking for orphaned deployments: {e}");
                }
            }
        });
        tokio::spawn(rampart_controller::sweep::run(
            ctl.clone(),
            cfg.sweep_interval,
        ));
        if let Some(m) = &cfg.metrics {
            let l = tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(|e| anyhow::anyhow!("[metrics] cannot listen on {}: {e}", m.listen))?;
            let addr = l.local_addr()?;
            tracing::info!(%addr, tls = metrics_tls.is_some(), "serving /metrics and /healthz");
            println!("metrics on {addr}");
            tokio::spawn(rampart_controller::metrics::serve(
                l,
                metrics_tls,
                ctl.clone(),
                std::future::pending(),
            ));
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = async {
            if let Err(e) = rampart_rpc::shutdown_signal().await {
                tracing::error!(error = %e, "cannot wait for SIGTERM; stopping");
            }
            tracing::info!("unfinished deployments resume at the next start");
        };
        tokio::pin!(shutdown);
        // Polled once before the address is announced, so that SIGTERM's handler is in place
        // (a SIGTERM right after the announcement would otherwise kill the process).
        tokio::select! {
            biased;
            () = &mut shutdown => return anyhow::Ok(()),
            () = std::future::ready(()) => {}
        }
        tracing::info!(%addr, "serving");
        println!("listening on {addr}");
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = server_tls {
            builder = builder.tls_config(tls)?;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // grpc.health.v1 on the API port: SERVING while this process serves.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        health
            .set_service_status(
                "rampart.v1.Controller",
                tonic_health::ServingStatus::Serving,
            )
            .await;
        let server = builder
            .add_service(health_service)
            .add_service(Service::new(ctl).into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            );
        tokio::pin!(server);
        tokio::select! {
            served = &mut server => served?,
            () = &mut shutdown => {
                // A graceful stop waits for every call to end, and a `Watch` of a running
                // deployment does not: calls get STREAM_GRACE, then their connections close
                // (the CLI re-attaches to the next controller, or to this one restarted).
                let _ = stop.send(());
                match tokio::time::timeout(STREAM_GRACE, &mut server).await {
                    Ok(served) => served?,
                    Err(_) => tracing::info!("closing the event streams still open"),
                }
            }
        }
        anyhow::Ok(())
    });
    // Runners, host jobs and store calls in flight end here (a store call that does not
    // finish in time is left to the process's exit); then the store is dropped, on this thread.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    drop(keep);
    served
}

/// How long a stopping controller waits for store calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a stopping controller lets the calls it serves run on (event streams would
/// never end by themselves).
const STREAM_GRACE: Duration = Duration::from_secs(2);
