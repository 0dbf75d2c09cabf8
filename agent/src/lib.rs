//! Rampart's host agent: runs an Ansible-style playbook on this host as one transaction.
//!
//! Layout, one concept per module:
//! - [`modules`]: `command`, `shell`, `copy`, `file`, ... with Ansible's arguments and results;
//! - [`engine`]: block/rescue/always execution, `loop`, `until`, `failed_when`, check mode;
//! - [`event`]: the records a transaction produces (journal lines, streamed events);
//! - [`journal`]: the fsync'd write-ahead journal and its history;
//! - [`recovery`]: what an interrupted journal demands (rescue, rerun rescue, rerun always);
//! - [`lock`]: the host lock (flock + holder record);
//! - [`consistency`]: is the host whole (current, public path, recorded state, service version,
//!   nothing left of an interrupted transaction): `CheckState` and the periodic check;
//! - [`metrics`]: the host's facts in Prometheus's text format (the textfile, a run's push);
//! - [`probe`]: HTTP sampling of the host's URLs for a canary analysis without Prometheus;
//! - [`transaction`]: one transaction from request to history, and start-up recovery;
//! - [`server`]: the gRPC adapter (`rampart.v1.Agent` and `grpc.health.v1`);
//! - [`config`]: the agent's TOML configuration.

#![warn(missing_docs, unreachable_pub)]
pub mod config;
pub mod consistency;
pub mod engine;
pub mod error;
pub mod event;
pub mod journal;
pub mod lock;
pub mod lookups;
pub mod metrics;
pub mod modules;
pub mod probe;
pub mod recovery;
pub mod server;
pub mod transaction;
