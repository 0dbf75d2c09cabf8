//! Rampart's controller: owns environments and deploys a version to every host of one, in
//! waves, one agent transaction per host, with a fleet rescue that rolls back every host it
//! changed when the deployment aborts.
//!
//! Layout, one concept per module:
//! - [`config`]: the controller's TOML configuration, checked whole at start;
//! - [`inventory`]: Ansible's YAML and INI inventories and host patterns (re-exported from
//!   [`rampart_playbook::inventory`], where they live so that an agent can use them too);
//! - [`rollout`]: waves (`serial`) and failure thresholds (`max_fail_percentage`), pure;
//! - [`deployment`]: one runner per deployment (queue, lock, approval, waves, fleet rescue,
//!   takeover), its state machine and the per-host jobs;
//! - [`analysis`]: canary analysis between waves (`stages`, `[analysis]`, Prometheus), judged
//!   by [`rampart_canary`];
//! - [`agents`]: mutual-TLS channels to agents, artifact delivery, following a transaction;
//! - [`artifact_store`]: the uploaded artifacts: size limit, quota, free space, collection;
//! - [`store`]: the deployment record and events, SQLite or PostgreSQL;
//! - [`stats`]: delivery figures over a window (frequency, lead time, change failure rate,
//!   time to restore, SC-001 and SC-002), pure;
//! - [`service`]: the gRPC API CI calls (`rampart.v1.Controller`), its bearer tokens and the
//!   scope each RPC needs;
//! - [`incident`]: opening an incident (with its outbox rows), the rollback reason, the
//!   post-mortem draft;
//! - [`notify`]: the sinks (GitHub, Slack, PagerDuty, webhook) and the outbox's delivery worker;
//! - [`edge`]: the bounds of request fields (ids, versions, names, digests) and the short quote
//!   of a client's value in errors.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
pub mod agents;
pub mod analysis;
pub mod artifact_store;
pub mod config;
pub mod deployment;
pub mod edge;
pub mod incident;
pub mod metrics;
pub mod notify;
pub mod rollout;
pub mod service;
pub mod stats;
pub mod store;
pub mod sweep;

/// Inventories and host patterns, from [`rampart_playbook::inventory`] (kept here so that
/// `rampart_controller::inventory` paths still compile).
pub use rampart_playbook::inventory;
