#!/usr/bin/env bash
# Benchmark (not a test): the engine's per-task overhead against `ansible-playbook -c local`.
#
# Builds `rampart` in release mode, creates a venv with ansible-core from PyPI (cached under
# target/bench-venv), generates the same playbooks for both tools and prints a table.
# Usage: agent/benches/compare/engine_overhead.sh [repetitions] [--cases kind:N,...]
#   (default 3 repetitions, the best run counts; cases default set_fact:1000,command:200, the
#   modules: lineinfile:100,replace:100,file:100,cron:100). RAMPART=path skips the release build
#   (say which build in any figure you quote).
set -euo pipefail
cd "$(dirname "$0")/../../.."
reps="${1:-3}"
shift || true
if [ -z "${RAMPART:-}" ]; then
  cargo build --release --bin rampart >&2
  RAMPART=target/release/rampart
fi
. agent/benches/compare/ansible-venv.sh
exec python3 agent/benches/compare/engine_overhead.py --rampart "$RAMPART" \
  --ansible "$ansible_playbook" --reps "$reps" "$@"
