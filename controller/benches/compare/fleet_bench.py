#!/usr/bin/env python3
"""Fleet benchmark (not a test), run by controller/benches/compare/fleet_bench.sh.

For each host count N: a real `rampart-controller` and N `rampart-agent` processes on 127.0.0.1
(each its own state dir and mutual-TLS certificate from `rampart certs init`), an Ansible-YAML
inventory, and the sample app on every host (own port, own dir). The controller's built-in
`production` playbook deploys a ~1 MB release: 1.0.0 (untimed warm-up, so a previous release
exists), then 2.0.0 (and 2.0.1, ... with --reps), each timed from the CLI's start to its exit.
Beside it, `ansible-playbook -f 50` runs controller/benches/compare/ansible/fleet-deploy.yml (the same
per-host work) against N hosts that are all `ansible_connection=local`: 1.0.0 untimed, 2.0.0
timed (and 2.0.1, ... with --ansible-reps).

Memory: agents' idle VmRSS (before the first deploy), the controller's VmRSS at idle and its
VmHWM after the timed deploy (the peak of its whole life, warm-up included); the CLI's and
ansible-playbook's maximum RSS from `/usr/bin/time -v` (the largest single process of the tree
it waited for, not a sum); each agent's VmHWM after the timed deploy, and their sum with the
controller's (an upper bound of the Rampart side's total); a /proc sampler's peak of the summed
RSS of ansible-playbook and its workers, apps excluded (a lower bound of the Ansible side's).

With --sinks (SINKS=1), the Rampart side's environment also has every notification sink
configured (`[environments.prod.notify.*]`: github, slack, pagerduty, webhook, each with every
event it takes; secrets in files): all point at one local HTTP server in this process
(`FakeSinks`, 127.0.0.1, a free port) that checks each request's shape and answers as the real
API does. A succeeded deploy tells slack and webhook (`succeeded`); github and pagerduty take only
incidents, so they hear nothing while every deploy succeeds. The counts received are printed.

Prints a markdown table, a memory table and the goals. MB = MiB.
"""

import argparse
import glob
import gzip
import hashlib
import hmac
import http.server
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

PAGE = os.sysconf("SC_PAGE_SIZE")
APP_COMM = "rampart-sample-"  # /proc/PID/comm of the sample app (truncated to 15 chars)
TOKEN = "fleet-bench-token"
START = time.monotonic()


