#!/usr/bin/env python3
"""Times the production health suite concurrently and sequentially (see health_bench.sh)."""

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from migrate_bench import Cluster, PASSWORD, free_port  # noqa: E402


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"status":"UP"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def wait_port(port, seconds=10):
    import socket
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rampart", required=True)
    ap.add_argument("--sample-app", required=True)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[3]
    rampart = os.path.abspath(args.rampart)
    work = Path(tempfile.mkdtemp(prefix="rampart-health-bench-"))
    procs = []
    cluster = Cluster()
    try:
        app_root = work / "app"
        app_root.mkdir()
        (app_root / "version.txt").write_text("2.0.0\n")
        (app_root / "health").write_text("UP\n")
        app_port = free_port()
        procs.append(subprocess.Popen([os.path.abspath(args.sample_app), "--listen", f"127.0.0.1:{app_port}",
                                       "--root", str(app_root)], stdout=subprocess.DEVNULL))
        redis_port = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL))
        ext = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=ext.serve_forever, daemon=True).start()
        wait_port(app_port)
        wait_port(redis_port)
        cluster.psql("postgres", "CREATE DATABASE app")
        subprocess.run([rampart, "migrate", "migrate", f"-url={cluster.url('app')}", "-user=postgres",
                        f"-password={PASSWORD}", "-placeholders.app_name=bench",
                        f"-locations=filesystem:{root / 'tests/fixtures/flyway/ok'}"],
                       check=True, stdout=subprocess.DEVNULL)
        vars_ = {
            "target_version": "2.0.0", "backend_url": f"http://127.0.0.1:{app_port}",
            "db_url": cluster.url("app"), "db_user": "postgres", "db_password": PASSWORD,
            "expected_schema_version": "2", "min_tables": 4, "redis_port": redis_port,
            "external_health_url": f"http://127.0.0.1:{ext.server_address[1]}/",
            "release_version_file": str(app_root / "version.txt"),
            "load_max": 1000, "memory_max_percent": 100, "disk_max_percent": 100,
        }
        suite = root / "playbooks/health/production.yml"
        rows = {}
        for mode, extra in [("concurrent (16 at a time)", []), ("sequential (--sequential)", ["--sequential"])]:
            walls, slowest, sums = [], [], []
            for _ in range(args.reps):
                start = time.perf_counter()
                out = subprocess.run([rampart, "health", str(suite), "--json", "-e", json.dumps(vars_)] + extra,
                                     capture_output=True, text=True)
                walls.append((time.perf_counter() - start) * 1000)
                lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
                checks = [l for l in lines if l.get("type") == "check"]
                bad = [c for c in checks if c["status"] not in ("pass", "skipped")]
                if out.returncode != 0 or bad:
                    raise SystemExit(f"suite not healthy: {bad or out.stderr}")
                slowest.append(max(c["duration_ms"] for c in checks))
                sums.append(sum(c["duration_ms"] for c in checks))
            rows[mode] = (statistics.median(walls), min(walls), statistics.median(slowest), statistics.median(sums),
                          len(checks), sum(1 for c in checks if c["status"] == "pass"))
        print(f"\n### production suite, median of {args.reps} runs, start to exit of `rampart health`\n")
        print("| mode | checks (passed) | wall ms (median) | wall ms (min) | slowest check ms | sum of checks ms | wall - slowest |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode, (wall, wmin, slow, total, n, passed) in rows.items():
            print(f"| {mode} | {n} ({passed}) | {wall:.1f} | {wmin:.1f} | {slow:.1f} | {total:.1f} | {wall - slow:.1f} |")
        c = rows["concurrent (16 at a time)"][0]
        sq = rows["sequential (--sequential)"][0]
        print(f"\nconcurrent / sequential wall: {c / sq:.2f}x")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
