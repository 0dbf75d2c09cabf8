//! The Prometheus side of canary analysis between deploy waves: a small blocking client of
//! Prometheus's HTTP API and the query templates that select the canary and baseline hosts.
//!
//! Inputs: where Prometheus is ([`ClientConfig`]: URL, timeout, bearer token file, CA file),
//! PromQL templates from the controller's configuration, and per wave the upgraded
//! ("canary") and not-yet-upgraded ("baseline") host names and the analysis window.
//!
//! Outputs: typed results ([`QueryResult`]: scalar, vector, matrix, string; [`Series`] of a
//! range query) with `NaN` and infinities kept as values and an empty vector kept apart as no
//! data ([`QueryResult::single_value`] returns `None`), or a [`PromError`] saying what failed
//! (unreachable, timeout, Prometheus's own error with its status and `errorType`, a malformed
//! or oversized answer). Deciding what a value means (pass, fail, no data) is the caller's.
//!
//! The client blocks: async callers use `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use std::time::Duration;
//! use rampart_prometheus::{Client, ClientConfig, TemplateVars, render};
//!
//! let client = Client::new(&ClientConfig::new("http://127.0.0.1:9090"))?;
//! let canary = vec!["web-1.example.com".to_string()];
//! let baseline = vec!["web-2.example.com".to_string(), "web-3.example.com".to_string()];
//! let vars = TemplateVars { canary_hosts: &canary, baseline_hosts: &baseline, window: Duration::from_secs(300) };
//! let promql = render(r#"sum(rate(http_requests_total{host=~"{{ canary_hosts }}"}[{{ window }}]))"#, &vars)?;
//! let rate = client.query(&promql, None)?.single_value()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | [`client`] | [`Client`], [`ClientConfig`]: POST `/api/v1/query` and `/api/v1/query_range`, the bounds, transport errors |
//! | [`result`] | [`QueryResult`], [`Sample`], [`Series`], [`Point`]: decoding the JSON answers, value strings |
//! | [`template`] | [`render`], [`check_template`], [`TemplateVars`]: `{{ canary_hosts }}`, `{{ baseline_hosts }}`, `{{ window }}` |
//! | [`duration`] | [`format_duration`], [`parse_duration`]: PromQL durations (`5m`, `90s`, `1500ms`) |
//! | [`error`] | [`PromError`], [`TemplateError`], [`DurationError`] |

pub mod client;
pub mod duration;
pub mod error;
pub mod result;
pub mod template;

pub use client::{
    Client, ClientConfig, DEFAULT_TIMEOUT, MAX_ANSWER_BYTES, MAX_POINTS_PER_SERIES,
    MAX_QUERY_BYTES, MAX_TIMEOUT,
};
pub use duration::{MAX_CONFIG_DURATION, format_duration, parse_duration};
pub use error::{DurationError, PromError, TemplateError};
pub use result::{Point, QueryResult, Sample, Series};
pub use template::{TemplateVars, check_template, render};
