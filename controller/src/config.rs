//! The controller's configuration: one TOML file, read and checked once at start-up into typed
//! values. Everything wrong with it is reported at once, naming the key and what to do.
//!
//! ```toml
//! listen = "127.0.0.1:7430"
//! state_dir = "/var/lib/rampart-controller"   # artifacts, and the SQLite store by default
//!
//! [store]                 # optional; default: SQLite file <state_dir>/controller.db
//! url = "postgresql://rampart:secret@db.internal:5432/rampart"   # several controllers
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
//! [[tokens]]
//! name = "ci"
//! sha256 = "…"            # `rampart-controller hash-token` prints it; the token itself is never stored
//! environments = ["staging", "production"]  # default: all
//!
//! [environments.production]
//! inventory = "/etc/rampart/production.yml" # Ansible YAML or INI inventory
//! hosts = "all"                             # pattern; default: the play's `hosts`
//! playbook = "production"                   # built in (default), or a playbook file
//! rollback_playbook = "production"          # built in (default), or a playbook file
//! serial = [1, "10%", "50%"]                # default: the play's, else one wave
//! max_fail_percentage = 30                  # default: the play's, else none
//! bake_seconds = 0
//! require_approval = false
//! wait_timeout_seconds = 600                # queue wait when the request gives none
//! host_deadline_seconds = 1800              # one host's transaction, start to finish
//! unreachable_after_seconds = 15            # how long a lost agent is retried before `unreachable`
//! rescue_wait_seconds = 120                 # fleet rescue: how long an unreachable host is awaited
//! vars = { health_retries = 20 }            # extra variables for every host (lowest precedence)
//! ```
//!
//! Each host's agent is at its `rampart_agent` host variable (`HOST:PORT`), else at
//! `ansible_host` (else the inventory name) and `rampart_agent_port` (else 7420).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_playbook::template::Templar;
use rampart_rpc::tls::TlsFiles;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::inventory::Inventory;
use crate::rollout::{self, Serial};

/// The shipped transactional deploy playbook, built in.
pub const BUILTIN_DEPLOY: &str =
    include_str!("../../playbooks/production-deploy-transactional.yml");
/// The shipped rollback playbook, built in.
pub const BUILTIN_ROLLBACK: &str = include_str!("../../playbooks/rollback-production-safe.yml");
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7430";
/// Default agent port when the inventory gives none.
pub const DEFAULT_AGENT_PORT: u16 = 7420;

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
    environments: BTreeMap<String, RawEnvironment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
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
    #[serde(default = "default_wait")]
    wait_timeout_seconds: f64,
    #[serde(default = "default_deadline")]
    host_deadline_seconds: f64,
    #[serde(default = "default_unreachable")]
    unreachable_after_seconds: f64,
    #[serde(default = "default_rescue_wait")]
    rescue_wait_seconds: f64,
    #[serde(default)]
    vars: Option<toml::Table>,
}

fn default_wait() -> f64 {
    600.0
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

/// A bearer token, by the sha256 of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The name recorded in history.
    pub name: String,
    /// sha256 of the token, lowercase hex.
    pub sha256: String,
    /// Environments it may act on; `None`: all.
    pub environments: Option<Vec<String>>,
}

/// A playbook: its name (for errors and journals) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookText {
    /// `builtin:production-deploy-transactional.yml` or the file's path.
    pub name: String,
    /// The YAML.
    pub text: String,
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
    /// Default queue wait.
    pub wait_timeout: Duration,
    /// One host's transaction deadline.
    pub host_deadline: Duration,
    /// How long a lost agent is retried before it is `unreachable`.
    pub unreachable_after: Duration,
    /// How long the fleet rescue waits for an unreachable host.
    pub rescue_wait: Duration,
}

impl Environment {
    /// The agent address (`HOST:PORT`) of a host.
    pub fn agent_addr(&self, host: &str) -> String {
        let vars = self.host_vars.get(host);
        let s = |k: &str| vars.and_then(|v| v.get(k)).and_then(value_text);
        if let Some(a) = s("rampart_agent") {
            return a;
        }
        let h = s("ansible_host").unwrap_or_else(|| host.to_string());
        let port = s("rampart_agent_port").unwrap_or_else(|| DEFAULT_AGENT_PORT.to_string());
        format!("{h}:{port}")
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

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
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
    /// TLS of the CI-facing API: (cert, key).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Mutual TLS to the agents.
    pub agent_tls: Option<TlsFiles>,
    /// Bearer tokens.
    pub tokens: Vec<Token>,
    /// Environments by name.
    pub environments: BTreeMap<String, Environment>,
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
        let store = match raw.store {
            None => StoreConfig::Sqlite(state_dir.join("controller.db")),
            Some(RawStore {
                path: Some(_),
                url: Some(_),
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
            tokens.push(Token {
                name: t.name,
                sha256: h,
                environments: t.environments,
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
            tls,
            agent_tls,
            tokens,
            environments,
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
        },
        Some(path) => {
            let path = abs(Path::new(path));
            PlaybookText {
                name: path.display().to_string(),
                text: std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read playbook {}: {e}", path.display()))?,
            }
        }
    };
    Ok(p)
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
    let book = rampart_playbook::load(&playbook.name, &playbook.text, &templar)
        .map_err(|err| format!("playbook: {err}"))?;
    rampart_playbook::load(&rollback_playbook.name, &rollback_playbook.text, &templar)
        .map_err(|err| format!("rollback playbook: {err}"))?;
    let play = book.plays.first();
    let pattern = e
        .hosts
        .clone()
        .or_else(|| play.map(|p| p.hosts.clone()))
        .unwrap_or_else(|| "all".into());
    let hosts = inv.hosts_of(&pattern);
    if hosts.is_empty() {
        return Err(format!(
            "no host of inventory {} matches {pattern:?}",
            inventory_path.display()
        ));
    }
    let serial_value = match e.serial {
        Some(v) => toml_to_json(v),
        None => play.and_then(|p| p.serial.clone()).unwrap_or(Value::Null),
    };
    let serial = rollout::parse_serial(&serial_value).map_err(|err| format!("serial: {err}"))?;
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
    // `try_from`: a finite value can still be too large for a Duration (`1e300`).
    let secs = |what: &str, s: f64| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| format!("{what} must be a number of seconds ≥ 0, got {s}"))
    };
    Ok(Environment {
        name: name.to_string(),
        inventory_path,
        hosts,
        host_vars,
        playbook,
        rollback_playbook,
        serial,
        max_fail_percentage,
        bake: secs("bake_seconds", e.bake_seconds)?,
        require_approval: e.require_approval,
        wait_timeout: secs("wait_timeout_seconds", e.wait_timeout_seconds)?,
        host_deadline: secs("host_deadline_seconds", e.host_deadline_seconds)?,
        unreachable_after: secs("unreachable_after_seconds", e.unreachable_after_seconds)?,
        rescue_wait: secs("rescue_wait_seconds", e.rescue_wait_seconds)?,
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
