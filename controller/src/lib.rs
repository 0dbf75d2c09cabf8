//! Rampart's controller side: the `rampart` CLI today; the controller service comes with the
//! controller work.
//!
//! Layout:
//! - [`output`]: renders transaction events as Ansible-like text or JSON lines;
//! - [`vars`]: `-e KEY=VALUE`, `-e @FILE`, `-e '{json}'` into one variables object;
//! - [`certs`]: `rampart certs init`, a quick-start CA and certificates for mutual TLS;
//! - [`health`]: `rampart health`, a health suite run from the command line;
//! - [`inventory`]: Ansible's YAML and INI inventories, hosts, groups and merged variables;
//! - [`migrate`]: `rampart migrate`, Flyway's commands against Flyway's history table;
//! - [`rollout`]: waves (`serial`) and failure thresholds (`max_fail_percentage`), pure;
//! - [`run`]: `rampart run`, in-process (`--local`) or through an agent over gRPC (`--agent`).

pub mod agents;
pub mod certs;
pub mod client;
pub mod config;
pub mod deployment;
pub mod health;
pub mod inventory;
pub mod migrate;
pub mod output;
pub mod rollout;
pub mod run;
pub mod service;
pub mod store;
pub mod vars;
