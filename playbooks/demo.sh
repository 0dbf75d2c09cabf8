#!/usr/bin/env bash
# The demo: deploys the sample application on this host with the shipped transactional playbook,
# v1 → v2 → a broken v3, and shows v3 rolled back to v2 (release, symlinks and running app); then
# rolls back to v1 on purpose with the shipped rollback playbook.
# Everything lives in a temp directory; the app listens on 127.0.0.1 and is stopped at the end.
# Usage: playbooks/demo.sh   (builds what it needs with cargo on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v curl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "demo: installing curl (the playbook's health check uses it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  else
    echo "demo: needs curl (Debian: apt-get install curl)" >&2
    exit 2
  fi
fi
cargo build -q --bin rampart --bin rampart-sample-app
rampart=target/debug/rampart
work="$(mktemp -d /tmp/rampart-demo.XXXXXX)"
port="${DEMO_PORT:-18080}"
pidfile="$work/app.pid"
cleanup() {
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
}
trap cleanup EXIT

SAMPLE_APP_BIN=target/debug/rampart-sample-app playbooks/sample-app/package.sh "$work/dist" >/dev/null

vars() { # version
  local v="$1" sha
  sha="$(cut -d' ' -f1 "$work/dist/sample-app-$v.tar.gz.sha256")"
  cat >"$work/vars-$v.json" <<EOF
{
  "target_version": "$v",
  "health_url": "http://127.0.0.1:$port/actuator/health",
  "health_retries": 5,
  "health_delay": 0.3,
  "state_capture_dir": "$work/captures",
  "forensics_dir": "$work/forensics",
  "components": [{
    "name": "app",
    "artifact": "$work/dist/sample-app-$v.tar.gz",
    "sha256": "$sha",
    "path": "$work/opt/app",
    "service": {
      "name": "sample-app",
      "log_file": "$work/app.log",
      "start": "SAMPLE_APP_LISTEN=127.0.0.1:$port nohup $work/opt/app/start.sh > $work/app.log 2>&1 & echo \$! > $pidfile",
      "stop": "if [ -f $pidfile ]; then p=\$(cat $pidfile); kill \$p 2>/dev/null; for i in \$(seq 50); do { kill -0 \$p 2>/dev/null && ! grep -qs '^State:.*Z' /proc/\$p/status; } || break; sleep 0.1; done; rm -f $pidfile; fi",
      "status": "test -f $pidfile && p=\$(cat $pidfile) && kill -0 \$p 2>/dev/null && ! grep -qs '^State:.*Z' /proc/\$p/status"
    }
  }]
}
EOF
  echo "$work/vars-$v.json"
}

deploy() { # version expected-exit
  local v="$1" want="$2" code=0
  echo
  echo "=================== rampart run: deploy $v ==================="
  "$rampart" run playbooks/production-deploy-transactional.yml --local --state-dir "$work/state" \
    -e "@$(vars "$v")" || code=$?
  echo "--> exit code $code; the app now reports: $(curl -fsS "http://127.0.0.1:$port/actuator/info" || echo unreachable)"
  if [ "$code" != "$want" ]; then
    echo "demo: deploy $v exited $code, expected $want" >&2
    exit 1
  fi
}

deploy 1.0.0 0
deploy 2.0.0 0
deploy 3.0.0 1
echo
echo "current release: $(readlink "$work/state/apps/app/current")   (v3 was rolled back)"
echo "failed release:  $(ls -d "$work"/state/apps/app/failed/3.0.0-* 2>/dev/null || echo none)   (kept apart)"

echo
echo "=================== rampart run: roll back to 1.0.0 ==================="
code=0
"$rampart" run playbooks/rollback-production-safe.yml --local --state-dir "$work/state" \
  -e "@$work/vars-2.0.0.json" -e rollback_version=1.0.0 || code=$?
echo "--> exit code $code; the app now reports: $(curl -fsS "http://127.0.0.1:$port/actuator/info" || echo unreachable)"
if [ "$code" != 0 ]; then
  echo "demo: the rollback to 1.0.0 exited $code, expected 0" >&2
  exit 1
fi
echo
echo "current release: $(readlink "$work/state/apps/app/current")"
echo "state captures:  $work/captures"
echo "forensics:       $(ls -d "$work"/forensics/* 2>/dev/null | tr '\n' ' ')  (the failed v3, and v2 when it was left)"
echo "journals:        $work/state/history"
