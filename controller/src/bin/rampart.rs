//! `rampart`: the command line for people and CI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rampart_agent::journal::Durability;
use rampart_agent::transaction::DEFAULT_STATE_DIR;
use rampart_controller::output::Format;
use rampart_controller::run::{self, RunOptions, Target};
use rampart_controller::vars::parse_extra_vars;

/// Rampart: transactional deploys for ordinary Linux servers.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a playbook on one host as one transaction (block → rescue on failure → always).
    ///
    /// Exit codes: 0 succeeded (or check mode passed), 1 failed and rolled back by a rescue,
    /// 2 usage or configuration error (nothing ran), 4 rollback failed (CRITICAL: the rescue
    /// itself failed), 5 host lock not acquired in time, 6 failed with no rescue to roll it back.
    #[command(after_help = "Examples:\n  \
        rampart run deploy.yml --local --state-dir /tmp/rampart -e version=2.0.1\n  \
        rampart run deploy.yml --agent 127.0.0.1:7420 -e @vars.json --json\n  \
        rampart run deploy.yml --local --check")]
    Run {
        /// The playbook (a YAML list of plays).
        playbook: PathBuf,
        /// Run in this process on this host.
        #[arg(long, conflicts_with = "agent", required_unless_present = "agent")]
        local: bool,
        /// Run on the agent at ADDR (host:port), over gRPC.
        #[arg(long, value_name = "ADDR")]
        agent: Option<String>,
        /// With --local: where the journal, history and lock live.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Extra variables: KEY=VALUE, @FILE.json (or .yml), or a JSON object; repeatable, later wins.
        #[arg(short = 'e', long = "extra-vars", value_name = "VARS")]
        extra_vars: Vec<String>,
        /// Check mode: report what would change, change nothing.
        #[arg(long, short = 'C')]
        check: bool,
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the host lock held by another transaction.
        #[arg(long, default_value_t = 60)]
        lock_timeout: u64,
        /// Transaction id to use (default: generated).
        #[arg(long)]
        txid: Option<String>,
        /// With --agent: seconds to keep re-attaching when the event stream breaks.
        #[arg(long, default_value_t = 60)]
        reconnect_timeout: u64,
        /// Do not fsync journal records (benchmarks only; a crash may lose the journal's tail).
        #[arg(long, hide = true)]
        no_fsync: bool,
    },
    /// Run a health suite (e.g. playbooks/health/production.yml) against this host's services.
    ///
    /// Exit codes: 0 every critical check passed, 1 a critical check failed, 2 bad arguments or
    /// suite (nothing ran).
    #[command(after_help = "Examples:\n  \
        rampart health production -e backend_url=http://127.0.0.1:8080 -e target_version=2.0.1\n  \
        rampart health suite.yml -e @vars.json --json\n  \
        rampart health suite.yml --sequential   # one check at a time")]
    Health {
        /// The suite: a YAML file with a `checks:` list, or `production` for the shipped suite.
        suite: PathBuf,
        /// Variables: KEY=VALUE, @FILE.json (or .yml), or a JSON object; repeatable, later wins.
        #[arg(short = 'e', long = "extra-vars", value_name = "VARS")]
        extra_vars: Vec<String>,
        /// One JSON object per check as it finishes, then a summary object.
        #[arg(long)]
        json: bool,
        /// Checks run at the same time (default: the suite's, else 16).
        #[arg(long, value_name = "N")]
        parallelism: Option<usize>,
        /// Run one check at a time (same as --parallelism 1).
        #[arg(long, conflicts_with = "parallelism")]
        sequential: bool,
        /// Seconds the whole suite may take (default: the suite's, else 300).
        #[arg(long, value_name = "SECONDS")]
        deadline: Option<f64>,
    },
    /// Certificates for mutual TLS between controller, agents and CI.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Flyway-compatible PostgreSQL migrations (info, validate, migrate, baseline, repair,
    /// undo, clean) on Flyway's configuration and history table; `rampart migrate --help`.
    #[command(disable_help_flag = true)]
    Migrate {
        /// The command and Flyway-style settings, e.g. `info -url=jdbc:postgresql://... -user=app`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a private CA, a controller certificate and agent certificates in DIR.
    ///
    /// Files: ca.pem/ca.key, controller.pem/.key, agent-NAME.pem/.key (keys ECDSA P-256, 0600).
    /// Each certificate names localhost, 127.0.0.1 and its own name, and works as server and
    /// client. Existing files are never replaced without --force. Exit 0, or 2 with nothing
    /// written.
    #[command(after_help = "Examples:\n  \
        rampart certs init /etc/rampart/tls --agent web-1 --agent web-2\n  \
        rampart certs init ./tls --days 30 --force")]
    Init {
        /// Where the files go (created if missing).
        dir: PathBuf,
        /// An agent to make a certificate for (repeatable; default one named `agent`).
        #[arg(long = "agent", value_name = "NAME")]
        agents: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = rampart_controller::certs::DEFAULT_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Migrate { args } => rampart_controller::migrate::main(&args),
        Command::Certs(CertsCommand::Init {
            dir,
            agents,
            days,
            force,
        }) => {
            let opts = rampart_controller::certs::InitOptions {
                dir,
                agents,
                days,
                force,
            };
            match rampart_controller::certs::init(&opts) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    0
                }
                Err(e) => {
                    eprintln!("rampart certs init: {e}");
                    2
                }
            }
        }
        Command::Health {
            suite,
            extra_vars,
            json,
            parallelism,
            sequential,
            deadline,
        } => match parse_extra_vars(&extra_vars) {
            Ok(vars) => {
                rampart_controller::health::main(rampart_controller::health::HealthOptions {
                    suite: &suite,
                    vars,
                    json,
                    parallelism: if sequential { Some(1) } else { parallelism },
                    deadline,
                })
            }
            Err(e) => {
                eprintln!("rampart: {e}");
                rampart_controller::health::EXIT_USAGE
            }
        },
        Command::Run {
            playbook,
            local,
            agent,
            state_dir,
            extra_vars,
            check,
            json,
            lock_timeout,
            txid,
            reconnect_timeout,
            no_fsync,
        } => {
            let vars = match parse_extra_vars(&extra_vars) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("rampart: {e}");
                    return ExitCode::from(run::EXIT_USAGE as u8);
                }
            };
            let target = match (local, agent) {
                (_, Some(addr)) => Target::Agent {
                    addr,
                    reconnect_timeout: Duration::from_secs(reconnect_timeout),
                },
                _ => Target::Local {
                    state_dir,
                    durability: if no_fsync {
                        Durability::None
                    } else {
                        Durability::Fsync
                    },
                },
            };
            let opts = RunOptions {
                playbook,
                vars,
                check,
                format: if json { Format::Json } else { Format::Human },
                target,
                lock_timeout: Duration::from_secs(lock_timeout),
                txid,
            };
            match run::run(opts) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rampart: {}", e.message);
                    e.code
                }
            }
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
