#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and end-to-end tests that start real
# rampart-agent processes on 127.0.0.1 and SIGKILL them. Needs only the Rust toolchain today;
# later suites install what they need (PostgreSQL, redis, systemd sandbox) from here.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tools the end-to-end tests drive: curl (health checks), openssl (a test CA for https
# artifacts), python3 (an https server), systemd (the sandboxed service manager).
missing=()
for tool in curl:curl openssl:openssl python3:python3 /lib/systemd/systemd:systemd; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "${tool%%:*}" ] || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi
echo "== building the binaries the end-to-end tests run"
cargo build --workspace --bins
echo "== running the tests"
cargo test --workspace --no-fail-fast -- --test-threads="${RAMPART_TEST_THREADS:-4}"
