//! Flyway-compatible PostgreSQL migrations.
//!
//! Rampart reads and writes the same `flyway_schema_history` table Flyway does, with the same
//! names, versions, checksums, row shapes and advisory lock, so a team can switch to Rampart
//! and back to Flyway the next day. Layout:
//!
//! | module | concept |
//! |---|---|
//! | [`version`] | versions and their numeric order |
//! | [`checksum`] | Flyway's CRC-32 over a script's lines |
//! | [`resolve`] | file names, scripts and callbacks on disk |
//! | [`placeholders`] | `${name}` replacement |
//! | [`sql`] | splitting scripts into statements; transactional or not |
//! | [`config`] | `flyway.conf`, `flyway.toml`, `FLYWAY_*`, command-line flags |
//! | [`plan`] | pure: history rows + scripts → states, problems, what to run |
//! | [`db`] | the PostgreSQL adapter: history table, lock, rows |
//! | [`run`] | the commands, one migration per transaction |
//! | [`restore`] | restore points a deploy takes before migrating, and brings back |

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
pub mod checksum;
pub mod config;
pub mod db;
pub mod error;
pub mod placeholders;
pub mod plan;
pub mod resolve;
pub mod restore;
pub mod run;
pub mod sql;
pub mod version;

pub use config::redact_url;
pub use error::MigrateError;
