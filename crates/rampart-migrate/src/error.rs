//! Errors of the migration runner. Each names the operation, the script or version, and what
//! was already applied when it matters ([`MigrateError::Apply`]).

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::sql::SplitError;

/// A migration run's failure.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Nothing says where the migrations are.
    #[error(
        "no migration locations: give -locations=filesystem:DIR (or flyway.locations in flyway.conf)"
    )]
    NoLocations,
    /// Nothing says which database.
    #[error(
        "no database url: give -url=jdbc:postgresql://HOST:PORT/DATABASE (or flyway.url, or FLYWAY_URL)"
    )]
    NoUrl,
    /// A location could not be listed.
    #[error("reading migration location {path}: {source}")]
    Location {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A script could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A script is not UTF-8.
    #[error(
        "{script} is not valid UTF-8 (bad byte at offset {offset}, line {line}): Flyway reads scripts as UTF-8; convert the file (e.g. iconv -f LATIN1 -t UTF-8)"
    )]
    Encoding {
        /// The script.
        script: String,
        /// Byte offset of the first bad byte.
        offset: usize,
        /// Its line.
        line: usize,
    },
    /// A `<script>.conf` has a line this runner does not understand.
    #[error("{script}.conf: {message}")]
    ScriptConf {
        /// The script.
        script: String,
        /// What is wrong.
        message: String,
    },
    /// Two versioned (or undo) scripts have the same version.
    #[error("found more than one migration with version {version}: {first} and {second}")]
    DuplicateVersion {
        /// The version.
        version: String,
        /// One script.
        first: String,
        /// The other.
        second: String,
    },
    /// Two repeatable scripts have the same description.
    #[error(
        "found more than one repeatable migration with description '{description}': {first} and {second}"
    )]
    DuplicateRepeatable {
        /// The description.
        description: String,
        /// One script.
        first: String,
        /// The other.
        second: String,
    },
    /// A placeholder has no value.
    #[error(
        "no value provided for placeholder ${{{name}}} in {script}: set it with -placeholders.{name}=VALUE (or flyway.placeholders.{name})"
    )]
    UnknownPlaceholder {
        /// The script.
        script: String,
        /// The placeholder's name.
        name: String,
    },
    /// A script could not be split into statements.
    #[error("parsing {script}: {source}")]
    Split {
        /// The script.
        script: String,
        /// Why.
        source: SplitError,
    },
    /// A script mixes statements that need a transaction with ones that cannot run in one.
    #[error(
        "{script} mixes non-transactional statements (line {line}: {statement}) with transactional ones: move them to their own migration, or set mixed=true to run the whole script without a transaction"
    )]
    Mixed {
        /// The script.
        script: String,
        /// Line of the first non-transactional statement.
        line: usize,
        /// Its first words.
        statement: String,
    },
    /// A setting this runner does not support.
    #[error("unsupported setting: {0}")]
    Unsupported(String),
    /// A `-target` that is not a version.
    #[error("invalid target '{0}': use latest, current, next or a version such as 1.2")]
    BadTarget(String),
    /// Validation found problems.
    #[error("validate failed: {}", .0.join("; "))]
    Validate(Vec<String>),
    /// The history has a failed row; nothing is applied until it is repaired.
    #[error(
        "schema history table {table} contains a failed migration to version {version}: fix the database by hand, then run `rampart migrate repair` to remove the failed row"
    )]
    FailedRow {
        /// The table.
        table: String,
        /// The version (or description, for a repeatable).
        version: String,
    },
    /// A configured schema has objects but no history table.
    #[error(
        "found non-empty schema {schema} without schema history table {table}: use `rampart migrate baseline`, or set baselineOnMigrate=true to baseline on migrate"
    )]
    NeedsBaseline {
        /// The schema.
        schema: String,
        /// The table.
        table: String,
    },
    /// Baseline refused.
    #[error("baseline: {0}")]
    Baseline(String),
    /// A migration failed; what ran before it is listed.
    #[error(
        "migration {script} failed at line {line}: {message}{}",
        if applied.is_empty() { String::new() } else { format!(" (applied before it in this run: {})", applied.join(", ")) }
    )]
    Apply {
        /// The script.
        script: String,
        /// Line of the failing statement in the script.
        line: usize,
        /// The database's error text.
        message: String,
        /// Versions (or descriptions) this run applied before the failure.
        applied: Vec<String>,
        /// Whether a row with success = false was written (non-transactional scripts).
        failed_row: bool,
    },
    /// Undo is impossible.
    #[error("undo: {0}")]
    Undo(String),
    /// `clean` while cleanDisabled is true.
    #[error(
        "clean is disabled (cleanDisabled=true, the default): it drops every object in the schemas; set -cleanDisabled=false to allow it"
    )]
    CleanDisabled,
    /// The database could not be reached or refused the login.
    #[error("connecting to {url} as {user}: {message}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The user.
        user: String,
        /// What the client or server said.
        message: String,
    },
    /// A statement of the runner itself failed.
    #[error("{action}: {message}")]
    Database {
        /// What the runner was doing.
        action: String,
        /// The database's error text.
        message: String,
    },
    /// The migration lock stayed taken.
    #[error(
        "could not take the migration lock (advisory lock {key}) after {tries} tries: another migration is running against this schema history"
    )]
    Lock {
        /// The advisory lock key.
        key: i64,
        /// How many tries.
        tries: u32,
    },
    /// A restore point could not be made or used.
    #[error("restore point: {0}")]
    RestorePoint(String),
}

/// Formats a database error with its detail and hint, as an operator wants to read it.
pub fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                s.push_str(&format!("; hint: {hint}"));
            }
            s
        }
        None => {
            // The client's own errors wrap the cause (refused connection, bad password message).
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                s.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            s
        }
    }
}
