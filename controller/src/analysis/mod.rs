//! Canary analysis between waves: after a stage's wave, the hosts on the new release (the
//! canary) are judged against the hosts still on the old one (the baseline) over the same
//! window, from Prometheus or from the agents' own HTTP probes, and the stage passes, fails (the fleet rescue rolls every upgraded
//! host back, reason `analysis`), or pauses for a person (Inconclusive at the window's maximum,
//! or Error: the measurements could not be had — never a pass).
//!
//! Layout:
//! - [`config`]: `stages` and `[analysis]` of an environment, checked at start;
//! - [`source`]: the measurements per host ([`source::Source`]) and the Prometheus adapter;
//! - [`probe`]: the agents' HTTP sampling of the stage's hosts, without Prometheus;
//! - [`eval`]: one evaluation of every check, and the fast path;
//! - [`condition`]: the Jinja conditions of a team's own queries.
//!
//! The statistics, the per-check counters and the window's rules are pure and live in
//! [`rampart_canary`]; the deployment runner drives the clock, records every evaluation in the
//! deployment's events (`AnalysisEvaluated`, with queries, raw results, sample sizes, statistic,
//! p-value, effect and minimum detectable effect) and acts on the verdict.

pub mod condition;
pub mod config;
pub mod eval;
pub mod probe;
pub mod source;

pub use config::{AnalysisConfig, Stage};
