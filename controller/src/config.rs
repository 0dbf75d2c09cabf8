//! The controller's configuration: one TOML file, read and checked once at start-up into typed
//! values. Everything wrong with it is reported at once, naming the key and what to do.
//!
//! ```toml
//! listen = "127.0.0.1:7430"
//! state_dir = "/var/lib/rampart-controller"   # artifacts, and the SQLite store by default
//!
//! [store]                 # optional; default: SQLite file <state_dir>/controller.db
//! url = "postgresql://rampart:secret@db.internal:5432/rampart"   # several controllers
//! outage_seconds = 300    # a runner retries an unanswering store this long, then gives up
//!
//! [artifacts]             # optional: the content-addressed store <state_dir>/artifacts
//! max_artifact_bytes = 2147483648    # one upload (2 GiB); RESOURCE_EXHAUSTED above
//! quota_bytes = 21474836480          # everything stored (20 GiB); RESOURCE_EXHAUSTED above
//! min_free_bytes = 1073741824        # free space an upload must leave on the disk (1 GiB)
//! keep_deployments = 20              # per environment: the newest N deployments keep theirs
//! gc_grace_seconds = 3600            # an unreferenced artifact used this recently is kept
//!
//! [tls]                   # the CI-facing API (clients authenticate with bearer tokens)
//! cert = "/etc/rampart/tls/controller.pem"
//! key = "/etc/rampart/tls/controller.key"
//!
//! [agent_tls]             # mutual TLS to the agents
//! cert = "/etc/rampart/tls/controller.pem"
//! key = "/etc/rampart/tls/controller.key"
//! ca = ["/etc/rampart/tls/ca.pem"]          # two during a CA rotation
//!
//! [metrics]               # optional: Prometheus's /metrics and /healthz, on their own address
//! listen = "127.0.0.1:9464"
//! cert = "/etc/rampart/tls/controller.pem"   # both or neither: TLS, else plaintext
//! key = "/etc/rampart/tls/controller.key"
//!
//! [consistency]
//! interval_seconds = 60   # every environment's hosts answer CheckState this often (0: never)
//!
//! [[tokens]]
//! name = "ci"
//! sha256 = "…"            # `rampart-controller hash-token` prints it; the token itself is never stored
//! environments = ["staging", "production"]  # default: all
//! scopes = ["deploy", "read"]               # default: ["deploy", "approve", "read"]
//!
//! [environments.production]
//! inventory = "/etc/rampart/production.yml" # Ansible YAML or INI inventory
//! hosts = "all"                             # an Ansible host pattern; default: the first play's `hosts`
//! playbook = "production"                   # built in (default), or a playbook file
//! rollback_playbook = "production"          # built in (default), or a playbook file
//! serial = [1, "10%", "50%"]                # default: the play's, else one wave
//! max_fail_percentage = 30                  # default: the play's, else none
//! bake_seconds = 0
//! require_approval = false
//! four_eyes = false                         # true: the token that asked may not approve (needs require_approval)
//! ci_vars = ["target_version"]              # the `vars_json` keys a Deploy may set (default shown)
//! wait_timeout_seconds = 600                # queue wait when the request gives none
//! approval_timeout_seconds = 86400          # with require_approval: then `approval_timed_out`
//! host_deadline_seconds = 1800              # one host's transaction, start to finish
//! unreachable_after_seconds = 15            # how long a lost agent is retried before `unreachable`
//! rescue_wait_seconds = 120                 # fleet rescue: how long an unreachable host is awaited
//! vars = { health_retries = 20 }            # extra variables for every host (lowest precedence)
//! require_postmortem = false                # true: resolving an incident needs --postmortem URL
//! # Canary stages instead of serial: cumulative shares, each wave judged before the next
//! # (see crate::analysis::config for [environments.production.analysis] and its checks).
//! # stages = [{ hosts = "10%", analysis = "5m" }, { hosts = "100%", analysis = "10m" }]
//!
//! # Sinks told of incidents (and, where listed, deployments); secrets only from files.
//! # events ⊆ incident, incident_resolved, approval, succeeded (default: the two incident ones;
//! # github and pagerduty take only those).
//! [environments.production.notify.github]
//! api_url = "https://api.github.com"        # default; Enterprise: https://HOST/api/v3
//! repository = "acme/shop"
//! token_file = "/etc/rampart/github-token"
//! [environments.production.notify.slack]
//! webhook_url_file = "/etc/rampart/slack-webhook-url"
//! events = ["incident", "incident_resolved", "approval", "succeeded"]
//! [environments.production.notify.pagerduty]
//! url = "https://events.pagerduty.com/v2/enqueue"   # default
//! routing_key_file = "/etc/rampart/pagerduty-routing-key"
//! [environments.production.notify.webhook]
//! url = "https://hooks.internal/rampart"
//! secret_file = "/etc/rampart/webhook-secret"      # HMAC-SHA256 key of X-Rampart-Signature (over "<timestamp>.<body>")
//! ```
//!
//! A bad sink (unknown type or key, a missing or empty secret file, a bad URL, a repository
//! that is not owner/name) is refused at start, naming the key (see [`crate::notify`]).
//!
//! A token's `scopes` say which RPCs it may call ([`Scope`]; `service::Rpc::scope` is the
//! table): `read` (Watch, GetDeployment, ListDeployments, ListEnvironments, ListIncidents),
//! `deploy` (UploadArtifact, Deploy, Rollback, Abort), `approve` (Approve), and `admin`, which
//! covers all of them plus ResolveIncident and GetForensics (bundles may hold state captures and
//! logs). A token without `scopes` gets [`DEFAULT_SCOPES`] — what every token could do before
//! scopes existed, except resolving incidents and fetching forensics, which now need `admin`.
//!
//! `ci_vars` bounds what a Deploy's extra variables (`vars_json`, `rampart deploy -e`) may
//! override: every top-level key must be listed, so a token cannot rewrite `components` (and
//! with it the command a host runs as `service.start`). Artifacts travel apart from it, in
//! `DeployRequest.artifacts`, and only fill in `components[].artifact`/`sha256` of components
//! the inventory already names.
//!
//! Each host's agent is at its `rampart_agent` host variable (`HOST:PORT`), else at
//! `ansible_host` (else the inventory name) and `rampart_agent_port` (else 7420).
//!
//! A deployment of an environment with `require_approval` waits for `Approve` at most
//! `approval_timeout_seconds`, counted from when it started waiting (a controller that takes it
//! over keeps counting from then); it then finishes `approval_timed_out`, having touched nothing.
//! The queue wait (`wait_timeout_seconds`) is separate and ends before the approval starts.
//!
//! `[artifacts]` bounds what uploads may take (see [`crate::artifact_store`]): an upload over
//! `max_artifact_bytes`, or one that would take the store over `quota_bytes` once the artifacts
//! nothing references are collected, is refused with RESOURCE_EXHAUSTED; one that would leave
//! less than `min_free_bytes` free with FAILED_PRECONDITION. An artifact is referenced by the
//! newest `keep_deployments` deployments of each environment, by every unfinished deployment,
//! and by the current release of each environment (its last successful deploy); anything else
//! last used more than `gc_grace_seconds` ago is removed at start-up, after every deployment
//! and by `rampart-controller gc`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_playbook::inventory::Inventory;
use rampart_playbook::template::Templar;
use rampart_rpc::tls::TlsFiles;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::rollout::{self, Serial};

