"""What a chaos run recorded, read the same way by the checker, the figures and the
report: the terminal event, the cancel and the outcome of an arrival, its engine
exchanges (see ``chaos_run.py`` for the history document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TERMINAL = ("end", "error")
CLEAN_REASONS = ("eos", "stop", "length")
FAIRNESS_MIN_SAMPLES = 20
FAIRNESS_BOUND = 0.15  # |observed - expected| dispatch share of backlogged tenants (see fairness)
# ORCH-6111: a submit sent while the store is down or paused is answered within the
# store client's socket timeout (10 s) plus a margin: 202, a 4xx, or 503 + Retry-After.
STORE_FAULTS = ("store_kill9", "store_sigstop")
# ORCH-6115: the same answers while pool-managerd is down or every breaker is open.
POOL_FAULTS = ("pool_managerd_kill9", "restart_storm")
OUTAGE_FAULTS = (*STORE_FAULTS, *POOL_FAULTS)
STORE_ANSWER_BOUND_S = 12.0


@dataclass
class Violation:
    check: str
    arrival: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "arrival": self.arrival, "detail": self.detail}


def seq(events: list[list[Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, event, data) of live events ``[t, id, event, data]`` or replay ``[id, event, data]``."""
    return [(int(e[-3]), str(e[-2]), e[-1]) for e in events]


def terminal_of(rec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The task's terminal event: as its client received it (task API), or from the
    task's log replayed after the run (OpenAI API: its chunks carry no event names)."""
    if rec.get("api") == "openai":
        for e in rec.get("replay") or []:
            if e[1] in TERMINAL:
                return e[1], e[2]
        return None
    for e in rec.get("events", []):
        if e[2] in TERMINAL:
            return e[2], e[3]
    return None


def cancel_of(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The cancel of a task: the task API's cancel call, or an OpenAI client's close
    of its stream (the API's only way to cancel) counted as an answered cancel."""
    oa = rec.get("oa")
    if oa is not None:
        t = oa.get("closed")
        return None if t is None else {"t_send": t, "t_recv": t, "status": 204, "by": "close"}
    c: dict[str, Any] | None = rec.get("cancel")
    return c


def outcome(rec: dict[str, Any]) -> str:
    """completed | canceled | failed:<CODE> | lost | rejected:<status or CODE>."""
    if not rec.get("task_id"):
        subs = rec.get("submits") or [{}]
        last = subs[-1]
        return f"rejected:{last.get('code') or last.get('status')}"
    term = terminal_of(rec)
    if term is None and rec.get("api") == "openai" and rec.get("replay_status") == 404:
        # the task's log was evicted before the replay (event_log_retention_s): its
        # outcome as the client saw it ([DONE], an error chunk, or its own close)
        oa = rec.get("oa") or {}
        if oa.get("error") is not None:
            err = oa["error"][1] if isinstance(oa["error"], list) else oa["error"]
            # the OpenAI frontend writes the task API's codes in lower case
            return f"failed:{str((err or {}).get('code')).upper()}"
        if oa.get("closed") is not None:
            return "canceled"
        if oa.get("done") is not None:
            return "completed"
    if term is None:
        return "lost"
    ev, data = term
    if ev == "error":
        return f"failed:{data.get('code')}"
    return "canceled" if data.get("reason") == "canceled" else "completed"


def exchanges_of(history: dict[str, Any], n: int) -> list[dict[str, Any]]:
    xs = [x for x in history.get("exchanges") or [] if x.get("arrival") == n]
    return sorted(xs, key=lambda x: x["opened"])
