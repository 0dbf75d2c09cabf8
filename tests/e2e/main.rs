//! The end-to-end tests of Rampart as one test target (`e2e`), one module per scenario: real
//! `rampart-agent` and `rampart-controller` processes over gRPC on 127.0.0.1, `rampart run
//! --local`, throwaway PostgreSQL clusters, a real redis-server and a sandboxed systemd. The
//! helpers they share are the `rampart_tests` library (`tests/src/`).
//!
//! One binary instead of one per file: the tests crate links tonic, rampart-agent and
//! rampart-controller once. All modules' tests run as threads of one process, so shared state
//! must be per test (temp dirs, ports from `rampart_tests::deploy::free_port`'s counter).
//!
//! The binaries the tests run must be built first (`cargo build --workspace --bins`;
//! `tests/run.sh` does it). Then, for example:
//!
//! - everything: `cargo test -p rampart-tests --test e2e`
//! - one module: `cargo test -p rampart-tests --test e2e controller::`
//! - one test: `cargo test -p rampart-tests --test e2e -- --exact semantics::<test name>`
//! - list them: `cargo test -p rampart-tests --test e2e -- --list`

mod agent_metrics;
mod artifact_cache;
mod artifacts_rpc;
mod bad_input;
mod canary;
mod canary_stats;
mod certs;
mod chaos;
mod conformance;
mod controller;
mod controller_artifacts;
mod controller_auth;
mod controller_store;
mod crash;
mod crash_deploy;
mod deploy_database;
mod disk_full;
mod fleet_faults;
mod fleet_rollback;
mod forensics;
mod grpc_contract;
mod health;
mod history_stats;
mod identity;
mod inventory_run;
mod metrics;
mod migrate_restore;
mod migrations;
mod monitoring;
mod mtls;
mod notify;
mod prometheus_client;
mod proxy_switch;
mod release_safety;
mod role_deploy;
mod rollback_playbook;
mod sample_app;
mod semantics;
mod shared_artifacts;
mod store_faults;
mod systemd_agent;
mod systemd_deploy;
mod systemd_service;
mod transactional_deploy;
