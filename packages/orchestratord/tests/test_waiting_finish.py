"""The finish a running task is told, and how it follows the work beside it
(ORCH-2906..2915): forecasts of running tasks, the finish on the stream, prefill pace and
overruns, with the mock adapter and the eta model. Split from test_waiting.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from llama_orch.core.config import WaitingConfig
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import job_of


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


def _rec(deadline: float | None, created: float = 0.0) -> TaskRecord:
    from llama_orch.core.adapter_api import GenerateRequest

    req = GenerateRequest(task_id="t", prompt="p", max_tokens=4, seed=1)
    return TaskRecord("t", "p", "mock", "interactive", req, 1, deadline=deadline, created=created)


async def _timed(run, task_id: str) -> list[tuple[float, str, dict]]:
    """The stream's events (tokens left out) with the monotonic time each arrived."""
    parser = SSEParser()
    out: list[tuple[float, str, dict]] = []
    async with run.http.get(f"{run.url}/v1/tasks/{task_id}/stream") as resp:
        async for chunk in resp.content.iter_any():
            for m in parser.feed(chunk):
                if m.event != "token":
                    out.append((time.monotonic(), m.event, json.loads(m.data)))
    return out


async def test_a_running_tasks_finish_follows_the_work_ahead_of_it(start_orchestrator, mock_config):
    """ORCH-2907 (ORCH-2906): once started, a task is told its forecast finish when it
    moves by more than 10 % of the time left, at most once per interval: when a task
    with a long prompt is queued to start beside it, later by that prompt's prefill
    (the model's; the mock engine does not stall, so the forecast comes back)."""
    cfg = mock_config(adapter_options={"token_delay_ms": 30, "slots": 2})
    cfg.scheduling.waiting.queued_event_interval_s = 0.2
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    a = await _tid(run, max_tokens=100)  # ~3 s
    reading = asyncio.create_task(_timed(run, a))
    await _tid(run, max_tokens=20)  # ~0.6 s on the other slot
    b = await _tid(run, prompt="x " * 2000, max_tokens=2)  # ~1,000 tokens as estimated
    rec_b = run.orch.tasks.get(b)
    assert rec_b is not None and rec_b.state == "queued"  # starts when the short one ends
    model = run.orch.workload.model(pool, next(iter(pool.replicas)), 2)
    prefill = model.params(time.monotonic()).prefill_ms(job_of(rec_b).tokens_in) / 1000
    assert prefill >= 0.3
    events = await reading
    end_at = next(t for t, kind, _ in events if kind == "end")
    told = _told(events)
    started = next(t for t, kind, _ in events if kind == "started")
    assert told and all(t >= started for t, _ in told), events
    assert all(t2 - t1 >= 0.19 for (t1, _), (t2, _) in itertools.pairwise(told)), told
    # while the long prompt was ahead, its prefill moved the finish later
    assert max(f for _, f in told) >= end_at + 0.5 * prefill, (told, end_at, prefill)


def _told(events: list[tuple[float, str, dict]]) -> list[tuple[float, float]]:
    """(when, finish told) of the ``metrics`` events that carry a finish (ORCH-2907)."""
    return [
        (t, t + d["predicted_finish_ms"] / 1000)
        for t, kind, d in events
        if kind == "metrics" and "predicted_finish_ms" in d
    ]


async def test_a_running_task_is_told_its_finish_at_its_own_pace(start_orchestrator, mock_config):
    """ORCH-2907: the 202's finish came from the engine's prior (25 ms a token); the
    mock engine runs at 30 ms a token, so the finish moves by more than 10 % and the
    client is told; the last finish told is close to the time actually left then, and
    nothing is told before ``started``."""
    cfg = mock_config(adapter_options={"token_delay_ms": 30})
    cfg.scheduling.waiting.queued_event_interval_s = 0.2
    run = await start_orchestrator(cfg)
    t0 = time.monotonic()
    resp = await run.submit(max_tokens=80)  # ~2.4 s
    accepted = await resp.json()
    events = await _timed(run, accepted["task_id"])
    end_at = next(t for t, kind, _ in events if kind == "end")
    told = _told(events)
    kinds = [kind for _, kind, _ in events]
    assert told and kinds.index("started") < kinds.index("metrics"), kinds
    assert abs(t0 + accepted["predicted_finish_ms"] / 1000 - end_at) > 0.1  # the prior's
    sent, finish = told[-1]
    assert abs(finish - end_at) <= 0.25 * (end_at - sent) + 0.05, (told, end_at)