def log(msg):
    print(f"[fleet_bench +{time.monotonic() - START:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Fatal(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process this benchmark started, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self):
        self.procs = []

    def popen(self, *a, **kw):
        p = subprocess.Popen(*a, **kw)
        self.procs.append(p)
        return p

    def stop(self, procs=None, grace=10.0):
        procs = list(self.procs if procs is None else procs)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in procs:
            left = max(0.0, deadline - time.monotonic())
            try:
                p.wait(timeout=left)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = [p for p in self.procs if p not in procs]


def kill_pid(pid, grace=5.0):
    """SIGTERM, then SIGKILL after `grace` s, a process we started (found by its pid file)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        st = proc_state(pid)
        if st is None or st == "Z":
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pids_with_arg_under(root):
    """Pids of live processes whose argv names a path under `root` (this run's unique temp dir):
    what is left of the apps our agents and Ansible started when a pid file was lost."""
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(root.encode()) or (b"=" + root.encode()) in a or (b" " + root.encode()) in a for a in argv):
            if proc_state(int(d)) not in (None, "Z"):
                out.append(int(d))
    return out


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeSampler(threading.Thread):
    """Samples the summed RSS of `roots` and their descendants (apps excluded) every `interval`;
    keeps the peak."""

    def __init__(self, roots, interval=0.5):
        super().__init__(daemon=True)
        self.roots = list(roots)
        self.interval = interval
        self.peak_kb = 0
        self.peak_procs = 0
        self.samples = 0
        self._halt = threading.Event()

    def sample(self):
        children = {}
        comm = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            head, tail = s.rsplit(")", 1)
            c = head.split("(", 1)[1]
            ppid = int(tail.split()[1])
            children.setdefault(ppid, []).append(int(d))
            comm[int(d)] = c
        total = 0
        n = 0
        seen = set()
        stack = [r for r in self.roots if r in comm]
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            stack.extend(children.get(pid, []))
            if comm.get(pid, "").startswith(APP_COMM):
                continue
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE // 1024
                n += 1
            except (OSError, IndexError, ValueError):
                pass
        self.samples += 1
        if total > self.peak_kb:
            self.peak_kb, self.peak_procs = total, n

    def run(self):
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def finish(self):
        self._halt.set()
        self.join(timeout=10)
        return self.peak_kb


def wait_for_line(path, prefix, proc, timeout, what):
    """Waits until file `path` has a line starting with `prefix`; returns the rest of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(prefix):
                        return line[len(prefix):].strip()
        except OSError:
            pass
        if proc.poll() is not None:
            raise Fatal(f"{what} exited with {proc.returncode} before serving; stderr: {tail(path.replace('.out', '.err'))}")
        time.sleep(0.05)
    raise Fatal(f"{what} did not print `{prefix}` within {timeout} s")


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})"


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the servers do (Rust's std sets SO_REUSEADDR): TIME_WAIT left by a previous run is fine.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serving_version(port):
    try:
        with _opener.open(f"http://127.0.0.1:{port}/actuator/info", timeout=5) as r:
            return json.loads(r.read())["app"]["version"]
    except Exception:  # noqa: BLE001 - anything means "not serving"
        return None


def parse_time_v(path):
    """Maximum resident set size (kB) and exit status from a `/usr/bin/time -v -o` file."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("Maximum resident set size (kbytes):"):
                    out["maxrss_kb"] = int(line.rsplit(":", 1)[1])
                elif line.startswith("User time (seconds):"):
                    out["user_s"] = float(line.rsplit(":", 1)[1])
                elif line.startswith("System time (seconds):"):
                    out["sys_s"] = float(line.rsplit(":", 1)[1])
                elif line.startswith("Exit status:"):
                    out["exit"] = int(line.rsplit(":", 1)[1])
    except OSError:
        pass
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pids):
    """utime + stime + cutime + cstime (the children it waited for) of `pids`, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def mb(kb):
    return None if kb is None else kb / 1024.0


# ------------------------------------------------------------------------------------------------
# notification sinks (--sinks)


class FakeSinks:
    """One HTTP server on 127.0.0.1 (a free port, a thread) standing in for GitHub, Slack,
    PagerDuty and the webhook receiver. Each request is checked (method, path, headers, JSON body,
    the token, routing key and HMAC signature) and answered as the API documents: GitHub
    `GET /repos/o/r/issues` 200 `[]`, `POST .../issues` 201 with a number, `POST .../comments`
    201, `PATCH .../issues/N` 200; Slack 200 `ok`; PagerDuty 202; webhook 200. A request that
    fails a check gets 400 (404 for an unknown path) and is counted under `bad`."""

    REPO = "o/r"
    MAX_BODY = 1 << 20

    def __init__(self):
        self.github_token = secrets.token_hex(16)
        self.routing_key = secrets.token_hex(16)
        self.hook_secret = secrets.token_hex(16)
        self.slack_path = f"/slack/services/T0/B0/{secrets.token_hex(8)}"
        self.counts = {}
        self.bad = []
        self.lock = threading.Lock()
        sinks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a):
                pass

            def answer(self, status, body=b""):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if body[:1] in (b"{", b"[") else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self):
                path = self.path.split("?", 1)[0]
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if 0 < n <= sinks.MAX_BODY else b""
                status, body, why = sinks.route(self.command, path, self.headers, raw, n)
                shown = "/slack/services/T0/B0/<secret>" if path == sinks.slack_path else path
                with sinks.lock:
                    key = f"{self.command} {shown} {status}"
                    sinks.counts[key] = sinks.counts.get(key, 0) + 1
                    if why:
                        sinks.bad.append(f"{key}: {why}")
                self.answer(status, body)

            do_GET = do_POST = do_PATCH = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, method, path, headers, raw, n):
        """(status, body, why-bad or None) for one request."""
        if n > self.MAX_BODY:
            return 413, b"too large", f"body of {n} bytes"
        doc = None
        if raw:
            if not (headers.get("Content-Type") or "").startswith("application/json"):
                return 400, b"not json", "Content-Type is not application/json"
            try:
                doc = json.loads(raw)
            except ValueError:
                return 400, b"bad json", "body is not JSON"
        repo = f"/repos/{self.REPO}/issues"
        if path == repo or path.startswith(repo + "/"):
            if headers.get("Authorization") != f"Bearer {self.github_token}":
                return 401, {"message": "Bad credentials"}, "wrong or missing GitHub token"
            if headers.get("X-GitHub-Api-Version") != "2022-11-28":
                return 400, {"message": "bad API version"}, "X-GitHub-Api-Version is not 2022-11-28"
            rest = path[len(repo):].strip("/").split("/")
            if method == "GET" and rest == [""]:
                return 200, [], None
            if method == "POST" and rest == [""]:
                if not (isinstance(doc, dict) and doc.get("title") and "body" in doc):
                    return 422, {"message": "Validation Failed"}, "issue without title/body"
                return 201, {"number": 1, "html_url": "http://127.0.0.1/x/1"}, None
            if len(rest) == 2 and rest[0].isdigit() and rest[1] == "comments" and method == "POST":
                if not (isinstance(doc, dict) and doc.get("body")):
                    return 422, {"message": "Validation Failed"}, "comment without body"
                return 201, {"id": 1}, None
            if len(rest) == 1 and rest[0].isdigit() and method == "PATCH":
                if not isinstance(doc, dict):
                    return 422, {"message": "Validation Failed"}, "PATCH without a JSON object"
                return 200, {"number": int(rest[0]), "state": doc.get("state", "open")}, None
            return 404, {"message": "Not Found"}, "unknown GitHub call"
        if path == self.slack_path and method == "POST":
            if not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
                return 400, b"invalid_payload", "Slack message without text"
            return 200, b"ok", None
        if path == "/pagerduty/v2/enqueue" and method == "POST":
            if not (isinstance(doc, dict) and doc.get("routing_key") == self.routing_key
                    and doc.get("event_action") in ("trigger", "acknowledge", "resolve")):
                return 400, {"status": "invalid event", "message": "Event object is invalid"}, "bad PagerDuty event"
            return 202, {"status": "success", "message": "Event processed", "dedup_key": "k"}, None
        if path == "/hook" and method == "POST":
            ts = (headers.get("X-Rampart-Timestamp") or "").encode()
            want = "sha256=" + hmac.new(self.hook_secret.encode(), ts + b"." + raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(headers.get("X-Rampart-Signature") or "", want):
                return 401, b"bad signature", "X-Rampart-Signature does not match"
            return 200, b"", None
        return 404, b"not found", "unknown path"

    def config(self, d):
        """The `[environments.prod.notify.*]` tables, secrets written under `d`/secrets."""
        sec = f"{d}/secrets"
        os.makedirs(sec, mode=0o700, exist_ok=True)
        for name, value in (("github-token", self.github_token), ("slack-url", self.url + self.slack_path),
                            ("pagerduty-key", self.routing_key), ("webhook-secret", self.hook_secret)):
            with open(os.open(f"{sec}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(value + "\n")
        incident = '"incident", "incident_resolved"'
        every = incident + ', "approval", "succeeded"'
        return (
            f'[environments.prod.notify.github]\napi_url = "{self.url}"\nrepository = "{self.REPO}"\n'
            f'token_file = "{sec}/github-token"\nevents = [{incident}]\n'
            f'[environments.prod.notify.slack]\nwebhook_url_file = "{sec}/slack-url"\nevents = [{every}]\n'
            f'[environments.prod.notify.pagerduty]\nurl = "{self.url}/pagerduty/v2/enqueue"\n'
            f'routing_key_file = "{sec}/pagerduty-key"\nevents = [{incident}]\n'
            f'[environments.prod.notify.webhook]\nurl = "{self.url}/hook"\nsecret_file = "{sec}/webhook-secret"\n'
            f'events = [{every}]\n'
        )

    def snapshot(self):
        with self.lock:
            return dict(self.counts), list(self.bad)

    def received(self):
        """Requests answered 2xx by the two sinks that hear of succeeded deploys."""
        with self.lock:
            return sum(v for k, v in self.counts.items()
                       if k in ("POST /slack/services/T0/B0/<secret> 200", "POST /hook 200"))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------
# the artifact


START_SH = """#!/bin/sh
# Starts this release of the sample app; SAMPLE_APP_LISTEN overrides the address.
root="$(cd "$(dirname "$0")" && pwd)"
exec "$root/bin/rampart-sample-app" --root "$root" --listen "${SAMPLE_APP_LISTEN:-127.0.0.1:18080}"
"""


def build_artifacts(dist, app_bin, target_bytes, versions):
    """sample-app-VERSION.tar.gz for each version in `dist`, each ~target_bytes: the layout of
    playbooks/sample-app/package.sh (bin/rampart-sample-app stripped, version.txt, health = UP,
    start.sh) plus pad/padding.bin (seeded random bytes, incompressible) to reach the size."""
    os.makedirs(dist, exist_ok=True)
    binary = os.path.join(dist, "rampart-sample-app.stripped")
    if shutil.which("strip"):
        subprocess.run(["strip", "-o", binary, app_bin], check=True)
    else:
        shutil.copyfile(app_bin, binary)
    with open(binary, "rb") as f:
        bin_bytes = f.read()
    out = {}
    for version in versions:

        def make(pad_len):
            files = [
                ("bin/rampart-sample-app", bin_bytes, 0o755),
                ("health", b"UP\n", 0o644),
                ("start.sh", START_SH.encode(), 0o755),
                ("version.txt", f"{version}\n".encode(), 0o644),
            ]
            if pad_len > 0:
                files.append(("pad/padding.bin", random.Random(f"pad-{version}").randbytes(pad_len), 0o644))
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    dirs = sorted({n.split("/")[0] for n, _, _ in files if "/" in n})
                    entries = [(d, None, 0o755) for d in dirs] + files
                    for name, data, mode in sorted(entries, key=lambda e: e[0]):
                        ti = tarfile.TarInfo(name)
                        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode = 0, 0, 0, "", "", mode
                        if data is None:
                            ti.type = tarfile.DIRTYPE
                            tar.addfile(ti)
                        else:
                            ti.size = len(data)
                            tar.addfile(ti, io.BytesIO(data))
            return buf.getvalue()

        base = len(make(0))
        if base > target_bytes:
            raise Fatal(f"the sample app alone is {base} bytes packed, over the {target_bytes}-byte target")
        pad = target_bytes - base
        data = make(pad)
        for _ in range(6):
            diff = len(data) - target_bytes
            if diff == 0 or pad - diff <= 0:
                break
            pad -= diff
            data = make(pad)
        path = os.path.join(dist, f"sample-app-{version}.tar.gz")
        with open(path, "wb") as f:
            f.write(data)
        sha = hashlib.sha256(data).hexdigest()
        with open(path + ".sha256", "w") as f:
            f.write(f"{sha}  {os.path.basename(path)}\n")
        out[version] = {"path": path, "sha256": sha, "size": len(data), "padding": pad, "bin_size": len(bin_bytes)}
    return out


# ------------------------------------------------------------------------------------------------
# Rampart


def stop_command(pid):
    """The app's stop command. Not the tests' (tests/src/deploy.rs), which counts the app stopped
    once its main thread is a zombie: a multi-threaded process's leader shows `State: Z` while its
    other threads are still exiting and still hold the listening socket, and under the load of 200
    hosts on 2 cores the next start then fails with `Address already in use`. This one waits
    until every thread is gone or a zombie (fds are released before a task turns zombie), 10 s,
    then SIGKILLs and waits again."""
    return (
        f"if [ -f {pid} ]; then p=$(cat {pid}); kill $p 2>/dev/null; "
        f"for sig in TERM KILL; do [ $sig = KILL ] && kill -9 $p 2>/dev/null; "
        f"for i in $(seq 100); do live=0; for s in /proc/$p/task/*/status; do "
        f"[ -e \"$s\" ] && ! grep -qs '^State:.*Z' \"$s\" && live=1; done; "
        f"[ $live = 0 ] && break; sleep 0.1; done; [ $live = 0 ] && break; done; rm -f {pid}; fi"
    )


def rampart_vars(hdir, app_port, agent_port):
    """One host's inventory variables: tests/src/deploy.rs `Scenario::vars_with` (but the stop
    command) + rampart_agent."""
    pid = f"{hdir}/app.pid"
    app = f"{hdir}/opt/app"
    logf = f"{hdir}/app.log"
    return {
        "backend_url": f"http://127.0.0.1:{app_port}",
        "disk_max_percent": 99.5,
        "min_tables": 1,
        "health_retries": 25,
        "health_delay": 0.2,
        "state_capture_dir": f"{hdir}/captures",
        "forensics_dir": f"{hdir}/forensics",
        "components": [{
            "name": "app",
            "artifact": "sha256:none",
            "sha256": "none",
            "path": app,
            "service": {
                "name": "sample-app",
                "log_file": logf,
                "start": f"SAMPLE_APP_LISTEN=127.0.0.1:{app_port} nohup {app}/start.sh > {logf} 2>&1 & echo $! > {pid}",
                "stop": stop_command(pid),
                "status": f"test -f {pid} && p=$(cat {pid}) && kill -0 $p 2>/dev/null && ! grep -qs '^State:.*Z' /proc/$p/status",
            },
        }],
        "rampart_agent": f"127.0.0.1:{agent_port}",
    }


def finished_event(jsonl_path):
    fin = None
    try:
        with open(jsonl_path) as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        v = json.loads(line)
                    except ValueError:
                        continue
                    if v.get("type") == "finished":
                        fin = v
    except OSError:
        pass
    return fin


def summarize_deploy(jsonl_path, d):
    """What went wrong in a deployment, from the CLI's JSON lines: the verdict, host states, each
    failed host's message and the first lines of the app log its forensics bundles kept."""
    events = []
    try:
        with open(jsonl_path) as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        return {}
    fin = next((e for e in reversed(events) if e.get("type") == "finished"), {}) or {}
    out = {"outcome": fin.get("outcome"), "environment_version": fin.get("environment_version"),
           "summary": fin.get("summary"), "last_event": json.dumps(events[-1])[:300] if events else None}
    states = {}
    bad = []
    for e in events:
        if e.get("type") != "host_finished":
            continue
        phase = "fleet rescue" if e.get("fleet_rescue") else "rollout"
        key = f"{phase}: {e.get('state')}"
        states[key] = states.get(key, 0) + 1
        if e.get("state") not in ("succeeded", "rolled_back") or (phase == "rollout" and e.get("state") != "succeeded"):
            logs = []
            for bundle in sorted(glob.glob(f"{d}/{e.get('host')}/forensics/*/logs/*")):
                logs.append(tail(bundle, 2).strip()[:200])
            bad.append(f"{phase} {e.get('host')} {e.get('state')} at {e.get('time')}: {str(e.get('message'))[:300]}"
                       + (f" | app log in forensics: {' / '.join(logs)}" if logs else ""))
    out["host_states"] = states
    out["failed_hosts"] = bad
    for e in events:
        if e.get("type") in ("wave_finished", "fleet_rescue_started"):
            out.setdefault("waves", []).append({k: v for k, v in e.items() if k not in ("hosts", "deployment_id")}
                                               | ({"hosts": len(e["hosts"])} if "hosts" in e else {}))
    return out


def stop_apps(host_dirs):
    for hdir in host_dirs:
        try:
            with open(f"{hdir}/app.pid") as f:
                kill_pid(int(f.read().strip()))
        except (OSError, ValueError):
            pass


def timed_versions(reps):
    """The timed deploys' versions: 2.0.0, then 2.0.1, 2.0.2, ... (each a new release)."""
    return ["2.0.0"] + [f"2.0.{k}" for k in range(1, reps)]


def run_rampart(n, a, art, work, procs, failures):
    res = {"n": n}
    d = os.path.join(work, f"rampart-{n}")
    os.makedirs(d)
    bins = a.bin_dir
    certs = f"{d}/certs"
    names = [f"h{i}" for i in range(1, n + 1)]
    args = [f"{bins}/rampart", "certs", "init", certs]
    for nm in names:
        args += ["--agent", nm]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)

    ctl_port = a.port_base
    hosts = []
    inv = ["all:", "  hosts:"]
    for i, nm in enumerate(names, 1):
        hdir = f"{d}/{nm}"
        os.makedirs(f"{hdir}/opt")
        agent_port, app_port = a.port_base + i, a.port_base + 1000 + i
        hosts.append({"name": nm, "dir": hdir, "agent_port": agent_port, "app_port": app_port})
        inv.append(f"    {nm}: {json.dumps(rampart_vars(hdir, app_port, agent_port))}")
    with open(f"{d}/inventory.yml", "w") as f:
        f.write("\n".join(inv) + "\n")
    with open(f"{d}/token", "w") as f:
        f.write(TOKEN + "\n")
    sha = subprocess.run([f"{bins}/rampart-controller", "hash-token"], input=TOKEN, capture_output=True,
                         text=True, check=True, timeout=60).stdout.strip()
    with open(f"{d}/controller.toml", "w") as f:
        f.write(
            f'listen = "127.0.0.1:{ctl_port}"\nstate_dir = "{d}/controller"\n'
            f'[tls]\ncert = "{certs}/controller.pem"\nkey = "{certs}/controller.key"\n'
            f'[agent_tls]\ncert = "{certs}/controller.pem"\nkey = "{certs}/controller.key"\nca = ["{certs}/ca.pem"]\n'
            f'[[tokens]]\nname = "bench"\nsha256 = "{sha}"\n'
            f'[environments.prod]\ninventory = "{d}/inventory.yml"\n'
            + (a.fake_sinks.config(d) if a.fake_sinks else "")
        )

    # Agents: each its own process and state dir; all started, then awaited.
    t0 = time.monotonic()
    env = dict(os.environ, RUST_LOG="error")
    agents = []
    for h in hosts:
        hd = h["dir"]
        with open(f"{hd}/agent.out", "w") as out, open(f"{hd}/agent.err", "w") as err:
            p = procs.popen(
                [f"{bins}/rampart-agent", "--listen", f"127.0.0.1:{h['agent_port']}", "--state-dir", f"{hd}/state",
                 "--tls-cert", f"{certs}/agent-{h['name']}.pem", "--tls-key", f"{certs}/agent-{h['name']}.key",
                 "--tls-ca", f"{certs}/ca.pem", "--forensics-dir", f"{hd}/forensics"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        h["pid"] = p.pid
        agents.append(p)
    for h, p in zip(hosts, agents):
        wait_for_line(f"{h['dir']}/agent.out", "listening on ", p, 120, f"agent {h['name']}")
    res["agents_start_s"] = time.monotonic() - t0
    log(f"rampart N={n}: {n} agents serving after {res['agents_start_s']:.1f} s")

    ctl = procs.popen([f"{bins}/rampart-controller", "--config", f"{d}/controller.toml"],
                      stdin=subprocess.DEVNULL, stdout=open(f"{d}/controller.out", "w"),
                      stderr=open(f"{d}/controller.err", "w"), env=dict(os.environ, RUST_LOG="warn"))
    addr = wait_for_line(f"{d}/controller.out", "listening on ", ctl, 60, "rampart-controller")
    time.sleep(a.settle)

    idle = [status_kb(h["pid"], "VmRSS") for h in hosts]
    if any(v is None for v in idle):
        raise Fatal(f"rampart N={n}: an agent died before the first deploy")
    res["agent_idle_kb"] = idle
    res["controller_idle_kb"] = status_kb(ctl.pid, "VmRSS")

    cpu_by_version = {}

    def deploy(version, timed):
        base = [f"{bins}/rampart", "deploy", "--env", "prod", "--version", version,
                "--artifact", f"app={art[version]['path']}", "--controller", f"https://{addr}",
                "--ca", f"{certs}/ca.pem", "--token-file", f"{d}/token", "--json"]
        cmd = ["/usr/bin/time", "-v", "-o", f"{d}/deploy-{version}.time", "timeout", str(a.deploy_timeout)] + base
        agent_pids = [h["pid"] for h in hosts]
        c0, a0 = cpu_s([ctl.pid]), cpu_s(agent_pids)
        with open(f"{d}/deploy-{version}.jsonl", "w") as out, open(f"{d}/deploy-{version}.err", "w") as err:
            t = time.monotonic()
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err).returncode
            wall = time.monotonic() - t
        tv = parse_time_v(f"{d}/deploy-{version}.time")
        split = (cpu_s([ctl.pid]) - c0, cpu_s(agent_pids) - a0, tv.get("user_s", 0) + tv.get("sys_s", 0))
        cpu_by_version[version] = split
        fin = finished_event(f"{d}/deploy-{version}.jsonl")
        log(f"rampart N={n}: deploy {version} exit {rc} in {wall:.2f} s; outcome "
            f"{fin.get('outcome') if fin else 'none (no finished event)'}")
        res.setdefault("controller_rss_series_kb", []).append((version, status_kb(ctl.pid, "VmRSS")))
        if rc != 0:
            failures.append({
                "what": f"rampart N={n} deploy {version}: exit {rc}",
                "cli_stderr": tail(f"{d}/deploy-{version}.err", 40),
                "controller_stderr": tail(f"{d}/controller.err", 60),
                **summarize_deploy(f"{d}/deploy-{version}.jsonl", d),
            })
            keep_logs(a, d, f"rampart-{n}")
        return rc, wall, fin

    res["sinks_before"] = a.fake_sinks.received() if a.fake_sinks else 0
    rc1, wall1, _ = deploy("1.0.0", timed=False)
    res["warmup_s"] = wall1
    if rc1 != 0:
        res["error"] = f"warm-up 1.0.0 exit {rc1}"
        return res, ctl, hosts
    res["walls"] = []
    for version in timed_versions(a.reps):
        rc, wall, fin = deploy(version, timed=True)
        res["exit"] = rc
        res["outcome"] = fin.get("outcome") if fin else None
        res["cli_maxrss_kb"] = max(res.get("cli_maxrss_kb") or 0,
                                   parse_time_v(f"{d}/deploy-{version}.time").get("maxrss_kb") or 0)
        if rc != 0:
            res["error"] = f"deploy {version} exit {rc}"
            break
        serving = [serving_version(h["app_port"]) for h in hosts]
        ok = sum(1 for v in serving if v == version)
        if ok != n:
            res["error"] = f"only {ok}/{n} apps serve {version} after a deploy that exited 0"
            failures.append({"what": f"rampart N={n}: {res['error']}"})
            break
        res["walls"].append(wall)
        res.setdefault("cpus", []).append(sum(cpu_by_version[version]))
        res.setdefault("cpu_split", []).append(cpu_by_version[version])
    if res["walls"] and "error" not in res:
        res["wall_s"] = statistics.median(res["walls"])
        res["cpu_s"] = statistics.median(res["cpus"])
        res["cpu_split_s"] = [statistics.median(x) for x in zip(*res["cpu_split"])]
    res["controller_hwm_kb"] = status_kb(ctl.pid, "VmHWM")
    res["controller_threads"] = status_kb(ctl.pid, "Threads")
    if a.fake_sinks:
        # Delivery is asynchronous (the outbox worker): wait, untimed and at most 30 s, until
        # slack and webhook have each heard of every succeeded deploy of this N.
        want = res["sinks_before"] + 2 * (1 + len(res["walls"]))
        deadline = time.monotonic() + 30
        while a.fake_sinks.received() < want and time.monotonic() < deadline:
            time.sleep(0.2)
        res["sinks_expected"] = want - res["sinks_before"]
        res["sinks_received"] = a.fake_sinks.received() - res["sinks_before"]
    res["controller_rss_after_kb"] = status_kb(ctl.pid, "VmRSS")
    res["agent_hwm_kb"] = [status_kb(h["pid"], "VmHWM") for h in hosts]
    # Not sampled (a sampler would take CPU from a deploy that lasts well under a second at
    # small N): the sum of every process's own peak, an upper bound of the side's peak.
    if res["controller_hwm_kb"] and all(res["agent_hwm_kb"]):
        res["side_peak_kb"] = res["controller_hwm_kb"] + sum(res["agent_hwm_kb"])
    return res, ctl, hosts


def keep_logs(a, d, name):
    dest = os.path.join(a.failure_logs, name)
    if os.path.exists(dest):
        return
    os.makedirs(a.failure_logs, exist_ok=True)

    def ignore(_dir, names):
        return [x for x in names if x in ("releases", "artifacts", "certs", "opt", "captures", "cache")]

    try:
        shutil.copytree(d, dest, ignore=ignore, symlinks=True)
        log(f"logs kept in {dest}")
    except OSError as e:
        log(f"could not keep logs of {d}: {e}")


# ------------------------------------------------------------------------------------------------
# Ansible


def run_ansible(n, a, art, work, procs, failures):
    res = {"n": n}
    d = os.path.join(work, f"ansible-{n}")
    os.makedirs(d)
    hosts = []
    lines = ["[all:vars]", "ansible_connection=local", f"ansible_python_interpreter={a.ansible_python}", "", "[fleet]"]
    for i in range(1, n + 1):
        hdir = f"{d}/h{i}"
        os.makedirs(f"{hdir}/opt")
        os.makedirs(f"{hdir}/state")
        port = a.port_base + 2000 + i
        hosts.append({"dir": hdir, "app_port": port})
        lines.append(f"h{i} host_dir={hdir} app_port={port}")
    with open(f"{d}/inventory.ini", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(f"{d}/ansible.cfg", "w") as f:
        f.write(
            f"[defaults]\nforks = {a.forks}\nhost_key_checking = False\nretry_files_enabled = False\n"
            f"gathering = explicit\nlocal_tmp = {d}/.ansible/local\nremote_tmp = {d}/.ansible/remote\n"
            f"interpreter_python = {a.ansible_python}\nnocolor = True\n"
            f"[connection]\npipelining = True\n"
        )
    env = dict(os.environ, ANSIBLE_CONFIG=f"{d}/ansible.cfg", ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_PIPELINING="True", ANSIBLE_FORKS=str(a.forks), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOME=f"{d}/.ansible", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")

    def play(version, timed):
        cmd = ["/usr/bin/time", "-v", "-o", f"{d}/play-{version}.time", "timeout", str(a.ansible_timeout),
               a.ansible_playbook, "-i", f"{d}/inventory.ini", "-f", str(a.forks), a.ansible_yml,
               "-e", f"target_version={version}", "-e", f"artifact={art[version]['path']}",
               "-e", f"artifact_sha256={art[version]['sha256']}", "-e", "health_retries=25", "-e", "health_delay=0.2"]
        with open(f"{d}/play-{version}.out", "w") as out, open(f"{d}/play-{version}.err", "w") as err:
            t = time.monotonic()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=d)
            sampler = TreeSampler([p.pid], a.sample_interval) if timed else None
            if sampler:
                sampler.start()
            rc = p.wait()
            wall = time.monotonic() - t
        peak = sampler.finish() if sampler else None
        log(f"ansible N={n}: play {version} exit {rc} in {wall:.2f} s")
        if rc != 0:
            failures.append({
                "what": f"ansible N={n} play {version}: exit {rc}",
                "stdout_tail": tail(f"{d}/play-{version}.out", 40),
                "stderr": tail(f"{d}/play-{version}.err", 40),
            })
            keep_logs(a, d, f"ansible-{n}")
        return rc, wall, peak

    try:
        rc1, wall1, _ = play("1.0.0", timed=False)
        res["warmup_s"] = wall1
        if rc1 != 0:
            res["error"] = f"warm-up 1.0.0 exit {rc1}"
            return res
        res["walls"] = []
        for version in timed_versions(a.ansible_reps):
            rc, wall, peak = play(version, timed=True)
            res["exit"] = rc
            res["maxrss_kb"] = max(res.get("maxrss_kb") or 0,
                                   parse_time_v(f"{d}/play-{version}.time").get("maxrss_kb") or 0)
            res["side_peak_kb"] = max(res.get("side_peak_kb") or 0, peak or 0)
            if rc != 0:
                res["error"] = f"play {version} exit {rc}"
                break
            serving = [serving_version(h["app_port"]) for h in hosts]
            ok = sum(1 for v in serving if v == version)
            if ok != n:
                res["error"] = f"only {ok}/{n} apps serve {version}"
                failures.append({"what": f"ansible N={n}: {res['error']}"})
                break
            res["walls"].append(wall)
            tv = parse_time_v(f"{d}/play-{version}.time")
            res.setdefault("cpus", []).append(tv.get("user_s", 0) + tv.get("sys_s", 0))
        if res["walls"] and "error" not in res:
            res["wall_s"] = statistics.median(res["walls"])
            res["cpu_s"] = statistics.median(res["cpus"])
        return res
    finally:
        stop_apps(h["dir"] for h in hosts)


# ------------------------------------------------------------------------------------------------
# report


def fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def timing(side):
    """The median, with the range when there were several runs."""
    w = side.get("walls") or []
    if len(w) > 1:
        return f"{side['wall_s']:.2f} ({min(w):.2f}–{max(w):.2f})"
    return fmt(side.get("wall_s"))


def report(results, art, a, total_s):
    one = next((r for r in results if r["n"] == 1), None)
    base = one["rampart"].get("wall_s") if one and "error" not in one["rampart"] else None
    out = []
    out.append(f"Artifact: sample-app-2.0.0.tar.gz, {art['2.0.0']['size']} bytes "
               f"({art['2.0.0']['size'] / 1048576:.3f} MiB; stripped release sample-app "
               f"{art['2.0.0']['bin_size']} bytes + {art['2.0.0']['padding']} bytes of random padding). "
               f"Machine: {os.cpu_count()} CPUs. MB = MiB.")
    out.append("")
    out.append("| hosts | rampart deploy s | ansible forks=50 s | ansible / rampart | rampart vs its 1-host time "
               "| controller peak RSS MB | agent idle RSS MB (median / max) |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ra, an = r["rampart"], r.get("ansible", {})
        rw = ra.get("wall_s") if "error" not in ra else None
        aw = an.get("wall_s") if an and "error" not in an else None
        rcell = timing(ra) if rw is not None else f"FAILED ({ra.get('error', '?')})"
        acell = timing(an) if aw is not None else ("skipped" if not an else f"FAILED ({an.get('error', '?')})")
        ratio = f"{aw / rw:.1f}×" if rw and aw else "–"
        scale = f"{rw / base:.2f}×" if rw and base else "–"
        idle = ra.get("agent_idle_kb")
        idle_cell = f"{mb(statistics.median(idle)):.1f} / {mb(max(idle)):.1f}" if idle else "–"
        out.append(f"| {r['n']} | {rcell} | {acell} | {ratio} | {scale} | {fmt(mb(ra.get('controller_hwm_kb')), '.1f')} | {idle_cell} |")
    out.append("")
    out.append("Memory and CPU detail (after the timed deploys):")
    out.append("")
    out.append("| hosts | controller idle RSS MB | controller VmHWM MB | agent peak RSS MB (median / max) | rampart CLI max RSS MB "
               "| rampart side Σ VmHWM MB (controller + agents) | ansible-playbook max RSS MB (time -v) | ansible tree total peak MB (sampled) "
               "| CPU s per deploy: rampart / ansible |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ra, an = r["rampart"], r.get("ansible", {})
        hwm = [v for v in ra.get("agent_hwm_kb", []) if v is not None]
        hwm_cell = f"{mb(statistics.median(hwm)):.1f} / {mb(max(hwm)):.1f}" if hwm else "–"
        out.append(f"| {r['n']} | {fmt(mb(ra.get('controller_idle_kb')), '.1f')} | {fmt(mb(ra.get('controller_hwm_kb')), '.1f')} "
                   f"| {hwm_cell} | {fmt(mb(ra.get('cli_maxrss_kb')), '.1f')} | {fmt(mb(ra.get('side_peak_kb')), '.0f')} "
                   f"| {fmt(mb(an.get('maxrss_kb')), '.1f')} | {fmt(mb(an.get('side_peak_kb')), '.0f')} "
                   f"| {fmt(ra.get('cpu_s'), '.1f')} / {fmt(an.get('cpu_s'), '.1f')} |")
    out.append("")
    out.append("Controller VmRSS MB after each deploy (warm-up, timed...) and threads at the end: " + "; ".join(
        f"N={r['n']}: " + ", ".join(f"{v} {fmt(mb(k), '.0f')}" for v, k in r["rampart"].get("controller_rss_series_kb", []))
        + f" ({r['rampart'].get('controller_threads')} threads)" for r in results))
    out.append("")
    out.append("Rampart CPU s per timed deploy (median), controller / agents (+ the commands they ran) / CLI: " + "; ".join(
        f"N={r['n']}: " + " / ".join(f"{x:.2f}" for x in r["rampart"]["cpu_split_s"])
        for r in results if r["rampart"].get("cpu_split_s")))
    out.append("")
    out.append("Warm-up (untimed) 1.0.0 deploys, s: " + "; ".join(
        f"N={r['n']}: rampart {fmt(r['rampart'].get('warmup_s'))}, ansible {fmt(r.get('ansible', {}).get('warmup_s'))}"
        for r in results))
    out.append(f"Timed runs per host count: rampart {a.reps} (versions {', '.join(timed_versions(a.reps))}; median "
               f"(min–max)), ansible {a.ansible_reps}; each after an untimed 1.0.0 warm-up, each a new release, "
               "each checked: exit 0 and every app serving the new version.")
    out.append("")
    # Goals.
    goals = []
    big = max((r for r in results if "error" not in r["rampart"] and r["rampart"].get("wall_s")), key=lambda r: r["n"], default=None)
    if base and big and big["n"] > 1:
        f = big["rampart"]["wall_s"] / base
        goals.append(f"{big['n']} hosts in ≤ 3× the 1-host time: {f:.2f}× — {'met' if f <= 3 else 'NOT met'}"
                     + ("" if big["n"] == 200 else f" (200 not run; largest N = {big['n']})"))
    else:
        goals.append("N hosts in ≤ 3× the 1-host time: not measured (needs N=1 and a larger N that succeeded)")
    hwms = [r["rampart"].get("controller_hwm_kb") for r in results if r["rampart"].get("controller_hwm_kb")]
    if hwms:
        m = mb(max(hwms))
        goals.append(f"controller ≤ 100 MB: peak {m:.1f} MB — {'met' if m <= 100 else 'NOT met'}")
    idles = [max(r["rampart"]["agent_idle_kb"]) for r in results if r["rampart"].get("agent_idle_kb")]
    if idles:
        m = mb(max(idles))
        goals.append(f"agent idle ≤ 15 MB: max {m:.1f} MB — {'met' if m <= 15 else 'NOT met'}")
    out.append("Goals: " + "; ".join(goals) + ".")
    out.append("")
    out.append("Notes: controller peak = VmHWM of the controller after the timed deploys (its whole life: start-up, "
               "warm-up and timed deploys); agent idle = VmRSS of each agent before the first deploy; agent peak = "
               "each agent's VmHWM after the timed deploys; rampart side Σ VmHWM = controller VmHWM + every agent's "
               "VmHWM (an upper bound: the peaks need not coincide); ansible tree total = peak of the summed RSS of "
               "ansible-playbook and its forks/module processes (apps excluded), sampled every "
               f"{a.sample_interval} s (a lower bound); ansible-playbook max RSS = `/usr/bin/time -v` "
               "'Maximum resident set size', the largest single process of the tree it waited for (the main "
               "ansible-playbook process or one forked worker), not a sum. CPU s = user + system time: rampart = "
               "controller + agents (+ the commands they ran) + CLI, from /proc; ansible = `/usr/bin/time -v` "
               "(ansible-playbook and every process it waited for); the apps' own CPU is in neither. "
               "Both sides stop the app with the same command, which waits for every thread of the old app to "
               "exit (the tests' stop command races under load: see fleet_bench.py `stop_command`). Ansible peer: "
               "controller/benches/compare/ansible/fleet-deploy.yml (2 HTTP checks; Rampart's production suite passes 15 "
               "checks per host (8 skipped: no database/redis/systemd), and the playbook also captures state, "
               "takes the lock and prunes).")
    if a.fake_sinks:
        counts, bad = a.fake_sinks.snapshot()
        out.append("")
        out.append("Sinks (--sinks): github, slack, pagerduty and webhook configured, at " + a.fake_sinks.url
                   + ". Succeeded notices received by slack + webhook (expected: 2 per succeeded deploy, "
                   "warm-up included): " + "; ".join(
                       f"N={r['n']}: {r['rampart'].get('sinks_received', '–')} / {r['rampart'].get('sinks_expected', '–')}"
                       for r in results) + ". Requests by method, path and answer: "
                   + (", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "none")
                   + f". Refused as malformed: {len(bad)}" + (f" ({'; '.join(bad[:5])})" if bad else "") + ".")
    out.append(f"Whole benchmark: {total_s / 60:.1f} min.")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default=os.environ.get("HOSTS", "1 50 100 200"))
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--ansible-playbook", default="")
    ap.add_argument("--ansible-yml", required=True)
    ap.add_argument("--forks", type=int, default=50)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("REPS", "3")),
                    help="timed Rampart deploys per host count (2.0.0, 2.0.1, ...); the median is reported")
    ap.add_argument("--ansible-reps", type=int, default=int(os.environ.get("ANSIBLE_REPS", "1")),
                    help="timed Ansible runs per host count")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("PORT_BASE", "21000")))
    ap.add_argument("--artifact-bytes", type=int, default=int(os.environ.get("ARTIFACT_BYTES", str(1 << 20))))
    ap.add_argument("--deploy-timeout", type=int, default=1800)
    ap.add_argument("--ansible-timeout", type=int, default=3600)
    ap.add_argument("--sample-interval", type=float, default=0.5)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after start-up before idle RSS is read")
    ap.add_argument("--skip-ansible", action="store_true")
    ap.add_argument("--sinks", action="store_true", default=os.environ.get("SINKS") == "1",
                    help="configure every notification sink (github, slack, pagerduty, webhook) on the "
                         "Rampart side, all answered by one local fake server; prints what it received")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--failure-logs", default=os.environ.get("FAILURE_LOGS", ""))
    ap.add_argument("--results-json", default=os.environ.get("RESULTS_JSON", ""))
    a = ap.parse_args()
    a.bin_dir = os.path.abspath(a.bin_dir)
    a.ansible_yml = os.path.abspath(a.ansible_yml)
    if a.ansible_playbook:
        a.ansible_playbook = os.path.abspath(a.ansible_playbook)
    counts = [int(x) for x in a.hosts.replace(",", " ").split()]
    if not counts or min(counts) < 1 or max(counts) > 999:
        raise SystemExit("HOSTS must be counts from 1 to 999")
    a.ansible_python = os.path.join(os.path.dirname(a.ansible_playbook), "python3") if a.ansible_playbook else ""
    if not a.failure_logs:
        a.failure_logs = f"/var/tmp/fleet-bench-failures-{time.strftime('%Y%m%dT%H%M%S')}"

    ports = [a.port_base] + [a.port_base + off + i for off in (0, 1000, 2000) for i in range(1, max(counts) + 1)]
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise SystemExit(f"ports in use: {busy[:10]}{'…' if len(busy) > 10 else ''}; set PORT_BASE")
    log(f"hosts {counts}; ports {a.port_base} (controller), {a.port_base + 1}+ (agents), "
        f"{a.port_base + 1001}+ (rampart apps), {a.port_base + 2001}+ (ansible apps); ulimit -n "
        f"{__import__('resource').getrlimit(__import__('resource').RLIMIT_NOFILE)[0]}")

    work = tempfile.mkdtemp(prefix="fleet-bench.")
    a.fake_sinks = FakeSinks() if a.sinks else None
    if a.fake_sinks:
        log(f"sinks: fake github/slack/pagerduty/webhook server at {a.fake_sinks.url}")
    procs = Procs()
    failures = []
    results = []

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        versions = ["1.0.0"] + timed_versions(max(a.reps, a.ansible_reps))
        art = build_artifacts(f"{work}/dist", f"{a.bin_dir}/rampart-sample-app", a.artifact_bytes, versions)
        log("artifacts: " + ", ".join(f"{v} {x['size']} bytes" for v, x in art.items()))
        for n in counts:
            r = {"n": n}
            results.append(r)
            ctl, hosts = None, []
            try:
                r["rampart"], ctl, hosts = run_rampart(n, a, art, work, procs, failures)
            except (Fatal, subprocess.SubprocessError, OSError) as e:
                r["rampart"] = {"n": n, "error": str(e)}
                failures.append({"what": f"rampart N={n}: {e}"})
                log(f"rampart N={n}: {e}")
            finally:
                procs.stop()
                stop_apps(h["dir"] for h in hosts)
            if not a.skip_ansible:
                try:
                    r["ansible"] = run_ansible(n, a, art, work, procs, failures)
                except (Fatal, subprocess.SubprocessError, OSError) as e:
                    r["ansible"] = {"n": n, "error": str(e)}
                    failures.append({"what": f"ansible N={n}: {e}"})
            left = pids_with_arg_under(work)
            if left:
                log(f"stopping {len(left)} leftover processes of this run: {left[:20]}")
                for pid in left:
                    kill_pid(pid)
            if not a.keep:
                for sub in (f"rampart-{n}", f"ansible-{n}"):
                    shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
        total = time.monotonic() - START
        print(report(results, art, a, total))
        if failures:
            print("\nFailures:")
            for f in failures:
                print(json.dumps(f, indent=2, default=str))
            print(f"(logs of failed runs: {a.failure_logs})")
        if a.results_json:
            with open(a.results_json, "w") as f:
                json.dump({"results": results, "artifact": art, "failures": failures, "total_s": total}, f, indent=1)
        return 1 if failures else 0
    finally:
        procs.stop()
        for pid in pids_with_arg_under(work):
            kill_pid(pid)
        if a.fake_sinks:
            a.fake_sinks.close()
        if a.keep:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
