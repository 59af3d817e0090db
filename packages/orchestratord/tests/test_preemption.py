"""Preemption, cost budgets, per-replica forecasts and work-aware placement through
HTTP with the mock adapter (issue #4)."""

from __future__ import annotations

import re
import uuid

import msgspec
from llama_orch.adapters.mock._text import token_text
from llama_orch.core.adapter_api import Capability

from .conftest import finish_eta


def _started(events):
    """The ``started`` event; a task that waited has ``queued`` events before it (ORCH-1961)."""
    return next(e[2] for e in events if e[1] == "started")


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


def _tokens(events) -> list[tuple[int, str]]:
    return [(e[2]["i"], e[2]["t"]) for e in events if e[1] == "token"]


async def _batch_then_urgent(run):
    """A batch task holds the only slot; an interactive task arrives mid-decode."""
    batch = await _tid(run, priority="batch", prompt="long job", max_tokens=60, seed=7)
    await run.until_tokens(batch, 5)
    urgent = await _tid(run, priority="interactive", max_tokens=5)
    return batch, urgent


async def test_hard_preemption_requeues_and_resumes(start_orchestrator, mock_config):
    """ORCH-1901/1902/1903: the urgent task interrupts the batch task, which resumes
    by continuation with contiguous token indices and exactly one terminal event."""
    cfg = mock_config(adapter_options={"token_delay_ms": 10})
    cfg.scheduling.preemption = "hard"
    run = await start_orchestrator(cfg)
    batch, urgent = await _batch_then_urgent(run)
    urgent_events = await run.events(urgent)
    assert urgent_events[-1][1] == "end"
    # it started on the slot the batch task held, long before that task could end
    assert _started(urgent_events)["queue_wait_ms"] < 300
    events = await run.events(batch)
    kinds = [e[1] for e in events]
    assert kinds.count("started") == 1
    assert [k for k in kinds if k in ("end", "error")] == ["end"] and kinds[-1] == "end"
    flags = [(n, e[2]["preempted"]) for n, e in enumerate(events) if "preempted" in e[2]]
    assert [f for _, f in flags] == [True, False]
    assert run.orch.get(urgent).finished_at <= run.orch.get(batch).finished_at  # type: ignore[operator]
    tokens = _tokens(events)
    assert [i for i, _ in tokens] == list(range(len(tokens)))  # contiguous, no repeats
    cut = sum(1 for e in events[: flags[0][0]] if e[1] == "token")
    before = [t for _, t in tokens[:cut]]
    after = [t for _, t in tokens[cut:]]
    assert before and after
    # the resumption continues from the prompt plus the text already streamed
    assert after[0] == token_text(7, "long job" + "".join(before), 0)
    end = events[-1][2]
    assert end["reason"] == "length" and end["tokens_out"] == len(tokens) == 60
    text = await run.metrics_text()
    assert re.search(r'preemptions_total\{[^}]*engine="mock"[^}]*mode="hard"[^}]*\} 1\.0', text)
    assert re.search(r'resumptions_total\{[^}]*engine="mock"[^}]*\} 1\.0', text)


