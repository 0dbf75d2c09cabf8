#!/usr/bin/env bash
# Benchmarks (not tests) for `rampart migrate`, each against its peer measured in the same run on
# the same throwaway PostgreSQL cluster:
#   1. 500 small migrations applied by `rampart migrate migrate` vs psql running the same files,
#      each in its own transaction (one psql session; and one psql process per file, as deploy
#      scripts often do). Goal: <= 1.3x the one-session psql time.
#   2. `rampart migrate info` start-to-exit on a 500-row history. Goal: < 50 ms.
#
# Builds `rampart` in release mode, starts a cluster with initdb/pg_ctl (as the postgres user when
# run as root) on a free 127.0.0.1 port, stops it at the end, prints markdown tables.
# Usage: agent/benches/compare/migrate_bench.sh [--reps N] [--migrations N] [--info-runs N]
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release --bin rampart -p rampart-cli >&2
exec python3 agent/benches/compare/migrate_bench.py --rampart target/release/rampart "$@"
