"""Calibration of llama-orch's predictions against a real llama-server (issue #19, ORCH-1955).

Drives orchestratord (its own process) in front of a real ``llama-server``
(SmolLM2-135M) with a mixed, seeded workload and compares what the
orchestrator predicted with what happened:

- **start**: the 202's ``predicted_start_ms`` vs the ``started`` event's
  ``queue_wait_ms`` (tasks that waited at least 100 ms);
- **finish**: the 202's ``predicted_finish_ms`` vs submit → ``end`` measured
  by the client (tasks that ran to their end); and the finish the client holds
  (the 202's, then each ``queued``/``metrics`` ``predicted_finish_ms``, ORCH-2907)
  at 10 instants of each task's run against the time then left (ORCH-2908);
- **Retry-After**: a client refused with 429 waits the advertised
  ``X-Backoff-Ms`` and retries; then it retries every 100 ms: the wait until
  admission actually succeeded vs the advertised one, and how often the first
  retry was admitted. Each task sends its own ``Idempotency-Key`` with every
  attempt, as a client that identifies its retries does (ORCH-1979, ORCH-1998);
  before session 6 it sent none, so it measured the rule for anonymous retries;
- **on_time_probability**: the first ``metrics`` event's value for tasks with a
  deadline vs whether they ended in time: Brier score and reliability table.

Workload (``--seed``): prompts of 10-1,500 tokens (a counting sequence, which
the model continues, so outputs mostly run to ``max_tokens``; each task counts
from its own seeded start, 100-999, so that no prompt is a prefix of another:
with ``--prompts nested`` every task counts from 1, each prompt is a prefix of
every longer one, and llama-server's prompt cache serves most of it, which no
service-time model can know per task without a prefix index), outputs of
4-400 tokens (log-uniform), phases of 1, 2, 4 and 8 concurrent clients,
10 % of tasks canceled after a few tokens, 35 % with a deadline between 0.6
and 3 times a rough size-based guess (the client's, not the model's).

    uv run bench/calibration.py                 # ~6-10 min on 2 cores
    uv run bench/calibration.py --tasks 40      # shorter

Writes ``bench/results/<date>-calibration.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_report import HELD_INSTANTS, render
from llama_orch.core.sse import SSEParser
from procs import BIN, HERE, Procs, free_port, log, start_llama_server

MODEL = "pypi:smollm2-135m-instruct-q4_1"


@dataclass
class Spec:
    prompt_numbers: int
    max_tokens: int
    cancel_after: int | None
    deadline_ms: int | None
    start: int = 1  # the first number of the counting sequence


@dataclass
class Outcome:
    spec: dict[str, Any]
    concurrency: int
    status: int = 0
    code: str | None = None
    retry_advertised_ms: int | None = None
    retry_actual_ms: float | None = None
    retry_first_ok: bool | None = None
    predicted_start_ms: int | None = None
    predicted_finish_ms: int | None = None
    queue_wait_ms: int | None = None
    finish_ms: float | None = None
    end_reason: str | None = None
    tokens_out: int | None = None
    tokens_in: int | None = None
    on_time_probability: float | None = None
    on_time: bool | None = None
    error: str | None = None
    # when it was admitted and when its stream ended, s since the bench's start (ORCH-2902)
    admitted_s: float | None = None
    ended_s: float | None = None
    # each finish the client was told, (ms since submit when told, finish in ms since
    # submit): the 202's, then those of ``queued`` and ``metrics`` events (ORCH-2907)
    finish_told: list[tuple[float, float]] | None = None
    # ORCH-2920: (ms after submit, start told as ms after submit): the 202's, then each
    # ``queued`` event's ``predicted_start_ms`` (ORCH-1961)
    start_told: list[tuple[float, float]] | None = None
    task_id: str | None = None  # to find it in orchestratord's log (ORCH-2931's holds)


def make_specs(n: int, seed: int, *, nested: bool = False) -> list[Spec]:
    rng = random.Random(seed)
    # a separate stream: sizes, cancels and deadlines are the same in both prompt modes
    starts = random.Random(seed + 1)
    out = []
    for _ in range(n):
        # 10..1500 prompt tokens: "1, 2, 3, ..." costs about 2-4 tokens a number
        prompt_tokens = int(math.exp(rng.uniform(math.log(10), math.log(1500))))
        numbers = max(3, prompt_tokens // 3)
        max_tokens = int(math.exp(rng.uniform(math.log(4), math.log(400))))
        cancel = rng.randint(1, max(1, max_tokens // 2)) if rng.random() < 0.10 else None
        deadline = None
        if cancel is None and rng.random() < 0.35:
            guess_ms = 300 + prompt_tokens * 2 + max_tokens * 60  # the client's rough guess
            deadline = int(guess_ms * rng.uniform(0.6, 3.0))
        start = 1 if nested else starts.randint(100, 999)
        out.append(Spec(numbers, max_tokens, cancel, deadline, start))
    return out


T0 = time.monotonic()  # the bench's clock origin for admitted_s / ended_s


def prompt_of(spec: Spec) -> str:
    return ", ".join(str(i) for i in range(spec.start, spec.start + spec.prompt_numbers)) + ","


async def run_task(http: aiohttp.ClientSession, url: str, spec: Spec, concurrency: int) -> Outcome:
    o = Outcome(asdict(spec), concurrency)
    body: dict[str, Any] = {
        "prompt": prompt_of(spec),
        "max_tokens": spec.max_tokens,
        "temperature": 0.0,
    }
    if spec.deadline_ms is not None:
        body["deadline_ms"] = spec.deadline_ms
    # A real client identifies its retries (ORCH-1979, ORCH-1998): one key per task,
    # resent unchanged with every retry, so a 429 reserves its turn.
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first_429: float | None = None
    attempt = 0
    while True:
        t0 = time.monotonic()
        async with http.post(url + "/v1/tasks", json=body, headers=headers) as r:
            payload = await r.json()
            status = r.status
            backoff = r.headers.get("X-Backoff-Ms")
        if status == 429:
            if first_429 is None:
                first_429 = t0
                o.retry_advertised_ms = int(backoff) if backoff else None
                await asyncio.sleep((o.retry_advertised_ms or 1000) / 1000)
            else:
                await asyncio.sleep(0.1)
            attempt += 1
            if attempt > 600:
                o.status, o.code = 429, "gave up"
                return o
            continue
        if first_429 is not None:
            o.retry_actual_ms = (t0 - first_429) * 1000
            o.retry_first_ok = attempt == 1
        o.status = status
        if status != 202:
            o.code = payload.get("code")
            return o
        break
    submitted = t0
    o.admitted_s = t0 - T0
    o.predicted_start_ms = payload["predicted_start_ms"]
    o.predicted_finish_ms = payload.get("predicted_finish_ms")
    if o.predicted_finish_ms is not None:
        o.finish_told = [(0.0, float(o.predicted_finish_ms))]
    o.start_told = [(0.0, float(o.predicted_start_ms or 0))]
    tid = o.task_id = payload["task_id"]
    parser = SSEParser()
    tokens = 0
    async with http.get(f"{url}/v1/tasks/{tid}/stream") as r:
        async for chunk in r.content.iter_any():
            for m in parser.feed(chunk):
                data = json.loads(m.data)
                told = data.get("predicted_finish_ms") if m.event in ("queued", "metrics") else None
                if told is not None and o.finish_told is not None:  # ORCH-2907
                    at = (time.monotonic() - submitted) * 1000
                    o.finish_told.append((at, at + told))
                if m.event == "queued" and o.start_told is not None:  # ORCH-2920
                    at = (time.monotonic() - submitted) * 1000
                    o.start_told.append((at, at + data["predicted_start_ms"]))
                if m.event == "started":
                    o.queue_wait_ms = data["queue_wait_ms"]
                elif m.event == "metrics" and o.on_time_probability is None:
                    o.on_time_probability = data.get("on_time_probability")
                elif m.event == "token":
                    tokens += 1
                    if spec.cancel_after is not None and tokens == spec.cancel_after:
                        async with http.post(f"{url}/v1/tasks/{tid}/cancel") as c:
                            await c.read()
                elif m.event == "end":
                    o.ended_s = time.monotonic() - T0
                    o.finish_ms = (time.monotonic() - submitted) * 1000
                    o.end_reason = data["reason"]
                    o.tokens_out = data["tokens_out"]
                    o.tokens_in = data.get("tokens_in")
                elif m.event == "error":
                    o.ended_s = time.monotonic() - T0
                    o.finish_ms = (time.monotonic() - submitted) * 1000
                    o.error = data["code"]
    if spec.deadline_ms is not None and o.end_reason is not None:
        o.on_time = o.end_reason != "canceled" and (o.finish_ms or 0) <= spec.deadline_ms
    elif spec.deadline_ms is not None:
        o.on_time = False
    return o


async def drive(url: str, specs: list[Spec], phases: list[int], out: list[Outcome]) -> None:
    per = math.ceil(len(specs) / len(phases))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        for k, c in enumerate(phases):
            todo = list(specs[k * per : (k + 1) * per])
            log(f"phase: {c} concurrent clients, {len(todo)} tasks")

            async def worker(todo: list[Spec] = todo, c: int = c) -> None:
                while todo:
                    out.append(await run_task(http, url, todo.pop(0), c))

            await asyncio.gather(*(worker() for _ in range(c)))


def _rel(pred: float, actual: float) -> float:
    return abs(pred - actual) / actual


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]


def held_pairs(o: Outcome) -> list[tuple[float, float]]:
    """(time left as told, time actually left) at each of the task's instants: the
    finish the client held then (a finish already passed counts as 1 ms left)."""
    if not o.finish_told or not o.finish_ms:
        return []
    return _held(o.finish_told, o.finish_ms)


def held_start_pairs(o: Outcome) -> list[tuple[float, float]]:
    """ORCH-2920: (time to its start as told, time to its start actually) at admission
    + 0, 10, ..., 90 % of the task's wait: the start its client held then (a start
    already passed counts as 1 ms left)."""
    if not o.start_told or o.queue_wait_ms is None:
        return []
    return _held(o.start_told, o.queue_wait_ms)


def _held(told: list[tuple[float, float]], actual_ms: float) -> list[tuple[float, float]]:
    """(ms left as held, ms actually left) at 0, 10, ..., 90 % of ``actual_ms``: the last
    value told (instant, ms) by then; one already passed counts as 1 ms left."""
    out = []
    for k in range(HELD_INSTANTS):
        at = actual_ms * k / HELD_INSTANTS
        held = [f for t, f in told if t <= at][-1]
        out.append((max(1.0, held - at), actual_ms - at))
    return out


def _started_s(o: Outcome) -> float | None:
    if o.admitted_s is None or o.queue_wait_ms is None:
        return None
    return o.admitted_s + o.queue_wait_ms / 1000


def overtaken(o: Outcome, outs: list[Outcome]) -> bool:
    """ORCH-2919: whether a task admitted after ``o`` started before it (a task with a
    deadline is served before the queued tasks without one, EDF, ORCH-1111): work no
    start forecast made at ``o``'s admission could know."""
    mine = _started_s(o)
    if mine is None or o.admitted_s is None:
        return False
    return any(
        x is not o
        and x.admitted_s is not None
        and x.admitted_s > o.admitted_s
        and (s := _started_s(x)) is not None
        and s < mine
        for x in outs
    )


