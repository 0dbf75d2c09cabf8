//! The agent's configuration: a TOML file, overridden by command-line flags, parsed once at the
//! edge into typed values.
//!
//! ```toml
//! listen = "127.0.0.1:7420"
//! state_dir = "/var/lib/rampart"
//! insecure_dev = false      # plaintext gRPC; only for development
//! journal_fsync = true      # fsync every journal record (never turn off in production)
//! forensics_dir = "/var/backups/deployment-forensics"  # served by ListForensics/GetForensics
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7420)))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(crate::transaction::DEFAULT_STATE_DIR)
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
    }
}