/// The shipped transactional deploy playbook, built in.
pub const BUILTIN_DEPLOY: &str =
    include_str!("../../playbooks/production-deploy-transactional.yml");
/// The shipped rollback playbook, built in.
pub const BUILTIN_ROLLBACK: &str = include_str!("../../playbooks/rollback-production-safe.yml");
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7430";
/// Default agent port when the inventory gives none.
pub const DEFAULT_AGENT_PORT: u16 = rampart_playbook::inventory::DEFAULT_AGENT_PORT;
/// The longest duration a `*_seconds` setting of an environment takes (ten years).
pub const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// `[store] outage_seconds` when the configuration gives none.
pub const DEFAULT_STORE_OUTAGE: Duration = Duration::from_secs(300);
/// How long a deployment waits for `Approve` unless `approval_timeout_seconds` says otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The limits of the controller's artifact store (`[artifacts]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactConfig {
    /// The largest artifact an upload may bring (`max_artifact_bytes`).
    pub max_artifact_bytes: u64,
    /// The most the stored artifacts may take together (`quota_bytes`).
    pub quota_bytes: u64,
    /// The free space an upload must leave on the state directory's filesystem
    /// (`min_free_bytes`).
    pub min_free_bytes: u64,
    /// How many of each environment's newest deployments keep their artifacts
    /// (`keep_deployments`).
    pub keep_deployments: u32,
    /// An unreferenced artifact last used (uploaded, or named by a request) more recently than
    /// this is kept (`gc_grace_seconds`): CI uploads before it deploys.
    pub gc_grace: Duration,
}

impl Default for ArtifactConfig {
    fn default() -> Self {
        ArtifactConfig {
            max_artifact_bytes: 2 << 30,
            quota_bytes: 20 << 30,
            min_free_bytes: 1 << 30,
            keep_deployments: 20,
            gc_grace: Duration::from_secs(3600),
        }
    }
}

/// The scopes of a token whose configuration gives none.
pub const DEFAULT_SCOPES: [Scope; 3] = [Scope::Deploy, Scope::Approve, Scope::Read];
/// The `vars_json` keys CI may set in an environment whose configuration gives no `ci_vars`.
pub const DEFAULT_CI_VARS: [&str; 1] = ["target_version"];

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    insecure_dev: bool,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    tls: Option<RawServerTls>,
    #[serde(default)]
    agent_tls: Option<TlsFiles>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    artifacts: RawArtifacts,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    consistency: Option<RawConsistency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: SocketAddr,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsistency {
    #[serde(default)]
    interval_seconds: Option<f64>,
}

/// Where `/metrics` and `/healthz` are served (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The listener's address.
    pub listen: SocketAddr,
    /// TLS (cert, key); plaintext when absent.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The consistency sweep's default interval (`[consistency] interval_seconds`).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawArtifacts {
    max_artifact_bytes: u64,
    quota_bytes: u64,
    min_free_bytes: u64,
    keep_deployments: u32,
    gc_grace_seconds: f64,
}

