"""What the engines and orchestratord say about each task of the placement bench
(ORCH-2361): llama-server's own log (prompt tokens evaluated per request), its
prefix-cache counters, orchestratord's queue wait.

Used by ``bench/prefix_placement.py``; split out of it (behaviour unchanged).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from procs import http_get

_LOG_TS = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")
_LOG_TASK = re.compile(r"\| task (\d+) \| ")
_PROMPT_EVAL = re.compile(r"prompt eval time = +([0-9.]+) ms / +(\d+) tokens")
_STOP = re.compile(r"stop processing: n_tokens = +(\d+)")
_LAUNCH = re.compile(r"launch_slot_: .*processing task")


def engine_runs(log_path: Path, started: float) -> list[dict[str, Any]]:
    """Each request llama-server completed, from its own log: when (our monotonic
    clock; the log counts from the engine's start), the prompt tokens it evaluated
    and their time (what its slot and host cache did not hold), and the tokens the
    slot held at the end (prompt + generated - 1)."""
    runs: dict[int, dict[str, Any]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        ts, task = _LOG_TS.match(line), _LOG_TASK.search(line)
        if not ts or not task:
            continue
        mins, secs, ms, us = (int(g) for g in ts.groups())
        at = started + mins * 60 + secs + ms / 1e3 + us / 1e6
        run = runs.setdefault(int(task.group(1)), {"task": int(task.group(1))})
        if _LAUNCH.search(line):
            run["launch"] = at
        elif m := _PROMPT_EVAL.search(line):
            run |= {"prompt_ms": float(m.group(1)), "prompt_n": int(m.group(2))}
        elif m := _STOP.search(line):
            run |= {"n_tokens": int(m.group(1)), "end": at}
    return [r for r in runs.values() if "n_tokens" in r and "prompt_n" in r]


def attach_engine_runs(recs: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> int:
    """Give each task the engine's own figures of its request (``prompt_n``: prompt tokens
    the engine evaluated, the rest came from its cache): the run on the task's replica
    that held tokens_in + tokens_out - 1 tokens and ended closest to the task's end.
    Returns the tasks matched."""
    matched = 0
    used: set[tuple[str, int]] = set()
    for rec in sorted(recs, key=lambda r: r["t_submit"] + r.get("done_ms", 0) / 1000):
        cands = runs.get(rec.get("replica_id", ""), [])
        if "tokens_in" not in rec:
            continue
        want = rec["tokens_in"] + rec["tokens_out"] - 1
        end = rec["t_submit"] + rec["done_ms"] / 1000
        best = None
        for run in cands:
            key = (rec["replica_id"], run["task"])
            if key in used or abs(run["n_tokens"] - want) > 1 or abs(run["end"] - end) > 5:
                continue
            if best is None or abs(run["end"] - end) < abs(best["end"] - end):
                best = run
        if best is not None:
            used.add((rec["replica_id"], best["task"]))
            rec |= {"prompt_n": best["prompt_n"], "prompt_ms": best["prompt_ms"]}
            rec["others_prefill"] = others_prefill(best, cands)
            matched += 1
    return matched


def others_prefill(run: dict[str, Any], runs: list[dict[str, Any]]) -> float | None:
    """ORCH-2374: prompt tokens the engine's other slots evaluated while ``run``'s prompt
    was evaluated (its window: launch to launch + prompt eval time), each other run's
    evaluated tokens spread evenly over its own window. On one engine thread the
    run's prompt eval time is its own tokens plus these (and the others' decoding)."""
    if "launch" not in run:
        return None
    lo, hi = run["launch"], run["launch"] + run["prompt_ms"] / 1000
    total = 0.0
    for other in runs:
        if other is run or "launch" not in other or not other["prompt_n"]:
            continue
        a, b = other["launch"], other["launch"] + other["prompt_ms"] / 1000
        overlap = min(hi, b) - max(lo, a)
        if overlap > 0:
            total += other["prompt_n"] * (overlap / (b - a) if b > a else 1.0)
    return total


def attach_queue_times(recs: list[dict[str, Any]], orch_log: Path) -> None:
    """orchestratord's own queue wait of each task (its ``task ended`` log line): the
    `started` event reaches the client with the first token, so the client cannot tell."""
    queue = {}
    for line in orch_log.read_text(errors="replace").splitlines():
        if '"task ended"' in line:
            doc = json.loads(line)
            queue[doc["job_id"]] = float(doc["queue_time_ms"])
    for rec in recs:
        if rec["task_id"] in queue:
            rec["queue_ms"] = queue[rec["task_id"]]


def engine_cache(urls: list[str]) -> dict[str, tuple[float, float]]:
    """(cached, evaluated) prompt tokens per engine, from its own /metrics."""
    got = {}
    for u in urls:
        text = http_get(u + "/metrics").decode()
        vals = {}
        for name in ("llamacpp:prompt_tokens_cached_total", "llamacpp:prompt_tokens_total"):
            m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
            vals[name] = float(m.group(1)) if m else 0.0
        got[u] = (vals["llamacpp:prompt_tokens_cached_total"], vals["llamacpp:prompt_tokens_total"])
    return got
