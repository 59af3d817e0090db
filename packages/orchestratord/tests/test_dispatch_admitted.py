"""ORCH-2802: a submit dispatches the task it queued in its own turn when the pool's
dispatcher has no turn pending and the task is the whole queue; otherwise the
dispatcher's loop takes it in the queue's fair order, as before."""

from __future__ import annotations

import asyncio
import json
from typing import Any


def _body(**fields: Any) -> bytes:
    return json.dumps({"prompt": "hello", "max_tokens": 3, **fields}).encode()


async def test_an_idle_pool_runs_the_task_in_the_submit_turn(
    start_orchestrator: Any, mock_config: Any
) -> None:
    run = await start_orchestrator(mock_config(adapter_options={"slots": 2}))
    pool = run.orch.pools["mock"]
    replica = next(iter(pool.replicas.values()))
    accepted = await run.orch.submit(_body())
    rec = run.orch.get(accepted.task_id)
    # no await since the submit: the dispatcher's loop has not run
    assert rec.state == "running" and rec.runner is not None
    assert replica.busy == 1 and len(pool.queue) == 0
    assert not pool.wakeup.is_set()  # its loop was not woken for it
    # what the client was told is the admission's forecast, as queued (ORCH-1957)
    assert accepted.queue_position == 0
    await run.settled(rec.task_id)
    assert rec.state == "completed" and replica.busy == 0


async def test_without_a_free_slot_the_loop_decides(
    start_orchestrator: Any, mock_config: Any
) -> None:
    cfg = mock_config(adapter_options={"token_delay_ms": 5})
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    first = run.orch.get((await run.orch.submit(_body(max_tokens=400))).task_id)
    assert first.state == "running"  # the one slot, taken in the submit's turn
    second = run.orch.get((await run.orch.submit(_body())).task_id)
    assert second.state == "queued" and pool.wakeup.is_set()  # the loop's turn (ORCH-1304)
    await asyncio.sleep(0.05)
    assert second.state == "queued"
    run.orch.cancel(first.task_id)
    await run.settled(second.task_id)
    assert second.state == "completed"


async def test_a_pending_turn_of_the_loop_takes_the_task(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """A freed slot, a replica change or another submit woke the loop: the tasks
    admitted before its turn are placed by that turn in the queue's order."""
    run = await start_orchestrator(mock_config())
    pool = run.orch.pools["mock"]
    warm = run.orch.get((await run.orch.submit(_body())).task_id)
    await run.settled(warm.task_id)
    assert not pool.wakeup.is_set()
    pool.wakeup.set()  # a turn pending, as a freed slot leaves it
    rec = run.orch.get((await run.orch.submit(_body())).task_id)
    assert rec.state == "queued" and len(pool.queue) == 1  # left to that turn
    await run.settled(rec.task_id)
    assert rec.state == "completed"


async def test_queued_tasks_keep_the_fair_order(start_orchestrator: Any, mock_config: Any) -> None:
    """ORCH-1101: behind a busy slot, a later interactive task goes before a batch one."""
    cfg = mock_config(adapter_options={"token_delay_ms": 5})
    run = await start_orchestrator(cfg)
    blocker = run.orch.get((await run.orch.submit(_body(max_tokens=400))).task_id)
    batch = run.orch.get((await run.orch.submit(_body(priority="batch"))).task_id)
    urgent = run.orch.get((await run.orch.submit(_body(priority="interactive"))).task_id)
    assert (blocker.state, batch.state, urgent.state) == ("running", "queued", "queued")
    run.orch.cancel(blocker.task_id)
    await run.settled(batch.task_id)
    await run.settled(urgent.task_id)
    assert urgent.dispatched is not None and batch.dispatched is not None
    assert urgent.dispatched < batch.dispatched
