//! The `rampart` command line for people and CI: run a playbook here or on an agent, deploy
//! through a controller, and the operator's tools (migrations, health suites, certificates).
//!
//! Layout (the binary in `main.rs` parses the command line and dispatches here):
//! - [`commands`]: the controller client: `deploy`, `rollback`, `watch`, `status`, `history`,
//!   `deployment show`, `approve`, `abort`, `forensics get`, `incidents`;
//! - [`run`]: `rampart run`, in-process (`--local`) or through an agent over gRPC (`--agent`);
//! - [`push`]: `rampart run --local --pushgateway`: a run's facts to a Prometheus Pushgateway;
//! - [`output`]: renders transaction events as Ansible-like text or JSON lines;
//! - [`vars`]: `-e KEY=VALUE`, `-e @FILE`, `-e '{json}'` into one variables object;
//! - [`migrate`]: `rampart migrate`, Flyway's commands against Flyway's history table;
//! - [`health`]: `rampart health`, a health suite run from the command line;
//! - [`certs`]: `rampart certs init`, a quick-start CA and certificates for mutual TLS;
//! - [`exit`], [`error`]: every exit code in one enum, and the one error type that carries it.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod certs;
pub mod commands;
pub mod error;
pub mod exit;
pub mod health;
pub mod migrate;
pub mod output;
pub mod push;
pub mod run;
pub mod vars;
