"""What a waiting client sees and how long it waits, with the mock adapter
(ORCH-1957, ORCH-1961, ORCH-1962, ORCH-1965..1967)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import WaitingConfig
from llama_orch.core.errors import ErrorCode
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord.main import JsonFormatter
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.waiting import expiry
from llama_orch.orchestratord.workload import job_of


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


def _ended_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.getMessage() == "task ended"]


async def test_queued_events_count_down_to_started(start_orchestrator, mock_config):
    """ORCH-1961: a waiting task's stream says where it is and when it will start,
    whenever that changed; its position falls to 0 before ``started``; a task
    dispatched at once sends no ``queued`` event."""
    cfg = mock_config(adapter_options={"token_delay_ms": 20})
    cfg.scheduling.waiting.queued_event_interval_s = 0.2
    run = await start_orchestrator(cfg)
    first = await _tid(run, max_tokens=30)
    queued = [await _tid(run, max_tokens=20) for _ in range(3)]
    events = await run.events(queued[-1])
    kinds = [e[1] for e in events]
    assert kinds.index("started") > 0 and "queued" not in kinds[kinds.index("started") :]
    positions = [e[2]["queue_position"] for e in events if e[1] == "queued"]
    assert positions[0] == 2 and positions[-1] == 0, positions
    assert positions == sorted(positions, reverse=True), positions
    etas = [e[2]["predicted_start_ms"] for e in events if e[1] == "queued"]
    assert etas[0] > 0 and all(x >= 0 for x in etas)
    # ORCH-2907: each also says when it will finish, after it starts
    ends = [e[2]["predicted_finish_ms"] for e in events if e[1] == "queued"]
    assert all(f > s for f, s in zip(ends, etas, strict=True)), (ends, etas)
    assert "queued" not in [e[1] for e in await run.events(first)]


async def test_idle_streams_get_keepalive_comments(start_orchestrator, mock_config):
    """ORCH-1962: an SSE comment after ``limits.sse_keepalive_s`` without a frame."""
    cfg = mock_config(adapter_options={"token_delay_ms": 50}, limits={"sse_keepalive_s": 0.2})
    cfg.scheduling.waiting.queued_event_interval_s = 60
    run = await start_orchestrator(cfg)
    await _tid(run, max_tokens=40)  # 2 s on the only slot
    waiting = await _tid(run, max_tokens=2)
    raw = b""
    parser = SSEParser()
    kinds: list[str] = []
    async with run.http.get(f"{run.url}/v1/tasks/{waiting}/stream") as resp:
        async for chunk in resp.content.iter_any():
            raw += chunk
            kinds += [m.event for m in parser.feed(chunk)]
            if kinds[-1:] in (["end"], ["error"]):
                break
    assert raw.count(b": keep-alive\n\n") >= 2, raw[:400]
    assert kinds[0] == "queued" and kinds[-1] == "end"  # comments are not events


async def test_queue_ttl_ends_a_waiting_task(start_orchestrator, mock_config, caplog):
    """ORCH-1965/1966/1967: queued past ``queue_ttl_s`` → a retriable
    ADMISSION_REJECT with ``retry_after_ms``, counted by reason, code in the log."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    cfg = mock_config(adapter_options={"token_delay_ms": 40})
    cfg.scheduling.waiting = WaitingConfig(queue_ttl_s=0.5, expired_retry_after_ms=1234)
    run = await start_orchestrator(cfg)
    await _tid(run, max_tokens=60)
    waiting = await _tid(run, max_tokens=2)
    last = (await run.events(waiting))[-1]
    assert last[1] == "error"
    assert last[2]["code"] == "ADMISSION_REJECT" and last[2]["retriable"] is True
    assert last[2]["retry_after_ms"] == 1234
    text = await run.metrics_text()
    assert re.search(r'tasks_expired_total\{[^}]*reason="queue_ttl"[^}]*\} 1\.0', text), text
    line = next(x for x in _ended_lines(caplog) if x["job_id"] == waiting)
    assert line["state"] == "failed" and line["error_code"] == "ADMISSION_REJECT"


