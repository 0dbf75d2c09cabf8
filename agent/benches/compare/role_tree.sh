#!/usr/bin/env bash
# Benchmark (not a test): `rampart run --local` start to exit on a 31-file role tree (every file
# read and validated, then 64 tasks and a handler run; a failed run stops the benchmark) against `ansible-playbook --syntax-check`
# on the same tree (which only parses it). Prints a table; the best of N runs counts.
# Usage: agent/benches/compare/role_tree.sh [repetitions]   (default 5)
#   RAMPART=path/to/rampart uses that binary instead of building target/release/rampart.
set -euo pipefail
cd "$(dirname "$0")/../../.."
reps="${1:-5}"
if [ -z "${RAMPART:-}" ]; then
  cargo build --release --bin rampart >&2
  RAMPART=target/release/rampart
fi
. agent/benches/compare/ansible-venv.sh
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
role="$tree/roles/app"
mkdir -p "$role"/{tasks,handlers,defaults,vars,templates,files,meta} "$tree/vars" "$tree/out"
cat >"$tree/site.yml" <<YML
- hosts: all
  gather_facts: false
  vars_files: [vars/common.yml]
  roles: [app]
YML
echo "greeting: hello" >"$tree/vars/common.yml"
echo "dependencies: []" >"$role/meta/main.yml"
printf 'n: 3\nout: %s\n' "$tree/out" >"$role/defaults/main.yml"
echo "suffix: x" >"$role/vars/main.yml"
printf -- '- name: done\n  debug: msg=handled\n' >"$role/handlers/main.yml"
echo "a {{ greeting }}" >"$role/templates/a.j2"
echo "b {{ suffix }}" >"$role/templates/b.j2"
echo f1 >"$role/files/f1.txt"
echo f2 >"$role/files/f2.txt"
{
  for i in $(seq -w 1 20); do echo "- import_tasks: t$i.yml"; done
  printf -- '- name: render a\n  template: src=a.j2 dest={{ out }}/a.txt\n  notify: done\n'
  printf -- '- name: copy f1\n  copy: src=f1.txt dest={{ out }}/f1.txt\n'
  printf -- '- name: copy f2\n  copy: src=f2.txt dest={{ out }}/f2.txt\n'
  printf -- '- name: render b\n  template: src=b.j2 dest={{ out }}/b.txt\n'
} >"$role/tasks/main.yml"
for i in $(seq -w 1 20); do
  printf -- '- name: fact %s\n  set_fact: v%s="{{ greeting }}-%s"\n- name: say %s\n  debug: msg="{{ v%s }} {{ suffix }}"\n- name: check %s\n  assert: {that: ["n | int == 3"]}\n' \
    "$i" "$i" "$i" "$i" "$i" "$i" >"$role/tasks/t$i.yml"
done
files=$(find "$tree" -type f | wc -l)
best() { # best wall time in ms of "$@" over $reps runs
  local b=999999 s e ms
  for _ in $(seq "$reps"); do
    s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N)
    ms=$(( (e - s) / 1000000 )); [ "$ms" -lt "$b" ] && b=$ms
  done
  echo "$b"
}
state=$(mktemp -d)
"$RAMPART" run "$tree/site.yml" --local --state-dir "$state" >"$tree/run.log" 2>&1 ||
  { echo "rampart run failed:" >&2; cat "$tree/run.log" >&2; exit 1; }
tail -2 "$tree/run.log" >&2
r=$(best "$RAMPART" run "$tree/site.yml" --local --state-dir "$state")
rc=$(best "$RAMPART" run "$tree/site.yml" --local --check --state-dir "$state")
a=$(best "$ansible_playbook" -i localhost, -c local --syntax-check "$tree/site.yml")
rm -rf "$state"
printf '%-58s %8s\n' "31-file role tree ($files files, 64 tasks)" "best ms"
printf '%-58s %8d\n' "rampart run --local (validate + run every task)" "$r"
printf '%-58s %8d\n' "rampart run --local --check" "$rc"
printf '%-58s %8d\n' "ansible-playbook --syntax-check (parse only)" "$a"
awk -v a="$a" -v r="$r" 'BEGIN { printf "ansible --syntax-check / rampart run: %.1fx\n", a / (r > 0 ? r : 1) }'
