//! Errors of the playbook language.

/// A playbook that cannot run: the whole document is checked before anything executes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct PlaybookError {
    /// The playbook's name (path).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, and what to do.
    pub message: String,
}