async def test_pool_without_ready_replica_ends_queued_tasks(start_orchestrator, mock_config):
    """ORCH-1965/1966: no Ready replica for ``unready_timeout_s`` → POOL_UNREADY,
    within the bound plus 1 s."""
    cfg = mock_config(adapter_options={"token_delay_ms": 40})
    cfg.scheduling.waiting = WaitingConfig(unready_timeout_s=0.5)
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    await _tid(run, max_tokens=100)
    waiting = [await _tid(run, max_tokens=2) for _ in range(2)]
    state = pool.states["mock-e0"]
    pool.update(msgspec.structs.replace(state, status="stopped"))
    gone = time.monotonic()
    for tid in waiting:
        last = (await run.events(tid))[-1]
        assert last[1] == "error" and last[2]["code"] == "POOL_UNREADY"
        assert last[2]["retriable"] is True
    assert time.monotonic() - gone <= 0.5 + 1.0
    text = await run.metrics_text()
    assert re.search(r'tasks_expired_total\{[^}]*reason="pool_unready"[^}]*\} 2\.0', text)


def _rec(deadline: float | None, created: float = 0.0) -> TaskRecord:
    from llama_orch.core.adapter_api import GenerateRequest

    req = GenerateRequest(task_id="t", prompt="p", max_tokens=4, seed=1)
    return TaskRecord("t", "p", "mock", "interactive", req, 1, deadline=deadline, created=created)


def test_expiry_rules():
    """ORCH-1965: each bound and its order; the deadline rule uses the admission margin."""
    cfg = WaitingConfig(queue_ttl_s=10, unready_timeout_s=5, deadline_margin=0.2)
    assert expiry(_rec(None), 1.0, cfg, 100.0, None) is None
    assert expiry(_rec(None), 11.0, cfg, 100.0, None)[1] == ErrorCode.ADMISSION_REJECT  # type: ignore[index]
    assert expiry(_rec(None), 6.0, cfg, None, 0.5)[1] == ErrorCode.POOL_UNREADY  # type: ignore[index]
    assert expiry(_rec(None), 4.0, cfg, None, 0.5) is None
    # 1 s left: a forecast of 1.2 s is admitted (x 0.8 = 0.96 s), 1.3 s is not
    assert expiry(_rec(deadline=2.0), 1.0, cfg, 1200.0, None) is None
    why = expiry(_rec(deadline=2.0), 1.0, cfg, 1300.0, None)
    assert why is not None and why[0] == "deadline" and "cannot be met" in why[2]
    assert expiry(_rec(deadline=2.0), 2.5, cfg, None, None)[0] == "deadline"  # type: ignore[index]


async def test_one_forecast_for_start_backoff_and_deadline(start_orchestrator, mock_config):
    """ORCH-1957/1958: the 202's predicted start, the 429's backoff and the deadline
    check agree: one forecast from the per-replica model."""
    cfg = mock_config(admission={"queue_capacity": 2}, adapter_options={"token_delay_ms": 10})
    run = await start_orchestrator(cfg)
    for _ in range(3):
        await run.events(await _tid(run, max_tokens=20))  # learn the mock's pace
    await _tid(run, max_tokens=50)  # ~0.5 s running
    a = await (await run.submit(max_tokens=20)).json()
    b = await (await run.submit(max_tokens=20)).json()
    assert 0 < a["predicted_start_ms"] < b["predicted_start_ms"]
    full = await run.submit(max_tokens=20)
    assert full.status == 429
    backoff = int(full.headers["X-Backoff-Ms"])
    # room appears when the first queued task starts: its predicted start
    assert abs(backoff - a["predicted_start_ms"]) <= max(150, 0.5 * a["predicted_start_ms"])
    pool = run.orch.pools["mock"]
    assert run.orch.workload.retry_after_ms(pool) >= 100


