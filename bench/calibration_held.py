"""What the held-ETA misses of a calibration run are, offline (ORCH-2912).

Reads a run of ``bench/calibration.py``: its report JSON under ``bench/results``
(each task's finishes told, ORCH-2907/2908) and llama-server's log kept in
``/tmp/llorch-calibration-<stamp>`` (each engine task's launch, ``prompt eval
time`` and release). Engine tasks are matched to the report's tasks by prompt
size (±3 tokens) and end time (the clocks' offset is the densest 0.1 s window of
release - end over the pairs of equal size). Then at each of the 10 instants of
ORCH-2908 a held finish outside 2x of the time then left is put in one cause:

- ``over (202)`` / ``over (update)``: told more time than was left, the value held
  being the admission-time one or a later update;
- ``later prompts``: told less, but within 2x once the prefill of the prompts
  dispatched after that instant (the union of their launch → first token spans
  within the task's rest) is taken out: nothing known then could tell it;
- ``own prefill late``: told less while the task had no first token yet, its
  prompt (batched with those already dispatched) running past its model;
- ``queued``: told less while still queued;
- ``stalled by known prompts``: decoding, and the prefill of prompts already
  dispatched covers at least half of what was missing;
- ``decode slower``: the rest.

``passed`` marks a held finish already in the past (it counts as 1 ms left).

    uv run bench/calibration_held.py 2026-12-03-1925 2026-12-03-1931
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
INSTANTS = 10  # as bench/calibration_report.py's HELD_INSTANTS (ORCH-2908)
_LINE = re.compile(r"(\d+)\.(\d+)\.(\d+)\.(\d+) . slot\s+(\w+): id\s+\d+ \| task (\d+) \| (.*)")
_SIZE = re.compile(r"=\s+([\d.]+) ms /\s+(\d+) tokens")


def engine_tasks(path: Path) -> list[dict[str, float]]:
    """llama-server's tasks: launch, first token (launch + prompt eval), release (s)."""
    tasks: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        mi, s, ms, us = (int(g) for g in m.groups()[:4])
        t = mi * 60 + s + ms / 1e3 + us / 1e6
        kind, rest = m.group(5), m.group(7)
        d = tasks.setdefault(int(m.group(6)), {})
        if kind == "launch_slot_":
            d["launch"] = t
        elif kind == "release":
            d["release"] = t
        elif "prompt eval time" in rest and (size := _SIZE.search(rest)):
            d["prefill_ms"], d["prompt"] = float(size.group(1)), float(size.group(2))
    keep = [d for d in tasks.values() if {"launch", "release", "prompt"} <= d.keys()]
    for d in keep:
        d["first"] = d["launch"] + d["prefill_ms"] / 1000
    return [d for d in keep if d["prompt"] > 1]  # the self-test's one-token prompts


def match(outs: list[dict[str, Any]], tasks: list[dict[str, float]]) -> None:
    """Set each ended outcome's ``engine`` task (or None)."""

    def same(o: dict[str, Any], d: dict[str, float]) -> bool:
        return abs(d["prompt"] - (o["tokens_in"] or 0)) <= 3

    ended = [o for o in outs if o.get("ended_s") is not None]
    deltas = sorted(d["release"] - o["ended_s"] for o in ended for d in tasks if same(o, d))
    mode = max(deltas, key=lambda c: sum(abs(x - c) < 0.1 for x in deltas))
    offset = statistics.median(x for x in deltas if abs(x - mode) < 0.1)
    used: set[int] = set()
    for o in outs:
        o["engine"], o["offset"] = None, offset
        if o.get("ended_s") is None:
            continue
        near = [
            (abs(d["release"] - offset - o["ended_s"]), k)
            for k, d in enumerate(tasks)
            if k not in used and same(o, d)
        ]
        if near and min(near)[0] < 0.3:
            used.add(min(near)[1])
            o["engine"] = tasks[min(near)[1]]


def percentile(xs: Sequence[float], p: float) -> float:
    """The percentile as ``bench/calibration.py``'s report takes it."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``spans`` merged where they overlap, in order."""
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def covered(spans: list[tuple[float, float]], a: float, b: float) -> float:
    """Seconds of ``[a, b]`` the disjoint ``spans`` (a :func:`union`) cover."""
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in spans)


def cause(o: dict[str, Any], tasks: list[dict[str, float]], k: int) -> tuple[float, str] | None:
    """(factor, cause) of the finish held at instant ``k``; None within 2x."""
    at = o["finish_ms"] * k / INSTANTS
    told_at, finish = [(t, f) for t, f in o["finish_told"] if t <= at][-1]
    told, left = max(1.0, finish - at), o["finish_ms"] - at
    factor = max(told / left, left / told)
    if factor <= 2:
        return None
    passed = " [passed]" if finish - at <= 1 else ""
    if told > left:
        return factor, "over (202)" if told_at == 0 else "over (update)"
    d = o["engine"]
    if d is None:
        return factor, "unmatched" + passed
    now = o["ended_s"] - o["finish_ms"] / 1000 + at / 1000 + o["offset"]
    others = [x for x in tasks if x is not d]
    known = union([(x["launch"], x["first"]) for x in others if x["launch"] <= now])
    every = union([(x["launch"], x["first"]) for x in others])
    later = (covered(every, now, d["release"]) - covered(known, now, d["release"])) * 1000
    rest = left - later
    if rest > 0 and max(rest / told, told / rest) <= 2:
        return factor, "later prompts" + passed
    if now < d["launch"]:
        return factor, "queued" + passed
    if now < d["first"]:
        return factor, "own prefill late" + passed
    if covered(known, now, d["release"]) * 1000 >= 0.5 * (rest - told):
        return factor, "stalled by known prompts" + passed
    return factor, "decode slower" + passed


def held(stamp: str) -> dict[str, Any]:
    report = HERE / "results" / f"{stamp}-calibration.json"
    if not report.exists():  # a smoke run's
        report = HERE / "results" / f"{stamp}-calibration-smoke.json"
    outs = json.loads(report.read_text())["outcomes"]
    tasks = engine_tasks(Path(f"/tmp/llorch-calibration-{stamp}/llama-server.log"))
    match(outs, tasks)
    ran = [
        o
        for o in outs
        if o["end_reason"] in ("length", "eos", "stop")
        and o["finish_ms"]
        and o["predicted_finish_ms"] is not None
        and o.get("finish_told")
    ]
    factors: list[float] = []
    causes: Counter[str] = Counter()
    for o in ran:
        for k in range(INSTANTS):
            got = cause(o, tasks, k)
            if got is None:
                factors.append(1.0)
            else:
                factors.append(got[0])
                causes[got[1]] += 1
    factors.sort()
    p90 = factors[min(len(factors) - 1, int(0.9 * (len(factors) - 1) + 0.5))]
    return {"pairs": len(factors), "p90_factor": p90, "misses": causes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stamps", nargs="+", help="e.g. 2026-12-03-1925")
    args = ap.parse_args(argv)
    for stamp in args.stamps:
        r = held(stamp)
        n = sum(r["misses"].values())
        print(
            f"{stamp}: {r['pairs']} held finishes, p90 factor {r['p90_factor']:.2f}, {n} outside 2x"
        )
        for what, count in r["misses"].most_common():
            print(f"  {count:4d}  {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
