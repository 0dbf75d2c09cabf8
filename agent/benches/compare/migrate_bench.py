#!/usr/bin/env python3
"""Times `rampart migrate` against psql on one throwaway PostgreSQL cluster (see migrate_bench.sh)."""

import argparse
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "bench"


def server_bin():
    if Path("/usr/local/bin/initdb").exists():
        return Path("/usr/local/bin")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("no initdb: install PostgreSQL (apt-get install postgresql)")
    return found[-1].parent


def as_postgres(argv):
    return (["runuser", "-u", "postgres", "--"] + argv) if os.geteuid() == 0 else argv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="rampart-bench-pg-", dir="/var/tmp"))
        self.bin = server_bin()
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.dir, pg.pw_uid, pg.pw_gid)
        pw = self.dir / "pw"
        pw.write_text(PASSWORD)
        if os.geteuid() == 0:
            os.chown(pw, pg.pw_uid, pg.pw_gid)
        subprocess.run(as_postgres([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                                    "-E", "UTF8", "--no-locale", "--auth-local=trust",
                                    "--auth-host=scram-sha-256", f"--pwfile={pw}"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                                    str(self.dir / "log"), "-o",
                                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                                    "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
        self.env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER="postgres",
                        PGPASSWORD=PASSWORD)

    def psql(self, db, sql):
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def url(self, db):
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{db}"

    def stop(self):
        subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                                    "-w", "stop"]), stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def write_migrations(dir, n):
    dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(1, n + 1):
        f = dir / f"V{i}__table_{i}.sql"
        f.write_text(f"CREATE TABLE t{i} (id INT PRIMARY KEY, v TEXT NOT NULL);\n"
                     f"INSERT INTO t{i} VALUES (1, 'one'), (2, 'two');\n")
        files.append(f)
    return files


def timed(argv, env):
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rampart", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--migrations", type=int, default=500)
    ap.add_argument("--info-runs", type=int, default=30)
    args = ap.parse_args()
    rampart = os.path.abspath(args.rampart)

    cluster = Cluster()
    work = Path(tempfile.mkdtemp(prefix="rampart-bench-mig-"))
    try:
        files = write_migrations(work / "sql", args.migrations)
        one_session = work / "all.sql"
        one_session.write_text("".join(f"BEGIN;\n\\i {f}\nCOMMIT;\n" for f in files))
        results = {"rampart": [], "psql_session": [], "psql_per_file": []}
        for rep in range(args.reps):
            for name in results:
                db = f"{name}_{rep}"
                cluster.psql("postgres", f"CREATE DATABASE {db}")
                if name == "rampart":
                    t = timed([rampart, "migrate", "migrate", f"-url={cluster.url(db)}", "-user=postgres",
                               f"-password={PASSWORD}", f"-locations=filesystem:{work / 'sql'}"], cluster.env)
                elif name == "psql_session":
                    t = timed(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", str(one_session)],
                              cluster.env)
                else:
                    start = time.perf_counter()
                    for f in files:
                        subprocess.run(["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", str(f)],
                                       env=cluster.env, check=True, stdout=subprocess.DEVNULL)
                    t = time.perf_counter() - start
                results[name].append(t)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"\n### {args.migrations} migrations, median of {args.reps} runs, fresh database each run\n")
        print("| runner | median s | min s | max s | vs psql one session |")
        print("|---|---:|---:|---:|---:|")
        labels = {"rampart": "`rampart migrate migrate` (history rows, lock, checksums)",
                  "psql_session": "psql, one session, BEGIN/\\i/COMMIT per file",
                  "psql_per_file": "psql -1 -f, one process per file"}
        for k in ["rampart", "psql_session", "psql_per_file"]:
            v = results[k]
            print(f"| {labels[k]} | {med[k]:.3f} | {min(v):.3f} | {max(v):.3f} | {med[k] / med['psql_session']:.2f}x |")

        # info on a 500-row history (the first rampart database has it).
        db = "rampart_0"
        info = [rampart, "migrate", "info", f"-url={cluster.url(db)}", "-user=postgres", f"-password={PASSWORD}",
                f"-locations=filesystem:{work / 'sql'}"]
        times = [timed(info, cluster.env) for _ in range(args.info_runs)]
        print(f"\n### `rampart migrate info`, {args.migrations}-row history, {args.info_runs} runs, start to exit\n")
        print("| median ms | min ms | max ms | goal |")
        print("|---:|---:|---:|---|")
        print(f"| {statistics.median(times) * 1000:.1f} | {min(times) * 1000:.1f} | {max(times) * 1000:.1f} | < 50 ms |")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
