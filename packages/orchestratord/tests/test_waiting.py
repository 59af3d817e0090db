"""What a waiting client sees and how long it waits, with the mock adapter
(ORCH-1957, ORCH-1961, ORCH-1962, ORCH-1965..1967)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import msgspec
import pytest
from llama_orch.core.config import WaitingConfig
from llama_orch.core.errors import ErrorCode
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord.main import JsonFormatter
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.waiting import expiry


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
        got, _told = run.orch.workload.predicted(pool, rec, now)
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
