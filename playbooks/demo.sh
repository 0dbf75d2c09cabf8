#!/usr/bin/env bash
# The demo: a fleet of three hosts deployed through the controller, the way CI does it.
#
# On 127.0.0.1 it starts three rampart-agent processes (web1, web2, web3: each its own state dir,
# forensics dir and sample-app port) and a rampart-controller whose `production` environment has
# them all, rolled out in waves (serial [1, "100%"]: web1 alone, then the rest; max_fail_percentage
# 0). Mutual TLS everywhere, with certificates made on the fly by `rampart certs init`; the CLI
# authenticates to the controller with a bearer token. Then, with the `rampart` CLI:
#   1. deploy 1.0.0                  every host serves 1.0.0
#   2. deploy 2.0.0                  every host serves 2.0.0
#   3. deploy a broken 3.0.0         its health suite fails on web1 in wave 1: web1's own rescue
#                                    restores 2.0.0 (release, app, and the database its migration
#                                    V3 changed) and the deployment ends rolled back (exit 1);
#                                    web2 and web3 were never touched
#   4. history, and the failed deployment host by host
#   5. web1's forensics bundle of the failed 3.0.0, downloaded through the controller
#   6. an operator's rollback to 1.0.0 (the shipped rollback playbook, switching releases only)
#   7. what an SRE sees: the incident 3.0.0 opened and its post-mortem draft, every host checked
#      whole (`status --verify`), and the controller's Prometheus metrics (`[metrics] listen`)
# Each step checks its exit code and what every host serves (and its schema version): the demo
# doubles as a smoke test, exits 1 on the first surprise and prints `demo: OK` at the end.
#
# Each host has its own database (shop_web1..shop_web3) in a throwaway PostgreSQL cluster
# (initdb/pg_ctl as the postgres user, a free 127.0.0.1 port), stopped and removed at the end;
# without PostgreSQL (and no root to install it) the demo runs without the database step.
# The agents and the controller listen on ports they pick themselves (127.0.0.1:0) and announce
# with `listening on ADDR`; the apps' and PostgreSQL's ports are picked free with python3.
# Every process the demo started is stopped at the end; its files stay in the printed temp dir.
# Usage: playbooks/demo.sh   (builds what it needs with cargo; as root on Debian it installs curl,
#                             python3 and PostgreSQL when they are missing)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "demo: installing ${missing[*]} (the playbook's health check uses curl, the demo python3)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "demo: needs ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi

cargo build -q --bin rampart --bin rampart-agent --bin rampart-controller --bin rampart-sample-app
R=target/debug/rampart
work="$(mktemp -d /tmp/rampart-demo.XXXXXX)"
hosts=(web1 web2 web3)
declare -A agent_pid=() agent_addr=() app_port=() pidfile=()
controller_pid=""
pgdir=""
pgbin=""

cleanup() {
  local code=$? p pids=()
  [ -n "$controller_pid" ] && pids+=("$controller_pid")
  for p in "${agent_pid[@]}"; do pids+=("$p"); done
  for p in "${pidfile[@]}"; do [ -f "$p" ] && pids+=("$(cat "$p")"); done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do # bounded: 5 s each at most, then SIGKILL
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "$pgdir" ]; then
    as_postgres "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  fi
  if [ "$code" = 130 ] || [ "$code" = 143 ]; then
    echo "demo: interrupted; everything it started is stopped; files in $work" >&2
  elif [ "$code" != 0 ]; then
    echo "demo: FAILED (exit $code); logs: $work/controller.log, $work/web*/agent.log, $work/web*/app.log" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
fail() { echo "demo: $*" >&2; exit 1; }
header() { echo; echo "== $* =="; }

# free_ports N: N distinct free ports on 127.0.0.1 (all bound at once, so no duplicates).
free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# wait_listening NAME PID OUTFILE: waits (30 s at most) for `listening on ADDR` in OUTFILE; prints ADDR.
wait_listening() {
  local name="$1" pid="$2" out="$3" line
  for _ in $(seq 300); do
    line="$(grep -m1 '^listening on ' "$out" 2>/dev/null || true)"
    if [ -n "$line" ]; then echo "${line#listening on }"; return 0; fi
    kill -0 "$pid" 2>/dev/null || fail "$name exited before serving: $(tail -n 5 "${out%.out}.log" 2>/dev/null)"
    sleep 0.1
  done
  fail "$name did not print 'listening on' within 30 s (see ${out%.out}.log)"
}

