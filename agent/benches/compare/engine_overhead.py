#!/usr/bin/env python3
"""Per-task overhead of Rampart's engine versus ansible-playbook -c local, same playbooks.

Each playbook is run `reps` times per tool and the fastest run counts. Per-task overhead is
(time of the N-task playbook - time of the 1-task baseline) / N, which removes start-up cost.
Rampart runs twice: with the journal fdatasync'd once per task (production, see agent/src/journal.rs)
and without (--no-fsync), so the sync cost shows separately.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def playbook(kind: str, n: int) -> str:
    lines = ["- hosts: all", "  gather_facts: false", "  tasks:"]
    for i in range(n):
        if kind == "set_fact":
            lines += [f"    - name: fact {i}", f"      set_fact:", f"        f{i}: {i}"]
        elif kind == "lineinfile":
            lines += [f"    - name: line {i}", "      lineinfile:", '        path: "{{ work }}/app.conf"',
                      f"        regexp: '^k{i}='", f"        line: k{i}=v{i}", "        create: true"]
        elif kind == "replace":
            lines += [f"    - name: replace {i}", "      replace:", '        path: "{{ work }}/app.conf"',
                      f"        regexp: '^k{i % 50}=.*$'", f"        replace: k{i % 50}=r{i}"]
        elif kind == "file":
            lines += [f"    - name: dir {i}", "      file:", f'        path: "{{{{ work }}}}/d{i}"',
                      "        state: directory", '        mode: "0750"']
        elif kind == "cron":
            lines += [f"    - name: cron {i}", "      cron:", f"        name: job{i}", f'        minute: "{i % 60}"',
                      f"        job: /bin/true {i}", "        user: root", '        cron_file: "{{ work }}/crontab"']
        else:
            lines += [f"    - name: true {i}", "      command: /bin/true"]
    return "\n".join(lines) + "\n"


# The file a text-editing playbook starts from (50 keys), written afresh before every run.
SEED = "".join(f"k{i}=v\n" for i in range(50))


def timed(cmd, env=None, work=None) -> float:
    if work is not None:
        os.makedirs(work)
        with open(os.path.join(work, "app.conf"), "w") as f:
            f.write(SEED)
        cmd = cmd + ["-e", "work=" + work]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rampart", required=True)
    ap.add_argument("--ansible", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="set_fact:1000,command:200",
                    help="kind:N,... (kinds: set_fact, command, lineinfile, replace, file, cron)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="rampart-bench-")
    cases = [(k, int(n)) for k, n in (c.split(":") for c in a.cases.split(","))]
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_RETRY_FILES_ENABLED="False",
               ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_LOCALHOST_WARNING="False")
    tools = {
        "rampart (fsync)": lambda pb, st: [a.rampart, "run", pb, "--local", "--state-dir", st],
        "rampart (no fsync)": lambda pb, st: [a.rampart, "run", pb, "--local", "--state-dir", st, "--no-fsync"],
        # The venv's own interpreter: discovery may pick a python that cannot run modules.
        "ansible-playbook -c local": lambda pb, st: [a.ansible, "-i", "localhost,", "-c", "local", pb, "-e",
                                                     "ansible_python_interpreter=" + os.path.abspath(os.path.join(os.path.dirname(a.ansible), "python"))],
    }
    rows = []
    for kind, n in cases:
        pb_n = os.path.join(work, f"{kind}-{n}.yml")
        pb_1 = os.path.join(work, f"{kind}-1.yml")
        with open(pb_n, "w") as f:
            f.write(playbook(kind, n))
        with open(pb_1, "w") as f:
            f.write(playbook(kind, 1))
        for name, cmd in tools.items():
            best_n = best_1 = float("inf")
            for r in range(a.reps):
                st = os.path.join(work, f"state-{kind}-{r}-{len(rows)}")
                best_1 = min(best_1, timed(cmd(pb_1, st + "-1"), env, st + "-w1"))
                best_n = min(best_n, timed(cmd(pb_n, st + "-n"), env, st + "-wn"))
                print(f"  {name:28} {kind:8} rep {r + 1}: {best_n:.3f}s", file=sys.stderr)
            per_task_ms = max(best_n - best_1, 0.0) / (n - 1) * 1000
            rows.append((kind, n, name, best_1, best_n, per_task_ms))
    print()
    print(f"{'playbook':<16} {'tool':<28} {'1 task (s)':>10} {'N tasks (s)':>12} {'per task (ms)':>14} {'vs ansible':>11}")
    for kind, n in cases:
        ans = next(r for r in rows if r[0] == kind and r[2].startswith("ansible"))
        for r in (r for r in rows if r[0] == kind):
            ratio = ans[5] / r[5] if r[5] > 0 else float("inf")
            print(f"{kind + ' x' + str(n):<16} {r[2]:<28} {r[3]:>10.3f} {r[4]:>12.3f} {r[5]:>14.3f} {ratio:>10.1f}x")
    fs = {r[0]: r[5] for r in rows if r[2] == "rampart (fsync)"}
    nf = {r[0]: r[5] for r in rows if r[2] == "rampart (no fsync)"}
    print()
    for kind, _ in cases:
        print(f"journal fsync cost per task ({kind}): {fs[kind] - nf[kind]:.3f} ms (2 records, 1 fdatasync per task)")


if __name__ == "__main__":
    main()
