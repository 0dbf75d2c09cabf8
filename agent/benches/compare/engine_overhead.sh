#!/usr/bin/env bash
# Benchmark (not a test): the engine's per-task overhead against `ansible-playbook -c local`.
#
# Builds `rampart` in release mode, creates a venv with ansible-core from PyPI (cached under
# target/bench-venv), generates the same playbooks for both tools and prints a table.
# Usage: agent/benches/compare/engine_overhead.sh [repetitions]   (default 3; the best run counts)
set -euo pipefail
cd "$(dirname "$0")/../../.."
reps="${1:-3}"
cargo build --release --bin rampart >&2
. agent/benches/compare/ansible-venv.sh
exec python3 agent/benches/compare/engine_overhead.py --rampart target/release/rampart \
  --ansible "$ansible_playbook" --reps "$reps"