def test_the_finish_rule_before_and_after_started():
    """ORCH-2907: a moved finish is told at most once per interval and only when it
    moved by more than 10 % of the time left (and 100 ms); before ``started`` (the
    engine has not answered, e.g. a batch of prompts ahead) only in a ``queued`` event
    at position 0 and not sooner than an interval after dispatch; after, in ``metrics``."""
    from llama_orch.orchestratord.waiting import announce_finish

    cfg = WaitingConfig(queued_event_interval_s=1.0)
    rec = _rec(None)
    rec.lifecycle.dispatch()
    rec.dispatched, rec.finish_held = 100.0, 102.0  # the 202 said 2 s
    assert not announce_finish(rec, cfg, 9000.0, 100.5)  # too soon after dispatch
    assert announce_finish(rec, cfg, 9000.0, 101.0)
    assert rec.finish_held == 110.0
    # within the interval (ORCH-2915: 8.5 s held, 11 s forecast is not far off)
    assert not announce_finish(rec, cfg, 11000.0, 101.5)
    assert not announce_finish(rec, cfg, 8500.0, 102.0)  # moved 500 ms < 10 % of 8.5 s
    rec.first_token = 103.0  # `started` was sent
    assert announce_finish(rec, cfg, 2000.0, 104.0)  # moved 4 s
    frames = [json.loads(f.split(b"data: ", 1)[1]) for f in rec.frames_so_far()]
    assert frames == [
        {"type": "queued", "queue_position": 0, "predicted_start_ms": 0,
         "predicted_finish_ms": 9000},
        {"type": "metrics", "predicted_finish_ms": 2000},
    ], frames  # fmt: skip


def test_a_stall_in_progress_is_not_extrapolated_either():
    """ORCH-2909: while another task's 2,000-token prompt is still prefilling (10 s at
    5 ms a token, 6 s done), a decoding task that has had no token since it began keeps
    its own pace (20 ms a token) and waits for the rest of that prefill once; before,
    its first token → now (6.07 s over 4 tokens) made its pace 10x the model (the
    bound) and its 196 tokens left were forecast at 25.7 s instead of 8.0 s."""
    from types import SimpleNamespace

    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.core.replica import ReplicaState
    from llama_orch.core.servicetime import Prior
    from llama_orch.orchestratord.workload import Workload

    engine = "llamacpp-http"
    w = Workload()
    w._priors[engine] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=0.0
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=engine, status="ready", slots=4)
    pool = SimpleNamespace(
        id="p", engine=engine, replicas={"p-e0": SimpleNamespace(state=state)}, queue=[]
    )
    w.model(pool, "p-e0", 4)  # type: ignore[arg-type]

    def rec(tid: str, tokens_in: int, max_tokens: int, dispatched: float) -> TaskRecord:
        req = GenerateRequest(task_id=tid, prompt="x", max_tokens=max_tokens, seed=1)
        r = TaskRecord(tid, "p", engine, "interactive", req, tokens_in)
        r.dispatched = dispatched
        w.started("p", "p-e0", r)
        return r

    a = rec("a", 20, 200, 100.0)
    a.run_first_token, a.last_token, a.engine_tokens = 100.2, 100.26, 4  # 3 gaps of 20 ms
    rec("c", 2000, 10, 100.27)  # prefilling since: 100 + 10,000 ms
    (load,) = w.loads(pool, 106.27)  # type: ignore[arg-type]
    assert load.prefill_ms == pytest.approx(4100.0)
    assert load.pace == pytest.approx(1.0)
    assert sorted(load.running_ms) == pytest.approx([4100.0 + 9 * 20.0, 4100.0 + 196 * 20.0])


