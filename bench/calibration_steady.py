"""The service-time model on a steady engine, offline (ORCH-2916, ORCH-2917).

Feeds one replica's :class:`ServiceModel`, from the default prior, the tasks of a
calibration run's phase (``bench/calibration.py``'s report: prompt and output sizes
in the order they were admitted, one at a time) as if a steady engine had served
them: first token ``--overhead`` + ``--per-token`` x n + ``--quad`` x n², decode
``--decode`` + ``--decode-ctx`` x context ms a token (defaults: session 6's
llama-server logs at one stream, ORCH-2900/2901). Prints, per task, the forecast
at its admission / what the engine took (service and first token) and the pace,
then the line. No interference, no noise: what the model does with a steady engine
it should learn exactly, so a bias here is the model's own.

``--measured``: the first-token and decode times llama-server logged for those
tasks instead (its log kept in ``/tmp/llorch-calibration-<stamp>``, one stream:
prompt eval and eval time), so the variants can be A/B'd on what a real engine did.

    uv run bench/calibration_steady.py 2026-12-03-2317 2026-12-03-2320
    uv run bench/calibration_steady.py --absolute 2026-12-03-2317   # ORCH-2917 undone
    uv run bench/calibration_steady.py --measured 2026-12-04-1011 2026-12-04-1015
    uv run bench/calibration_steady.py --measured --clip-first 2026-12-04-1705  # ORCH-2924 undone
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from llama_orch.core.servicetime import Observation, Prior, RobustLine, ServiceModel

HERE = Path(__file__).resolve().parent
_TIMING = re.compile(r"task (\d+) \| +(prompt eval|eval) time = +([\d.]+) ms / +(\d+) tokens")


def measured(stamp: str) -> list[tuple[int, float, float]]:
    """llama-server's tasks in launch order: (prompt tokens, prompt eval ms, eval ms)."""
    log = Path(f"/tmp/llorch-calibration-{stamp}/llama-server.log").read_text()
    tasks: dict[int, dict[str, float]] = {}
    for m in _TIMING.finditer(log):
        tasks.setdefault(int(m.group(1)), {})[m.group(2)] = float(m.group(3))
        if m.group(2) == "prompt eval":
            tasks[int(m.group(1))]["n"] = float(m.group(4))
    return [
        (int(d["n"]), d["prompt eval"], d.get("eval", 0.0))
        for _, d in sorted(tasks.items())
        if d.get("n", 0) > 1  # the self-test's one-token prompts
    ]


def steady(stamp: str, args: Any) -> None:
    outs = json.loads((HERE / "results" / f"{stamp}-calibration.json").read_text())["outcomes"]
    tasks = sorted(
        (
            o
            for o in outs
            if o["end_reason"] == "length"
            and o["concurrency"] == args.concurrency
            and o.get("admitted_s") is not None
        ),
        key=lambda o: o["admitted_s"],
    )
    ServiceModel.RELATIVE_TTFT = not args.absolute
    RobustLine.CLIP_FIRST = args.clip_first
    m = ServiceModel(Prior(), slots=4)
    t = 0.0
    service, first = [], []
    engine = measured(stamp) if args.measured else []
    for o in tasks:
        n, k = o["tokens_in"], o["tokens_out"]
        t = max(t, o["admitted_s"])
        ttft = args.overhead + args.per_token * n + args.quad * n * n
        decode = sum(args.decode + args.decode_ctx * (n + j) for j in range(k - 1))
        if args.measured:  # the next engine task of its size (one stream: in order)
            while engine and abs(engine[0][0] - n) > 3:
                engine.pop(0)
            if not engine:
                break
            _, ttft, decode = engine.pop(0)
        service.append(m.service_ms(n, k, 1.0, t) / (ttft + decode))
        first.append(m.ttft_ms(n, t) / ttft)
        p = m.params(t)
        print(
            f"  {n:5d}/{k:3d}: service {service[-1]:.2f}, first token {first[-1]:.2f}"
            f" (line {p.overhead_ms:.0f} ms + {p.prefill_ms_per_token:.2f} ms/token"
            f" + {p.prefill_quad:.5f} ms/token², pace {p.prefill_pace:.2f})"
        )
        m.dispatched(n, t)
        t += (ttft + decode) / 1000
        m.observe(Observation(n, ttft, decode, k, 1.0, "completed"), t)
    rest = slice(2, None)  # from the third task: the prior's first two runs left out
    print(
        f"{stamp} c{args.concurrency}, {'measured' if args.measured else 'steady'} engine,"
        f" {'absolute' if args.absolute else 'relative'} clipping"
        f"{', first sample clipped' if args.clip_first else ''}, {len(service)} tasks:"
        f" from the third task service {min(service[rest]):.2f}-{max(service[rest]):.2f},"
        f" first token {min(first[rest]):.2f}-{max(first[rest]):.2f};"
        f" median |service / actual - 1| {_median_err(service[rest]):.0%},"
        f" first token {_median_err(first[rest]):.0%}"
    )


def _median_err(ratios: list[float]) -> float:
    errs = sorted(abs(r - 1) for r in ratios)
    return errs[len(errs) // 2] if errs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stamps", nargs="+", help="e.g. 2026-12-03-2317")
    ap.add_argument("--concurrency", type=int, default=1, help="the phase whose tasks to feed")
    ap.add_argument("--overhead", type=float, default=60.0)
    ap.add_argument("--per-token", type=float, default=5.3)
    ap.add_argument("--quad", type=float, default=0.0007)
    ap.add_argument("--decode", type=float, default=18.0)
    ap.add_argument("--decode-ctx", type=float, default=0.009)
    ap.add_argument("--absolute", action="store_true", help="clip the first-token line in ms")
    ap.add_argument("--measured", action="store_true", help="llama-server's logged times")
    ap.add_argument("--clip-first", action="store_true", help="clip a line's first sample")
    args = ap.parse_args(argv)
    for stamp in args.stamps:
        steady(stamp, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