async def test_soft_preemption_is_the_default(start_orchestrator, mock_config):
    """ORCH-1901: without `preemption: hard` a running task is never interrupted."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 10}))
    batch, urgent = await _batch_then_urgent(run)
    events = await run.events(batch)
    assert not any("preempted" in e[2] for e in events)
    assert _started(await run.events(urgent))["queue_wait_ms"] >= 300  # waited for the slot
    assert 'mode="hard"' not in await run.metrics_text()


async def test_hard_preemption_needs_the_adapter_capability(start_orchestrator, mock_config):
    """ORCH-1901: an adapter without `interruptible_decode` is never interrupted."""
    cfg = mock_config(adapter_options={"token_delay_ms": 10})
    cfg.scheduling.preemption = "hard"
    run = await start_orchestrator(cfg)
    adapter = next(iter(run.orch.pools["mock"].replicas.values())).adapter
    real_props = adapter.props

    async def props_without_interrupt():
        props = await real_props()
        caps = props.capabilities - {Capability.INTERRUPTIBLE_DECODE}
        return msgspec.structs.replace(props, capabilities=caps)

    adapter.props = props_without_interrupt  # type: ignore[method-assign]
    batch, urgent = await _batch_then_urgent(run)
    assert not any("preempted" in e[2] for e in await run.events(batch))
    assert _started(await run.events(urgent))["queue_wait_ms"] >= 300


async def test_soft_preemption_is_counted(start_orchestrator, mock_config):
    """ORCH-1904: shed-low-priority displacing a batch task for an interactive one."""
    run = await start_orchestrator(
        mock_config(
            admission={"queue_capacity": 1, "full_policy": "shed-low-priority"},
            adapter_options={"token_delay_ms": 10},
        )
    )
    blocker = await _tid(run, max_tokens=100)
    shed = await _tid(run, priority="batch", max_tokens=2)
    await _tid(run, priority="interactive", max_tokens=2)
    events = await run.events(shed)
    assert events[-1][1] == "error" and events[-1][2]["code"] == "ADMISSION_REJECT"
    text = await run.metrics_text()
    assert re.search(r'preemptions_total\{[^}]*mode="soft"[^}]*\} 1\.0', text)
    async with run.http.post(f"{run.url}/v1/tasks/{blocker}/cancel") as r:
        assert r.status == 204


async def test_session_cost_budget_per_pool_and_priority(start_orchestrator, mock_config):
    """ORCH-1906: cost = tokens x the pool's cost per token of the task's priority."""
    cfg = mock_config(cost_per_token={"interactive": 0.5, "batch": 0.1})
    cfg.sessions.cost_budget = 30
    run = await start_orchestrator(cfg)
    sid = str(uuid.uuid4())
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=10)
    assert resp.status == 202
    tid = (await resp.json())["task_id"]
    prompt = run.orch.get(tid).prompt_tokens
    reserved_left = 30 - (prompt + 10) * 0.5
    assert float(resp.headers["X-Budget-Cost-Remaining"]) == reserved_left
    events = await run.events(tid)
    assert [
        e[2]["budget_cost_remaining"] for e in events if e[1] == "metrics" and not finish_eta(e[2])
    ] == [reserved_left]
    assert events[-1][2]["tokens_out"] == 10  # used what it reserved
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=50)
    assert resp.status == 400
    err = await resp.json()
    assert err["code"] == "INVALID_PARAMS" and "cost" in err["message"]
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=50, priority="batch")
    assert resp.status == 202  # a batch token costs 0.1
    left = reserved_left - (prompt + 50) * 0.1
    assert abs(float(resp.headers["X-Budget-Cost-Remaining"]) - left) < 1e-9


async def test_deadline_forecast_uses_work_running_ahead(start_orchestrator, mock_config):
    """ORCH-1905: a long task on the only slot makes a short deadline infeasible,
    however short the tasks measured so far were."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 5}))
    await run.events(await _tid(run, max_tokens=10))  # measure the rate
    long = await _tid(run, max_tokens=300)
    await run.until_tokens(long, 1)
    resp = await run.submit(max_tokens=4, deadline_ms=400)
    assert resp.status == 400 and (await resp.json())["code"] == "DEADLINE_UNMET"
    async with run.http.post(f"{run.url}/v1/tasks/{long}/cancel") as r:
        assert r.status == 204
    await run.settled(long)
    assert run.orch.pools["mock"].running() == 0
    assert (await run.submit(max_tokens=4, deadline_ms=400)).status == 202


async def test_deadline_forecast_uses_each_replica_rate(start_orchestrator, mock_config):
    """ORCH-1905: a fast and a slow replica; a deadline only the fast one can meet is
    admitted, although the pool-wide average rate would miss it."""
    run = await start_orchestrator(
        mock_config(endpoints=["mock://0", "mock://1"], adapter_options={"token_delay_ms": 5})
    )
    slow = run.orch.pools["mock"].replicas["mock-e1"].adapter
    slow.options = msgspec.structs.replace(slow.options, token_delay_ms=60)  # type: ignore[attr-defined]
    a, b = await _tid(run, max_tokens=10), await _tid(run, max_tokens=10)  # one on each
    assert {(await run.events(t))[0][2]["replica_id"] for t in (a, b)} == {"mock-e0", "mock-e1"}
    pool = run.orch.pools["mock"]
    # the slow replica's own model misses the deadline (the pool is not one rate)
    assert run.orch.workload.model(pool, "mock-e1", 1).service_ms(1, 40, 1, 0.0) > 600
    tid = await _tid(run, max_tokens=40, deadline_ms=600)
    events = await run.events(tid)
    assert events[0][2]["replica_id"] == "mock-e0" and events[-1][1] == "end"


async def test_placement_prefers_the_replica_with_less_work(start_orchestrator, mock_config):
    """ORCH-1907: equal free slots → the replica with the fewest tokens still to go."""
    run = await start_orchestrator(
        mock_config(
            endpoints=["mock://0", "mock://1"],
            slots=2,
            adapter_options={"token_delay_ms": 10, "slots": 2},
        )
    )
    first = await _tid(run, max_tokens=300)
    second = await _tid(run, max_tokens=40)
    await run.until(lambda: run.orch.get(second).state == "running")
    assert run.orch.get(first).replica_id == "mock-e0"
    assert run.orch.get(second).replica_id == "mock-e1"  # most free slots
    third = await _tid(run, max_tokens=5)
    await run.until(lambda: run.orch.get(third).state != "queued")
    assert run.orch.get(third).replica_id == "mock-e1"  # 1 free each; e1 has less work
    for tid in (first, second):
        async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
            assert r.status == 204