impl Default for RawArtifacts {
    fn default() -> Self {
        let d = ArtifactConfig::default();
        RawArtifacts {
            max_artifact_bytes: d.max_artifact_bytes,
            quota_bytes: d.quota_bytes,
            min_free_bytes: d.min_free_bytes,
            keep_deployments: d.keep_deployments,
            gc_grace_seconds: d.gc_grace.as_secs_f64(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    outage_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    #[serde(default)]
    environments: Option<Vec<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    inventory: PathBuf,
    #[serde(default)]
    hosts: Option<String>,
    #[serde(default)]
    playbook: Option<String>,
    #[serde(default)]
    rollback_playbook: Option<String>,
    #[serde(default)]
    serial: Option<toml::Value>,
    #[serde(default)]
    max_fail_percentage: Option<f64>,
    #[serde(default)]
    bake_seconds: f64,
    #[serde(default)]
    require_approval: bool,
    #[serde(default)]
    four_eyes: bool,
    #[serde(default)]
    ci_vars: Option<Vec<String>>,
    #[serde(default = "default_wait")]
    wait_timeout_seconds: f64,
    #[serde(default = "default_approval_timeout")]
    approval_timeout_seconds: f64,
    #[serde(default = "default_deadline")]
    host_deadline_seconds: f64,
    #[serde(default = "default_unreachable")]
    unreachable_after_seconds: f64,
    #[serde(default = "default_rescue_wait")]
    rescue_wait_seconds: f64,
    #[serde(default)]
    vars: Option<toml::Table>,
    #[serde(default)]
    require_postmortem: bool,
    #[serde(default)]
    notify: Option<toml::Table>,
    #[serde(default)]
    stages: Option<Vec<crate::analysis::config::RawStage>>,
    #[serde(default)]
    analysis: Option<crate::analysis::config::RawAnalysis>,
}

fn default_wait() -> f64 {
    600.0
}
fn default_approval_timeout() -> f64 {
    DEFAULT_APPROVAL_TIMEOUT.as_secs_f64()
}
fn default_deadline() -> f64 {
    1800.0
}
fn default_unreachable() -> f64 {
    15.0
}
fn default_rescue_wait() -> f64 {
    120.0
}

/// Where deployments are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// An embedded SQLite file (one controller).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several controllers.
    Postgres(String),
}

/// What a token may do; each RPC needs one (`service::Rpc::scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Look: deployments, their events, environments, incidents.
    Read,
    /// Act: upload artifacts, deploy, roll back, abort.
    Deploy,
    /// Approve a deployment that waits for approval.
    Approve,
    /// Everything, and what only a person should do: resolve incidents, fetch forensics.
    Admin,
}

impl Scope {
    /// Every scope, in the order the configuration documents them.
    pub const ALL: [Scope; 4] = [Scope::Deploy, Scope::Approve, Scope::Read, Scope::Admin];

    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Approve => "approve",
            Scope::Admin => "admin",
        }
    }

    /// The scope a configuration name stands for.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A bearer token, by the sha256 of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The name recorded in history.
    pub name: String,
    /// sha256 of the token, lowercase hex.
    pub sha256: String,
    /// Environments it may act on; `None`: all.
    pub environments: Option<Vec<String>>,
    /// What it may do (sorted, no repeats); `admin` covers every other scope.
    pub scopes: Vec<Scope>,
}

impl Token {
    /// Whether the token holds `scope` (itself, or through `admin`).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the token may act on environment `env`.
    pub fn sees(&self, env: &str) -> bool {
        self.environments
            .as_ref()
            .is_none_or(|envs| envs.iter().any(|e| e == env))
    }
}

/// A playbook: its name (for errors and journals) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookText {
    /// `builtin:production-deploy-transactional.yml` or the file's path.
    pub name: String,
    /// The YAML.
    pub text: String,
    /// The files it brings in (roles, task files, vars files, templates), read when the
    /// configuration was loaded and sent with every run.
    pub files: Arc<Vec<(String, Vec<u8>)>>,
}

impl PlaybookText {
    /// Loads it with its files, as the agent will.
    pub fn load(
        &self,
        templar: &Templar,
    ) -> Result<rampart_playbook::Playbook, rampart_playbook::PlaybookError> {
        let read = |p: &str| -> Result<Option<String>, String> {
            match self.files.iter().find(|(k, _)| k == p) {
                Some((_, b)) => String::from_utf8(b.clone())
                    .map(Some)
                    .map_err(|_| "not UTF-8 text".to_string()),
                None => Ok(None),
            }
        };
        let opts = rampart_playbook::LoadOptions {
            read: &read,
            roles_path: Vec::new(),
        };
        rampart_playbook::load_tree(&self.name, &self.text, templar, &opts)
    }
}

/// One environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Where its inventory was read from.
    pub inventory_path: PathBuf,
    /// Its hosts, in rollout order.
    pub hosts: Vec<String>,
    /// Each host's variables (inventory groups and host, over the environment's `vars`).
    pub host_vars: BTreeMap<String, Map<String, Value>>,
    /// What each host's run sees of the inventory (`groups`, `hostvars`; every play runs);
    /// `None` when it is larger than an agent takes.
    pub inventory_view: Option<Arc<rampart_playbook::inventory::InventoryView>>,
    /// The deploy playbook.
    pub playbook: PlaybookText,
    /// The rollback playbook (fleet rescue and `Rollback`).
    pub rollback_playbook: PlaybookText,
    /// Wave sizes.
    pub serial: Vec<Serial>,
    /// Failure threshold in percent.
    pub max_fail_percentage: Option<f64>,
    /// Pause between waves.
    pub bake: Duration,
    /// Whether `Approve` is needed before the first wave.
    pub require_approval: bool,
    /// Whether the approving token must differ from the one that asked.
    pub four_eyes: bool,
    /// The top-level `vars_json` keys a request may set.
    pub ci_vars: Vec<String>,
    /// Default queue wait.
    pub wait_timeout: Duration,
    /// How long a deployment waits for `Approve` (with `require_approval`).
    pub approval_timeout: Duration,
    /// One host's transaction deadline.
    pub host_deadline: Duration,
    /// How long a lost agent is retried before it is `unreachable`.
    pub unreachable_after: Duration,
    /// How long the fleet rescue waits for an unreachable host.
    pub rescue_wait: Duration,
    /// Whether resolving an incident needs a post-mortem link (`require_postmortem`).
    pub require_postmortem: bool,
    /// The sinks told of incidents and deployments (`[environments.E.notify.<kind>]`).
    pub notify: Vec<crate::notify::Sink>,
    /// The canary stages (`stages`): each a wave judged for its analysis window before the
    /// next; empty without stages (waves come from `serial`).
    pub stages: Vec<crate::analysis::Stage>,
    /// The canary analysis (`[analysis]`), when configured.
    pub analysis: Option<Arc<crate::analysis::AnalysisConfig>>,
}

impl Environment {
    /// A host's `RunRequest.inventory_json`: the environment's inventory view as that host's
    /// (empty without one).
    pub fn inventory_json(&self, host: &str) -> String {
        let Some(view) = &self.inventory_view else {
            return String::new();
        };
        let mine = rampart_playbook::inventory::InventoryView {
            host: host.to_string(),
            ..(**view).clone()
        };
        serde_json::to_string(&mine).unwrap_or_default()
    }

    /// The agent address (`HOST:PORT`) of a host.
    pub fn agent_addr(&self, host: &str) -> String {
        let none = Map::new();
        rampart_playbook::inventory::agent_addr(host, self.host_vars.get(host).unwrap_or(&none))
    }
}

