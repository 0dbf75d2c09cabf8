#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and end-to-end tests that start real
# rampart-agent processes on 127.0.0.1 and SIGKILL them. Needs only the Rust toolchain today;
# later suites install what they need (PostgreSQL, redis, systemd sandbox) from here.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building the binaries the end-to-end tests run"
cargo build --workspace --bins
echo "== running the tests"
cargo test --workspace --no-fail-fast -- --test-threads="${RAMPART_TEST_THREADS:-4}"
