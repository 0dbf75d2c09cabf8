//! Logging for Rampart's servers (`rampart-agent`, `rampart-controller`): `RUST_LOG` or `info`,
//! to stderr, with colours only on a terminal (journald and log files get plain text).

/// Installs the global subscriber; call once at the start of `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
