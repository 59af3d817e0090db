"""The task lifecycle in orchestratord: one end path, one end hook, awaitable state
changes (ORCH-2410..2413) and a dispatcher that survives a failing step (ORCH-2414)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent
from llama_orch.core.task import IllegalTransition
from llama_orch.orchestratord.tasks import TaskRecord, TaskStore


def _rec(n: int) -> TaskRecord:
    req = GenerateRequest(task_id=str(n), prompt="p", max_tokens=4, seed=0)
    return TaskRecord(str(n), "pool", "mock", "interactive", req, 1)


async def test_phase_changes_wake_waiters_and_set_ended() -> None:
    """ORCH-2410, ORCH-2413: phases move through the record's lifecycle only, and a
    waiter wakes on the change it waits for, not by polling."""
    store = TaskStore(retention_s=600, max_tasks=100)
    rec = _rec(1)
    store.add(rec)
    running = asyncio.create_task(store.wait_for(lambda: rec.state == "running", 30))
    await asyncio.sleep(0)  # parked on the store's change event
    assert not running.done()
    rec.dispatch("r0")
    assert await running and rec.replica_id == "r0"
    rec.requeue()
    assert rec.state == "queued" and rec.replica_id is None
    with pytest.raises(IllegalTransition):
        rec.requeue()  # ORCH-2401: only a running task goes back
    assert not rec.ended.is_set()
    rec.dispatch("r1")
    waiter = asyncio.create_task(rec.ended.wait())
    assert rec.finish(EndEvent(tokens_out=0, decode_ms=0, reason="eos"))
    await asyncio.wait_for(waiter, 30)
    assert rec.state == "completed" and not store.active()
    with pytest.raises(IllegalTransition):
        rec.dispatch("r2")  # ORCH-2402: nothing after the end
    assert not await store.wait_for(lambda: False, 0.01)  # a timeout answers False


async def test_dispatcher_survives_a_failing_step(
    start_orchestrator: Any, mock_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ORCH-2414: a step that raises is logged with its exception; the dispatcher goes
    on. A task taken off the queue gets a terminal error instead of being lost, a task
    still queued runs at the next wakeup, and every task ends through the one hook
    exactly once (ORCH-2412) whether it completed, failed or was canceled (ORCH-2411)."""
    caplog.set_level(logging.ERROR, logger="llama_orch.orchestratord")
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 5}))
    orch = run.orch
    ended: Counter[str] = Counter()
    hook = orch.tasks._on_finish  # wrap the hook the store calls, to count its calls

    def counting(rec: TaskRecord) -> None:
        ended[rec.task_id] += 1
        hook(rec)

    orch.tasks._on_finish = counting

    # 1. a step fails after the task left the queue: the task ends with INTERNAL
    real_dispatched = orch.tracing.dispatched

    def broken_dispatched(*args: Any) -> None:
        orch.tracing.dispatched = real_dispatched  # fail once
        raise RuntimeError("injected dispatch bug")

    orch.tracing.dispatched = broken_dispatched
    resp = await run.submit(max_tokens=4)
    assert resp.status == 202
    a = (await resp.json())["task_id"]
    events = await run.events(a)
    assert events[-1][1] == "error" and events[-1][2]["code"] == "INTERNAL"
    assert [e for _, e, _ in events].count("error") == 1
    assert all(r.busy == 0 for r in orch.pools["mock"].replicas.values())  # slot given back

    # 2. the step fails before any task left the queue: the task waits for the next wakeup
    real_views = orch.workload.views
    hit = asyncio.Event()

    def broken_views(pool: Any) -> Any:
        orch.workload.views = real_views
        hit.set()
        raise RuntimeError("injected placement bug")

    orch.workload.views = broken_views
    b = (await (await run.submit(max_tokens=4)).json())["task_id"]
    await asyncio.wait_for(hit.wait(), 30)
    assert orch.get(b).state == "queued"  # nothing dispatched it yet, and it is not lost
    c = (await (await run.submit(max_tokens=4)).json())["task_id"]  # wakes the dispatcher
    for tid in (b, c):
        assert (await run.events(tid))[-1][1] == "end"

    # 3. a canceled running task also ends through the one path and the one hook
    d = (await (await run.submit(max_tokens=2000)).json())["task_id"]
    await orch.tasks.wait_for(lambda: orch.get(d).state == "running", 30)
    async with run.http.post(f"{run.url}/v1/tasks/{d}/cancel") as resp:
        assert resp.status == 204
    assert orch.get(d).state == "canceled" and orch.get(d).ended.is_set()
    await run.settled(d)
    # ORCH-2421: every run gave its slot back once, however it ended
    assert all(r.busy == 0 for r in orch.pools["mock"].replicas.values())

    failures = [r for r in caplog.records if r.exc_info and "dispatch" in r.getMessage()]
    assert {str(r.exc_info[1]) for r in failures if r.exc_info} == {
        "injected dispatch bug",
        "injected placement bug",
    }
    assert ended == {a: 1, b: 1, c: 1, d: 1}
