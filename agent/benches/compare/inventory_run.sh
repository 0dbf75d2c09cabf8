#!/usr/bin/env bash
# Benchmark (not a test): a playbook run against an inventory of 3 hosts (a debug and a copy task
# each), start to exit: `rampart run -i` with each host on its own real rampart-agent (on
# 127.0.0.1, one transaction per host, one host after another) and `--limit web1 --local`,
# against `ansible-playbook -i -c local` (5 forks) on the same playbook and inventory, all hosts and
# `--limit web1`. A failed run stops the benchmark. Prints a table; the best of N runs counts.
# Usage: agent/benches/compare/inventory_run.sh [repetitions]   (default 5)
#   RAMPART=path/to/rampart RAMPART_AGENT=path/to/rampart-agent use those binaries instead of
#   building target/release/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
reps="${1:-5}"
if [ -z "${RAMPART:-}" ] || [ -z "${RAMPART_AGENT:-}" ]; then
  cargo build --release --bin rampart --bin rampart-agent >&2
  RAMPART=target/release/rampart
  RAMPART_AGENT=target/release/rampart-agent
fi
. agent/benches/compare/ansible-venv.sh
python="$(cd "$(dirname "$ansible_playbook")" && pwd)/python"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
addrs=()
for h in web1 web2 web3; do
  "$RAMPART_AGENT" --listen 127.0.0.1:0 --state-dir "$work/agent-$h" --insecure-dev \
    >"$work/$h.out" 2>"$work/$h.err" &
  pids+=("$!")
done
for h in web1 web2 web3; do
  for _ in $(seq 100); do grep -q '^listening on ' "$work/$h.out" && break; sleep 0.05; done
  addrs+=("$(awk '/^listening on /{print $3}' "$work/$h.out")")
  [ -n "${addrs[-1]}" ] || { echo "agent $h did not start:" >&2; cat "$work/$h.err" >&2; exit 1; }
done
printf '[web]\nweb1 rampart_agent=%s\nweb2 rampart_agent=%s\nweb3 rampart_agent=%s\n' \
  "${addrs[@]}" >"$work/agents.ini"
printf '[web]\nweb1\nweb2\nweb3\n' >"$work/local.ini"
cat >"$work/site.yml" <<YML
- hosts: web
  gather_facts: false
  tasks:
    - debug: msg="{{ inventory_hostname }} of {{ groups['web'] | length }}"
    - copy: {content: "{{ inventory_hostname }}\n", dest: "$work/out-{{ inventory_hostname }}"}
YML
best() { # best wall time in ms of "$@" over $reps runs; a failed run stops the benchmark
  local b=999999 s e ms
  for _ in $(seq "$reps"); do
    s=$(date +%s%N)
    "$@" >"$work/last.log" 2>&1 || { echo "failed: $*" >&2; cat "$work/last.log" >&2; exit 1; }
    e=$(date +%s%N)
    ms=$(( (e - s) / 1000000 )); [ "$ms" -lt "$b" ] && b=$ms
  done
  echo "$b"
}
ansible() { "$ansible_playbook" -c local -e "ansible_python_interpreter=$python" "$@"; }
r3=$(best "$RAMPART" run "$work/site.yml" -i "$work/agents.ini")
r1=$(best "$RAMPART" run "$work/site.yml" -i "$work/local.ini" --limit web1 --local \
  --state-dir "$work/local-state")
a3=$(best ansible -i "$work/local.ini" "$work/site.yml")
a1=$(best ansible -i "$work/local.ini" --limit web1 "$work/site.yml")
printf '%-62s %8s %8s\n' "3-host inventory, 2 tasks a host" "best ms" "ratio"
printf '%-62s %8d %7.1fx\n' "rampart run -i (3 agents, one after another)" "$r3" \
  "$(awk -v a="$a3" -v r="$r3" 'BEGIN { print a / (r > 0 ? r : 1) }')"
printf '%-62s %8d\n' "ansible-playbook -i -c local (3 hosts, 5 forks)" "$a3"
printf '%-62s %8d %7.1fx\n' "rampart run -i --limit web1 --local" "$r1" \
  "$(awk -v a="$a1" -v r="$r1" 'BEGIN { print a / (r > 0 ? r : 1) }')"
printf '%-62s %8d\n' "ansible-playbook -i -c local --limit web1" "$a1"