/// The names of the `components` a host's variables list (`[{name: …}, …]`), in order.
pub fn component_names(vars: &Map<String, Value>) -> Vec<String> {
    vars.get("components")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The controller's settings, checked.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Address of the gRPC API.
    pub listen: SocketAddr,
    /// Artifacts and the default SQLite store live here.
    pub state_dir: PathBuf,
    /// This controller's instance name (lock holder, history); default `HOSTNAME-PID`.
    pub instance: String,
    /// Plaintext on both sides (development only).
    pub insecure_dev: bool,
    /// The store.
    pub store: StoreConfig,
    /// How long a deployment's runner retries a store that does not answer before it gives the
    /// deployment up for a controller to adopt (`[store] outage_seconds`).
    pub store_outage: Duration,
    /// TLS of the CI-facing API: (cert, key).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Mutual TLS to the agents.
    pub agent_tls: Option<TlsFiles>,
    /// Bearer tokens.
    pub tokens: Vec<Token>,
    /// The artifact store's limits.
    pub artifacts: ArtifactConfig,
    /// Environments by name.
    pub environments: BTreeMap<String, Environment>,
    /// The `/metrics` listener; none when `[metrics]` is absent.
    pub metrics: Option<MetricsConfig>,
    /// How often every environment's hosts are checked for consistency (zero: never).
    pub sweep_interval: Duration,
}