def analyse(outs: list[Outcome]) -> dict[str, Any]:
    ran = [o for o in outs if o.end_reason in ("length", "eos", "stop") and o.finish_ms]
    finish = [
        (o.predicted_finish_ms, o.finish_ms) for o in ran if o.predicted_finish_ms is not None
    ]
    finish_len = [
        (o.predicted_finish_ms, o.finish_ms)
        for o in ran
        if o.predicted_finish_ms is not None and o.end_reason == "length"
    ]

    # ORCH-2902: the same admission-time forecasts, split by whether other clients'
    # prompts were admitted after the task and before its end (no forecast made at its
    # admission could know them); the target is the figure over all tasks above
    def later(o: Outcome) -> int:
        if o.admitted_s is None or o.ended_s is None:
            return 0
        return sum(
            x.tokens_in or 0
            for x in outs
            if x is not o and x.admitted_s is not None and o.admitted_s < x.admitted_s < o.ended_s
        )

    fin_ran = [o for o in ran if o.predicted_finish_ms is not None]
    held = [pair for o in fin_ran for pair in held_pairs(o)]  # ORCH-2908
    held_alone = [pair for o in fin_ran if later(o) == 0 for pair in held_pairs(o)]
    held_later = [pair for o in fin_ran if later(o) > 0 for pair in held_pairs(o)]
    finish_alone = [(o.predicted_finish_ms, o.finish_ms) for o in fin_ran if later(o) == 0]
    finish_later = [(o.predicted_finish_ms, o.finish_ms) for o in fin_ran if later(o) > 0]
    waited = [
        o
        for o in outs
        if o.queue_wait_ms is not None
        and o.queue_wait_ms >= 100
        and o.predicted_start_ms is not None
    ]
    start = [(o.predicted_start_ms, o.queue_wait_ms) for o in waited]
    passed = {id(o) for o in waited if overtaken(o, outs)}  # ORCH-2919
    start_in_order = [
        (o.predicted_start_ms, o.queue_wait_ms) for o in waited if id(o) not in passed
    ]
    start_passed = [(o.predicted_start_ms, o.queue_wait_ms) for o in waited if id(o) in passed]
    start_held = [pair for o in waited for pair in held_start_pairs(o)]  # ORCH-2920
    start_held_passed = [pair for o in waited if id(o) in passed for pair in held_start_pairs(o)]
    retry = [o for o in outs if o.retry_advertised_ms is not None and o.retry_actual_ms is not None]
    probs = [
        (o.on_time_probability, o.on_time)
        for o in outs
        if o.on_time_probability is not None and o.on_time is not None
    ]

    def errs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        rel = [_rel(p, a) for p, a in pairs if a > 0]
        ratio = [p / a for p, a in pairs if a > 0]
        return {
            "n": len(rel),
            "median_rel_err": _pct(rel, 0.5),
            "p90_rel_err": _pct(rel, 0.9),
            "within_2x": (sum(1 for r in ratio if 0.5 <= r <= 2) / len(ratio)) if ratio else None,
            # the target's "p90 within 2x": the 90th percentile of max(p/a, a/p) <= 2
            "p90_factor": _pct([max(r, 1 / r) for r in ratio if r > 0], 0.9),
            "median_pred_over_actual": _pct(ratio, 0.5),
        }

    bins = []
    for lo in [i / 10 for i in range(10)]:
        hi = lo + 0.1
        inb = [(p, t) for p, t in probs if lo <= p < hi or (hi >= 1.0 and p == 1.0)]
        if inb:
            bins.append(
                {
                    "bin": f"{lo:.1f}-{hi:.1f}",
                    "n": len(inb),
                    "mean_p": statistics.fmean(p for p, _ in inb),
                    "on_time": sum(1 for _, t in inb if t) / len(inb),
                }
            )
    confident = [t for p, t in probs if p >= 0.9]
    return {
        "tasks": len(outs),
        "admitted": sum(1 for o in outs if o.status == 202),
        "refused": {
            c: sum(1 for o in outs if o.code == c) for c in {o.code for o in outs if o.code}
        },
        "end_reasons": {
            r: sum(1 for o in outs if o.end_reason == r)
            for r in {o.end_reason for o in outs if o.end_reason}
        },
        "errors": {
            e: sum(1 for o in outs if o.error == e) for e in {o.error for o in outs if o.error}
        },
        "finish": errs(finish),
        "finish_length_only": errs(finish_len),
        "finish_no_later_prompts": errs(finish_alone),
        "finish_later_prompts": errs(finish_later),
        "finish_held": errs(held),
        "finish_held_no_later_prompts": errs(held_alone),
        "finish_held_later_prompts": errs(held_later),
        "start": errs(start),
        "start_in_order": errs(start_in_order),
        "start_overtaken": errs(start_passed),
        "start_held": errs(start_held),
        "start_held_overtaken": errs(start_held_passed),
        "retry": {
            "n": len(retry),
            "first_retry_admitted": (sum(1 for o in retry if o.retry_first_ok) / len(retry))
            if retry
            else None,
            "median_actual_over_advertised": _pct(
                [o.retry_actual_ms / max(1, o.retry_advertised_ms) for o in retry],
                0.5,  # type: ignore[operator]
            ),
        },
        "on_time": {
            "n": len(probs),
            "brier": statistics.fmean((p - (1.0 if t else 0.0)) ** 2 for p, t in probs)
            if probs
            else None,
            "p_ge_0.9_n": len(confident),
            "p_ge_0.9_on_time": (sum(confident) / len(confident)) if confident else None,
            "reliability": bins,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=80)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--phases", default="1,2,4,8")
    # 1 thread: on a shared 2-core machine 2 OpenMP threads per engine spin against
    # each other (0.26 tokens/s measured with 2).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=12.0, help="stop driving after this")
    ap.add_argument(
        "--prompts",
        choices=("unique", "nested"),
        default="unique",
        help="unique: each task counts from its own start; nested: all count from 1",
    )
    ap.add_argument(
        "--guard",
        type=float,
        default=None,
        help="the pool's dispatch.guard_told_finish (ORCH-2931, ORCH-2935); off if not given",
    )
    ap.add_argument(
        "--keep-told-start",
        type=float,
        default=None,
        help="the pool's dispatch.keep_told_start margin (ORCH-2972, ORCH-2975); off if not given",
    )
    ap.add_argument(
        "--log-level",
        default="INFO",
        help="orchestratord's; DEBUG logs each admission's forecast terms (ORCH-1994)",
    )
    args = ap.parse_args(argv)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()[0]
    stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    tmp = Path(f"/tmp/llorch-calibration-{stamp}")
    tmp.mkdir(parents=True, exist_ok=True)
    procs = Procs(tmp)
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children in `finally`
    try:
        # 1 thread (--threads): 2 OpenMP threads per engine spin against each other here
        engine = start_llama_server(
            procs, "llama-server", model=MODEL, threads=args.threads, timeout=120
        )
        port = free_port()
        cfg = {
            "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1.0},
            "auth": {"enabled": False},  # loopback bench
            "admission": {"queue_capacity": 3, "max_tokens_limit": 4096},
            "allow_cpu_inference": True,
            "pools": [
                {
                    "id": "bench",
                    "engine": "llamacpp-http",
                    "model": MODEL,
                    "endpoints": [engine.url],
                    "ctx": 2048,
                    "slots": 4,
                    "model_digest": engine.model_digest,
                    "engine_version": engine.engine_version,
                    # the dispatch guard for told finishes (ORCH-2935), off unless --guard
                    # and the start-bys of ORCH-2972, off unless --keep-told-start
                    "dispatch": {
                        "guard_told_finish": args.guard,
                        "keep_told_start": args.keep_told_start,
                    },
                }
            ],
        }
        path = tmp / "orch.json"
        path.write_text(json.dumps(cfg))
        orch = procs.start(
            "orchestratord",
            [str(BIN / "orchestratord"), "--config", str(path), "--log-level", args.log_level],
        )
        url = f"http://127.0.0.1:{port}"
        procs.wait_ready(
            orch,
            url + "/v1/pools/bench/health",
            120,
            check=lambda b: json.loads(b).get("ready") is True,
        )
        specs = make_specs(args.tasks, args.seed, nested=args.prompts == "nested")
        phases = [int(x) for x in args.phases.split(",")]
        outs: list[Outcome] = []
        try:
            asyncio.run(asyncio.wait_for(drive(url, specs, phases, outs), args.max_minutes * 60))
        except TimeoutError:
            log(f"stopped after {args.max_minutes:g} min: {len(outs)} tasks done")
    finally:
        procs.stop_all()
    took = time.monotonic() - t0
    summary = analyse(outs)
    cmd = "uv run bench/calibration.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = render(summary, cmd.strip(), started, took, (load0, os.getloadavg()[0]), args.seed)
    out_dir = HERE / "results"
    (out_dir / f"{stamp}-calibration.md").write_text(report)
    (out_dir / f"{stamp}-calibration.json").write_text(
        json.dumps({"summary": summary, "outcomes": [asdict(o) for o in outs]}, indent=1)
    )
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