# --- PostgreSQL: one throwaway cluster, a database per host ---------------------------------
find_pg() {
  if [ -x /usr/local/bin/initdb ]; then pgbin=/usr/local/bin; return 0; fi
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [ -n "$pgbin" ] && [ -x "$pgbin/initdb" ] && command -v psql >/dev/null && command -v pg_dump >/dev/null
}
if ! find_pg && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "demo: installing PostgreSQL (the sample app's database)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
fi
read -r app_port[web1] app_port[web2] app_port[web3] pg_free <<<"$(free_ports 4)"
db_port=""
if find_pg; then
  pgdir="$(mktemp -d /var/tmp/rampart-demo-pg.XXXXXX)"
  [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
  echo demo > "$pgdir/pw"; [ "$(id -u)" = 0 ] && chown postgres "$pgdir/pw"
  as_postgres "$pgbin/initdb" -D "$pgdir/data" -U postgres -E UTF8 --no-locale --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$pgdir/pw" >/dev/null
  as_postgres "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w -t 30 \
    -o "-p $pg_free -k $pgdir -c listen_addresses=127.0.0.1" start >/dev/null
  db_port="$pg_free"
  export PGHOST=127.0.0.1 PGPORT="$db_port" PGUSER=postgres PGPASSWORD=demo
  for h in "${hosts[@]}"; do psql -X -q -d postgres -c "CREATE DATABASE shop_$h"; done
  echo "demo: PostgreSQL on 127.0.0.1:$db_port, databases shop_web1..shop_web3 (each host's migrations run inside its deploy)"
else
  echo "demo: no PostgreSQL here: deploying without the database step"
fi

# --- the release tarballs, the certificates, the token -----------------------------------------
dist="$work/dist"
SAMPLE_APP_BIN=target/debug/rampart-sample-app playbooks/sample-app/package.sh "$dist" >/dev/null
"$R" certs init "$work/certs" --agent web1 --agent web2 --agent web3 >/dev/null
python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$work/token"
chmod 600 "$work/token"
token_sha="$(tr -d '\n' < "$work/token" | target/debug/rampart-controller hash-token)"
echo "demo: certificates in $work/certs (a CA, the controller's, one per agent); token in $work/token"

# --- three agents --------------------------------------------------------------------------------
for h in "${hosts[@]}"; do
  d="$work/$h"
  mkdir -p "$d/state" "$d/forensics"
  pidfile[$h]="$d/app.pid"
  NO_COLOR=1 target/debug/rampart-agent --listen 127.0.0.1:0 --state-dir "$d/state" \
    --tls-cert "$work/certs/agent-$h.pem" --tls-key "$work/certs/agent-$h.key" \
    --tls-ca "$work/certs/ca.pem" --forensics-dir "$d/forensics" >"$d/agent.out" 2>"$d/agent.log" &
  agent_pid[$h]=$!
done
for h in "${hosts[@]}"; do
  agent_addr[$h]="$(wait_listening "agent $h" "${agent_pid[$h]}" "$work/$h/agent.out")"
  echo "demo: agent $h on ${agent_addr[$h]} (mutual TLS), its app on 127.0.0.1:${app_port[$h]}"
done

# --- the inventory: what the shipped playbook needs for the sample app, per host ----------------
# No artifact/sha256 in `components`: the controller fills them from the uploaded artifact.
{
  echo "all:"
  echo "  vars:"
  echo "    disk_max_percent: 99.5   # the suite's one critical system check: a full demo disk must not fail deploys"
  echo "    min_tables: 2            # orders and flyway_schema_history"
  echo "    health_retries: 5"
  echo "    health_delay: 0.3"
  echo "  hosts:"
  for h in "${hosts[@]}"; do
    d="$work/$h"; pid="${pidfile[$h]}"; port="${app_port[$h]}"
    cat <<EOF
    $h:
      rampart_agent: "${agent_addr[$h]}"
      backend_url: "http://127.0.0.1:$port"
      state_capture_dir: "$d/captures"
      forensics_dir: "$d/forensics"
      components:
        - name: app
          path: "$d/opt/app"
          service:
            name: sample-app
            log_file: "$d/app.log"
            start: "SAMPLE_APP_LISTEN=127.0.0.1:$port nohup $d/opt/app/start.sh > $d/app.log 2>&1 & echo \$! > $pid"
            stop: "if [ -f $pid ]; then p=\$(cat $pid); kill \$p 2>/dev/null; for sig in TERM KILL; do [ \$sig = KILL ] && kill -9 \$p 2>/dev/null; for i in \$(seq 100); do live=0; for s in /proc/\$p/task/*/status; do [ -e \$s ] && ! grep -qs '^State:.*Z' \$s && live=1; done; [ \$live = 0 ] && break; sleep 0.1; done; [ \$live = 0 ] && break; done; rm -f $pid; fi"
            status: "test -f $pid && p=\$(cat $pid) && kill -0 \$p 2>/dev/null && ! grep -qs '^State:.*Z' /proc/\$p/status"
EOF
    if [ -n "$db_port" ]; then
      cat <<EOF
      database:
        url: "jdbc:postgresql://127.0.0.1:$db_port/shop_$h"
        user: postgres
        password: demo
        restore_point: dump
EOF
    fi
  done
} >"$work/inventory.yml"

# --- the controller ------------------------------------------------------------------------------
cat >"$work/controller.toml" <<EOF
listen = "127.0.0.1:0"
state_dir = "$work/controller"

[tls]
cert = "$work/certs/controller.pem"
key = "$work/certs/controller.key"

[agent_tls]
cert = "$work/certs/controller.pem"
key = "$work/certs/controller.key"
ca = ["$work/certs/ca.pem"]

[[tokens]]
name = "demo-ci"
sha256 = "$token_sha"
scopes = ["admin"]   # one token for the whole demo, forensics included; a CI token needs only deploy + read

[metrics]            # Prometheus's /metrics and /healthz (port 0: it picks one and prints it)
listen = "127.0.0.1:0"

[environments.production]
inventory = "$work/inventory.yml"
serial = [1, "100%"]
max_fail_percentage = 0
EOF
NO_COLOR=1 target/debug/rampart-controller --config "$work/controller.toml" >"$work/controller.out" 2>"$work/controller.log" &
controller_pid=$!
controller_addr="$(wait_listening controller "$controller_pid" "$work/controller.out")"
metrics_addr="$(grep -m1 '^metrics on ' "$work/controller.out" | sed 's/^metrics on //')"
echo "demo: controller on $controller_addr: environment production = web1, web2, web3 in waves [1, 100%]"
echo "demo: Prometheus metrics on http://$metrics_addr/metrics"
echo "demo: config $work/controller.toml, inventory $work/inventory.yml"
C=(--controller "https://$controller_addr" --ca "$work/certs/ca.pem" --token-file "$work/token")

# --- the walk ------------------------------------------------------------------------------------
serving() { # port → the version the app reports, or "unreachable"
  curl -fsS --max-time 5 "http://127.0.0.1:$1/actuator/info" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["app"]["version"])' 2>/dev/null || echo unreachable
}
schema() { # host → its database's schema version
  psql -X -At -d "shop_$1" -c "SELECT coalesce(max(version::int), 0) FROM flyway_schema_history WHERE success AND type = 'SQL'" 2>/dev/null || echo "?"
}
# check_hosts VERSION SCHEMA: every host serves VERSION (and its database is at SCHEMA).
check_hosts() {
  local want="$1" want_schema="$2" h v s bad=""
  for h in "${hosts[@]}"; do
    v="$(serving "${app_port[$h]}")"
    if [ -n "$db_port" ]; then
      s="$(schema "$h")"
      echo "--> $h (127.0.0.1:${app_port[$h]}) serves $v; database shop_$h at schema version $s"
      [ "$s" = "$want_schema" ] || bad+=" $h: schema $s, expected $want_schema;"
    else
      echo "--> $h (127.0.0.1:${app_port[$h]}) serves $v"
    fi
    [ "$v" = "$want" ] || bad+=" $h serves $v, expected $want;"
  done
  [ -z "$bad" ] || fail "unexpected state:$bad"
}
# expect_exit WANT WHAT COMMAND...: runs COMMAND, fails the demo unless it exits WANT.
expect_exit() {
  local want="$1" what="$2" code=0
  shift 2
  "$@" || code=$?
  echo "--> exit code $code"
  [ "$code" = "$want" ] || fail "$what exited $code, expected $want"
}
deploy() { # version
  "$R" deploy --env production --version "$1" --artifact "app=$dist/sample-app-$1.tar.gz" "${C[@]}"
}

