#!/usr/bin/env bash
# Benchmark (not a test): the shipped 23-check production suite (playbooks/health/production.yml)
# against healthy servers on this host, run concurrently (the default) and sequentially
# (--sequential), side by side, with the slowest single check of each run. Goal: concurrent wall
# time <= slowest check + 100 ms.
#
# Starts the sample app, a throwaway PostgreSQL (migrated with the Flyway fixtures), a
# redis-server, and a small HTTP server standing in for the external API, all on 127.0.0.1, and
# stops them at the end. Builds `rampart` and the sample app in release mode.
# Usage: agent/benches/compare/health_bench.sh [--reps N]
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release --bin rampart -p rampart-cli --bin rampart-sample-app -p rampart-tests >&2
exec python3 agent/benches/compare/health_bench.py --rampart target/release/rampart \
  --sample-app target/release/rampart-sample-app "$@"