/// sha256 of a token's text, lowercase hex: what the config stores.
pub fn hash_token(token: &str) -> String {
    let d = Sha256::digest(token.trim().as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl ControllerConfig {
    /// Reads and checks a TOML file. Relative paths in it are relative to the file's directory.
    pub fn load(path: &Path) -> Result<ControllerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks TOML text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ControllerConfig, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let state_dir = abs(&raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/rampart-controller")));
        let store_outage = match raw.store.as_ref().and_then(|s| s.outage_seconds) {
            None => DEFAULT_STORE_OUTAGE,
            Some(s) if s.is_finite() && (0.0..=MAX_SECONDS).contains(&s) => {
                Duration::from_secs_f64(s)
            }
            Some(s) => {
                return Err(format!(
                    "[store] outage_seconds must be a number of seconds from 0 to {MAX_SECONDS}, got {s}"
                ));
            }
        };
        let store = match raw.store {
            None => StoreConfig::Sqlite(state_dir.join("controller.db")),
            Some(RawStore {
                path: Some(_),
                url: Some(_),
                ..
            }) => {
                return Err(
                    "[store] takes either `path` (SQLite) or `url` (PostgreSQL), not both".into(),
                );
            }
            Some(RawStore { url: Some(u), .. }) => {
                if !(u.starts_with("postgresql://") || u.starts_with("postgres://")) {
                    return Err(format!(
                        "[store] url must be postgresql://USER:PASSWORD@HOST:PORT/DB, got {:?}",
                        redact(&u)
                    ));
                }
                StoreConfig::Postgres(u)
            }
            Some(RawStore { path, .. }) => StoreConfig::Sqlite(
                path.map(|p| abs(&p))
                    .unwrap_or_else(|| state_dir.join("controller.db")),
            ),
        };
        let tls = raw.tls.map(|t| (abs(&t.cert), abs(&t.key)));
        let agent_tls = raw.agent_tls.map(|t| TlsFiles {
            cert: abs(&t.cert),
            key: abs(&t.key),
            ca: t.ca.iter().map(|c| abs(c)).collect(),
        });
        if !raw.insecure_dev {
            if tls.is_none() {
                return Err("no [tls] section: give the API's certificate and key (e.g. from `rampart certs init`), or set insecure_dev = true for plaintext during development".into());
            }
            match &agent_tls {
                None => return Err("no [agent_tls] section: give the certificate, key and CA for mutual TLS with the agents, or set insecure_dev = true".into()),
                Some(a) if a.ca.is_empty() => return Err("[agent_tls] ca is empty: list the CA file(s) that signed the agents' certificates".into()),
                Some(_) => {}
            }
        }
        let mut tokens = Vec::new();
        for t in raw.tokens {
            let h = t.sha256.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "token {:?}: sha256 must be 64 hex digits (`rampart-controller hash-token` prints it)",
                    t.name
                ));
            }
            if t.name.trim().is_empty() {
                return Err("a token has an empty name: the name is what history records".into());
            }
            if tokens.iter().any(|x: &Token| x.name == t.name) {
                return Err(format!("token name {:?} is used twice", t.name));
            }
            let scopes = match &t.scopes {
                None => DEFAULT_SCOPES.to_vec(),
                Some(names) => {
                    let mut v = Vec::new();
                    for n in names {
                        v.push(Scope::parse(n).ok_or_else(|| {
                            format!(
                                "token {:?}: unknown scope {n:?}; the scopes are {}",
                                t.name,
                                Scope::ALL.map(Scope::name).join(", ")
                            )
                        })?);
                    }
                    if v.is_empty() {
                        return Err(format!(
                            "token {:?}: scopes is empty, so the token could do nothing; list what it may do ({}) or remove the token",
                            t.name,
                            Scope::ALL.map(Scope::name).join(", ")
                        ));
                    }
                    v
                }
            };
            let mut scopes = scopes;
            scopes.sort();
            scopes.dedup();
            tokens.push(Token {
                name: t.name,
                sha256: h,
                environments: t.environments,
                scopes,
            });
        }
        if tokens.is_empty() {
            return Err("no [[tokens]]: add at least one (name and the sha256 that `rampart-controller hash-token` prints), or nobody can call the controller".into());
        }
        let mut environments = BTreeMap::new();
        for (name, e) in raw.environments {
            let env =
                environment(&name, e, &abs).map_err(|m| format!("[environments.{name}] {m}"))?;
            environments.insert(name, env);
        }
        for t in &tokens {
            for e in t.environments.iter().flatten() {
                if !environments.contains_key(e) {
                    return Err(format!(
                        "token {:?} names environment {e:?}, which is not configured",
                        t.name
                    ));
                }
            }
        }
        let artifacts = artifact_config(raw.artifacts).map_err(|m| format!("[artifacts] {m}"))?;
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(MetricsConfig {
                listen: m.listen,
                tls: match (m.cert, m.key) {
                    (None, None) => None,
                    (Some(c), Some(k)) => Some((abs(&c), abs(&k))),
                    _ => {
                        return Err(
                            "[metrics] takes both `cert` and `key` (TLS), or neither (plaintext)"
                                .into(),
                        );
                    }
                },
            }),
        };
        let sweep_interval = match raw.consistency.and_then(|c| c.interval_seconds) {
            None => DEFAULT_SWEEP_INTERVAL,
            Some(0.0) => Duration::ZERO,
            Some(s) if s.is_finite() && (1.0..=MAX_SECONDS).contains(&s) => {
                Duration::from_secs_f64(s)
            }
            Some(s) => {
                return Err(format!(
                    "[consistency] interval_seconds must be 0 (no sweep) or from 1 to {MAX_SECONDS} seconds, got {s}"
                ));
            }
        };
        let instance = raw.instance.unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "controller".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(ControllerConfig {
            listen: raw
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default listen address")),
            state_dir,
            instance,
            insecure_dev: raw.insecure_dev,
            store,
            store_outage,
            tls,
            agent_tls,
            tokens,
            artifacts,
            environments,
            metrics,
            sweep_interval,
        })
    }

    /// The token whose text is `token`.
    pub fn token(&self, token: &str) -> Option<&Token> {
        let h = hash_token(token);
        // Compare every entry in full so timing says nothing about near misses.
        let mut found = None;
        for t in &self.tokens {
            if constant_eq(t.sha256.as_bytes(), h.as_bytes()) {
                found = Some(t);
            }
        }
        found
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A URL with its secrets masked (the product's one policy, [`rampart_migrate::redact_url`]).
pub use rampart_migrate::redact_url as redact;

fn playbook_text(
    spec: Option<&str>,
    builtin_name: &str,
    builtin: &str,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<PlaybookText, String> {
    let p = match spec {
        None | Some("production") => PlaybookText {
            name: format!("builtin:{builtin_name}"),
            text: builtin.to_string(),
            files: Arc::default(),
        },
        Some(path) => {
            let path = abs(Path::new(path));
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read playbook {}: {e}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let read = |p: &str| rampart_host::bundle::read_text(Some(&base), p);
            let opts = rampart_playbook::LoadOptions {
                read: &read,
                roles_path: Vec::new(),
            };
            let book = rampart_playbook::load_tree(&name, &text, &Templar::new(), &opts)
                .map_err(|err| format!("playbook: {err}"))?;
            let files = rampart_host::bundle::gather(&base, &book.files, &book.role_dirs)
                .map_err(|err| format!("playbook {name}: {err}"))?;
            PlaybookText {
                name,
                text,
                files: Arc::new(files),
            }
        }
    };
    Ok(p)
}

fn artifact_config(a: RawArtifacts) -> Result<ArtifactConfig, String> {
    if a.max_artifact_bytes == 0 {
        return Err("max_artifact_bytes must be over 0 (it bounds every upload)".into());
    }
    if a.quota_bytes < a.max_artifact_bytes {
        return Err(format!(
            "quota_bytes ({}) is under max_artifact_bytes ({}): the largest artifact could never be stored",
            a.quota_bytes, a.max_artifact_bytes
        ));
    }
    let gc_grace = Duration::try_from_secs_f64(a.gc_grace_seconds).map_err(|_| {
        format!(
            "gc_grace_seconds must be a number of seconds ≥ 0, got {}",
            a.gc_grace_seconds
        )
    })?;
    Ok(ArtifactConfig {
        max_artifact_bytes: a.max_artifact_bytes,
        quota_bytes: a.quota_bytes,
        min_free_bytes: a.min_free_bytes,
        keep_deployments: a.keep_deployments,
        gc_grace,
    })
}

fn toml_to_json(v: toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn environment(
    name: &str,
    e: RawEnvironment,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<Environment, String> {
    let inventory_path = abs(&e.inventory);
    let text = std::fs::read_to_string(&inventory_path)
        .map_err(|err| format!("cannot read inventory {}: {err}", inventory_path.display()))?;
    let inv = Inventory::parse(&text)
        .map_err(|err| format!("inventory {}: {err}", inventory_path.display()))?;
    let playbook = playbook_text(
        e.playbook.as_deref(),
        "production-deploy-transactional.yml",
        BUILTIN_DEPLOY,
        abs,
    )?;
    let rollback_playbook = playbook_text(
        e.rollback_playbook.as_deref(),
        "rollback-production-safe.yml",
        BUILTIN_ROLLBACK,
        abs,
    )?;
    let templar = Templar::new();
    let book = playbook
        .load(&templar)
        .map_err(|err| format!("playbook: {err}"))?;
    rollback_playbook
        .load(&templar)
        .map_err(|err| format!("rollback playbook: {err}"))?;
    let play = book.plays.first();
    let pattern = e
        .hosts
        .clone()
        .or_else(|| play.map(|p| p.hosts.clone()))
        .unwrap_or_else(|| "all".into());
    let mut view = inv.view();
    let all = view.groups.get("all").cloned().unwrap_or_default();
    let hosts = rampart_playbook::inventory::select(&pattern, &all, &view.groups)
        .map_err(|err| format!("hosts {pattern:?}: {err}"))?
        .hosts;
    if hosts.is_empty() {
        return Err(format!(
            "no host of inventory {} matches {pattern:?}",
            inventory_path.display()
        ));
    }
    let has_serial = e.serial.is_some();
    let serial_value = match e.serial {
        Some(v) => toml_to_json(v),
        None => play.and_then(|p| p.serial.clone()).unwrap_or(Value::Null),
    };
    let mut serial =
        rollout::parse_serial(&serial_value).map_err(|err| format!("serial: {err}"))?;
    let stages = match e.stages {
        None => Vec::new(),
        Some(raw) => {
            if has_serial {
                return Err(
                    "give either serial or stages, not both: stages are the waves of a canary rollout".into(),
                );
            }
            let stages = crate::analysis::config::parse_stages(raw)?;
            serial = crate::analysis::config::stage_waves(hosts.len(), &stages)
                .into_iter()
                .map(|(n, _)| rollout::Serial::Count(n as i64))
                .collect();
            stages
        }
    };
    let analysis = match e.analysis {
        None => None,
        Some(raw) => Some(Arc::new(crate::analysis::config::parse_analysis(raw, abs)?)),
    };
    match (&analysis, stages.iter().position(|s| s.analysis.is_some())) {
        (None, Some(i)) => {
            return Err(format!(
                "stages[{i}] has an analysis window but the environment has no [environments.{name}.analysis] table: add one with its source, [analysis.prometheus] or [analysis.probe]"
            ));
        }
        (Some(_), None) => {
            return Err(format!(
                "[environments.{name}.analysis] is set but no stage has an analysis window: give stages, e.g. stages = [{{ hosts = \"10%\", analysis = \"5m\" }}, {{ hosts = \"100%\", analysis = \"5m\" }}]"
            ));
        }
        _ => {}
    }
    let max_fail_percentage = e
        .max_fail_percentage
        .or_else(|| play.and_then(|p| p.max_fail_percentage));
    if let Some(m) = max_fail_percentage
        && !(0.0..=100.0).contains(&m)
    {
        return Err(format!("max_fail_percentage {m} is not between 0 and 100"));
    }
    let env_vars = match e.vars {
        Some(t) => match toml_to_json(toml::Value::Table(t)) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        None => Map::new(),
    };
    let mut host_vars = BTreeMap::new();
    for h in &hosts {
        let mut v = env_vars.clone();
        v.extend(inv.host_vars(h));
        host_vars.insert(h.clone(), v);
    }
    // `hostvars` shows every inventory host's variables over the environment's, as a host's
    // own variables are; the environment picked the hosts, so every play runs on each.
    for vars in view.hostvars.values_mut() {
        let mut v = env_vars.clone();
        v.append(vars);
        *vars = v;
    }
    view.every_play = true;
    let inventory_view = match serde_json::to_string(&view) {
        Ok(json) if json.len() <= rampart_playbook::inventory::MAX_INVENTORY_VIEW => {
            Some(Arc::new(view))
        }
        _ => {
            tracing::warn!(
                environment = name,
                "inventory {}: its hosts and variables exceed what an agent takes ({} bytes as \
                 JSON); playbooks of this environment see no `groups` or `hostvars`",
                inventory_path.display(),
                rampart_playbook::inventory::MAX_INVENTORY_VIEW
            );
            None
        }
    };
    if e.four_eyes && !e.require_approval {
        return Err(
            "four_eyes = true needs require_approval = true: without an approval step there is no second pair of eyes".into(),
        );
    }
    let ci_vars = match e.ci_vars {
        None => DEFAULT_CI_VARS.map(String::from).to_vec(),
        Some(v) => {
            if let Some(bad) = v.iter().find(|k| k.trim().is_empty() || k.contains('.')) {
                return Err(format!(
                    "ci_vars lists {bad:?}: give top-level variable names (a listed name allows its whole value)"
                ));
            }
            v
        }
    };
    // At most ten years: beyond, a deadline added to the clock could overflow it.
    let secs = |what: &str, s: f64| {
        if s.is_finite() && (0.0..=MAX_SECONDS).contains(&s) {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(format!(
                "{what} must be a number of seconds from 0 to {MAX_SECONDS}, got {s}"
            ))
        }
    };
    Ok(Environment {
        name: name.to_string(),
        inventory_path,
        hosts,
        host_vars,
        inventory_view,
        playbook,
        rollback_playbook,
        serial,
        max_fail_percentage,
        bake: secs("bake_seconds", e.bake_seconds)?,
        require_approval: e.require_approval,
        four_eyes: e.four_eyes,
        ci_vars,
        wait_timeout: secs("wait_timeout_seconds", e.wait_timeout_seconds)?,
        approval_timeout: secs("approval_timeout_seconds", e.approval_timeout_seconds)?,
        host_deadline: secs("host_deadline_seconds", e.host_deadline_seconds)?,
        unreachable_after: secs("unreachable_after_seconds", e.unreachable_after_seconds)?,
        rescue_wait: secs("rescue_wait_seconds", e.rescue_wait_seconds)?,
        require_postmortem: e.require_postmortem,
        notify: match &e.notify {
            Some(t) => crate::notify::parse_sinks(t, abs)?,
            None => Vec::new(),
        },
        stages,
        analysis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn parses_environments_tokens_and_agents() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "inv.yml",
            "all:\n  vars:\n    rampart_agent_port: 7500\n  children:\n    web:\n      hosts:\n        w1:\n          rampart_agent: 127.0.0.1:9001\n        w2:\n          ansible_host: 10.0.0.2\n",
        );
        let h = hash_token("s3cret\n");
        let cfg = ControllerConfig::parse(
            &format!(
                "insecure_dev = true\nstate_dir = \"st\"\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n\
                 [environments.prod]\ninventory = \"inv.yml\"\nserial = [1, \"50%\"]\nmax_fail_percentage = 30\nvars = {{ a = 1 }}\n"
            ),
            d.path(),
        )
        .unwrap();
        let env = &cfg.environments["prod"];
        assert_eq!(env.hosts, ["w1", "w2"]);
        assert_eq!(env.agent_addr("w1"), "127.0.0.1:9001");
        assert_eq!(env.agent_addr("w2"), "10.0.0.2:7500");
        assert_eq!(env.serial.len(), 2);
        assert_eq!(env.host_vars["w2"]["a"], 1);
        assert_eq!(
            cfg.store,
            StoreConfig::Sqlite(d.path().join("st/controller.db"))
        );
        assert_eq!(cfg.token("s3cret").unwrap().name, "ci");
        assert!(cfg.token("s3cret2").is_none());
    }

    #[test]
    fn store_outage_has_a_default_and_can_be_set() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "inv.ini", "[web]\nw1\n");
        let h = hash_token("t");
        let parse = |store: &str| {
            ControllerConfig::parse(
                &format!(
                    "insecure_dev = true\n{store}\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n"
                ),
                d.path(),
            )
        };
        assert_eq!(parse("").unwrap().store_outage, Duration::from_secs(300));
        let cfg = parse("[store]\nurl = \"postgresql://u:p@h/db\"\noutage_seconds = 2.5").unwrap();
        assert_eq!(cfg.store_outage, Duration::from_millis(2500));
        assert_eq!(
            cfg.store,
            StoreConfig::Postgres("postgresql://u:p@h/db".into())
        );
        // With SQLite too (a full disk makes it unavailable).
        let cfg = parse("[store]\noutage_seconds = 0").unwrap();
        assert_eq!(cfg.store_outage, Duration::ZERO);
        assert!(matches!(cfg.store, StoreConfig::Sqlite(_)));
        for bad in ["-1", "1e300", "nan"] {
            let e = parse(&format!("[store]\noutage_seconds = {bad}")).unwrap_err();
            assert!(e.contains("[store] outage_seconds"), "{bad}: {e}");
        }
    }

    #[test]
    fn approval_timeout_and_artifact_limits_have_defaults_and_can_be_set() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "inv.ini", "[web]\nw1\n");
        let h = hash_token("t");
        let base = format!("insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n");
        let parse = |top: &str, env: &str| {
            ControllerConfig::parse(
                &format!("{base}[environments.p]\ninventory = \"inv.ini\"\n{env}{top}"),
                d.path(),
            )
        };
        let cfg = parse("", "").unwrap();
        let p = &cfg.environments["p"];
        assert_eq!(p.approval_timeout, DEFAULT_APPROVAL_TIMEOUT);
        assert_eq!(p.approval_timeout, Duration::from_secs(86_400));
        // The queue wait is its own setting.
        assert_eq!(p.wait_timeout, Duration::from_secs(600));
        assert_eq!(cfg.artifacts, ArtifactConfig::default());
        assert_eq!(cfg.artifacts.max_artifact_bytes, 2 << 30);

        let cfg = parse(
            "[artifacts]\nmax_artifact_bytes = 10\nquota_bytes = 100\nmin_free_bytes = 0\nkeep_deployments = 3\ngc_grace_seconds = 1.5\n",
            "approval_timeout_seconds = 2\n",
        )
        .unwrap();
        assert_eq!(
            cfg.environments["p"].approval_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            cfg.artifacts,
            ArtifactConfig {
                max_artifact_bytes: 10,
                quota_bytes: 100,
                min_free_bytes: 0,
                keep_deployments: 3,
                gc_grace: Duration::from_millis(1500),
            }
        );

        let err = |top: &str, env: &str| parse(top, env).unwrap_err();
        let e = err("", "approval_timeout_seconds = -1\n");
        assert!(e.contains("approval_timeout_seconds"), "{e}");
        let e = err("", "approval_timeout_seconds = 1e30\n");
        assert!(e.contains("approval_timeout_seconds"), "{e}");
        let e = err(
            "[artifacts]\nmax_artifact_bytes = 10\nquota_bytes = 5\n",
            "",
        );
        assert!(e.contains("[artifacts] quota_bytes (5)"), "{e}");
        let e = err("[artifacts]\nmax_artifact_bytes = 0\n", "");
        assert!(e.contains("max_artifact_bytes"), "{e}");
        let e = err("[artifacts]\ngc_grace_seconds = -3\n", "");
        assert!(e.contains("gc_grace_seconds"), "{e}");
        let e = err("[artifacts]\nquota = 5\n", "");
        assert!(e.contains("quota"), "{e}");
    }

    #[test]
    fn refuses_what_cannot_work() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "inv.ini", "[web]\nw1\n");
        let h = hash_token("t");
        let base = format!("[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n");
        let err = |t: &str| ControllerConfig::parse(t, d.path()).unwrap_err();
        assert!(err(&base).contains("[tls]"), "{}", err(&base));
        let e = err("insecure_dev = true\n");
        assert!(e.contains("[[tokens]]"), "{e}");
        let e = err(&format!(
            "insecure_dev = true\n{base}[environments.p]\ninventory = \"nope.yml\"\n"
        ));
        assert!(e.contains("nope.yml"), "{e}");
        let e = err(&format!(
            "insecure_dev = true\n{base}[environments.p]\ninventory = \"inv.ini\"\nhosts = \"db\"\n"
        ));
        assert!(e.contains("no host"), "{e}");
        let e = err(&format!(
            "insecure_dev = true\n{base}[environments.p]\ninventory = \"inv.ini\"\nserial = \"x%\"\n"
        ));
        assert!(e.contains("serial"), "{e}");
        let e = err("insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"abc\"\n");
        assert!(e.contains("64 hex"), "{e}");
        let e = err(&format!("insecure_dev = true\nlisten = 1\n{base}"));
        assert!(e.contains("listen"), "{e}");
        assert_eq!(
            redact("postgresql://u:pw@h:5/db"),
            "postgresql://u:***@h:5/db"
        );
    }

    #[test]
    fn scopes_default_and_parse_and_four_eyes_needs_approval() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "inv.ini", "[web]\nw1\n");
        let h = hash_token("t");
        let h2 = hash_token("u");
        let cfg = ControllerConfig::parse(
            &format!(
                "insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n\
                 [[tokens]]\nname = \"ops\"\nsha256 = \"{h2}\"\nscopes = [\"read\", \"admin\", \"read\"]\n\
                 [environments.p]\ninventory = \"inv.ini\"\nrequire_approval = true\nfour_eyes = true\n\
                 [environments.q]\ninventory = \"inv.ini\"\nci_vars = [\"target_version\", \"feature\"]\n"
            ),
            d.path(),
        )
        .unwrap();
        let ci = cfg.token("t").unwrap();
        assert_eq!(ci.scopes, [Scope::Read, Scope::Deploy, Scope::Approve]);
        assert!(ci.has(Scope::Deploy) && !ci.has(Scope::Admin));
        let ops = cfg.token("u").unwrap();
        assert_eq!(ops.scopes, [Scope::Read, Scope::Admin]);
        assert!(ops.has(Scope::Deploy), "admin covers every scope");
        assert!(cfg.environments["p"].four_eyes);
        assert_eq!(cfg.environments["p"].ci_vars, ["target_version"]);
        assert_eq!(cfg.environments["q"].ci_vars, ["target_version", "feature"]);

        let err = |t: &str| ControllerConfig::parse(t, d.path()).unwrap_err();
        let e = err(&format!(
            "insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\nscopes = [\"root\"]\n"
        ));
        assert!(
            e.contains("unknown scope \"root\"") && e.contains("approve"),
            "{e}"
        );
        let e = err(&format!(
            "insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\nscopes = []\n"
        ));
        assert!(e.contains("scopes is empty"), "{e}");
        let e = err(&format!(
            "insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n\
             [environments.p]\ninventory = \"inv.ini\"\nfour_eyes = true\n"
        ));
        assert!(
            e.contains("four_eyes") && e.contains("require_approval"),
            "{e}"
        );
        let e = err(&format!(
            "insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n\
             [environments.p]\ninventory = \"inv.ini\"\nci_vars = [\"components.0\"]\n"
        ));
        assert!(e.contains("top-level"), "{e}");
    }
}