header "1. deploy 1.0.0: web1 first, then web2 and web3"
expect_exit 0 "deploy 1.0.0" deploy 1.0.0
check_hosts 1.0.0 1

header "2. deploy 2.0.0"
expect_exit 0 "deploy 2.0.0" deploy 2.0.0
check_hosts 2.0.0 2

header "3. deploy broken 3.0.0: expect a rollback on every host it touched (web1 only: wave 1 fails)"
expect_exit 1 "deploy 3.0.0" deploy 3.0.0
check_hosts 2.0.0 2
echo "    (web1's release, app and database are back on 2.0.0; web2 and web3 never left it)"

header "4. history of production, and the failed deployment"
"$R" history --env production "${C[@]}"
# The newest deployment is the failed 3.0.0 (`history --json` prints an array, newest first).
failed_id="$("$R" history --env production --json "${C[@]}" | python3 -c '
import json, sys
d = json.load(sys.stdin)[0]
if d["version"] != "3.0.0" or d["outcome"] != "rolled_back":
    sys.exit("the newest deployment is %s %s, outcome %s: expected 3.0.0, rolled_back" % (d["id"], d["version"], d["outcome"]))
print(d["id"])')"
[ -n "$failed_id" ] || fail "no deployment id in the history"
echo
expect_exit 0 "deployment show $failed_id" "$R" deployment show "$failed_id" "${C[@]}"

