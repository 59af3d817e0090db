"""What the dispatch guard's held tasks paid (issue #19, session 17, ORCH-2931..2936).

Reads a run of ``bench/calibration.py --guard F`` (its report JSON under ``bench/results``,
whose outcomes carry their ``task_id``) and orchestratord's log kept in
``/tmp/llorch-calibration-<stamp>`` (the INFO lines ``dispatch guard: task … held`` and
``… dispatched after a hold of … ms``). For the tasks held and the others: how many,
the hold, and the ORCH-1955 figures of their start (waited >= 100 ms) and finish told in
the 202 against what they measured (median |told / actual - 1|, p90 factor, within 2x).

    uv run bench/calibration_guard.py 2026-12-05-0803
    uv run bench/calibration_guard.py --misses 2026-12-05-0835   # ORCH-2939/2928's classes
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from calibration_held import percentile

HERE = Path(__file__).resolve().parent
_HELD = re.compile(r"dispatch guard: task (\S+) held")
_AFTER = re.compile(r"dispatch guard: task (\S+) dispatched after a hold of (\d+) ms")
_FORECAST = re.compile(r"forecast: task (\S+) position \d+ start (\d+) ")
_RUNNING = re.compile(r"\('([0-9a-f]+)', -?\d+, (?:True|False), (?:None|\([^)]*\)), (\d+)\)")


def holds(log: Path) -> tuple[set[str], dict[str, float]]:
    """The tasks the guard held, and the hold of those dispatched after one (ms)."""
    held: set[str] = set()
    after: dict[str, float] = {}
    if not log.exists():
        return held, after
    for line in log.read_text().splitlines():
        try:
            msg = json.loads(line).get("msg", "")
        except json.JSONDecodeError:
            continue
        if m := _HELD.search(msg):
            held.add(m.group(1))
        elif m := _AFTER.search(msg):
            after[m.group(1)] = float(m.group(2))
    return held, after


def figures(pairs: list[tuple[float, float]]) -> str:
    """``told / actual`` pairs as ORCH-1955's figures: median |error|, p90 factor, within 2x."""
    ratios = [max(t, 1.0) / max(a, 1.0) for t, a in pairs]
    if not ratios:
        return "n 0"
    fac = [max(r, 1 / r) for r in ratios]
    med = percentile([abs(r - 1) for r in ratios], 0.5)
    within = sum(f <= 2 for f in fac) / len(fac)
    return (
        f"n {len(ratios)}: median {100 * med:.0f} %, p90 factor {percentile(fac, 0.9):.2f},"
        f" within 2x {100 * within:.0f} %, told/actual median {statistics.median(ratios):.2f}"
    )


def told_guards(log: Path, outs: list[dict[str, Any]]) -> dict[str, bool]:
    """ORCH-2928: per task (full id) whose start told is a running task's forecast end
    (its told guard: the running task whose ms left in its 202's DEBUG ``forecast`` line
    is the start told, within 1 ms), whether that task still ran 100 ms or more after its
    dispatch (that line's instant plus its queue wait). Empty without those lines (an
    INFO run): the classes stay ORCH-2939's."""
    told: dict[str, tuple[float, list[str]]] = {}  # 8-char id: its 202's instant, guards
    ended: dict[str, float] = {}  # 8-char id: when its first run ended (log clock, s)
    if not log.exists():
        return {}
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        msg, ts = rec.get("msg", ""), rec.get("ts")
        if ts is None:
            continue
        if (m := _FORECAST.match(msg)) and m.group(1) not in told:
            start = int(m.group(2))
            told[m.group(1)] = (float(ts), [
                tid for tid, ms in _RUNNING.findall(msg.split("; running ", 1)[-1])
                if abs(int(ms) - start) <= 1
            ])  # fmt: skip
        elif msg == "task ended":
            ended.setdefault(str(rec.get("job_id", ""))[:8], float(ts))
    out: dict[str, bool] = {}
    for o in outs:
        tid, wait = o.get("task_id"), o.get("queue_wait_ms")
        if tid is None or wait is None or not told.get(tid[:8], (0.0, []))[1]:
            continue
        at, guards = told[tid[:8]]
        out[tid] = any(ended.get(g, math.inf) >= at + wait / 1000 + 0.1 for g in guards)
    return out


def released(log: Path, outs: list[dict[str, Any]]) -> set[str]:
    """The tasks whose told guard still ran after their dispatch (:func:`told_guards`)."""
    return {tid for tid, ran in told_guards(log, outs).items() if ran}


OVER, NOT_KEPT, UNDER, OTHER = "hold over-told", "hold not kept", "hold under-told", "other"
RELEASED = "hold released"


def start_after(o: dict[str, Any], at_s: float) -> float:
    """The start told in ``o``'s 202, in ms after ``at_s`` (run seconds)."""
    return o["admitted_s"] * 1000 + o["predicted_start_ms"] - at_s * 1000


