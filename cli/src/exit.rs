//! Every exit code `rampart` returns, in one enum (ARCHITECTURE.md's table). Commands return an
//! [`Exit`]; only `main` turns it into the process's exit status.

use std::process::ExitCode;

use rampart_agent::event::Outcome;
use rampart_proto::v1 as pb;

/// The process exit status of a `rampart` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Deployed and healthy, check mode passed, or the command did what it was asked.
    Ok = 0,
    /// Failed and rolled back (verified), failed without changing anything, or aborted or not
    /// approved in time before touching a host; a critical health check failed; a migration
    /// failed.
    Failed = 1,
    /// Usage or configuration error (nothing ran), or the controller cannot be reached.
    Usage = 2,
    /// The controller refused the token, or an agent refused this client's certificate.
    Auth = 3,
    /// A rollback failed (CRITICAL: hosts need a person).
    RollbackFailed = 4,
    /// The deployment lock (controller) or host lock (agent) was not acquired in time.
    LockTimeout = 5,
    /// `rampart run`: the transaction failed and had no rescue to roll it back.
    FailedNoRescue = 6,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The exit of a finished transaction (`rampart run`).
    pub fn of_transaction(outcome: Outcome) -> Exit {
        match outcome {
            Outcome::Succeeded | Outcome::CheckOnly => Exit::Ok,
            Outcome::RolledBack => Exit::Failed,
            Outcome::RollbackFailed => Exit::RollbackFailed,
            Outcome::Failed => Exit::FailedNoRescue,
        }
    }

    /// The exit of a finished deployment. An unspecified outcome (a controller newer than this
    /// CLI, or a protocol error) is reported as a failure.
    pub fn of_deployment(outcome: pb::DeploymentOutcome) -> Exit {
        use pb::DeploymentOutcome as O;
        match outcome {
            O::Succeeded | O::CheckOnly => Exit::Ok,
            O::RolledBack | O::Failed | O::Aborted | O::ApprovalTimedOut | O::Unspecified => {
                Exit::Failed
            }
            O::RollbackFailed => Exit::RollbackFailed,
            O::LockTimeout => Exit::LockTimeout,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_design_table() {
        let table = [
            (Exit::Ok, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 2),
            (Exit::Auth, 3),
            (Exit::RollbackFailed, 4),
            (Exit::LockTimeout, 5),
            (Exit::FailedNoRescue, 6),
        ];
        for (exit, code) in table {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
        assert_eq!(Exit::of_transaction(Outcome::Failed).code(), 6);
        assert_eq!(Exit::of_transaction(Outcome::RolledBack).code(), 1);
        assert_eq!(Exit::of_transaction(Outcome::CheckOnly).code(), 0);
    }
}
