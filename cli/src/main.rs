//! `rampart`: the command line for people and CI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rampart_agent::journal::Durability;
use rampart_agent::transaction::DEFAULT_STATE_DIR;
use rampart_cli::exit::Exit;
use rampart_cli::output::Format;
use rampart_cli::run::{self, RunOptions, Target};
use rampart_cli::vars::parse_extra_vars;

/// Rampart: transactional deploys for ordinary Linux servers.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a playbook on one host as one transaction (block → rescue on failure → always), or
    /// on the hosts of an Ansible inventory, each its own transaction.
    ///
    /// Exit codes (with -i on several hosts: the first host's that did not succeed): 0 succeeded (or check mode passed), 1 failed and rolled back by a rescue,
    /// 2 usage or configuration error (nothing ran), 4 rollback failed (CRITICAL: the rescue
    /// itself failed), 5 host lock not acquired in time, 6 failed with no rescue to roll it back.
    #[command(after_help = "Examples:\n  \
        rampart run deploy.yml --local --state-dir /tmp/rampart -e version=2.0.1\n  \
        rampart run deploy.yml --agent 127.0.0.1:7420 -e @vars.json --json\n  \
        rampart run deploy.yml --agent web-1:7420 --tls-cert tls/controller.pem \\\n      \
        --tls-key tls/controller.key --tls-ca tls/ca.pem\n  \
        rampart run deploy.yml --local --check\n  \
        rampart run deploy.yml --local --pushgateway http://127.0.0.1:9091   # facts to Prometheus\n  \
        rampart run site.yml -i inventory.ini --limit 'web:!web3'   # each host on its agent\n  \
        rampart run site.yml -i inventory.yml --limit web1 --local  # this host, as web1")]
    Run {
        /// The playbook (a YAML list of plays).
        playbook: PathBuf,
        /// Run in this process on this host.
        #[arg(
            long,
            conflicts_with = "agent",
            required_unless_present_any = ["agent", "inventory"]
        )]
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
        /// With --agent: mutual TLS; the certificate to present (PEM; e.g. controller.pem from
        /// `rampart certs init`). Needs --tls-key and --tls-ca.
        #[arg(long, value_name = "FILE", conflicts_with = "local")]
        tls_cert: Option<PathBuf>,
        /// With --agent: the private key of --tls-cert (PEM).
        #[arg(long, value_name = "FILE", conflicts_with = "local")]
        tls_key: Option<PathBuf>,
        /// With --agent: a CA trusted to sign the agent's certificate (PEM); repeatable.
        #[arg(long, value_name = "FILE", conflicts_with = "local")]
        tls_ca: Vec<PathBuf>,
        /// With --local: after the run, PUT its facts (outcome, duration, task counts, the
        /// release per component, the host's consistency, transactions by outcome) to this
        /// Prometheus Pushgateway (http:// or https://) as
        /// URL/metrics/job/JOB/instance/HOSTNAME. A failed push (5 s at most) only warns.
        #[arg(long, value_name = "URL", conflicts_with = "agent")]
        pushgateway: Option<String>,
        /// With --pushgateway: the job label of the push.
        #[arg(
            long,
            value_name = "JOB",
            default_value = "rampart",
            requires = "pushgateway"
        )]
        push_job: String,
        /// Run only tasks tagged with one of TAGS (comma-separated, repeatable); Ansible's
        /// special tags work: `always` tasks run unless skipped, `never` tasks only when named,
        /// `tagged`, `untagged`, `all`.
        #[arg(short = 't', long, value_name = "TAGS", value_delimiter = ',')]
        tags: Vec<String>,
        /// Skip tasks tagged with one of TAGS (comma-separated, repeatable); wins over --tags.
        #[arg(long, value_name = "TAGS", value_delimiter = ',')]
        skip_tags: Vec<String>,
        /// Run the handlers a host notified even after it failed.
        #[arg(long)]
        force_handlers: bool,
        /// Show what file modules changed, as before/after text.
        #[arg(long, short = 'D')]
        diff: bool,
        /// Directories searched for roles after the playbook's own roles/ (colon-separated,
        /// repeatable; default: $ANSIBLE_ROLES_PATH).
        #[arg(long, value_name = "DIRS", value_delimiter = ':')]
        roles_path: Vec<String>,
        /// Refused: a transaction starts at its beginning, so its rescue knows what ran (use
        /// --tags to run a part of a playbook).
        #[arg(long, value_name = "TASK", hide_short_help = true)]
        start_at_task: Option<String>,
        /// An Ansible inventory (INI or YAML). The run goes to the hosts that the plays'
        /// `hosts` patterns and --limit select; each sees `inventory_hostname`, `groups`,
        /// `group_names`, `hostvars` and its inventory variables, and skips the plays that do
        /// not select it. Without --local or --agent each host runs on its own agent (its
        /// `rampart_agent` variable, else `ansible_host`:`rampart_agent_port`, else NAME:7420),
        /// one after another, each its own transaction; the first host that does not succeed
        /// stops the run. With --local or --agent exactly one host must be selected.
        #[arg(short = 'i', long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// With -i: only the hosts this Ansible pattern selects too (`web`, `web*:&prod`,
        /// `all:!db1`, `~web[0-9]+`, `web[0]`).
        #[arg(short = 'l', long, value_name = "PATTERN", requires = "inventory")]
        limit: Option<String>,
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
    /// Deploy a version to an environment through the controller, in waves, all or nothing.
    ///
    /// Uploads each --artifact into the controller's store (skipped when it already holds the
    /// digest), asks for the deployment and follows its events until it finishes: the queue
    /// behind other deployments of the environment, the lock, the waves, each host's tasks and,
    /// when a wave fails, the fleet rescue that rolls back every host the deployment changed.
    /// When the event stream breaks, it re-attaches for up to --reconnect-timeout; the
    /// deployment continues on the controller either way (`rampart watch ID`).
    ///
    /// Output: one line per event and a per-host table (a live status line on a terminal), or
    /// one JSON object per event with --json.
    ///
    /// Exit codes: 0 deployed and healthy (or check mode passed), 1 failed and rolled back
    /// (verified), failed without changing anything, aborted, or not approved within the
    /// environment's approval_timeout_seconds, 2 usage or configuration error (an artifact over
    /// the controller's limits included) or the controller cannot be reached, 3 token refused,
    /// 4 rollback failed (CRITICAL: hosts need a person), 5 deployment lock not acquired within
    /// --wait-timeout.
    #[command(
        disable_version_flag = true,
        after_help = "Examples:\n  \
        rampart deploy --env production --version 2.4.1 --artifact backend=dist/backend-2.4.1.tar.gz \\\n      \
        --controller https://deploy.internal:7430 --ca ca.pem --token-file /run/secrets/rampart-token\n  \
        rampart deploy --env staging --version 2.4.1 --artifact backend=dist/backend.tar.gz \\\n      \
        --artifact frontend=dist/frontend.tar.gz -e feature_x=true --serial 1 --serial 50% \\\n      \
        --max-fail-percentage 20\n  \
        rampart deploy --env production --version 2.4.1 --artifact backend=dist/b.tar.gz --check --json\n\n\
        Environment: RAMPART_CONTROLLER, RAMPART_TOKEN_FILE, RAMPART_TOKEN, RAMPART_CA; --ci-run-id \
        defaults to CI_PIPELINE_ID, GITHUB_RUN_ID or BUILD_ID, --commit to CI_COMMIT_SHA, GITHUB_SHA \
        or GIT_COMMIT."
    )]
    Deploy(rampart_cli::commands::deploy::DeployArgs),
    /// Roll an environment back to an earlier version, as a deployment of its own.
    ///
    /// Queued like any deployment, run in waves, and followed until it finishes, with the same
    /// output as `rampart deploy`. Without --to, the environment returns to the last version it
    /// ran successfully before its current one. --reason is recorded in history. A host that no
    /// longer has the target release gets its artifact from the controller and stages it again.
    /// --database none (default) leaves the schema as it is and says which schema version the
    /// target now runs on; --database undo undoes the left release's migrations down to the
    /// target's (the environment's `database` variable says where).
    ///
    /// Exit codes: 0 rolled back and healthy, 1 did not reach the target (every host back where it
    /// was, or nothing changed), failed
    /// without changing anything, or aborted, 2 usage or configuration error or the controller
    /// cannot be reached, 3 token refused, 4 rollback failed (CRITICAL), 5 deployment lock not
    /// acquired within --wait-timeout.
    #[command(after_help = "Examples:\n  \
        rampart rollback --env production --reason 'error rate up after 2.4.1' \\\n      \
        --controller https://deploy.internal:7430 --ca ca.pem --token-file /run/secrets/rampart-token\n  \
        rampart rollback --env production --to 2.3.0 --reason 'INC-1234' --json
          rampart rollback --env production --to 2.3.0 --database undo --reason 'V24 breaks reports'")]
    Rollback(rampart_cli::commands::deploy::RollbackArgs),
    /// Follow a deployment's events (replaying those already stored) until it finishes.
    ///
    /// Works for running and finished deployments alike, with the same output as
    /// `rampart deploy`; --from-seq skips the events before it.
    ///
    /// Exit codes: those of the deployment's outcome, as for `rampart deploy` (0 deployed and
    /// healthy, 1 failed and rolled back, 4 rollback failed, 5 lock timeout), or 2 unknown
    /// deployment or controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart watch d-20250131T120000Z-4f2a9c1e\n  \
        rampart watch d-20250131T120000Z-4f2a9c1e --from-seq 120 --json")]
    Watch(rampart_cli::commands::deploy::WatchArgs),
    /// Show what each environment is doing: its current version, running and queued
    /// deployments, and the last one.
    ///
    /// One block per environment the token may act on (quiet ones included): the version its
    /// last successful deployment put on every host (CURRENT), the running, awaiting approval,
    /// rescuing and queued deployments (with their queue position), and the last finished one.
    /// With --json, an array of {environment, hosts, current_version, active, last_finished}.
    ///
    /// With --verify, every host is also asked now whether it is whole (SC-003: no partial
    /// deployment), and the JSON of each environment gets a `verify` object.
    ///
    /// Exit codes: 0 shown (and, with --verify, every environment whole), 1 an environment is
    /// not whole, 2 usage error or controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart status\n  \
        rampart status --env production --json\n  \
        rampart status --env production --verify")]
    Status(rampart_cli::commands::query::StatusArgs),
    /// List an environment's deployments, newest first.
    ///
    /// Each with id, kind, version, outcome (or state while unfinished), who asked, CI run,
    /// commit, creation time, duration and a summary of its hosts' states. With --stats, the
    /// environment's delivery figures over --since instead (DORA's four keys, SC-001, SC-002).
    ///
    /// Exit codes: 0 shown, 2 unknown environment or controller unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart history --env production\n  \
        rampart history --env production --limit 100 --json\n  \
        rampart history --env production --stats --since 30d\n  \
        rampart history --env production --stats --since 12h --json | jq .sc001")]
    History(rampart_cli::commands::query::HistoryArgs),
    /// Inspect one deployment (`rampart deployment show ID`).
    #[command(subcommand)]
    Deployment(rampart_cli::commands::query::DeploymentCommand),
    /// Approve a deployment that waits for manual approval before its first wave.
    ///
    /// Prints the deployment's state after the approval. Any controller sharing the store
    /// takes it: one that does not run the deployment records it for the one that does, and
    /// says it was forwarded.
    ///
    /// Exit codes: 0 approved, 2 unknown deployment, not awaiting approval, or controller
    /// unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart approve d-20250131T120000Z-4f2a9c1e --comment 'change CHG-42 approved'")]
    Approve(rampart_cli::commands::query::ApproveArgs),
    /// Abort a deployment.
    ///
    /// A queued or unapproved deployment is dropped without touching any host; a running one
    /// stops starting hosts and rolls back every host it changed (follow it with
    /// `rampart watch`). Prints the deployment's state after the request. Any controller
    /// sharing the store takes it, like `rampart approve`.
    ///
    /// Exit codes: 0 abort accepted, 2 unknown or finished deployment, or controller
    /// unreachable, 3 token refused.
    #[command(after_help = "Examples:\n  \
        rampart abort d-20250131T120000Z-4f2a9c1e --reason 'wrong version'")]
    Abort(rampart_cli::commands::query::AbortArgs),
    /// Forensics bundles hosts recorded during deployments (`rampart forensics get`).
    #[command(subcommand)]
    Forensics(rampart_cli::commands::query::ForensicsCommand),
    /// List incidents (deployments that need or needed a person), or resolve one.
    ///
    /// Without a subcommand, lists incidents newest first with severity, state, environment,
    /// deployment, hosts and summary. `rampart incidents resolve ID --note TEXT [--ack]
    /// [--postmortem URL]` acknowledges or resolves one; `rampart incidents postmortem ID
    /// [--output FILE]` renders its post-mortem draft.
    ///
    /// Exit codes: 0 done, 2 unknown incident or controller unreachable, 3 token refused.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  \
        rampart incidents --env production\n  \
        rampart incidents resolve inc-20250131T120000Z-4f2a9c1e --note 'web2 restored by hand' --json"
    )]
    Incidents(rampart_cli::commands::query::IncidentsArgs),
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
    /// Each certificate names localhost, 127.0.0.1 and its own name. controller.pem serves (the
    /// CI API) and is the agents' client, with the identity spiffe://rampart/controller that
    /// agents trust by default; agent-NAME.pem only serves, for host NAME: give --agent the
    /// inventory's host names, which the controller checks. Existing files are never replaced
    /// without --force. Exit 0, or 2 with nothing written.
    #[command(after_help = "Examples:\n  \
        rampart certs init /etc/rampart/tls --agent web-1 --agent web-2\n  \
        rampart certs init ./tls --days 30 --force")]
    Init {
        /// Where the files go (created if missing).
        dir: PathBuf,
        /// An agent to make a certificate for: its inventory host name (repeatable; default one
        /// named `agent`).
        #[arg(long = "agent", value_name = "NAME")]
        agents: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = rampart_cli::certs::DEFAULT_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let exit = match cli.command {
        Command::Migrate { args } => rampart_cli::migrate::main(&args),
        Command::Deploy(args) => rampart_cli::commands::deploy::deploy(args),
        Command::Rollback(args) => rampart_cli::commands::deploy::rollback(args),
        Command::Watch(args) => rampart_cli::commands::deploy::watch(args),
        Command::Status(args) => rampart_cli::commands::query::status(args),
        Command::History(args) => rampart_cli::commands::query::history(args),
        Command::Deployment(cmd) => rampart_cli::commands::query::deployment(cmd),
        Command::Approve(args) => rampart_cli::commands::query::approve(args),
        Command::Abort(args) => rampart_cli::commands::query::abort(args),
        Command::Forensics(cmd) => rampart_cli::commands::query::forensics(cmd),
        Command::Incidents(args) => rampart_cli::commands::query::incidents(args),
        Command::Certs(CertsCommand::Init {
            dir,
            agents,
            days,
            force,
        }) => {
            let opts = rampart_cli::certs::InitOptions {
                dir,
                agents,
                days,
                force,
            };
            match rampart_cli::certs::init(&opts) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    Exit::Ok
                }
                Err(e) => {
                    eprintln!("rampart certs init: {e}");
                    Exit::Usage
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
            Ok(vars) => rampart_cli::health::main(rampart_cli::health::HealthOptions {
                suite: &suite,
                vars,
                json,
                parallelism: if sequential { Some(1) } else { parallelism },
                deadline,
            }),
            Err(e) => {
                eprintln!("rampart: {e}");
                Exit::Usage
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
            tls_cert,
            tls_key,
            tls_ca,
            pushgateway,
            push_job,
            tags,
            skip_tags,
            force_handlers,
            diff,
            roles_path,
            start_at_task,
            inventory,
            limit,
        } => {
            if let Some(task) = start_at_task {
                eprintln!(
                    "rampart: --start-at-task {task:?} is refused: a transaction runs from its first task, so that its rescue restores everything the run changed and its journal can be recovered; run a part of a playbook with --tags instead"
                );
                return Exit::Usage.into();
            }
            let roles_path = if roles_path.is_empty() {
                std::env::var("ANSIBLE_ROLES_PATH")
                    .map(|v| {
                        v.split(':')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                roles_path
            };
            let flags = rampart_agent::event::RunFlags {
                tags,
                skip_tags,
                force_handlers,
                diff,
                roles_path,
                inventory: None,
            };
            let push = match pushgateway
                .map(|url| rampart_cli::push::Push::new(&url, &push_job))
                .transpose()
            {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("rampart: {}", e.message);
                    return e.exit.into();
                }
            };
            let vars = match parse_extra_vars(&extra_vars) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("rampart: {e}");
                    return Exit::Usage.into();
                }
            };
            let tls = match rampart_rpc::tls::TlsFiles::from_flags(tls_cert, tls_key, tls_ca) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("rampart: {e}");
                    return Exit::Usage.into();
                }
            };
            let target = match (local, agent) {
                (_, Some(addr)) => Target::Agent {
                    addr,
                    reconnect_timeout: Duration::from_secs(reconnect_timeout),
                    tls,
                },
                (false, None) => Target::Inventory {
                    reconnect_timeout: Duration::from_secs(reconnect_timeout),
                    tls,
                },
                (true, None) => Target::Local {
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
                push,
                flags,
                inventory: inventory.map(|path| rampart_cli::run::InventoryRun { path, limit }),
            };
            match run::run(opts) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rampart: {}", e.message);
                    e.exit
                }
            }
        }
    };
    exit.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every deployment or incident id in the help looks like one the controller makes:
    /// `d-<yyyymmddThhmmssZ>-<8 hex>` (`rampart_rpc::ids`) and `inc-` + the deployment id
    /// without its `d-` (the runner's incident id).
    #[test]
    fn ids_in_the_help_have_the_shape_of_real_ones() {
        let real = rampart_rpc::ids::new_deployment_id();
        let shape = |id: &str| -> String {
            id.chars()
                .map(|c| {
                    if c.is_ascii_digit() || c.is_ascii_hexdigit() && c.is_ascii_lowercase() {
                        '0'
                    } else {
                        c
                    }
                })
                .collect()
        };
        let want_d = shape(&real);
        let want_inc = shape(&format!("inc-{}", real.trim_start_matches("d-")));
        let mut seen = 0;
        let mut stack = vec![Cli::command()];
        while let Some(mut cmd) = stack.pop() {
            let help = cmd.render_long_help().to_string();
            for word in help.split(|c: char| c.is_whitespace() || c == '\'') {
                if word.starts_with("d-2") {
                    assert_eq!(
                        shape(word),
                        want_d,
                        "{word} in the help of {}",
                        cmd.get_name()
                    );
                    seen += 1;
                }
                if word.starts_with("inc-") || word.starts_with("i-") {
                    assert_eq!(
                        shape(word),
                        want_inc,
                        "{word} in the help of {}",
                        cmd.get_name()
                    );
                    seen += 1;
                }
            }
            stack.extend(cmd.get_subcommands().cloned());
        }
        assert!(seen >= 8, "ids checked: {seen}");
    }
}