def test_a_late_first_token_does_not_slow_the_forecast_decode():
    """ORCH-2910: a task 3 s into a prefill modelled at 1.1 s is forecast to decode its
    99 tokens left at the model's 20 ms a token once its first token comes, not 2.7x
    slower; that first token comes 0.3 s from now (ORCH-2914: a tenth of the 3 s
    its overdue prompt has run; before session 9, now)."""
    from types import SimpleNamespace

    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.core.replica import ReplicaState
    from llama_orch.core.servicetime import Prior
    from llama_orch.orchestratord.workload import Workload

    engine = "llamacpp-http"
    w = Workload()
    w._priors[engine] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=0.0
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=engine, status="ready", slots=4)
    pool = SimpleNamespace(
        id="p", engine=engine, replicas={"p-e0": SimpleNamespace(state=state)}, queue=[]
    )
    w.model(pool, "p-e0", 4)  # type: ignore[arg-type]
    req = GenerateRequest(task_id="a", prompt="x", max_tokens=100, seed=1)
    a = TaskRecord("a", "p", engine, "interactive", req, 200)  # 100 + 1,000 ms modelled
    a.dispatched = 100.0
    w.started("p", "p-e0", a)
    (load,) = w.loads(pool, 100.5)  # type: ignore[arg-type]
    assert load.running_ms == pytest.approx([600.0 + 99 * 20.0])
    (load,) = w.loads(pool, 103.0)  # type: ignore[arg-type]
    assert load.running_ms == pytest.approx([300.0 + 99 * 20.0])


def test_a_prompt_beside_a_running_task_stalls_it_as_long_as_it_measured():
    """ORCH-2911: another running task's 1,000-token prompt took 10 s to its first token
    (5.1 s modelled: a loaded machine, prompts batched); the decoding task whose second
    gap it was keeps its own 20 ms a token. Before, only the modelled 5 s was left out
    and its 197 tokens left were forecast at 18.1 s (pace at the 10x bound) not 3.9 s."""
    from types import SimpleNamespace

    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.core.replica import ReplicaState
    from llama_orch.core.servicetime import Prior
    from llama_orch.orchestratord.workload import Workload

    engine = "llamacpp-http"
    w = Workload()
    w._priors[engine] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=0.0
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=engine, status="ready", slots=4)
    pool = SimpleNamespace(
        id="p", engine=engine, replicas={"p-e0": SimpleNamespace(state=state)}, queue=[]
    )
    w.model(pool, "p-e0", 4)  # type: ignore[arg-type]

    def rec(tid: str, tokens_in: int, max_tokens: int, dispatched: float) -> TaskRecord:
        req = GenerateRequest(task_id=tid, prompt="x", max_tokens=max_tokens, seed=1)
        r = TaskRecord(tid, "p", engine, "interactive", req, tokens_in)
        r.dispatched = dispatched
        w.started("p", "p-e0", r)
        return r

    a = rec("a", 20, 200, 100.0)
    b = rec("b", 1000, 50, 100.21)
    b.run_first_token = b.last_token = 110.21
    b.engine_tokens = 1
    a.run_first_token, a.last_token, a.engine_tokens = 100.2, 110.24, 3  # 20 and 10,020 ms
    (load,) = w.loads(pool, 110.26)  # type: ignore[arg-type]
    assert load.pace == pytest.approx(1.0)
    assert sorted(load.running_ms) == pytest.approx([49 * 20.0, 197 * 20.0])


def _one_replica(prefill_ms_per_token: float = 5.0) -> tuple[Any, Any]:
    """A Workload and a pool of one Ready 4-slot replica whose model is its prior:
    100 ms overhead, ``prefill_ms_per_token``, 20 ms a token, no slowdown."""
    from types import SimpleNamespace

    from llama_orch.core.replica import ReplicaState
    from llama_orch.core.servicetime import Prior
    from llama_orch.orchestratord.workload import Workload

    engine = "llamacpp-http"
    w = Workload()
    w._priors[engine] = Prior(
        overhead_ms=100.0,
        prefill_ms_per_token=prefill_ms_per_token,
        decode_ms_per_token=20.0,
        slowdown=0.0,
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=engine, status="ready", slots=4)
    pool = SimpleNamespace(
        id="p", engine=engine, replicas={"p-e0": SimpleNamespace(state=state)}, queue=[]
    )
    w.model(pool, "p-e0", 4)
    return w, pool


def _running(w: Any, tid: str, tokens_in: int, max_tokens: int, dispatched: float) -> TaskRecord:
    from llama_orch.core.adapter_api import GenerateRequest

    req = GenerateRequest(task_id=tid, prompt="x", max_tokens=max_tokens, seed=1)
    r = TaskRecord(tid, "p", "llamacpp-http", "interactive", req, tokens_in)
    r.dispatched = dispatched
    w.started("p", "p-e0", r)
    return r