async def test_a_refused_client_back_at_its_time_is_admitted_past_a_full_queue(
    start_orchestrator, mock_config
):
    """ORCH-1974, ORCH-1978..1981 through OrchQueue v1: the engine hangs (the forecast
    is wrong by any factor): a client refused by the full queue that resubmits with the
    same Idempotency-Key early is told the time left and keeps its place; back at its
    time it is admitted although the queue is still full; a different request is
    refused meanwhile and gets a later place of its own; a client that does not
    identify its retries gets the first place to open and no reservation."""
    cfg = mock_config(
        admission={"queue_capacity": 1},
        adapter_options={"token_delay_ms": 5, "fail": "hang_after:3"},
    )
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]

    async def submit(idem: str | None, prompt: str):
        headers = {} if idem is None else {"Idempotency-Key": idem}
        body = {"max_tokens": 10, "prompt": prompt}
        resp = await run.http.post(run.url + "/v1/tasks", json=body, headers=headers)
        await resp.read()
        return resp

    running = await _tid(run, max_tokens=50)  # hangs on the only slot
    queued = await _tid(run, max_tokens=20)
    t_refused = time.monotonic()
    refused = await submit("mine", "mine")
    assert refused.status == 429
    told = int(refused.headers["X-Backoff-Ms"])
    t0 = time.monotonic()
    early = await submit("mine", "mine")  # the same request, too soon
    assert early.status == 429 and int(early.headers["X-Backoff-Ms"]) <= told
    other = await submit("other", "another")  # a different one
    assert other.status == 429  # told at least 100 ms after "mine" (ORCH-1973)
    since = (time.monotonic() - t_refused) * 1000
    assert int(other.headers["X-Backoff-Ms"]) + since >= told + 100
    book = run.orch.workload.reservations["mock"]
    assert len(book.outstanding(time.monotonic())) == 2
    anonymous = await submit(None, "anonymous")  # the first place to open, none kept
    assert anonymous.status == 429
    assert int(anonymous.headers["X-Backoff-Ms"]) < int(other.headers["X-Backoff-Ms"])
    # nor does a quota's refusal (not a full queue): it waits for the tenant
    assert run.orch.workload.retry_after_ms(pool) < int(other.headers["X-Backoff-Ms"])
    assert len(book.outstanding(time.monotonic())) == 2
    await asyncio.sleep(max(0.0, told / 1000 - (time.monotonic() - t0)))
    assert len(pool.queue) == 1  # still full: the engine hangs
    back = await submit("mine", "mine")
    assert back.status == 202, await back.text()
    assert len(pool.queue) == 2  # past capacity, by the redeemed reservation only
    again = await submit("mine", "mine")  # used: a new refusal
    assert again.status == 429
    for tid in (running, queued, (await back.json())["task_id"]):
        run.orch.cancel(tid)