header "5. web1's forensics of the failed 3.0.0, through the controller"
expect_exit 0 "forensics get" "$R" forensics get "$failed_id" web1 -o "$work/web1-forensics.tar.gz" "${C[@]}"
echo "--> $work/web1-forensics.tar.gz:"
listing="$(tar tzf "$work/web1-forensics.tar.gz")" || fail "the forensics bundle is not a readable tar.gz"
echo "$listing" | sed 's/^/    /'
grep -q '^3\.0\.0-.*/health\.json$' <<<"$listing" ||
  fail "the forensics bundle has no 3.0.0-*/health.json (the failed health suite's results)"

header "6. roll back to 1.0.0 on purpose (the rollback playbook switches releases only)"
expect_exit 0 "rollback to 1.0.0" "$R" rollback --env production --to 1.0.0 --reason "demo: back to 1.0.0" "${C[@]}"
check_hosts 1.0.0 2
[ -z "$db_port" ] || echo "    (each schema stays at version 2, which 1.0.0 tolerates)"

header "7. what on-call sees: the incident, its post-mortem draft, every host verified, the metrics"
incident="$("$R" incidents --env production --json "${C[@]}" | python3 -c '
import json, sys
for i in json.load(sys.stdin):
    if i["severity"] == "error" and i["state"] == "open":
        print(i["id"]); break')"
[ -n "$incident" ] || fail "no open incident for the rolled-back 3.0.0"
expect_exit 0 "incidents" "$R" incidents --env production "${C[@]}"
expect_exit 0 "incidents postmortem" "$R" incidents postmortem "$incident" -o "$work/postmortem.md" "${C[@]}"
echo "--> post-mortem draft in $work/postmortem.md:"
sed -n '1,12p' "$work/postmortem.md" | sed 's/^/    /'
expect_exit 0 "status --verify" "$R" status --env production --verify "${C[@]}"
page="$(curl -fsS --max-time 5 "http://$metrics_addr/metrics")" || fail "no /metrics on $metrics_addr"
echo "--> http://$metrics_addr/metrics (excerpt):"
grep -E '^rampart_(deployments_completed_total|rollbacks_total\{[^}]*reason="(health|manual)"|incidents_open|deployment_in_progress)' <<<"$page" |
  grep -v ' 0$' | sed 's/^/    /'
grep -q 'rampart_deployments_completed_total{environment="production",outcome="rolled_back"} 1' <<<"$page" ||
  fail "/metrics does not count the rolled-back 3.0.0"

echo
echo "files: $work (certs, inventory.yml, controller.toml and its state, each host's state, captures and forensics)"
echo "demo: OK"
