//! What Rampart's three programs (`rampart-agent`, `rampart-controller`, `rampart`) share on the
//! wire and at start-up, in one place so that they agree.
//!
//! Layout:
//! - [`tls`]: PEM files into mutual-TLS configs (agent, controller and CLI alike);
//! - [`identity`]: the roles certificates carry (SAN identities) and who an agent trusts;
//! - [`logging`]: the servers' log setup;
//! - [`ids`]: transaction and deployment ids;
//! - [`retry`]: the one bounded loop that re-attaches and reconnects;
//! - this file: the gRPC message limit, the one-line error chain, which statuses mean "the
//!   connection broke, retry", and the servers' shutdown signal.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod identity;
pub mod ids;
pub mod logging;
pub mod retry;
pub mod tls;

use tonic::Code;

/// The largest gRPC message any of Rampart's services sends or accepts (64 MiB): artifacts and
/// forensics bundles travel in 64 KiB–1 MiB chunks, so only a broken peer comes near it.
pub const MAX_MESSAGE: usize = 64 << 20;

/// An error and its sources in one line, `: `-separated (tonic's transport errors say only
/// "transport error" on their own). A source whose text the line already holds (an error that
/// prints its cause itself) is not repeated; at most 16 sources are followed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    for _ in 0..16 {
        let Some(c) = cur else { break };
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// Whether a status means the connection or stream broke (worth retrying, re-attaching) rather
/// than that the peer refused the request.
pub fn is_transport(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DeadlineExceeded
    )
}

/// Resolves at SIGTERM (systemd's stop) or Ctrl-C, for a server's graceful shutdown.
///
/// # Errors
/// When the SIGTERM handler cannot be installed.
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chain_joins_sources_once() {
        let e = E(
            "transport error",
            Some(Box::new(E("connection refused", None))),
        );
        assert_eq!(error_chain(&e), "transport error: connection refused");
        // An error whose own text already ends with its cause does not print it twice.
        let e = E(
            "cannot open /x: permission denied",
            Some(Box::new(E("permission denied", None))),
        );
        assert_eq!(error_chain(&e), "cannot open /x: permission denied");
    }

    #[test]
    fn transport_codes_are_retried_refusals_are_not() {
        assert!(is_transport(&tonic::Status::unavailable("down")));
        assert!(is_transport(&tonic::Status::cancelled("gone")));
        assert!(!is_transport(&tonic::Status::permission_denied("no")));
        assert!(!is_transport(&tonic::Status::invalid_argument("bad")));
        assert!(!is_transport(&tonic::Status::not_found("none")));
    }
}
