"""Where a calibration run's finish forecasts went wrong, offline (issue #19, session 13).

Reads a run of ``bench/calibration.py`` (its report JSON under ``bench/results``) and
llama-server's log kept in ``/tmp/llorch-calibration-<stamp>``. For each task that ran
to ``max_tokens``, in admission order: the finish told at admission / the one measured,
how many other admitted tasks ran beside it (any overlap of admission → end; in
brackets their mean number over its run) and how many of those were admitted after it
(ORCH-2902: no forecast at admission knows them), and what the engine measured for it
(prompt eval and eval, ms a token; matched as ``bench/calibration_held.py`` does).
With the DEBUG log, the model's first-token and decode forecast at its admission
(from the ``forecast:`` line of the position-0 admission whose finish is the task's,
ORCH-1994): the idle pace at its context, no busy-slot slowdown, no work ahead, so
comparable with the engine's only for a task alone. Then the finish figures split by
the number of tasks beside it.

    uv run bench/calibration_finish.py 2026-12-04-1705
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from calibration_held import engine_tasks, match, percentile

HERE = Path(__file__).resolve().parent
_PROMPT = re.compile(r"task (\d+) \| prompt eval time = +([\d.]+) ms / +(\d+) tokens")
_EVAL = re.compile(r"task (\d+) \| +eval time = +([\d.]+) ms / +(\d+) tokens")
_FORECAST = re.compile(r"forecast: task \w+ position (\d+) start (\d+) finish (\d+)")
_PARAMS = re.compile(r"decode/token/context\) \[\((.*?)\)\]")


def _engine(stamp: str) -> list[dict[str, float]]:
    """llama-server's tasks (``calibration_held.engine_tasks``) with their eval ms/tokens."""
    path = Path(f"/tmp/llorch-calibration-{stamp}/llama-server.log")
    text = path.read_text()
    evals = {int(m.group(1)): (float(m.group(2)), int(m.group(3))) for m in _EVAL.finditer(text)}
    ids = {(float(m.group(2)), int(m.group(3))): int(m.group(1)) for m in _PROMPT.finditer(text)}
    tasks = engine_tasks(path)
    for d in tasks:
        ev = evals.get(ids.get((d["prefill_ms"], int(d["prompt"])), -1), (0.0, 0))
        d["eval_ms"], d["eval_n"] = ev
    return tasks


def _model(stamp: str) -> dict[int, tuple[float, ...]]:
    """The model's parameters at each position-0, start-0 admission, by its finish told."""
    path = Path(f"/tmp/llorch-calibration-{stamp}/orchestratord.log")
    out: dict[int, tuple[float, ...]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        msg = json.loads(line).get("msg", "")
        f, p = _FORECAST.match(msg), _PARAMS.search(msg)
        if f and p and f.group(2) == "0":
            out.setdefault(int(f.group(3)), tuple(float(x) for x in p.group(1).split(",")))
    return out


def _stats(name: str, ratios: list[float]) -> None:
    if not ratios:
        print(f"  {name:28} n  0")
        return
    fac = [max(r, 1 / r) for r in ratios]
    err = percentile([abs(r - 1) for r in ratios], 0.5)
    print(
        f"  {name:28} n {len(ratios):>2}  median |err| {err:4.0%}"
        f"  told/actual median {statistics.median(ratios):.2f}"
        f"  p90 factor {percentile(fac, 0.9):.2f}"
        f"  within 2x {sum(f <= 2 for f in fac) / len(fac):4.0%}"
    )


BESIDE = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 1_000))


def finish(stamp: str) -> None:
    outs: list[dict[str, Any]] = json.loads(
        (HERE / "results" / f"{stamp}-calibration.json").read_text()
    )["outcomes"]
    match(outs, _engine(stamp))
    model = _model(stamp)
    adm = [o for o in outs if o.get("admitted_s") is not None and o.get("ended_s") is not None]
    rows = []
    print(f"{stamp}: admitted s, phase, prompt/output, beside (mean) later, told/actual")
    for o in sorted(adm, key=lambda o: o["admitted_s"]):
        if o["end_reason"] != "length" or not o["finish_ms"] or not o["predicted_finish_ms"]:
            continue
        a, e = o["admitted_s"], o["ended_s"]
        beside = [x for x in adm if x is not o and x["admitted_s"] < e and x["ended_s"] > a]
        mean = sum(min(e, x["ended_s"]) - max(a, x["admitted_s"]) for x in beside) / (e - a)
        later = sum(x["admitted_s"] > a for x in beside)
        ratio = o["predicted_finish_ms"] / o["finish_ms"]
        rows.append((len(beside), later, ratio))
        n, k = o["tokens_in"], o["tokens_out"]
        line = (
            f"  {a:6.1f} c{o['concurrency']} {n:5d}/{k:3d}  beside {len(beside):2d} ({mean:.1f})"
            f" later {later:2d}  told {o['predicted_finish_ms']:6.0f} actual"
            f" {o['finish_ms']:6.0f} = {ratio:.2f}"
        )
        if (d := o.get("engine")) is not None:
            line += (
                f" | engine prompt {d['prefill_ms'] / n:5.1f} ms/t,"
                f" decode {d['eval_ms'] / max(1, d['eval_n']):5.1f} ms/t"
            )
        if (p := model.get(o["predicted_finish_ms"])) is not None:
            pace, _, over, per, quad, dec, _, ctx = p
            ttft = over + pace * (per * n + quad * n * n)
            line += (
                f" | model first token {ttft:6.0f} ms, decode {dec + ctx * (n + k / 2):5.1f} ms/t"
            )
        print(line)
    _stats("all", [r for _, _, r in rows])
    for lo, hi in BESIDE:
        label = (
            f"{lo} beside" if lo == hi else f"{lo}-{hi} beside" if hi < 1_000 else f"{lo}+ beside"
        )
        _stats(label, [r for x, _, r in rows if lo <= x <= hi])
    _stats("none admitted later", [r for _, later, r in rows if later == 0])
    _stats("some admitted later", [r for _, later, r in rows if later > 0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stamps", nargs="+", help="e.g. 2026-12-04-1705")
    for stamp in ap.parse_args(argv).stamps:
        finish(stamp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
