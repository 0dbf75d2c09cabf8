//! Test support for the property-based (fuzz) tests of every parser of untrusted input: a
//! dev-dependency only, never linked into a program.
//!
//! Input: a test's fixed CI budget (`ci` cases) and the tokens its parser cares about. Output: a
//! proptest [`Config`], text [`Strategy`]s, and one shared [`runtime`] for tests that call async
//! gRPC handlers case after case. The tests are named `fuzz_*` (never panics,
//! bounded) or `prop_*` (a stated property such as a round trip); CONTRIBUTING.md lists them.
//!
//! The budget: `cargo test` runs each test's `ci` cases, chosen so the whole set adds well under
//! a minute in debug on two cores; `RAMPART_FUZZ_CASES=N` runs every test `N` cases instead (the
//! longer run). Failures are not persisted to files: a crash found becomes a named regression
//! test beside the parser, holding the minimal input proptest printed.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

use proptest::prelude::*;
pub use proptest::test_runner::Config;

/// Environment variable that sets every fuzz test's number of cases (the longer run).
pub const CASES_VAR: &str = "RAMPART_FUZZ_CASES";

/// The config of a fuzz test: `ci` cases, or [`CASES_VAR`] when set.
pub fn config(ci: u32) -> Config {
    let cases = std::env::var(CASES_VAR).ok().and_then(|v| v.parse().ok());
    Config {
        cases: cases.unwrap_or(ci),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text made of `tokens` (four pieces in five) and arbitrary characters, at most `len` pieces:
/// input that reaches a parser's interesting paths far more often than random characters do.
pub fn soup(tokens: &'static [&'static str], len: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(tokens).prop_map(String::from),
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..len).prop_map(|pieces| pieces.concat())
}

/// Either arbitrary text or [`soup`] of `tokens`, half and half.
pub fn text(tokens: &'static [&'static str], len: usize) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), soup(tokens, len)]
}

/// A two-thread runtime shared by every case of a test binary (handlers that use
/// `block_in_place` or `spawn_blocking` need a multi-thread one).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the fuzz tests")
    })
}
