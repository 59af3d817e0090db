"""The finish forecast's misses and the work that arrives during a task's run, offline
(issue #19, session 14, ORCH-2930).

Reads a run of ``bench/calibration.py`` (its report JSON under ``bench/results``) and
llama-server's log kept in ``/tmp/llorch-calibration-<stamp>`` (the tasks matched as
``bench/calibration_held.py`` does). Two parts:

``breakdown``: each task that ran to ``max_tokens`` and was told less than half its
finish (a p90 miss), its measured time split along the engine's clock: queued (admission
→ launch), its own prompt (launch → first token; it includes the prompts batched with
it), the time the engine spent prefilling prompts admitted **after** it (the union of
their launch → first-token spans within its run), prompts admitted before it, and the
rest (its own decode at the busy slots). Then the told finish with that later prefill
added (an oracle on the engine's spans: what no forecast at admission can know), and
what the ``stretch`` term below (the last ``--tau``) would have added at its admission.

``terms``: the admission-time finish figures of ORCH-1955 (median |told / actual - 1|,
p90 factor, within 2x) as told and with an expected-arrival term added, computed
causally from what was known at each admission:

- ``stretch``: the task's own service (finish - start) stretched by ``1 / (1 - rho)``,
  ``rho`` the replica's recent prefill load: an exponentially decaying sum (time constant
  ``tau``) of the prompt tokens admitted while another task was running (a prompt admitted
  to an idle replica interferes with nothing), x the run's prefill cost a token, per
  second; ``rho`` at most ``--bound``. Without fresh arrivals ``rho`` decays to 0 (``e^{-dt/tau}``)
  and the forecast is the one told; with ``--busy`` only when another task runs at the
  admission. The start told is stretched too (``--starts``) as the simulation would do if
  the term applied to every task's service: the tasks ahead run under the same load.
- ``loop``: a closed-loop client's successor: each other task running or queued whose
  told finish falls before this task's adds one prompt of the recent mean size at the
  prefill cost (x ``--share``).

The prefill cost a token is the run's: the median of llama-server's prompt ms a token
over its prompts of 50 tokens or more. An approximation of the forecast (told + a term),
not a replay of the model: for a decision, not a figure to publish.

    uv run bench/calibration_arrivals.py 2026-12-04-2004 2026-12-04-2014
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calibration_held import covered, engine_tasks, match, percentile, union

HERE = Path(__file__).resolve().parent
MISS = 0.5  # told / actual below this: a p90 miss under-predicted


def figures(ratios: Sequence[float]) -> tuple[float, float, float]:
    """ORCH-1955's figures of told / actual ratios: median |error|, p90 factor, within 2x."""
    fac = [max(r, 1 / r) for r in ratios]
    within = sum(f <= 2 for f in fac) / len(fac)
    return percentile([abs(r - 1) for r in ratios], 0.5), percentile(fac, 0.9), within


def _fmt(ratios: Sequence[float]) -> str:
    if not ratios:
        return "n  0"
    med, p90, within = figures(ratios)
    return f"n {len(ratios):>2} median {med:4.0%} p90 {p90:5.2f} within 2x {within:4.0%}"


def band(ratios: Sequence[float], share: float = 0.9) -> float:
    """The narrowest ratio max / min of a window holding ``share`` of ``ratios``: the p90
    factor can be within 2x under some uniform scaling of the forecasts only if it is
    at most 4 (a uniform scaling moves every ratio alike and keeps the band)."""
    s = sorted(ratios)
    k = math.ceil(share * len(s))
    return min(s[i + k - 1] / s[i] for i in range(len(s) - k + 1))


def prefill_load(
    arrivals: Sequence[tuple[float, int]], t: float, tau_s: float, cost: float
) -> float:
    """rho at ``t``: the decaying rate of interfering prompt tokens admitted before ``t``
    (``(time s, tokens)``), x ``cost`` ms a token, as a share of wall time (unbounded)."""
    w = sum(math.exp(-(t - a) / tau_s) * n for a, n in arrivals if a < t)
    return w * cost / 1000.0 / tau_s


