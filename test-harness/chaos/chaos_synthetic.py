"""Synthetic chaos histories for the checker's self-tests (test_chaos_check.py,
test_chaos_cancel.py): a clean run of three tasks that each test plants a bug into."""

from __future__ import annotations

from typing import Any


def task_record(
    n: int, tokens: int = 3, *, tenant: str = "alpha", t: float = 100.0
) -> dict[str, Any]:
    started = {"replica_id": "chaos-e0", "queue_wait_ms": 90}  # accepted at t + 0.01
    ev: list[list[Any]] = [[t + 0.1, 0, "started", started]]
    for i in range(tokens):
        ev.append([t + 0.2 + i * 0.01, i + 1, "token", {"t": "x", "i": i}])
    ev.append([t + 0.5, tokens + 1, "end", {"tokens_out": tokens, "reason": "eos"}])
    return {
        "n": n,
        "tenant": tenant,
        "priority": "interactive",
        "submits": [{"t_send": t, "t_recv": t + 0.01, "status": 202, "retry_after": None}],
        "task_id": f"task-{n}",
        "t_accepted": t + 0.01,
        "events": ev,
        "replay": [e[1:] for e in ev],
        "cancel": None,
    }


def clean_history() -> dict[str, Any]:
    tasks = [task_record(0), task_record(1, tenant="gamma"), task_record(2, 5, t=101.0)]
    return {
        "tasks": tasks,
        "exchanges": [
            {"arrival": r["n"], "engine": 0, "opened": 100.05, "closed": 100.6, "final": True}
            for r in tasks
        ],
        "daemon_task_ends": [
            {"job_id": r["task_id"], "state": "completed", "ts": 100.55} for r in tasks
        ],
        "slots_after_run": {"0": [{"id": 0, "is_processing": False}]},
        "quotas": {"gamma": 1},
        "weights": {"alpha": 3, "beta": 1, "gamma": 1},
        "faults": [],
    }
