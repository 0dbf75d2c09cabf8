//! Every error of this crate: the client's ([`PromError`]), the templates' ([`TemplateError`])
//! and the durations' ([`DurationError`]).
//!
//! A message is lowercase, says what was attempted and on what (an endpoint URL, which never
//! holds credentials: the configuration refuses them), and never carries the bearer token.

use std::path::PathBuf;
use std::time::Duration;

/// Why a query, or building the client, failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PromError {
    /// The client's configuration is unusable (URL, timeout).
    #[error("invalid prometheus client configuration: {reason}")]
    Config {
        /// What is wrong with it.
        reason: String,
    },

    /// The bearer token file could not be read, or holds no usable token.
    #[error("reading the bearer token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why (never the token).
        reason: String,
    },

    /// The CA file could not be read, or holds no PEM certificate.
    #[error("reading the ca file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The PromQL query is longer than [`crate::MAX_QUERY_BYTES`]; nothing was sent.
    #[error("promql query of {len} bytes is longer than the limit of {limit} bytes (not sent)")]
    QueryTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },

    /// A range query would return more points per series than Prometheus allows; nothing was
    /// sent.
    #[error(
        "range query of {points} points per series is over prometheus's limit of {limit} (not sent): widen the step or shorten the range"
    )]
    TooManyPoints {
        /// The points per series it would return.
        points: u128,
        /// The limit ([`crate::MAX_POINTS_PER_SERIES`]).
        limit: u128,
    },

    /// The request's own parameters are invalid (a time before 1970, a zero step, an end
    /// before the start); nothing was sent.
    #[error("invalid request to {url}: {reason} (not sent)")]
    InvalidRequest {
        /// The endpoint.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// No connection: refused, reset, the host name not found.
    #[error("querying prometheus at {url}: unreachable ({reason})")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What the connection reported.
        reason: String,
    },

    /// No complete answer within the client's timeout (connection, request and answer).
    #[error("querying prometheus at {url}: no complete answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The endpoint.
        url: String,
        /// The client's timeout.
        timeout: Duration,
    },

    /// The TLS handshake failed (for example a certificate not signed by the configured CA).
    #[error("querying prometheus at {url}: tls failed ({reason})")]
    Tls {
        /// The endpoint.
        url: String,
        /// What TLS reported.
        reason: String,
    },

    /// The server spoke broken HTTP, or the transport failed in another way.
    #[error("querying prometheus at {url}: the http exchange failed ({reason})")]
    Protocol {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },

    /// Prometheus (or a proxy before it) refused the query: an HTTP error status or an answer
    /// with `"status":"error"`.
    #[error(
        "prometheus at {url} refused the query with http {status} ({}): {message}",
        error_type.as_deref().unwrap_or("no error type")
    )]
    Api {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Prometheus's `errorType` (`bad_data`, `execution`, `timeout`, `canceled`,
        /// `internal`, `unavailable`), when the body was Prometheus's JSON error.
        error_type: Option<String>,
        /// Prometheus's `error`, or a short excerpt of a body that was not its JSON.
        message: String,
    },

    /// The answer is not what the API documents (not JSON, a missing field, a value that is no
    /// number, another result type than asked for).
    #[error("malformed answer from prometheus at {url}: {reason}")]
    Malformed {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The answer is larger than [`crate::MAX_ANSWER_BYTES`]; reading stopped there.
    #[error("answer from prometheus at {url} is larger than {limit} bytes (reading stopped)")]
    TooLarge {
        /// The endpoint.
        url: String,
        /// The limit.
        limit: u64,
    },

    /// A result has another shape than the caller asked for (for example several samples
    /// where one value was expected).
    #[error("query result is {found}, expected {expected}")]
    UnexpectedShape {
        /// What the caller asked for.
        expected: &'static str,
        /// What the result is.
        found: String,
    },
}

/// Why a query template is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `{{ … }}` names no known variable.
    #[error(
        "unknown placeholder {{{{ {name} }}}} at byte {offset} (known: canary_hosts, baseline_hosts, window)"
    )]
    UnknownPlaceholder {
        /// What it names (trimmed).
        name: String,
        /// Where its `{{` starts.
        offset: usize,
    },

    /// A `{{` has no `}}` after it.
    #[error("unclosed {{{{ at byte {offset}")]
    Unclosed {
        /// Where the `{{` starts.
        offset: usize,
    },

    /// A host list placeholder is used but its list is empty (the query would match nothing,
    /// or everything).
    #[error("placeholder {{{{ {name} }}}} is used but its host list is empty")]
    EmptyHostList {
        /// `canary_hosts` or `baseline_hosts`.
        name: &'static str,
    },

    /// A host name cannot be put into a query (empty, or holding a control character).
    #[error("host name {host:?} in {name} cannot be put in a query: {reason}")]
    BadHost {
        /// `canary_hosts` or `baseline_hosts`.
        name: &'static str,
        /// The host name (escaped by `{:?}`).
        host: String,
        /// Why.
        reason: &'static str,
    },
}

/// Why a duration string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The text given (cut to 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}
