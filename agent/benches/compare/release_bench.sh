#!/usr/bin/env bash
# Benchmarks (not tests) for releases, each against its peer measured in the same run:
#   1. stage (`release state=staged`) vs `sha256sum -c && tar xzf` (and + `sync -f`)
#   2. `release state=active` / `state=restored` switch times (goal <= 50 ms) vs Ansible `file`
#   3. the shipped transactional deploy playbook vs agent/benches/compare/ansible/deploy.yml run by
#      `ansible-playbook -c local` (goal >= 10x faster)
#   4. rollback latency, failing health verdict -> restored release healthy, shipped rescue order vs
#      forensics recorded in one step first (goal: <= 50 ms beyond the service's own stop/start/check)
#
# Builds `rampart` and `rampart-sample-app` in release mode, creates a venv with ansible-core from
# PyPI (cached under target/bench-venv, shared with engine_overhead.sh), keeps the generated
# ~50 MB artifact under target/release-bench/ and prints one markdown table per benchmark.
# Usage: agent/benches/compare/release_bench.sh [--reps N] [--switches N] [--only stage|switch|deploy|rollback]...
#        [--skip-ansible] [--keep]      (default: 5 reps, 20 active + 20 restored switches per run)
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release --bin rampart -p rampart-cli >&2
cargo build --release --bin rampart-sample-app -p rampart-tests >&2
. agent/benches/compare/ansible-venv.sh
exec python3 agent/benches/compare/release_bench.py --rampart target/release/rampart \
  --ansible "$ansible_playbook" --sample-app-bin target/release/rampart-sample-app \
  --cache target/release-bench "$@"
