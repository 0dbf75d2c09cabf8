#!/usr/bin/env bash
# Fleet benchmark (not a test): the controller's built-in `production` playbook deploying a ~1 MB
# release of the sample app to 1, 50, 100 and 200 agents on 127.0.0.1 (each agent its own process,
# state dir and mTLS certificate; each host its own sample app and port), beside Ansible
# (`ansible-playbook -f 50`, every host `ansible_connection=local`) doing the same per-host work
# (controller/benches/compare/ansible/fleet-deploy.yml) on the same count of hosts, in the same run.
#
# Per host count: deploy 1.0.0 (untimed warm-up, so a previous release exists), then time the
# 2.0.0 deploy from the CLI's start to its exit (it must exit 0 with every app serving 2.0.0);
# Rampart's deploy is repeated with 2.0.1, 2.0.2 (REPS=3, the median is reported: one deploy to
# one host takes well under a second, too short for one run to be a baseline), Ansible's not
# (ANSIBLE_REPS=1).
# Measures wall time, the controller's peak RSS (VmHWM after the timed deploys) and idle RSS, the
# agents' idle RSS (VmRSS before the first deploy) and peak (VmHWM), ansible-playbook's maximum RSS
# (`/usr/bin/time -v`) and its tree's sampled total, and each side's CPU time per deploy.
# Prints a markdown table, a memory/CPU table and the goals: 200 hosts in <= 3x the 1-host time,
# controller <= 100 MB, agent idle <= 15 MB. Failed deploys are summarized (verdict, each failed
# host's message and the app log its forensics bundle kept) and their logs kept (FAILURE_LOGS).
#
# Both sides stop the app with a stop command that waits until every thread of the old app has
# exited; the tests' (tests/src/deploy.rs) counts a zombie main thread as stopped, and at 200 hosts
# on 2 cores the new release then fails to bind its port (see fleet_bench.py `stop_command`).
#
# Builds the four binaries in release mode (SKIP_BUILD=1 uses target/release as it is), creates a
# venv with ansible-core from PyPI when missing (ANSIBLE_VENV, default /var/tmp/ansible-venv),
# installs the `time` Debian package when /usr/bin/time is missing, raises `ulimit -n`.
# Every process it starts is stopped by pid at the end; its temp dir is removed.
#
# Usage: controller/benches/compare/fleet_bench.sh [--skip-ansible] [--keep] [--forks N] ...
#   HOSTS="1 50 100 200"  host counts (quick run: HOSTS="1 5")
#   PORT_BASE=21000       controller PORT_BASE, agents PORT_BASE+i, apps PORT_BASE+1000+i (Rampart)
#                         and PORT_BASE+2000+i (Ansible)
#   REPS=3, ANSIBLE_REPS=1  timed runs per host count
#   ARTIFACT_BYTES=1048576, RESULTS_JSON=FILE (raw figures), FAILURE_LOGS=DIR (logs of failed runs)
#   SINKS=1 (or --sinks)  Rampart side with every notification sink configured (github, slack,
#                         pagerduty, webhook; all at one local fake server); prints what it received
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --bin rampart --bin rampart-agent --bin rampart-controller \
    --bin rampart-sample-app >&2
fi
for b in rampart rampart-agent rampart-controller rampart-sample-app; do
  [[ -x target/release/$b ]] || { echo "target/release/$b is missing (unset SKIP_BUILD)" >&2; exit 2; }
done

if [[ ! -x /usr/bin/time ]]; then
  echo "installing the time package (for /usr/bin/time -v)" >&2
  apt-get install -y -qq time >&2 || { apt-get update -qq >&2 && apt-get install -y -qq time >&2; }
fi

venv="${ANSIBLE_VENV:-/var/tmp/ansible-venv}"
skip_ansible=0
for arg in "$@"; do [[ "$arg" == --skip-ansible ]] && skip_ansible=1; done
if [[ $skip_ansible == 0 && ! -x "$venv/bin/ansible-playbook" ]]; then
  echo "creating $venv with ansible-core (one time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'ansible-core>=2.19,<2.20' >&2
fi

# 200 agents + 200 apps + the controller's connections: raise the open-files limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
echo "ulimit -n: $(ulimit -n)" >&2

exec python3 controller/benches/compare/fleet_bench.py --bin-dir target/release \
  --ansible-playbook "$venv/bin/ansible-playbook" \
  --ansible-yml controller/benches/compare/ansible/fleet-deploy.yml "$@"
