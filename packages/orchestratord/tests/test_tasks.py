"""TaskStore bookkeeping: one terminal event, in-flight counts, bounded retention (ORCH-1106)."""

from __future__ import annotations

from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent, ErrorEvent, TokenEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.orchestratord.tasks import TaskRecord, TaskStore


def _rec(n: int, tenant: str = "a") -> TaskRecord:
    req = GenerateRequest(task_id=str(n), prompt="p", max_tokens=4, seed=0)
    return TaskRecord(str(n), "pool", "mock", "interactive", req, 1, tenant=tenant)


def _end(rec: TaskRecord) -> bool:
    return rec.finish(EndEvent(tokens_out=0, decode_ms=0, reason="eos"))


def test_one_terminal_event_and_nothing_after_it():
    rec = _rec(1)
    assert rec.append(TokenEvent("x", 0))
    assert _end(rec)
    assert not rec.finish(ErrorEvent(code=ErrorCode.INTERNAL, message="late"))
    assert not rec.append(TokenEvent("y", 1))
    assert rec.event_count == 2 and rec.state == "completed"


def test_in_flight_counts_follow_terminal_events():
    store = TaskStore(retention_s=600, max_tasks=100)
    recs = [_rec(n, "a" if n % 2 else "b") for n in range(6)]
    for r in recs:
        store.add(r)
    assert store.in_flight("a") == 3 and store.in_flight("b") == 3
    _end(recs[1])
    recs[2].finish(ErrorEvent(code=ErrorCode.WORKER_RESET, message="reset"))
    assert store.in_flight("a") == 2 and store.in_flight("b") == 2
    assert {r.task_id for r in store.active()} == {"0", "3", "4", "5"}


def test_retention_evicts_finished_in_finish_order_never_active():
    store = TaskStore(retention_s=600, max_tasks=3)
    a, b, c = _rec(1), _rec(2), _rec(3)
    for r in (a, b, c):
        store.add(r)
    _end(b)
    _end(a)
    store.add(_rec(4))  # full: evicts the first finished (b), keeps active c
    assert store.get("2") is None and store.get("1") is not None and store.get("3") is not None
    store.add(_rec(5))  # evicts a next
    assert store.get("1") is None and len(store) == 3
    store.add(_rec(6))  # nothing finished left: active tasks are never evicted
    assert len(store) == 4 and store.get("3") is not None


async def test_a_cancel_that_meets_a_phase_change_is_not_dropped():
    """ORCH-2817 (amended): ``TaskStore.wait_for`` cancelled in the turn a phase change
    woke it ends cancelled; 3.11's ``asyncio.wait_for`` returned there, and the waiter
    waited on for its whole timeout."""
    import asyncio

    store = TaskStore(retention_s=600, max_tasks=100)
    recs = [_rec(n) for n in range(2)]
    for r in recs:
        store.add(r)
    waiter = asyncio.ensure_future(store.wait_for(lambda: False, 30.0))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()
    _end(recs[0])  # a phase change: wakes the waiter, yields nothing
    waiter.cancel()  # in the same turn
    done, _ = await asyncio.wait({waiter}, timeout=2.0)
    if not done:  # it lost the cancel and waits on: stop it before failing
        waiter.cancel()
        await asyncio.wait({waiter}, timeout=2.0)
    assert done and waiter.cancelled()
