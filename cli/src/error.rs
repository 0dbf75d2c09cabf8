//! The one error type of `rampart`'s commands: what went wrong, in one line that says what to
//! do, and the [`Exit`] it maps to.

use std::fmt;

use rampart_rpc::error_chain;
use tonic::Code;

use crate::exit::Exit;

/// A failure of a controller command, with the process exit code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The process exit code.
    pub exit: Exit,
    /// What went wrong and what to do about it, in one line.
    pub message: String,
}

impl CliError {
    /// A failure with its exit.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
        }
    }

    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// Maps a gRPC status from the controller at `url` to an exit code and a message; `what`
    /// says what was attempted, e.g. `deploy to production`.
    pub fn from_status(what: &str, url: &str, s: &tonic::Status) -> Self {
        let msg = if s.message().is_empty() {
            s.code().description().to_string()
        } else {
            s.message().to_string()
        };
        match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => CliError {
                exit: Exit::Auth,
                message: format!("the controller refused the token: {msg}; check --token-file"),
            },
            Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists => CliError::usage(format!("{what}: {msg}")),
            Code::Unavailable => {
                CliError::usage(format!("cannot reach the controller at {url}: {msg}"))
            }
            other => CliError::usage(format!("{what}: {other:?}: {msg}")),
        }
    }

    /// A connection failure to the controller at `url` (exit 2).
    pub fn transport(url: &str, e: &(dyn std::error::Error + 'static)) -> Self {
        let chain = error_chain(e);
        let hint = if chain.contains("certificate") || chain.contains("UnknownIssuer") {
            " (is --ca the CA that signed the controller's certificate, and does the URL's host \
             match a name in it?)"
        } else {
            ""
        };
        CliError::usage(format!(
            "cannot reach the controller at {url}: {chain}{hint}"
        ))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}
