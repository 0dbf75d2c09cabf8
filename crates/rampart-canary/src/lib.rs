//! Canary analysis between deploy waves: judge the hosts already upgraded (the **canary**)
//! against the hosts not yet upgraded (the **baseline**) over the same window, and decide whether
//! the next wave may go. This crate is the pure core — statistics and decisions, no I/O; the
//! Prometheus queries and the controller's wave loop call it.
//!
//! # Design
//!
//! - **Populations.** In each wave window the canary is every host on the new release, the
//!   baseline every host still on the old one, both measured over the same window (opening a
//!   warm-up after the wave's last host is healthy). At the 100 % wave there is no baseline: the
//!   verdict rests on thresholds only and says so ([`judge::Decision::weaker_evidence`]); the
//!   caller may pass the upgraded hosts' own pre-upgrade window as a historical baseline.
//! - **Four outcomes, kept apart** ([`judge::Verdict`]): Pass, Fail, Inconclusive (too little
//!   data: extend the window, never a pass) and Error (the input is unusable, e.g. a query that
//!   failed; repeated Errors stop the check as Error, which pauses and alerts, never passes).
//! - **Error rate** ([`judge::judge_error_rate`]): pooled counts of each side, one-sided
//!   two-proportion z-test, or Fisher's exact test when few errors are expected; Fail needs
//!   significance **and** a practical effect (+0.5 points and 1.5×); a guardrail on the canary's
//!   absolute rate, and a low-traffic gate (1,000 requests; 5 expected errors before a canary
//!   that looks worse but not significantly so can be judged).
//! - **Latency** ([`judge::judge_latency`]): one-sided Mann-Whitney on per-host, per-step p95
//!   samples (non-overlapping steps), Fail only with a Hodges-Lehmann shift of at least
//!   max(10 %, 20 ms); at least 30 samples per side (never fewer than 5: below that the test
//!   cannot reject at α ≤ 0.02).
//! - **Repeated looks** ([`judge::Measurements`]): Argo Rollouts' counters (count, failure,
//!   inconclusive and consecutive-error limits), with a Fail counted only on two consecutive
//!   Fail evaluations or one at α/10 (configurable); Bonferroni across metrics
//!   ([`stats::alpha_per_metric`]) and across a stage's looks ([`window::alpha_per_look`]:
//!   without it the 14–20 evaluations of a window failed up to 5 % of A/A windows). Each decision records its sizes, p-value, effect and minimum
//!   detectable effect, so an operator can see why a verdict was Inconclusive.
//! - **The window** ([`window::StageRun`]): a stage passes when, once its window is over,
//!   every check's latest evaluation passes; a confirmed Fail ends it at once; an Inconclusive
//!   window extends up to a maximum, then the rollout pauses for a person.
//! - **Fast path** ([`judge::fast_path`]): a canary error ratio ≥ 20 % over ≥ 50 requests
//!   rolls back at once, without analysis.
//!
//! # What is done differently from the usual tools
//!
//! - Kayenta drops Error and Nodata metrics from its score and scores an empty group 100; here
//!   no data is Inconclusive or Error, never a pass. Kayenta enforces no minimum sample and
//!   judges two-sided confidence intervals; here the tests are one-sided (canary worse), with a
//!   floor on samples and a practical-effect threshold.
//! - Argo Rollouts Errors on empty results and Fails on NaN by default, and counts a run
//!   terminated before any measurement as Successful; here NaN input is an Error of the input
//!   and a check with no counted evaluation ends Inconclusive.
//! - Flagger counts "no traffic" as a failed check, keeps failed checks cumulative and compares
//!   only with thresholds; here low traffic is Inconclusive, and the canary is compared with a
//!   concurrent baseline, thresholds serving only as guardrails.
//!
//! # Benchmarks
//!
//! Table-printing bench binaries (`harness = false`), deterministic, no timing assertions:
//!
//! - `cargo bench -p rampart-canary --bench judge_sim` simulates stage windows the way the
//!   controller evaluates them (a canary of C hosts against a baseline of B, or the same hosts'
//!   own past; R requests/s per host, log-normal latency, one p95 per host per step, both
//!   default checks every interval over the cumulative data, through [`window::StageRun`],
//!   with the fast path polled beside them) and prints: the A/A false-failure rate (200
//!   windows per row, goal ≤ 1 %), the time from a regression's onset to the Fail decision
//!   and the miss rate (goal ≤ 2 analysis intervals once the data suffices; the floor where
//!   `min_requests` / `min_samples` are first met is printed beside it), and the fast path's
//!   time to a 30 % error rate. `-- --windows N` runs N windows per row.
//! - `cargo bench -p rampart-canary --bench judge_cpu`: median ns of one evaluation's judge
//!   work (both error-rate tests, both Mann-Whitney paths, the fast path, `StageRun::record`).
//! - `cargo bench -p rampart-controller --bench analysis_eval`: the controller's whole
//!   evaluation (`analysis::eval::evaluate`, JSON detail and audit included) over an
//!   in-memory source, without Prometheus's answer time.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod judge;
pub mod stats;
pub mod window;