def test_a_prompt_past_its_forecast_moves_the_finishes_told_instead_of_sliding():
    """ORCH-2914 (ORCH-2912's largest cause): a 1,900-token prompt forecast at 9.6 s
    (100 ms + 5 ms a token) is still prefilling at 12 s and at 14 s. The finish told to
    it and to a task decoding beside it (which waits for that prefill, ORCH-1996) moves
    2.2 s later over those 2 s (1.1 s a second); before, both were now + their decode,
    so they slid with the clock (2 s) and the prompt's own first token was told as now."""
    w, pool = _one_replica()
    long = _running(w, "long", 1900, 8, 100.0)
    beside = _running(w, "beside", 20, 200, 99.0)
    beside.run_first_token, beside.last_token, beside.engine_tokens = 99.2, 99.98, 40
    told = {}
    queued: list[object] = []
    for now in (112.0, 114.0):
        running = w.forecasts(pool, now, lambda *a: queued.append(a))
        assert queued == [] and running is not None
        told[now] = {t.task_id: now + ms / 1000 for t, ms in running}
    for tid in ("long", "beside"):
        assert told[114.0][tid] - told[112.0][tid] == pytest.approx(2.2, abs=0.01), (tid, told)
    # the prompt's first token: a tenth of the 12 s it has run, then its 7 tokens
    assert told[112.0]["long"] == pytest.approx(112.0 + 1.2 + 7 * 0.02, abs=0.01)
    assert long.run_first_token is None


def test_the_measured_prefill_pace_reaches_the_running_forecast():
    """ORCH-2913 in orchestratord: after 10 minutes of runs at the model's prefill, 4
    minutes of runs whose first token takes 1.5x as long; the clipped line has barely
    moved, and the forecast of a prompt still prefilling is the line's x the measured
    pace (about 1.35x)."""
    from llama_orch.core.servicetime import Observation

    w, pool = _one_replica()
    model = w.model(pool, "p-e0", 4)
    t = 0.0
    for n in range(84):
        tokens_in = 200 + (n * 389) % 1500
        ttft = (1.0 if n < 60 else 1.5) * (100.0 + 5.0 * tokens_in)
        model.observe(Observation(tokens_in, ttft, 20.0 * 9, 10, 1.0, "completed"), t)
        t += 10.0
    _running(w, "a", 1000, 1, t)
    (load,) = w.loads(pool, t)
    p = model.params(t)
    line = p.overhead_ms + p._replace(prefill_pace=1.0).prefill_ms(1000)
    assert p.prefill_pace > 1.3, p
    assert load.running_ms == pytest.approx([p.overhead_ms + p.prefill_ms(1000)])
    assert load.running_ms[0] > 1.25 * line, (load.running_ms, line, p)


def test_a_held_finish_far_off_is_told_at_the_next_tick():
    """ORCH-2915: a running task whose held finish has passed, or is more than 1.5x off
    the forecast time left, is told at the next tick, without the 100 ms floor and the
    1 s spacing of ORCH-2907; a held finish within 1.5x still waits for both."""
    from llama_orch.orchestratord.waiting import TICK_S, announce_finish, finish_far

    assert finish_far(-5.0, 40.0) and finish_far(96.0, 43.0) and finish_far(43.0, 96.0)
    assert not finish_far(96.0, 70.0) and not finish_far(-5.0, 0.0)
    cfg = WaitingConfig(queued_event_interval_s=1.0)
    rec = _rec(None)
    rec.lifecycle.dispatch()
    rec.dispatched, rec.first_token = 100.0, 100.1
    rec.finish_held = 100.48  # the 202 said 480 ms; the task runs short
    # 230 ms held, 190 forecast: within 1.5x, a 40 ms move (ORCH-2907's floor)
    assert not announce_finish(rec, cfg, 190.0, 100.25)
    assert announce_finish(rec, cfg, 90.0, 100.30)  # 180 ms held, 90 forecast: far
    assert rec.finish_held == pytest.approx(100.39)
    # passed, 60 ms forecast: far, but not within a tick of the last
    assert not announce_finish(rec, cfg, 60.0, 100.30 + TICK_S * 0.5)
    assert announce_finish(rec, cfg, 40.0, 100.30 + TICK_S)  # at the next tick
    # passed, forecast to end now: not far (both 1 ms); ORCH-2907's interval holds
    assert not announce_finish(rec, cfg, 0.0, 100.30 + 2 * TICK_S)
    frames = [json.loads(f.split(b"data: ", 1)[1]) for f in rec.frames_so_far()]
    assert [f["predicted_finish_ms"] for f in frames] == [90, 40], frames
