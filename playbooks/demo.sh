#!/usr/bin/env bash
# The demo: deploys the sample application on this host with the shipped transactional playbook,
# v1 → v2 → a broken v3, and shows v3 rolled back to v2 (release, symlinks, running app and the
# database its migrations changed); then rolls back to v1 on purpose with the shipped rollback
# playbook.
# Everything lives in temp directories; the app listens on 127.0.0.1 and is stopped at the end.
# The database is a throwaway PostgreSQL cluster (initdb/pg_ctl as the postgres user, a free
# 127.0.0.1 port), stopped and removed at the end; without PostgreSQL (and no root to install
# it) the demo runs without a database.
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
pgdir=""
pgbin=""
cleanup() {
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  if [ -n "$pgdir" ]; then
    as_postgres "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  fi
}
trap cleanup EXIT
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# A throwaway PostgreSQL for the app's migrations (the releases carry db/migration/).
find_pg() {
  if [ -x /usr/local/bin/initdb ]; then pgbin=/usr/local/bin; return 0; fi
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [ -n "$pgbin" ] && [ -x "$pgbin/initdb" ] && command -v psql >/dev/null && command -v pg_dump >/dev/null
}
if ! find_pg && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "demo: installing PostgreSQL (the sample app's database)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
fi
db_port=""
if find_pg; then
  pgdir="$(mktemp -d /var/tmp/rampart-demo-pg.XXXXXX)"
  [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
  db_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 15432)"
  echo demo > "$pgdir/pw"; [ "$(id -u)" = 0 ] && chown postgres "$pgdir/pw"
  as_postgres "$pgbin/initdb" -D "$pgdir/data" -U postgres -E UTF8 --no-locale --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$pgdir/pw" >/dev/null
  as_postgres "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
    -o "-p $db_port -k $pgdir -c listen_addresses=127.0.0.1" start >/dev/null
  export PGHOST=127.0.0.1 PGPORT="$db_port" PGUSER=postgres PGPASSWORD=demo
  psql -X -q -d postgres -c "CREATE DATABASE shop"
  echo "demo: PostgreSQL on 127.0.0.1:$db_port, database shop (the app's migrations run inside each deploy)"
else
  echo "demo: no PostgreSQL here: deploying without the database step"
fi
database_var() {
  if [ -n "$db_port" ]; then
    printf ',\n  "database": {"url": "jdbc:postgresql://127.0.0.1:%s/shop", "user": "postgres", "password": "demo", "restore_point": "dump"}' "$db_port"
  fi
}
show_db() {
  if [ -n "$db_port" ]; then
    echo "--> database: schema version $(psql -X -At -d shop -c "SELECT coalesce(max(version::int), 0) FROM flyway_schema_history WHERE success AND type = 'SQL'"); tables: $(psql -X -At -d shop -c "SELECT string_agg(tablename, ', ' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"); orders: $(psql -X -At -d shop -c "SELECT string_agg(item || coalesce('=' || (to_jsonb(o) ->> 'status'), ''), ', ' ORDER BY id) FROM orders o")"
  fi
}

SAMPLE_APP_BIN=target/debug/rampart-sample-app playbooks/sample-app/package.sh "$work/dist" >/dev/null

vars() { # version
  local v="$1" sha
  sha="$(cut -d' ' -f1 "$work/dist/sample-app-$v.tar.gz.sha256")"
  cat >"$work/vars-$v.json" <<EOF
{
  "target_version": "$v",
  "backend_url": "http://127.0.0.1:$port",
  "min_tables": 2,
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
  }]$(database_var)
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
  show_db
  if [ "$code" != "$want" ]; then
    echo "demo: deploy $v exited $code, expected $want" >&2
    exit 1
  fi
}

deploy 1.0.0 0
deploy 2.0.0 0
deploy 3.0.0 1
echo
echo "current release: $(readlink "$work/state/apps/app/current")   (v3 was rolled back, and its migration V3 with it)"
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
show_db
[ -n "$db_port" ] && echo "    (the rollback playbook switches releases only: the schema stays at v2, which v1 must tolerate)"
echo
echo "current release: $(readlink "$work/state/apps/app/current")"
echo "state captures:  $work/captures"
echo "forensics:       $(ls -d "$work"/forensics/* 2>/dev/null | tr '\n' ' ')  (the failed v3, and v2 when it was left)"
echo "journals:        $work/state/history"
