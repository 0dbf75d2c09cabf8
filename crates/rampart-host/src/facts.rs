//! Facts about this host that several layers report (state captures, forensics, journals).

/// This host's name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}
