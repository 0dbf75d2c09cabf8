# The stdout callback of Rampart's conformance suite (tests/e2e/conformance.rs): prints one JSON
# object per line, the way `rampart run --json` does, so the harness can compare the two tools.
#
#   {"type": "task", "name": ..., "action": ..., "handler": bool, "status": ..., "result": {...}}
#       once per task and host, in the order results arrive; status is ok, changed, failed,
#       ignored (failed under ignore_errors), skipped or unreachable
#   {"type": "summary", "recap": {"ok": n, "changed": n, "failed": n, "skipped": n,
#       "rescued": n, "ignored": n, "unreachable": n}}
#       once, for the one host the suite runs on
#
# Ansible's own warnings and errors go to stderr, untouched.

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: rampart_conformance
type: stdout
short_description: task results as JSON lines for Rampart's conformance suite
description:
  - One JSON object per task result and one for the recap, on stdout.
"""

# Keys Ansible adds for itself; the harness compares what a module returns.
_INTERNAL_PREFIXES = ("_ansible", "ansible_facts_")
_INTERNAL_KEYS = {"invocation", "_ansible_no_log", "warnings", "deprecations"}


def _clean(value, depth=0):
    if depth > 40:
        return str(value)
    if isinstance(value, dict):
        return {
            str(k): _clean(v, depth + 1)
            for k, v in value.items()
            if not str(k).startswith(_INTERNAL_PREFIXES) and str(k) not in _INTERNAL_KEYS
        }
    if isinstance(value, (list, tuple)):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return str(value)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "rampart_conformance"

    def _emit(self, obj):
        self._display.display(json.dumps(obj, sort_keys=True))

    def _task_line(self, result, status):
        task = result._task
        res = _clean(dict(result._result))
        if status == "ok" and res.get("changed"):
            status = "changed"
        self._emit(
            {
                "type": "task",
                "name": task.get_name().strip(),
                "action": task.action,
                "handler": task.__class__.__name__ == "Handler",
                "status": status,
                "result": res,
            }
        )

    def v2_runner_on_ok(self, result):
        self._task_line(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._task_line(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._task_line(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._task_line(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        for host in hosts:
            s = stats.summarize(host)
            self._emit(
                {
                    "type": "summary",
                    "host": host,
                    "recap": {
                        "ok": s.get("ok", 0),
                        "changed": s.get("changed", 0),
                        "failed": s.get("failures", 0),
                        "skipped": s.get("skipped", 0),
                        "rescued": s.get("rescued", 0),
                        "ignored": s.get("ignored", 0),
                        "unreachable": s.get("unreachable", 0),
                    },
                }
            )