def misses(
    outs: list[dict[str, Any]], held: set[str], guards: dict[str, bool] | None = None
) -> list[tuple[dict[str, Any], str]]:
    """ORCH-2939: each start told outside 2x of its wait (waited >= 100 ms) and its class:
    *hold over-told*, it was held, or queued behind a held task still queued at its
    admission and told at most 1.5x the start that task's 202 told, and waited under
    half its start told;
    *hold not kept*, told at least 2x its wait otherwise (the forecast held it or the
    queue, the dispatcher did not); *hold under-told*, held and waited over 2x; *other*.
    ORCH-2928, before those: told at least 2x its wait, held or queued behind a held task
    still queued at its admission, with a told guard in ``guards`` (:func:`told_guards`):
    *hold released* when that task still ran after its dispatch, else *hold over-told*."""
    known = guards or {}
    ran = sorted(
        (o for o in outs if o.get("status") == 202 and o.get("queue_wait_ms") is not None),
        key=lambda o: o["admitted_s"],
    )
    out: list[tuple[dict[str, Any], str]] = []
    for o in ran:
        told, waited = max(o["predicted_start_ms"], 1.0), max(o["queue_wait_ms"], 1.0)
        if o["queue_wait_ms"] < 100 or max(told / waited, waited / told) <= 2.0:
            continue
        own = o.get("task_id") in held
        behind = [
            h
            for h in ran
            if h.get("task_id") in held
            and h is not o
            and h["admitted_s"] <= o["admitted_s"] < h["admitted_s"] + h["queue_wait_ms"] / 1000
        ]
        follows = any(told <= 1.5 * max(start_after(h, o["admitted_s"]), 1.0) for h in behind)
        if told > 2.0 * waited:
            if (own or behind) and o.get("task_id") in known:
                out.append((o, RELEASED if known[o["task_id"]] else OVER))
            else:
                out.append((o, OVER if own or follows else NOT_KEPT))
        else:
            out.append((o, UNDER if own else OTHER))
    return out


def miss_report(stamp: str) -> list[str]:
    data: dict[str, Any] = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())
    log = Path(f"/tmp/llorch-calibration-{stamp}") / "orchestratord.log"
    held, _after = holds(log)
    found = misses(data["outcomes"], held, told_guards(log, data["outcomes"]))
    kinds = (OVER, RELEASED, NOT_KEPT, UNDER, OTHER)
    counts = {c: sum(k == c for _o, k in found) for c in kinds}
    lines = [f"## {stamp}: {len(found)} start miss(es); " + ", ".join(
        f"{c} {n}" for c, n in counts.items())]  # fmt: skip
    for o, kind in found:
        lines.append(
            f"- {o['task_id'][:8]} in {o.get('tokens_in')} admitted {o['admitted_s']:.1f} s:"
            f" start told {o['predicted_start_ms']} / waited {o['queue_wait_ms']:.0f} ms: {kind}"
        )
    return lines


def report(stamp: str) -> list[str]:
    data: dict[str, Any] = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())
    outs = data["outcomes"]
    held, after = holds(Path(f"/tmp/llorch-calibration-{stamp}") / "orchestratord.log")
    lines = [f"## {stamp}", "", f"held {len(held)} task(s); dispatched after a hold {len(after)}"]
    if after:
        hs = sorted(after.values())
        lines.append(
            f"hold ms: median {statistics.median(hs):.0f}, max {hs[-1]:.0f}, sum {sum(hs):.0f}"
        )
    ran = [o for o in outs if o.get("status") == 202]
    for name, group in (
        ("held", [o for o in ran if o.get("task_id") in held]),
        ("not held", [o for o in ran if o.get("task_id") not in held]),
    ):
        fin = [
            (o["predicted_finish_ms"], o["finish_ms"])
            for o in group
            if o.get("predicted_finish_ms") is not None and o.get("end_reason") == "length"
        ]
        start = [
            (o["predicted_start_ms"], o["queue_wait_ms"])
            for o in group
            if o.get("queue_wait_ms") is not None and o["queue_wait_ms"] >= 100
        ]
        lines.append(f"- {name}: finish {figures(fin)}; start (>= 100 ms) {figures(start)}")
        for o in group if name == "held" else []:
            lines.append(
                f"  - {o['task_id'][:8]} in {o.get('tokens_in')} out {o.get('tokens_out')}"
                f" hold {after.get(o['task_id'], float('nan')):.0f} ms;"
                f" start told {o['predicted_start_ms']} / waited {o.get('queue_wait_ms')} ms;"
                f" finish told {o.get('predicted_finish_ms')} / took"
                f" {o.get('finish_ms') or 0:.0f} ms ({o.get('end_reason')})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stamps", nargs="+")
    ap.add_argument(
        "--misses", action="store_true", help="classify the start misses (ORCH-2939, ORCH-2928)"
    )
    args = ap.parse_args(argv)
    for stamp in args.stamps:
        print("\n".join((miss_report if args.misses else report)(stamp)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