def stretch(told_ms: float, start_ms: float, rho: float, bound: float) -> float:
    """A told finish with its own service stretched by ``1 / (1 - min(rho, bound))``."""
    return start_ms + (told_ms - start_ms) / (1.0 - min(max(rho, 0.0), bound))


def _load(stamp: str) -> tuple[list[dict[str, Any]], float, list[dict[str, float]]]:
    outs: list[dict[str, Any]] = json.loads(
        (HERE / "results" / f"{stamp}-calibration.json").read_text()
    )["outcomes"]
    engine = engine_tasks(Path(f"/tmp/llorch-calibration-{stamp}/llama-server.log"))
    match(outs, engine)
    cost = statistics.median(d["prefill_ms"] / d["prompt"] for d in engine if d["prompt"] >= 50)
    adm = [o for o in outs if o.get("admitted_s") is not None and o.get("ended_s") is not None]
    return sorted(adm, key=lambda o: o["admitted_s"]), cost, engine


def _told(o: dict[str, Any]) -> bool:
    return bool(o["end_reason"] == "length" and o["finish_ms"] and o["predicted_finish_ms"])


def _arrivals(adm: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """The prompts admitted while another task was running: (time s, tokens)."""
    return [
        (x["admitted_s"], x["tokens_in"] or 0)
        for x in adm
        if any(y is not x and y["admitted_s"] < x["admitted_s"] < y["ended_s"] for y in adm)
    ]


def breakdown(stamp: str, args: Any) -> None:
    adm, cost, engine = _load(stamp)
    arrivals = _arrivals(adm)
    tau = args.tau[-1]
    print(f"{stamp}: misses told < {MISS:g}x (prefill cost {cost:.1f} ms/t), seconds")
    print(
        "    adm s  c  in/out   told actual | queue own-pf later-pf earlier-pf  rest | +later"
        f" | rate term (tau {tau:g} s)"
    )
    sums = [0.0] * 6
    terms_s = 0.0
    oracle: list[float] = []
    for o in adm:
        d = o.get("engine")
        if not _told(o) or d is None:
            continue
        off = o["offset"]
        later = [(e["launch"] - off, e["first"] - off) for e in engine if e["launch"] > d["launch"]]
        every = [(e["launch"] - off, e["first"] - off) for e in engine if e is not d]
        launch, first, end = d["launch"] - off, d["first"] - off, o["ended_s"]
        queue = max(0.0, launch - o["admitted_s"])
        # its own prompt at the run's cost a token; the rest of its prompt span, and its
        # decode span, to the prompts launched after it, then to the others
        own = min(o["tokens_in"] * cost / 1000, max(0.0, first - launch))
        late = covered(union(later), launch, end)
        late = min(late, max(0.0, end - launch - own))
        early = max(0.0, covered(union(every), launch, end) - late - own)
        actual = o["finish_ms"] / 1000
        rest = max(0.0, actual - queue - own - late - early)
        told = o["predicted_finish_ms"] / 1000
        oracle.append((told + late) / actual)
        if told / actual >= MISS:
            continue
        for k, v in enumerate((told, actual, queue, own, late, early)):
            sums[k] += v
        rho = prefill_load(arrivals, o["admitted_s"] - 0.0005, tau, cost)
        ps = (o["predicted_start_ms"] or 0) / 1000
        term = stretch(told, ps, rho, args.bound) - told
        terms_s += term
        print(
            f"  {o['admitted_s']:7.1f} c{o['concurrency']} {o['tokens_in']:5d}/{o['tokens_out']:3d}"
            f" {told:6.1f} {actual:6.1f} | {queue:5.1f} {own:6.1f} {late:8.1f} {early:10.1f}"
            f" {rest:5.1f} | {(told + late) / actual:.2f} | +{term:5.1f}"
        )
    if sums[1]:
        told, actual, queue, own, late, early = sums
        print(
            f"  sum of misses: told {told:.1f} s of {actual:.1f} s; queued {queue / actual:.0%},"
            f" own prompt {own / actual:.0%}, prompts launched later {late / actual:.0%},"
            f" other prompts {early / actual:.0%},"
            f" rest (own decode) {(actual - queue - own - late - early) / actual:.0%};"
            f" later prompts {late:.1f} s, the rate term {terms_s:.1f} s"
        )
    print(f"  matched tasks, told + later prefill (engine spans): {_fmt(oracle)}")


def terms(stamp: str, args: Any) -> None:
    adm, cost, _ = _load(stamp)
    arrivals = _arrivals(adm)
    told: list[float] = []
    starts: list[float] = []
    stretched: dict[float, list[float]] = {tau: [] for tau in args.tau}
    starts_stretched: dict[float, list[float]] = {tau: [] for tau in args.tau}
    loop: list[float] = []
    for o in adm:
        t = o["admitted_s"]
        running = any(y is not o and y["admitted_s"] < t < y["ended_s"] for y in adm)
        ps = o["predicted_start_ms"] or 0
        wait = o.get("queue_wait_ms")
        if wait is not None and wait >= 100 and o["predicted_start_ms"] is not None:
            starts.append(max(ps, 1) / wait)
            for tau in args.tau:
                rho = (
                    prefill_load(arrivals, t - 0.0005, tau, cost) if running or not args.busy else 0
                )
                starts_stretched[tau].append(max(stretch(ps, 0, rho, args.bound), 1) / wait)
        if not _told(o):
            continue
        pf, actual = o["predicted_finish_ms"], o["finish_ms"]
        told.append(pf / actual)
        for tau in args.tau:
            rho = prefill_load(arrivals, t - 0.0005, tau, cost) if running or not args.busy else 0
            start = stretch(ps, 0, rho, args.bound) if args.starts else ps
            stretched[tau].append((start + stretch(pf, ps, rho, args.bound) - ps) / actual)
        prev = [x for x in adm if x["admitted_s"] < t - 0.0005]
        recent = prev[-20:]
        mean = sum(x["tokens_in"] or 0 for x in recent) / max(1, len(recent))
        ends = [x["admitted_s"] + (x["predicted_finish_ms"] or 0) / 1000 for x in prev]
        k = sum(
            1 for x, e in zip(prev, ends, strict=True) if x["ended_s"] > t and e < t + pf / 1000
        )
        loop.append((pf + args.share * k * mean * cost) / actual)
    print(f"{stamp} (prefill cost {cost:.1f} ms/t, bound {args.bound:g}, busy only {args.busy})")
    print(f"  finish as told:        {_fmt(told)}  (90 % of them in a {band(told):.1f}x band)")
    for tau in args.tau:
        print(f"  finish stretch tau {tau:>3g}: {_fmt(stretched[tau])}")
    print(f"  finish loop x{args.share:g}:      {_fmt(loop)}")
    print(f"  start as told:         {_fmt(starts)}")
    for tau in args.tau:
        print(f"  start stretch tau {tau:>3g}: {_fmt(starts_stretched[tau])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stamps", nargs="+", help="e.g. 2026-12-04-2014")
    ap.add_argument("--tau", default="10,30,120", help="time constants of rho, s")
    ap.add_argument("--bound", type=float, default=0.5, help="rho at most (0.5: 2x)")
    ap.add_argument("--busy", action="store_true", help="the term only beside a running task")
    ap.add_argument("--starts", action="store_true", help="stretch the told start as well")
    ap.add_argument("--share", type=float, default=1.0, help="loop: successors per end")
    args: Any = ap.parse_args(argv)
    args.tau = [float(x) for x in args.tau.split(",")]
    for stamp in args.stamps:
        breakdown(stamp, args)
        terms(stamp, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