/// Property tests: any configuration text is checked or refused without a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const TOP: &[&str] = &[
        "insecure_dev = true\n",
        "insecure_dev = 1\n",
        "listen = \"127.0.0.1:1\"\n",
        "listen = 1\n",
        "state_dir = \"st\"\n",
        "instance = \"i\"\n",
        "unknown = 1\n",
    ];
    const TABLES: &[&str] = &[
        "[store]\nurl = \"postgresql://u:p@h/db\"\n",
        "[store]\npath = \"x.db\"\n",
        "[store]\nurl = \"mysql://h\"\npath = \"p\"\n",
        "[tls]\ncert = \"c\"\nkey = \"k\"\n",
        "[agent_tls]\ncert = \"c\"\nkey = \"k\"\nca = []\n",
        "[[tokens]]\nname = \"ci\"\nsha256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n",
        "[[tokens]]\nname = \"ci\"\nsha256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\nenvironments = [\"e\"]\n",
        "[[tokens]]\nname = \" \"\nsha256 = \"zz\"\n",
        "[[tokens]]\nname = \"x\"\nsha256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\nenvironments = [\"nope\"]\n",
    ];
    const ENV_KEYS: &[&str] = &[
        "hosts",
        "playbook",
        "rollback_playbook",
        "serial",
        "max_fail_percentage",
        "bake_seconds",
        "require_approval",
        "wait_timeout_seconds",
        "host_deadline_seconds",
        "inventory",
        "unreachable_after_seconds",
        "rescue_wait_seconds",
        "vars",
        "other",
    ];
    const VALUES: &[&str] = &[
        "1",
        "0",
        "-1",
        "1e300",
        "1.5",
        "nan",
        "inf",
        "-inf",
        "18446744073709551616.0",
        "true",
        "\"all\"",
        "\"web\"",
        "\"production\"",
        "\"inv.ini\"",
        "\"inv.yml\"",
        "\"missing.yml\"",
        "[1, \"50%\"]",
        "\"x%\"",
        "[]",
        "[0]",
        "\"200%\"",
        "{ a = 1, b = [1.5] }",
        "\"\"",
        "101",
    ];

    fn config_text() -> impl Strategy<Value = String> {
        let env_line = (prop::sample::select(ENV_KEYS), prop::sample::select(VALUES))
            .prop_map(|(k, v)| format!("{k} = {v}\n"));
        (
            prop::collection::vec(prop::sample::select(TOP), 0..4),
            prop::collection::vec(prop::sample::select(TABLES), 0..4),
            prop::collection::vec(env_line, 0..6),
        )
            .prop_map(|(top, tables, env)| {
                format!(
                    "insecure_dev = true\n{}{}[environments.e]\ninventory = \"inv.ini\"\n{}",
                    top.concat(),
                    tables.concat(),
                    env.concat()
                )
            })
    }

    /// Found by `fuzz_controller_config_never_panics`: a finite number of seconds too large for
    /// a `Duration` panicked in `Duration::from_secs_f64`.
    #[test]
    fn fuzz_regression_seconds_too_large_for_a_duration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inv.ini"), "[web]\nw1\n").unwrap();
        let h = hash_token("t");
        for key in [
            "bake_seconds",
            "wait_timeout_seconds",
            "rescue_wait_seconds",
        ] {
            let text = format!(
                "insecure_dev = true\n[[tokens]]\nname = \"ci\"\nsha256 = \"{h}\"\n\
                 [environments.e]\ninventory = \"inv.ini\"\n{key} = 1e300\n"
            );
            let e = ControllerConfig::parse(&text, dir.path()).unwrap_err();
            assert!(e.contains(key) && e.contains("seconds"), "{e}");
        }
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(1000))]

        #[test]
        fn fuzz_controller_config_never_panics(text in prop_oneof![4 => config_text(), 1 => rampart_fuzz::text(&["[", "]", "=", "\"", "\n", "tokens", "environments.e", "1e300"], 20)]) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("inv.ini"), "[web]\nw1\nw2 rampart_agent=127.0.0.1:1\n").unwrap();
            std::fs::write(dir.path().join("inv.yml"), "all:\n  hosts:\n    h[1:3]:\n").unwrap();
            if let Ok(cfg) = ControllerConfig::parse(&text, dir.path()) {
                for env in cfg.environments.values() {
                    prop_assert!(!env.hosts.is_empty());
                    for h in &env.hosts {
                        prop_assert!(!env.agent_addr(h).is_empty());
                    }
                }
            }
        }
    }
}
