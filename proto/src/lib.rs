//! Generated types and services of Rampart's gRPC contract, package `rampart.v1`.
//!
//! Only the gRPC adapters (the agent's server, the controller and the CLI's clients) import this
//! crate; domain code works on its own types and converts at the edge.

/// `rampart.v1`: the agent and controller services.
#[allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("rampart.v1");
}