async def test_self_test_decode_seeds_the_engine_prior(start_orchestrator, mock_config):
    """ORCH-1954: the startup self-test's one-token decode sets the overhead prior of
    its engine; a replica with no sample of its own starts from it."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 80}))
    report = run.orch.self_tests.reports["mock", "mock-e0"]
    decode = next(c for c in report.checks if c.name == "decode")
    prior = run.orch.workload.prior("mock")
    assert prior.overhead_ms == float(decode.duration_ms) >= 80  # not the default 50
    pool = run.orch.pools["mock"]
    assert run.orch.workload.model(pool, "mock-e0", 1).prior == prior


async def test_a_forecast_deep_in_the_queue_is_bounded_and_close_to_the_full_one(
    start_orchestrator, mock_config, monkeypatch
):
    """ORCH-1957: an admitted task's forecast simulates at most PREDICT_HORIZON tasks
    ahead of it; within the horizon it is the full simulation's, beyond it the rest
    pass at the simulated pace, close to the full simulation for like tasks."""
    from llama_orch.orchestratord import workload as wl

    monkeypatch.setattr(wl, "PREDICT_HORIZON", 16)
    cfg = mock_config(admission={"queue_capacity": 200}, adapter_options={"token_delay_ms": 1000})
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    tids = [await _tid(run, max_tokens=8) for _ in range(60)]
    recs = [run.orch.tasks.get(t) for t in tids]
    now = time.monotonic()  # one clock for both, or the running task's remaining time drifts
    full = {id(t): s for t, _, s in run.orch.workload.queue_forecast(pool, now)}
    for rec in recs[1:]:  # the first one runs
        got = run.orch.workload.predicted(pool, rec, now)
        want = full[id(rec)]
        if pool.queue.position(rec) <= 16:
            assert abs(got.start_ms - want.start_ms) < 5, (got, want)  # the same simulation
        else:
            assert abs(got.start_ms - want.start_ms) <= 0.1 * want.start_ms + 5, (got, want)


def test_uncounted_prompts_are_estimated_at_the_pools_learned_bytes_per_token():
    """ORCH-1993: 4 bytes a token until the engine has counted a prompt of the pool;
    then the learned ratio (a digit sequence is 1 byte a SmolLM2 token), bounded."""
    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.orchestratord.workload import Workload

    w = Workload()
    prompt = ", ".join(str(i) for i in range(100, 600)) + ","  # 2,499 bytes
    assert w.prompt_tokens_estimate("p", prompt) == 625
    req = GenerateRequest(task_id="t", prompt=prompt, max_tokens=4, seed=1)
    counted = TaskRecord("t", "p", "mock", "interactive", req, 2499)  # 1 byte a token
    w.learn_bytes_per_token(counted)
    assert w.prompt_tokens_estimate("p", prompt) == 2499
    assert w.prompt_tokens_estimate("other", prompt) == 625  # per pool
    for _ in range(200):  # an absurd count is bounded: at least 0.5 byte a token
        w.learn_bytes_per_token(TaskRecord("t", "p", "mock", "interactive", req, 10**6))
    assert w.prompt_tokens_estimate("p", prompt) == 4998
    uncounted = TaskRecord("u", "p", "mock", "interactive", req, 0, prompt_counted=False)
    w.learn_bytes_per_token(uncounted)  # nothing to learn from
    assert w.prompt_tokens_estimate("p", prompt) == 4998


def test_a_stall_behind_another_prompt_is_not_extrapolated_and_pending_prompts_delay():
    """ORCH-1995/1996: a running task whose token gap was one other task's 1,000-token
    prompt (5 s at 5 ms a token) keeps its modelled pace: before, that stall made
    its measured pace 126x the model (clamped to 10x) and its 197 tokens left were
    forecast at 18 s instead of 3.9 s. A prompt still prefilling (2,080 ms left) is
    not subtracted (not done yet), delays every decoding and prefilling task and a
    new task's first token."""
    from types import SimpleNamespace

    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.core.eta import Job
    from llama_orch.core.replica import ReplicaState
    from llama_orch.core.servicetime import Prior
    from llama_orch.orchestratord.workload import Workload

    engine = "llamacpp-http"
    w = Workload()
    w._priors[engine] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=0.0
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=engine, status="ready", slots=5)
    replicas = {"p-e0": SimpleNamespace(state=state)}
    pool = SimpleNamespace(id="p", engine=engine, replicas=replicas, queue=[])
    w.model(pool, "p-e0", 5)  # type: ignore[arg-type]

    def rec(tid: str, tokens_in: int, max_tokens: int, dispatched: float) -> TaskRecord:
        req = GenerateRequest(task_id=tid, prompt="x", max_tokens=max_tokens, seed=1)
        r = TaskRecord(tid, "p", engine, "interactive", req, tokens_in)
        r.dispatched = dispatched
        w.started("p", "p-e0", r)
        return r

    a = rec("a", 20, 200, 100.0)
    a.run_first_token = 100.2
    b = rec("b", 1000, 50, 100.21)  # its prefill: 5,000 ms, during a's second gap
    # (its first token 5,000 ms after dispatch: its measured prefill is the modelled
    # one, which ORCH-2911 subtracts for a task still running)
    b.run_first_token = b.last_token = 105.21
    b.engine_tokens = 1
    a.engine_tokens, a.last_token = 3, 105.24  # gaps of 20 ms, and 5,020 ms
    now = 105.26
    (load,) = w.loads(pool, now)  # type: ignore[arg-type]
    assert load.prefill_ms == 0.0
    assert sorted(load.running_ms) == pytest.approx([49 * 20.0, 197 * 20.0])
    assert load.pace == pytest.approx(1.0)
    e = rec("e", 0, 103, 105.2)  # decoding: gaps of 25 and 20 ms ...
    e.run_first_token, e.last_token, e.engine_tokens = 105.21, 105.255, 3
    rec("c", 400, 10, 105.24)  # ... c dispatched in its last gap, still prefilling:
    # 100 + 2,000 ms, 20 ms of it done; not subtracted from e's pace (it is not done)
    (load,) = w.loads(pool, now)  # type: ignore[arg-type]
    assert load.prefill_ms == pytest.approx(2080.0)
    e_pace = 20.0 * (0.4 * (45.0 / 2 / 20.0) + 0.6)  # 2 gaps: weight 0.4, 22.5 ms measured
    assert sorted(load.running_ms) == pytest.approx(
        [2080.0 + 9 * 20.0, 2080.0 + 49 * 20.0, 2080.0 + 100 * e_pace, 2080.0 + 197 * 20.0]
    )
    slot = w.forecast(pool, Job(100, 11), None, now)  # type: ignore[arg-type]
    assert slot is not None and slot.start_ms == 0.0  # a free slot: dispatched now
    assert slot.finish_ms == pytest.approx(2080.0 + 100.0 + 500.0 + 10 * 20.0 * load.pace)


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
    for now in (112.0, 114.0):
        forecasts, running = w.forecasts(pool, now)
        assert forecasts == []
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
