//! Errors of the agent library, one enum per concern, named after the operation that failed.

use std::path::PathBuf;
use std::time::Duration;

/// Writing or reading a journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A filesystem operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A write found no free space and kept finding none for the whole wait.
    #[error(
        "cannot {op} {path}: no space left on its filesystem for {:.0}s ({source}); free space there: the agent's restart finishes the transaction",
        .waited.as_secs_f64()
    )]
    NoSpace {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// How long it waited for space.
        waited: Duration,
        /// The last failure.
        source: std::io::Error,
    },
    /// A new journal's reserve could not be preallocated; the transaction did not begin.
    #[error(
        "cannot reserve {bytes} bytes for journal {path} (the room its rescue and always need on a full disk): {source}; free space there and retry"
    )]
    NoReserve {
        /// The journal (removed again).
        path: PathBuf,
        /// The reserve's size.
        bytes: u64,
        /// Why.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode journal record: {0}")]
    Encode(serde_json::Error),
    /// The txid is taken.
    #[error("transaction {txid} already exists on this host")]
    Exists {
        /// The txid asked for.
        txid: String,
    },
    /// A journal line other than the last is unreadable, or the records do not follow each other.
    #[error("journal {path} is corrupt at line {line}: {reason}")]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Taking the host lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another transaction holds it.
    #[error("host lock is held by transaction {} (for {}); waited {}", .holder_txid.as_deref().unwrap_or("<unknown>"), .age.map(|a| format!("{:.1}s", a.as_secs_f64())).unwrap_or_else(|| "an unknown time".into()), format!("{:.1}s", .waited.as_secs_f64()))]
    Busy {
        /// The holder's txid, when its record could be read.
        holder_txid: Option<String>,
        /// How long it has held the lock.
        age: Option<Duration>,
        /// How long this caller waited.
        waited: Duration,
    },
    /// The lock file could not be opened or written.
    #[error("cannot use host lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

pub use rampart_playbook::PlaybookError;

/// Starting or running a transaction.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The playbook is invalid; nothing ran.
    #[error("invalid playbook: {0}")]
    Playbook(#[from] PlaybookError),
    /// The request is invalid (bad txid, vars not a JSON object, ...).
    #[error("invalid request: {0}")]
    Request(String),
    /// The host lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The journal failed; the transaction stays unfinished. The agent then exits
    /// ([`crate::server::EXIT_CANNOT_JOURNAL`]) so that its restart recovers it.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A `ProbeRequest` the agent refuses (`INVALID_ARGUMENT`), naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probe request: {field}: {reason}")]
pub struct InvalidProbe {
    /// The field, e.g. `urls[2]` or `interval_ms`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}
