//! The agent's configuration: a TOML file, overridden by command-line flags, parsed once at the
//! edge into typed values.
//!
//! ```toml
//! listen = "127.0.0.1:7420"
//! state_dir = "/var/lib/rampart"
//! insecure_dev = false      # plaintext gRPC; only for development (exclusive with [tls])
//! journal_fsync = true      # fsync every journal record (never turn off in production)
//! forensics_dir = "/var/backups/deployment-forensics"  # served by ListForensics/GetForensics
//! journal_wait_seconds = 60 # a journal write that finds the disk full retries this long,
//!                           # then the agent exits so its restart recovers the transaction
//! check_interval_seconds = 60  # the state-consistency check's period (0: only after transactions)
//! metrics_textfile = "/var/lib/prometheus/node-exporter/rampart.prom"  # node_exporter textfile
//!
//! [tls]                      # mutual TLS (e.g. files from `rampart certs init DIR`)
//! cert = "/etc/rampart/tls/agent-web-1.pem"
//! key = "/etc/rampart/tls/agent-web-1.key"
//! ca = ["/etc/rampart/tls/ca.pem"]   # two during a CA rotation: old and new
//! ```
//!
//! `controller_identity = ["spiffe://rampart/controller"]` (top level; the default) lists the
//! client identities let in over TLS: subject alternative names a client's certificate must
//! carry one of (see `rampart_rpc::identity`); any other client is refused with
//! `PERMISSION_DENIED`.
//!
//! Relative paths are relative to the agent's working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use rampart_rpc::tls::TlsFiles;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address to serve gRPC on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// State directory (journal, history, lock).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Serve plaintext gRPC (development only; logs a warning).
    #[serde(default)]
    pub insecure_dev: bool,
    /// fsync every journal record.
    #[serde(default = "yes")]
    pub journal_fsync: bool,
    /// Where `ListForensics` / `GetForensics` find bundles (default: the `forensics` module's).
    #[serde(default)]
    pub forensics_dir: Option<PathBuf>,
    /// Mutual TLS: this agent's certificate and key, and the CAs that sign controllers'.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Client identities let in over TLS (empty: `rampart_rpc::identity::CONTROLLER_IDENTITY`).
    #[serde(default)]
    pub controller_identity: Vec<String>,
    /// How long a journal write that finds no free space retries before the agent exits (see
    /// [`crate::journal`], "A full disk").
    #[serde(default = "default_journal_wait_seconds")]
    pub journal_wait_seconds: u64,
    /// Seconds between state-consistency checks (also run after every transaction); 0 checks
    /// only after transactions.
    #[serde(default = "default_check_interval_seconds")]
    pub check_interval_seconds: u64,
    /// Where to write the metrics textfile (node_exporter's textfile format), if anywhere.
    #[serde(default)]
    pub metrics_textfile: Option<PathBuf>,
}

/// Default period of the state-consistency check.
pub const DEFAULT_CHECK_INTERVAL_SECONDS: u64 = 60;

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7420)))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(crate::transaction::DEFAULT_STATE_DIR)
}
fn default_journal_wait_seconds() -> u64 {
    crate::journal::DEFAULT_SPACE_WAIT.as_secs()
}
fn default_check_interval_seconds() -> u64 {
    DEFAULT_CHECK_INTERVAL_SECONDS
}
fn yes() -> bool {
    true
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: default_listen(),
            state_dir: default_state_dir(),
            insecure_dev: false,
            journal_fsync: true,
            forensics_dir: None,
            tls: None,
            controller_identity: Vec::new(),
            journal_wait_seconds: default_journal_wait_seconds(),
            check_interval_seconds: default_check_interval_seconds(),
            metrics_textfile: None,
        }
    }
}

impl AgentConfig {
    /// Reads a TOML file; the error names the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = AgentConfig::parse("state_dir = \"/srv/r\"\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/r"));
        assert_eq!(c.listen, default_listen());
        assert!(c.journal_fsync);
        let e = AgentConfig::parse("stat_dir = \"/x\"\n").unwrap_err();
        assert!(e.contains("stat_dir"), "{e}");
        assert_eq!(c.tls, None);
        assert!(c.controller_identity.is_empty());
        let c = AgentConfig::parse("controller_identity = [\"spiffe://x/ci\"]\n").unwrap();
        assert_eq!(c.controller_identity, ["spiffe://x/ci"]);
        assert_eq!(c.journal_wait_seconds, 60);
        let c = AgentConfig::parse("journal_wait_seconds = 5\n").unwrap();
        assert_eq!(c.journal_wait_seconds, 5);
        assert_eq!(c.check_interval_seconds, 60);
        assert_eq!(c.metrics_textfile, None);
        let c =
            AgentConfig::parse("check_interval_seconds = 0\nmetrics_textfile = \"/m/r.prom\"\n")
                .unwrap();
        assert_eq!(c.check_interval_seconds, 0);
        assert_eq!(c.metrics_textfile, Some(PathBuf::from("/m/r.prom")));
    }

    #[test]
    fn tls_table() {
        let c = AgentConfig::parse(
            "[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\nca = [\"ca1.pem\", \"ca2.pem\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "a.pem".into(),
                key: "a.key".into(),
                ca: vec!["ca1.pem".into(), "ca2.pem".into()],
            })
        );
        let e = AgentConfig::parse("[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n").unwrap_err();
        assert!(e.contains("ca"), "{e}");
        let e = AgentConfig::parse("[tls]\ncert = \"a\"\nkey = \"b\"\nca = []\ncrt = \"c\"\n")
            .unwrap_err();
        assert!(e.contains("crt"), "{e}");
    }
}
