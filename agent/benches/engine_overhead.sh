#!/usr/bin/env bash
# Benchmark (not a test): the engine's per-task overhead against `ansible-playbook -c local`.
#
# Builds `rampart` in release mode, creates a venv with ansible-core from PyPI (cached under
# target/bench-venv), generates the same playbooks for both tools and prints a table.
# Usage: agent/benches/engine_overhead.sh [repetitions]   (default 3; the best run counts)
set -euo pipefail
cd "$(dirname "$0")/../.."
reps="${1:-3}"
cargo build --release --bin rampart >&2
venv=target/bench-venv
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  echo "creating $venv with ansible-core (one time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'ansible-core>=2.19,<2.20'
fi
exec python3 agent/benches/engine_overhead.py --rampart target/release/rampart \
  --ansible "$venv/bin/ansible-playbook" --reps "$reps"
