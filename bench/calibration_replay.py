"""Offline replay of two expected-arrival terms on past calibration runs (ORCH-2902).

Reads a run of ``bench/calibration.py`` (its report JSON under ``bench/results``
and orchestratord's log, kept in ``/tmp/llorch-calibration-<stamp>``) and
recomputes each admission-time finish forecast with a term for the prompts of
tasks admitted later, then reports the finish figures of ORCH-1955 before/after:

- ``share``: the share ``u`` of the replica's run time that the runs ended before
  the admission spent on prompts dispatched after they started (decayed, half-life
  600 s, at ``--cost`` ms a prompt token), as a stretch ``1 / (1 - u)`` of the new
  task's service when another task is running (at most ``u = 0.8``);
- ``slots``: the replica's free slots (4 less the running tasks less itself) filled
  during the task's run at the recent admission rate (EWMA, ``--tau`` s), each
  adding the recent mean prompt's prefill.

An approximation of the forecast, not the forecast: dispatch times come from the
``task ended`` lines (end less decode time), a prompt costs a fixed ``--cost`` ms a
token, tasks are matched by (prompt tokens, output tokens). For a decision, not a
figure to publish.

    uv run bench/calibration_replay.py 2026-12-03-1217 2026-12-03-1221

``--oracle`` (ORCH-2905) needs only the report JSON (runs with ``admitted_s``, from
session 7 on): each admission-time finish forecast with the prefill of the prompts
admitted during the task's run added at ``--cost`` ms a token (which no forecast
made at admission can know), and the misses (outside 2x) by cause:

    uv run bench/calibration_replay.py --oracle --cost 6.3,10 2026-12-03-1535 2026-12-03-1540

``--start`` (ORCH-2919), the report alone: the start figures split by whether a task
admitted later started first (a deadline task, served first: EDF), and the misses:

    uv run bench/calibration_replay.py --start 2026-12-04-1022 2026-12-04-1033

``--canceled-ahead`` (ORCH-2922), the reports alone, pooled: the starts served in
admission order split by whether a task admitted before them was canceled between
their admission and their start (its slot forecast held to its ``max_tokens``):

    uv run bench/calibration_replay.py --canceled-ahead 2026-12-04-1304 2026-12-04-1315

``--left`` (DEBUG log): each decoding running task's ms left as forecast at each
admission against the time it actually ran on, by its live pace ratio.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _runs(stamp: str) -> list[dict[str, float]]:
    out = []
    for line in Path(f"/tmp/llorch-calibration-{stamp}/orchestratord.log").read_text().splitlines():
        j = json.loads(line)
        if j["msg"] != "task ended" or j.get("decode_time_ms") is None:
            continue
        if j.get("tokens_in") is None:
            continue
        end = j["ts"]
        disp = end - j["decode_time_ms"] / 1000
        out.append(
            {
                "end": end,
                "disp": disp,
                "adm": disp - j["queue_time_ms"] / 1000,
                "tin": j["tokens_in"],
                "tout": j["tokens_out"],
            }
        )
    for e in out:
        e["later"] = sum(o["tin"] for o in out if o is not e and e["disp"] < o["disp"] <= e["end"])
    return out


def _stats(ratios: list[float]) -> str:
    rel = sorted(abs(r - 1) for r in ratios)
    fac = sorted(max(r, 1 / r) for r in ratios)
    n = len(ratios)
    within = sum(1 for r in ratios if 0.5 <= r <= 2) / n
    p90 = fac[min(n - 1, int(0.9 * (n - 1) + 0.5))]
    return f"median {100 * rel[n // 2]:.0f} %, within 2x {100 * within:.0f} %, p90 factor {p90:.2f}"


def replay(stamp: str, cost: float, taus: list[float]) -> None:
    runs = _runs(stamp)
    report = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())
    rows: list[tuple[float, float, list[float]]] = []
    for o in report["outcomes"]:
        if not (o["predicted_finish_ms"] and o["finish_ms"] and o["end_reason"] == "length"):
            continue
        match = [e for e in runs if e["tin"] == o["tokens_in"] and e["tout"] == o["tokens_out"]]
        if len(match) != 1:
            continue
        e = match[0]
        t = e["adm"]
        ps, pf, actual = o["predicted_start_ms"], o["predicted_finish_ms"], o["finish_ms"]
        running = sum(1 for x in runs if x is not e and x["disp"] <= t < x["end"])
        # share: runs ended before t, decayed
        num = den = 0.0
        for x in runs:
            if x["end"] < t:
                k = 0.5 ** ((t - x["end"]) / 600.0)
                num += k * x["later"] * cost
                den += k * (x["end"] - x["disp"]) * 1000
        u = min(0.8, num / (den + 1000.0)) if den else 0.0
        share = ps + (pf - ps) / (1 - u) if running else pf
        slots = []
        for tau in taus:
            prev = [x for x in runs if x["adm"] < t - 0.0005]
            weights = [math.exp(-(t - x["adm"]) / tau) for x in prev]
            rate = sum(weights) / tau
            mean = sum(w * x["tin"] for w, x in zip(weights, prev, strict=True)) / max(
                1e-9, sum(weights)
            )
            free = max(0, 4 - 1 - running)
            d = pf - ps
            for _ in range(5):  # the run's length and its arrivals, to a fixed point
                d = (pf - ps) + min(free, rate * d / 1000) * mean * cost
            slots.append((ps + d) / actual)
        rows.append((pf / actual, share / actual, slots))
    print(f"{stamp} ({len(rows)} tasks)")
    print(f"  as told:       {_stats([r[0] for r in rows])}")
    print(f"  share:         {_stats([r[1] for r in rows])}")
    for k, tau in enumerate(taus):
        print(f"  slots tau {tau:>3g}: {_stats([r[2][k] for r in rows])}")


BURST_S = 0.5  # others admitted this soon after a task: its phase's clients together


def oracle(stamp: str, costs: list[float]) -> None:
    """ORCH-2905: what the admission-time forecast could not know, from the report."""
    outs = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())["outcomes"]
    told: list[float] = []
    added: list[list[float]] = [[] for _ in costs]
    causes = {"over": 0, "burst": 0, "later": 0, "alone": 0}
    for o in outs:
        if o["end_reason"] != "length" or not (o["predicted_finish_ms"] and o["finish_ms"]):
            continue
        if o.get("admitted_s") is None or o.get("ended_s") is None:
            continue
        later = [
            x
            for x in outs
            if x is not o
            and x.get("admitted_s") is not None
            and o["admitted_s"] < x["admitted_s"] < o["ended_s"]
        ]
        tokens = sum(x["tokens_in"] or 0 for x in later)
        r = o["predicted_finish_ms"] / o["finish_ms"]
        told.append(r)
        for k, cost in enumerate(costs):
            added[k].append((o["predicted_finish_ms"] + cost * tokens) / o["finish_ms"])
        if 0.5 <= r <= 2:
            continue
        if r > 2:
            causes["over"] += 1
        elif any(x["admitted_s"] - o["admitted_s"] < BURST_S for x in later):
            causes["burst"] += 1
        else:
            causes["later" if later else "alone"] += 1
    print(f"{stamp} ({len(told)} tasks)")
    print(f"  as told:                        {_stats(told)}")
    for k, cost in enumerate(costs):
        print(f"  + later prompts at {cost:>4g} ms/token: {_stats(added[k])}")
    print(
        f"  misses: {sum(causes.values())}: over-predicted {causes['over']}; others admitted"
        f" < {BURST_S:g} s after it {causes['burst']}; prompts admitted later"
        f" {causes['later']}; none {causes['alone']}"
    )


def starts(stamp: str) -> None:
    """ORCH-2919: the start figures of a past report split by whether a task admitted
    later started first (EDF), and its start misses (outside 2x) by cause."""
    from calibration import HELD_INSTANTS, Outcome, analyse, held_start_pairs, overtaken

    raw = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())["outcomes"]
    outs = [Outcome(**o) for o in raw]
    s = analyse(outs)

    causes = {"overtaken": 0, "over, canceled ahead": 0, "over": 0, "under": 0}
    for o in outs:
        if o.queue_wait_ms is None or o.queue_wait_ms < 100 or o.predicted_start_ms is None:
            continue
        r = o.predicted_start_ms / o.queue_wait_ms
        if 0.5 <= r <= 2:
            continue
        if r > 2:  # overtaking makes a start later, not earlier
            causes["over, canceled ahead" if _canceled_ahead(o, outs) else "over"] += 1
        else:
            causes["overtaken" if overtaken(o, outs) else "under"] += 1
    print(stamp)
    for key in ("start", "start_in_order", "start_overtaken"):
        e = s[key]
        med, p90 = e["median_rel_err"], e["p90_factor"]
        print(
            f"  {key:16} n {e['n']:>2}  median {'n/a' if med is None else f'{100 * med:.0f} %':>5}"
            f"  p90 factor {'n/a' if p90 is None else f'{p90:.2f}'}"
        )
    waited = [
        o
        for o in outs
        if o.queue_wait_ms is not None
        and o.queue_wait_ms >= 100
        and o.predicted_start_ms is not None
    ]
    by_instant = []  # ORCH-2920: the held start's p90 factor at each instant of the wait
    for k in range(HELD_INSTANTS):
        f = sorted(max(p / a, a / p) for o in waited for p, a in held_start_pairs(o)[k : k + 1])
        by_instant.append(
            f"{f[min(len(f) - 1, int(0.9 * (len(f) - 1) + 0.5))]:.2f}" if f else "n/a"
        )
    print(f"  start ETA held, p90 factor by instant (0, 10, ... 90 %): {' '.join(by_instant)}")
    print(
        f"  misses: {sum(causes.values())}: under-predicted and overtaken"
        f" {causes['overtaken']}, otherwise {causes['under']}; over-predicted with a task"
        f" ahead canceled {causes['over, canceled ahead']}, otherwise {causes['over']}"
    )


def _canceled_ahead(o: Any, outs: list[Any]) -> bool:
    """A task admitted before ``o`` and not ended at its admission was canceled (the
    forecast counts its ``max_tokens``) before ``o`` started (its end as the client saw
    it, a little after its slot freed: ``BURST_S`` of slack)."""
    start = (o.admitted_s or 0) + (o.queue_wait_ms or 0) / 1000
    return any(
        x.end_reason == "canceled"
        and x.admitted_s is not None
        and x.ended_s is not None
        and x.admitted_s <= (o.admitted_s or 0) < x.ended_s <= start + BURST_S
        for x in outs
    )


def canceled_ahead(stamps: list[str]) -> None:
    """ORCH-2922: the starts served in order (ORCH-2919), pooled over ``stamps``, split
    by whether a task ahead was canceled before they started."""
    import statistics

    from calibration import Outcome, overtaken

    split: dict[bool, list[float]] = {True: [], False: []}
    for stamp in stamps:
        raw = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())
        outs = [Outcome(**o) for o in raw["outcomes"]]
        for o in outs:
            if o.queue_wait_ms is None or o.queue_wait_ms < 100 or o.predicted_start_ms is None:
                continue
            if not overtaken(o, outs):
                split[_canceled_ahead(o, outs)].append(o.predicted_start_ms / o.queue_wait_ms)
    for key, label in ((True, "a task ahead canceled"), (False, "none canceled ahead")):
        r = split[key]
        if r:
            print(
                f"  starts in order, {label:22}: n {len(r):>3}  told/actual median"
                f" {statistics.median(r):.2f}  {_stats(r)}"
            )


RATIO_BINS = ((0.0, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0), (1.0, 1.3), (1.3, math.inf))


def running_left(stamp: str) -> None:
    """ORCH-2919: the ms left forecast for each decoding running task at each admission
    (orchestratord's DEBUG ``forecast:`` lines, ORCH-1994) against the time it then
    actually ran to its end, by its live pace ratio (ORCH-1977, ORCH-2918). The ms
    left do not hold the prefill of prompts admitted later, so every bin is below 1;
    the bins compare the ratios."""
    import ast
    import statistics

    ends: dict[str, tuple[float, str]] = {}
    told: list[tuple[float, list[list[tuple[Any, ...]]]]] = []
    log = Path(f"/tmp/llorch-calibration-{stamp}/orchestratord.log")
    for line in log.read_text().splitlines():
        j = json.loads(line)
        if j["msg"] == "task ended":
            ends[j["job_id"][:8]] = (j["ts"], j["state"])
        elif j["msg"].startswith("forecast:"):
            tail = j["msg"].split("(task, tokens left, decoding, ratio, weight, ms left) ")[1]
            told.append((j["ts"], ast.literal_eval(tail)))
    rows = []
    for ts, replicas in told:
        for tid, _, decoding, ratio, ms in (t for rep in replicas for t in rep):
            end = ends.get(tid)
            if not decoding or ratio is None or end is None or end[1] != "completed":
                continue
            if (end[0] - ts) * 1000 >= 100:
                rows.append((ratio[0], ms / ((end[0] - ts) * 1000)))
    print(f"{stamp} ({len(rows)} forecasts of a decoding task's ms left)")
    for lo, hi in RATIO_BINS:
        r = sorted(x for a, x in rows if lo <= a < hi)
        if r:
            print(
                f"  ratio {lo:g}-{hi:g}: n {len(r):>2}  told/actual median"
                f" {statistics.median(r):.2f}  p10 {r[len(r) // 10]:.2f}"
                f"  p90 {r[int(len(r) * 0.9)]:.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stamps", nargs="+", help="e.g. 2026-12-03-1217")
    ap.add_argument("--cost", default="6.3", help="prefill ms per prompt token (--oracle: a list)")
    ap.add_argument("--oracle", action="store_true", help="ORCH-2905: the report alone")
    ap.add_argument("--start", action="store_true", help="ORCH-2919: starts, the report alone")
    ap.add_argument("--canceled-ahead", action="store_true", help="ORCH-2922, pooled")
    ap.add_argument("--left", action="store_true", help="running tasks' ms left by pace ratio")
    ap.add_argument("--tau", default="10,30,120", help="EWMA time constants, s")
    args: Any = ap.parse_args(argv)
    if args.canceled_ahead:
        canceled_ahead(args.stamps)
        return 0
    for stamp in args.stamps:
        if args.left:
            running_left(stamp)
        elif args.start:
            starts(stamp)
        elif args.oracle:
            oracle(stamp, [float(x) for x in args.cost.split(",")])
        else:
            replay(stamp, float(args.cost), [float(x) for x in args.tau.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
