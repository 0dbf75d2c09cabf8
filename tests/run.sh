#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and end-to-end tests that start real
# rampart-agent processes on 127.0.0.1 and SIGKILL them, throwaway PostgreSQL clusters and a
# sandboxed systemd. Installs what the tests drive (Debian packages) when it is missing.
# The end-to-end tests are one test target, `tests/e2e/` (a module per scenario); run one
# module with `cargo test -p rampart-tests --test e2e semantics::`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tools the end-to-end tests drive: curl (health checks), openssl (a test CA for https
# artifacts), python3 (an https server), systemd (the sandboxed service manager), PostgreSQL
# (server for throwaway clusters; psql, pg_dump, pg_restore for restore points), redis-server
# (the health checks' Redis), prometheus and promtool (a real Prometheus scraping the controller; metrics and rule checks),
# prometheus-pushgateway (receives `rampart run --local --pushgateway` facts; started by the tests
# on a port of their own: the unit the package enables is not used), crontab (the conformance
# suite's cron scenario), nginx and haproxy (the proxies `proxy_switch` switches; started by the
# tests on ports of their own with their own configs: the packages' services are not used),
# python3-venv (the conformance suite's ansible-core and the canary
# statistics' SciPy, below).
missing=()
for tool in curl:curl openssl:openssl python3:python3 /lib/systemd/systemd:systemd \
  psql:postgresql-client pg_dump:postgresql-client pg_restore:postgresql-client \
  redis-server:redis-server promtool:prometheus prometheus:prometheus \
  /usr/bin/prometheus-pushgateway:prometheus-pushgateway crontab:cron \
  /usr/sbin/nginx:nginx /usr/sbin/haproxy:haproxy; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "${tool%%:*}" ] || missing+=("${tool##*:}")
done
if ! [ -x /usr/local/bin/initdb ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi
# The conformance suite (tests/e2e/conformance.rs) compares `rampart run` with real ansible-core
# 2.19, installed once into target/ansible-venv (the test would do it too, under a lock; here it
# happens before the clock of any test starts). RAMPART_ANSIBLE_PLAYBOOK points at another.
if [ -z "${RAMPART_ANSIBLE_PLAYBOOK:-}" ] && ! [ -x target/ansible-venv/bin/ansible-playbook ]; then
  echo "== installing ansible-core 2.19 into target/ansible-venv"
  rm -rf target/ansible-venv && mkdir -p target
  python3 -m venv target/ansible-venv
  target/ansible-venv/bin/pip install --quiet 'ansible-core>=2.19,<2.20'
fi
# The canary statistics (tests/e2e/canary_stats.rs) are checked against SciPy 1.17, installed once
# into target/scipy-venv (the test would do it too, under a lock). RAMPART_SCIPY_PYTHON points at
# another python3 that can import scipy.
if [ -z "${RAMPART_SCIPY_PYTHON:-}" ] && ! target/scipy-venv/bin/python -c 'import scipy' >/dev/null 2>&1; then
  echo "== installing scipy 1.17 into target/scipy-venv"
  rm -rf target/scipy-venv && mkdir -p target
  python3 -m venv target/scipy-venv
  target/scipy-venv/bin/pip install --quiet 'scipy>=1.17,<1.18'
fi
echo "== building the binaries the end-to-end tests run"
cargo build --workspace --bins
echo "== running the tests"
cargo test --workspace --no-fail-fast -- --test-threads="${RAMPART_TEST_THREADS:-4}"
